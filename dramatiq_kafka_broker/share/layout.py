"""How a broker in share mode names its groups."""

from __future__ import annotations

import dataclasses

from dramatiq.common import q_name

from ..topics import TopicLayout

#: Put after a queue's classic group name to make its share group's: a group id has one type, and a
#: deployment that moves from one type to the other runs both groups for a while.
SHARE_GROUP_SUFFIX = ".share"


@dataclasses.dataclass(frozen=True)
class ShareTopicLayout(TopicLayout):
    """:class:`~..topics.TopicLayout` of a broker in share mode: a queue is consumed by the share group
    ``<topic_prefix><group_id>.<queue>.share``; its delay queue keeps its classic consumer group (delayed
    messages are held by the worker until they are due, which a share group's record locks do not suit)."""

    def group_for(self, queue_name: str) -> str:
        """The group that consumes ``queue_name``: a share group for a queue, a consumer group for a
        delay queue."""
        group = super().group_for(queue_name)
        return group + SHARE_GROUP_SUFFIX if queue_name == q_name(queue_name) else group
