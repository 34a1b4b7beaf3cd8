"""Wake-up latency of the eventfd primitives, two processes ping-ponging (no memif rings).

    .venv/bin/python benchmarks/bench_wakeup.py [--count 20000] [--cpus same|split|both]

Each round trip: A signals B's eventfd, B wakes from epoll_wait and signals A's, A wakes.

- ``raw``: ``write()``/``read()`` on level-triggered eventfds: the floor, and what memif_aio
  did before it treated peer eventfds as hostile (a blocking-and-full eventfd froze it).
- ``io_uring``: what memif_aio does now: ``Signaller`` (io_uring write with RWF_NOWAIT, never
  blocks) and an edge-triggered private epoll set, never reading the peer's eventfd.
- ``thread``: the fallback where io_uring is unavailable: a helper thread does the writes.

Prints p50/p99/p99.9 in microseconds for each, measured in the same run, and the ratio to
``raw``. "same" pins both processes to CPU 0; "split" puts them on CPUs 0 and 1.
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import time

from memif_aio import _ring

ONE = (1).to_bytes(8, "little")


class Raw:
    def __init__(self, mine: int, theirs: int) -> None:
        self.mine, self.theirs = mine, theirs
        self.ep = select.epoll()
        self.ep.register(mine, select.EPOLLIN)

    def signal(self) -> None:
        os.write(self.theirs, ONE)

    def wait(self) -> None:
        self.ep.poll()
        os.read(self.mine, 8)


class Ours:
    def __init__(self, mine: int, theirs: int, backend: str) -> None:
        self.signaller = _ring.Signaller(backend=backend)
        self.slot = self.signaller.add(theirs)
        self.ep = select.epoll()  # what InterruptSet does, minus the event loop
        self.ep.register(mine, select.EPOLLIN | select.EPOLLET)

    def signal(self) -> None:
        self.signaller.signal(self.slot)

    def wait(self) -> None:
        self.ep.poll()


def make(kind: str, mine: int, theirs: int):
    return Raw(mine, theirs) if kind == "raw" else Ours(mine, theirs, kind)


def run(kind: str, count: int, cpus: tuple[int, int]) -> list[float]:
    a2b = os.eventfd(0, os.EFD_NONBLOCK)
    b2a = os.eventfd(0, os.EFD_NONBLOCK)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.sched_setaffinity(0, {cpus[1]})
            side = make(kind, a2b, b2a)
            os.write(ready_w, b"x")
            for _ in range(count + 100):
                side.wait()
                side.signal()
            time.sleep(0.2)  # the thread backend writes after signal() returns: let it
        finally:
            os._exit(0)
    os.sched_setaffinity(0, {cpus[0]})
    side = make(kind, b2a, a2b)
    os.read(ready_r, 1)
    rtts = []
    for i in range(count + 100):
        start = time.perf_counter_ns()
        side.signal()
        side.wait()
        if i >= 100:  # warm-up
            rtts.append((time.perf_counter_ns() - start) / 1000)
    os.waitpid(pid, 0)
    for fd in (a2b, b2a, ready_r, ready_w):
        os.close(fd)
    return rtts


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


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
    before = os.sched_getaffinity(0)
    print(f"eventfd ping-pong, {args.count} round trips each, microseconds")
    print(f"{'cpus':6} {'path':9} {'p50':>8} {'p99':>8} {'p99.9':>8} {'p50 vs raw':>11}")
    try:
        for name, cpus in chosen.items():
            floor = None
            for kind in kinds:
                rtts = run(kind, args.count, cpus)
                p50 = statistics.median(rtts)
                floor = floor or p50
                print(
                    f"{name:6} {kind:9} {p50:8.1f} {pct(rtts, 0.99):8.1f} "
                    f"{pct(rtts, 0.999):8.1f} {p50 / floor:10.2f}x"
                )
    finally:
        os.sched_setaffinity(0, before)


if __name__ == "__main__":
    main()
