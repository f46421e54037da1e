"""``python -m pipeline dlq list|show|replay|purge [QUEUE]``: inspect and replay failed messages.

Failed messages are those Dramatiq gave up on (retries exhausted, ``throws``, time limits) and records that
were not Dramatiq messages at all; the broker keeps them on the queue's ``.XQ`` topic with their reason.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from dramatiq_kafka_broker import FailedMessage, KafkaBroker
from pipeline.broker import build_broker
from pipeline.contract import QUEUE


def register(subparsers: Any) -> None:
    """Add the ``dlq`` command and its sub-commands to the CLI."""
    parser = subparsers.add_parser("dlq", help="inspect and replay failed messages")
    actions = parser.add_subparsers(dest="dlq_action", required=True)
    for name, text in (
        ("list", "one line per failed message: partition/offset, time, actor, reason"),
        ("show", "every failed message in full, as JSON lines"),
        ("replay", "put failed messages back on their queue (retries reset) and remove them"),
        ("purge", "delete the failed messages the queue holds when asked (not those failing meanwhile)"),
        ("count", "print how many failed messages the queue holds"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("queue", nargs="?", default=QUEUE, help=f"queue name (default: {QUEUE})")
        if name in {"list", "show", "replay"}:
            action.add_argument("--limit", type=int, default=None, help="at most this many messages")
        if name == "purge":
            action.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.set_defaults(handler=run)


def _as_dict(failed: FailedMessage) -> dict[str, Any]:
    message = failed.message
    return {
        "partition": failed.partition,
        "offset": failed.offset,
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(failed.timestamp / 1000)),
        "reason": failed.reason,
        "message": message.asdict() if message is not None else None,
        "raw": None if message is not None else failed.raw.decode("utf-8", "replace"),
    }


def run(args: argparse.Namespace) -> int:
    """Carry out one ``dlq`` sub-command on the service's broker; returns the exit code."""
    # No actors needed: failed messages are read and replayed as they are, by queue name.
    broker = build_broker()
    try:
        return _run(broker, args)
    finally:
        broker.close()


def _run(broker: KafkaBroker, args: argparse.Namespace) -> int:
    broker.declare_queue(args.queue)
    if args.dlq_action == "count":
        print(broker.admin.failed_count(args.queue))
    elif args.dlq_action == "list":
        for failed in broker.admin.failed_messages(args.queue, limit=args.limit):
            item = _as_dict(failed)
            actor = failed.message.actor_name if failed.message else "(not a Dramatiq message)"
            print(f"{item['partition']}/{item['offset']}  {item['failed_at']}  {actor}  {item['reason']}")
    elif args.dlq_action == "show":
        for failed in broker.admin.failed_messages(args.queue, limit=args.limit):
            print(json.dumps(_as_dict(failed), ensure_ascii=False, default=str))
    elif args.dlq_action == "replay":
        replayed, left = broker.admin.replay_failed(args.queue, limit=args.limit)
        print(
            f"replayed {replayed}; left {left} that are not Dramatiq messages (see `dlq show`, `dlq purge`)"
        )
    elif args.dlq_action == "purge":
        # The messages counted in the question, and only those: what fails while it waits stays.
        seen = broker.admin.failed_ranges(args.queue)
        count = sum(end - first for first, end in seen.values())
        if (
            not args.yes
            and input(f"Delete the {count} failed messages of {args.queue!r}? [y/N] ").strip().lower() != "y"
        ):
            print("nothing deleted")
            return 1
        print(f"purged {broker.admin.purge_failed(args.queue, within=seen)}")
    return 0
