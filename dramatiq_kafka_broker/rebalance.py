"""How kafka-python's word that the group moved partitions to or from a consumer reaches the consumer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from kafka import TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener

#: What the listener relays a callback to: a coroutine function given the partitions moved.
Relay = Callable[[list[TopicPartition]], Awaitable[None]]


class _RebalanceListener(AsyncConsumerRebalanceListener):
    """Relays kafka-python's rebalance callbacks to the consumer, and keeps nothing of its own.

    kafka-python 3 runs these callbacks on its IO thread while the consumer thread waits inside ``poll``
    (or ``close``), so they never run alongside ``__next__``; what they relay to must not call blocking
    consumer APIs, hence :mod:`.compat`'s coroutines.

    Parameters:
      on_revoked(Relay): Awaited with the partitions taken away (or lost), before the group hands out any.
      on_assigned(Relay): Awaited with the whole of the new assignment.
    """

    def __init__(self, on_revoked: Relay, on_assigned: Relay) -> None:
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._on_assigned(list(assigned))
