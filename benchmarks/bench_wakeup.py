"""Wake-up latency of the eventfd primitives, two processes ping-ponging (no memif rings).

    .venv/bin/python benchmarks/bench_wakeup.py [--count 20000] [--cpus same|split|both]

Each round trip: A signals B's eventfd, B wakes from epoll_wait and signals A's, A wakes.

- ``raw``: ``write()``/``read()`` on level-triggered eventfds: the floor, and what memif_aio
  did before it treated peer eventfds as hostile (a blocking-and-full eventfd froze it).
- ``io_uring``: what memif_aio does now: ``Signaller`` (io_uring write with RWF_NOWAIT, never
  blocks) and an edge-triggered private epoll set, never reading the peer's eventfd.
- ``thread``: the fallback where io_uring is unavailable: a helper thread does the writes.

Prints p50/p99/p99.9 in microseconds for each, measured in the same run, and the ratio to
``raw``. "same" pins both processes to CPU 0; "split" puts them on CPUs 0 and 1. The ping-pong
itself is ``memif_aio.cli.rtt.eventfd_pingpong`` (also the floor of ``bench_latency.py``).
"""

from __future__ import annotations

import argparse
import statistics

from memif_aio import _ring
from memif_aio.cli.rtt import eventfd_pingpong, percentile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--cpus", choices=("same", "split", "both"), default="both")
    args = parser.parse_args()
    kinds = (
        ["raw", "io_uring", "thread"] if _ring.signal_backend() == "io_uring" else ["raw", "thread"]
    )
    layouts = {"same": (0, 0), "split": (0, 1)}
    chosen = layouts if args.cpus == "both" else {args.cpus: layouts[args.cpus]}
    print(f"eventfd ping-pong, {args.count} round trips each, microseconds")
    print(f"{'cpus':6} {'path':9} {'p50':>8} {'p99':>8} {'p99.9':>8} {'p50 vs raw':>11}")
    for name, cpus in chosen.items():
        floor = None
        for kind in kinds:
            rtts = eventfd_pingpong(kind, args.count, cpus)
            p50 = statistics.median(rtts)
            floor = floor or p50
            print(
                f"{name:6} {kind:9} {p50:8.1f} {percentile(rtts, 99):8.1f} "
                f"{percentile(rtts, 99.9):8.1f} {p50 / floor:10.2f}x"
            )


if __name__ == "__main__":
    main()
