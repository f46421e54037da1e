"""Our KafkaBroker with one knob turned at a time, against its defaults, in one run.

    python -m bench.kafka_knobs [--messages 5000] [--repeat 3] [--only NAME,NAME]

Same workload and timing as ``bench/brokers.py`` (an in-process Worker of 8 threads, median of the
rounds).  The knobs are the ones the profile points at: the producer's ``linger_ms``, the Worker's queue
prefetch (which our consumer also uses as ``max_poll_records``), ``commit_interval_ms``, the consumer's
``_POLL_SLICE_MS``, and kafka-python's CRC-32C (pure Python unless the ``crc32c`` package is installed).
Nothing here changes the broker's code: options go through its constructor, the prefetch through the
Worker, and the two module-level values are swapped for the variant and put back after it.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time

from bench.brokers import Context, Knobs, Result, cleanup_kafka, machine_facts, scenario_ours

#: name: (label, batched, knobs[, sending threads])
VARIANTS: dict[str, tuple[str, bool, Knobs] | tuple[str, bool, Knobs, int]] = {
    "send": ("send(), broker defaults", False, Knobs()),
    "send-linger0": ("send(), linger_ms=0", False, Knobs(linger_ms=0)),
    "send-linger2": ("send(), linger_ms=2", False, Knobs(linger_ms=2)),
    "send-noconfirm": ("send(), confirm_delivery off", False, Knobs(confirm_delivery=False)),
    "send-noconfirm-linger2": (
        "send(), confirm_delivery off, linger_ms=2",
        False,
        Knobs(confirm_delivery=False, linger_ms=2),
    ),
    "send-noconfirm-linger5": (
        "send(), confirm_delivery off, linger_ms=5",
        False,
        Knobs(confirm_delivery=False, linger_ms=5),
    ),
    "send8t": ("send() from 8 threads, broker defaults", False, Knobs(), 8),
    "send8t-linger0": ("send() from 8 threads, linger_ms=0", False, Knobs(linger_ms=0), 8),
    "send8t-linger2": ("send() from 8 threads, linger_ms=2", False, Knobs(linger_ms=2), 8),
    "batch": ("enqueue_many, broker defaults (prefetch 16)", True, Knobs()),
    "batch-linger2": ("enqueue_many, linger_ms=2", True, Knobs(linger_ms=2)),
    "batch-linger0": ("enqueue_many, linger_ms=0", True, Knobs(linger_ms=0)),
    "batch-prefetch64": ("enqueue_many, prefetch 64", True, Knobs(prefetch=64)),
    "batch-prefetch256": ("enqueue_many, prefetch 256", True, Knobs(prefetch=256)),
    "batch-commit1000": ("enqueue_many, commit_interval_ms=1000", True, Knobs(commit_interval_ms=1000)),
    "batch-commit20": ("enqueue_many, commit_interval_ms=20", True, Knobs(commit_interval_ms=20)),
    "batch-slice10": ("enqueue_many, _POLL_SLICE_MS=10", True, Knobs(poll_slice_ms=10)),
    "batch-slice200": ("enqueue_many, _POLL_SLICE_MS=200", True, Knobs(poll_slice_ms=200)),
    "batch-pycrc": ("enqueue_many, pure-Python CRC-32C", True, Knobs(pure_python_crc=True)),
    "batch-best": (
        "enqueue_many, linger_ms=0 + prefetch 256",
        True,
        Knobs(linger_ms=0, prefetch=256),
    ),
}


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    """Run the variants and print a table with each one's e2e rate against its path's defaults."""
    parser = argparse.ArgumentParser(prog="python -m bench.kafka_knobs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--only", default="", help=f"comma list of variants: {','.join(VARIANTS)}")
    parser.add_argument(
        "--kafka", default="", help="bootstrap servers (default: settings' KAFKA_BOOTSTRAP_SERVERS)"
    )
    args = parser.parse_args(argv)
    if not args.kafka:
        from pipeline import settings

        args.kafka = ",".join(settings.KAFKA_BOOTSTRAP_SERVERS)
    ctx = Context(
        messages=args.messages,
        repeat=args.repeat,
        threads=args.threads,
        kafka=args.kafka.split(","),
        prefix=f"bench-{secrets.token_hex(4)}.",
        redis_url="",
        rabbitmq_url="",
        dk_python="",
    )
    facts = machine_facts(ctx)
    print("\n".join([*facts[:3], facts[-1]]), flush=True)
    chosen = [v for v in (args.only.split(",") if args.only else VARIANTS) if v]
    results: list[tuple[str, Result]] = []
    try:
        for name in chosen:
            label, batched, knobs, *senders = VARIANTS[name]
            result = Result(name, label, ctx.messages)
            print(f"... {name}", end="", flush=True)
            started = time.monotonic()
            try:
                scenario_ours(ctx, result, batched=batched, knobs=knobs, senders=senders[0] if senders else 1)
            except Exception as e:
                result.error = f"{type(e).__name__}: {e}"[:200]
            print(
                f" {time.monotonic() - started:.1f} s" + (f" ({result.error})" if result.error else ""),
                flush=True,
            )
            results.append((name, result))
    finally:
        print(cleanup_kafka(ctx))

    base = {r.name: r for _, r in results}
    print()
    header = f"{'variant':<46} {'enqueue/s':>10} {'processed/s':>12} {'e2e/s':>8} {'vs default':>11}"
    print(header)
    print("-" * len(header))
    for name, r in results:
        if r.error:
            print(f"{r.label:<46} n/a ({r.error})")
            continue
        reference = base.get(name.split("-")[0])
        ratio = (
            "n/a"
            if reference is None or reference.error or not reference.e2e or not r.e2e
            else f"{r.e2e / reference.e2e:.2f}x"
        )
        print(
            f"{r.label:<46} {_rate(r.median_rate('enqueued')):>10} {_rate(r.median_rate('processed')):>12} "
            f"{_rate(r.e2e):>8} {ratio:>11}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
