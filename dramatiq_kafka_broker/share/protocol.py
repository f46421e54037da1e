"""Kafka's share-group messages (KIP-932) as kafka-python message classes.

kafka-python 3.0.12 knows the API keys of share groups and no more: it builds each of its messages from a
JSON definition in Kafka's own format.  Ours are in ``share/schemas/``, written from the published protocol
(the field names, types and versions are the protocol's; kafka-clients' own files were the reference they
were checked against), and built here through the same loader (:func:`.compat.share_message_class`).

To add a message (say ``DescribeShareGroupOffsets``):

1. Write ``share/schemas/<Name>Request.json`` and ``<Name>Response.json`` in Kafka's format (a ``//``
   comment block first, then ``apiKey``, ``type``, ``name`` -- the file's name --, ``validVersions``,
   ``flexibleVersions``, ``fields``; nested structs carry their ``fields``, shared ones go in
   ``commonStructs``).  Check each field against ``common/message/<Name>*.json`` in kafka-clients' jar.
2. Add ``<Name>`` to :data:`MESSAGES`.
3. ``request_class("<Name>")(group_id=..., ...)`` builds a request (snake_case field names; nested structs
   are attributes of the class, e.g. ``request_class("ShareFetch").FetchTopic``); send it with any
   kafka-python client, which picks the highest version both sides know.  The response comes back as
   ``response_class("<Name>")``, with snake_case attributes.

``tests/broker/test_share_protocol.py`` round-trips every message of :data:`MESSAGES` at every version.
"""

from __future__ import annotations

import functools
from typing import Any

from .. import compat

#: The share-group messages this package defines, each a request and a response in ``schemas/``.
MESSAGES = ("ShareGroupHeartbeat", "ShareFetch", "ShareAcknowledge", "DescribeShareGroupOffsets")
#: The package whose files hold the JSON definitions.
SCHEMAS_PACKAGE = f"{__package__}.schemas"

#: Acknowledgement types of ShareFetch and ShareAcknowledge, as the protocol numbers them.
GAP, ACCEPT, RELEASE, REJECT, RENEW = 0, 1, 2, 3, 4


@functools.cache
def _message_class(name: str) -> Any:
    # Cached: each class is built once (kafka-python registers a response class by its API key, to decode
    # the answers of requests sent with that key).
    return compat.share_message_class(name, SCHEMAS_PACKAGE)


def request_class(name: str) -> Any:
    """The request class of message ``name`` (one of :data:`MESSAGES`, e.g. ``"ShareFetch"``).

    Building it also builds, and registers with kafka-python, its response class, so that the answer to a
    request is decoded whatever was imported before.

    Raises:
      KeyError: If ``name`` is not one of :data:`MESSAGES`.
    """
    if name not in MESSAGES:
        raise KeyError(f"no share-group message {name!r}: add its schemas and list it in MESSAGES")
    response_class(name)
    return _message_class(f"{name}Request")


def response_class(name: str) -> Any:
    """The response class of message ``name`` (one of :data:`MESSAGES`), which kafka-python decodes the
    answers of its API key with (registered again if another class took the key over).

    Raises:
      KeyError: If ``name`` is not one of :data:`MESSAGES`.
    """
    if name not in MESSAGES:
        raise KeyError(f"no share-group message {name!r}: add its schemas and list it in MESSAGES")
    cls = _message_class(f"{name}Response")
    compat.keep_response_class(cls)
    return cls
