"""``python -m pipeline partitions QUEUE [COUNT]``: show a queue's partitions, or grow them while it runs.

With a count, the queue's topic and its delay (``.DQ``) topic get that many partitions; the running web and
workers start using the new ones within seconds, without a restart (docs/operating.md).  Kafka cannot remove
partitions: a count below the current one is refused.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dramatiq.errors import DramatiqError

from dramatiq_kafka_broker import KafkaBroker
from pipeline.broker import build_broker
from pipeline.contract import QUEUE

#: Exit code when the partitions could not be shown or grown (refused, or Kafka unreachable).
EXIT_ERROR = 1


def register(subparsers: Any) -> None:
    """Add the ``partitions`` command to the CLI."""
    parser = subparsers.add_parser(
        "partitions",
        help="show a queue's partitions, or grow them while web and workers run",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("queue", help=f"queue name (the service's is {QUEUE!r})")
    parser.add_argument(
        "count",
        nargs="?",
        type=int,
        default=None,
        help="partitions the queue's topics should have; without it, their partitions are shown",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Show or grow the partitions of ``args.queue``; returns the exit code."""
    broker = build_broker()
    try:
        return _run(broker, args)
    except (ValueError, DramatiqError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        broker.close()


def _run(broker: KafkaBroker, args: argparse.Namespace) -> int:
    broker.declare_queue(args.queue)
    if args.count is None:
        for topic, count in broker.admin.partition_counts(args.queue).items():
            print(f"{topic}: {count}")
        return 0
    for growth in broker.admin.grow_partitions(args.queue, args.count):
        print(f"{growth.topic}: {growth.before} -> {growth.after}{'' if growth.grown else ' (unchanged)'}")
    return 0
