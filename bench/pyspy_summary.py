"""Summarise a ``py-spy record --format raw --threads`` profile: where each thread spends its samples.

    python -m bench.pyspy_summary PROFILE.txt [--top 15] [--match TEXT]

For each thread (worker threads are grouped as one "worker threads" entry) it prints the share of all
samples, then the functions that take the most samples *inclusively* (the function or anything it
calls) and *by themselves* (the innermost frame).  ``--match`` keeps only stacks with a frame containing
TEXT (e.g. ``pipeline/brokers``).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict


def main(argv: list[str] | None = None) -> None:
    """Print the summary."""
    parser = argparse.ArgumentParser(prog="python -m bench.pyspy_summary")
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--match", default="")
    args = parser.parse_args(argv)

    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    own: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    line_re = re.compile(r"^(.*) (\d+)$")
    with open(args.profile) as handle:
        for line in handle:
            found = line_re.match(line.rstrip("\n"))
            if not found:
                continue
            stack, count = found.group(1), int(found.group(2))
            if args.match and args.match not in stack:
                continue
            frames = stack.split(";")
            thread = frames[0]
            body = frames[1:]
            if any("WorkerThread.run" in f for f in body):
                thread = "worker threads (all)"
            elif any("ConsumerThread.run" in f for f in body):
                thread = "consumer threads (all)"
            elif thread.startswith("thread ("):
                thread = re.sub(r"^thread \(\d+\):? ?", "", thread) or "unnamed"
            totals[thread] += count
            for frame in set(body):
                inclusive[thread][frame] += count
            if body:
                own[thread][body[-1]] += count

    grand = sum(totals.values()) or 1
    for thread, total in totals.most_common():
        print(f"\n== {thread}: {total} samples ({100 * total / grand:.1f}% of all)")
        print("  inclusive:")
        for frame, count in inclusive[thread].most_common(args.top):
            print(f"    {100 * count / total:5.1f}%  {frame}")
        print("  self:")
        for frame, count in own[thread].most_common(args.top):
            print(f"    {100 * count / total:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
