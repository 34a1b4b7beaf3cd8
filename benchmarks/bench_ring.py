"""Loopback benchmark of the ring core: Cython (memif_aio._ring) vs pure Python (_ring_py).

One process plays both ends over one memfd pair (slave and master views mapped separately):
slave TxRing -> master RxRing (S2M) and master TxRing -> slave RxRing (M2S). Each iteration
transmits one burst, receives it and releases it (the slave's release refills its ring), so
the figure is the cost of both ends together, per packet. No eventfds: this measures the ring
work, not syscalls.

    python benchmarks/bench_ring.py [--size 64] [--burst 256] [--seconds 1.0]

``--dpdk-defence N``: instead, the slave's receive (M2S) with RxRing(sentinel=True,
short_next_ends_packet=True) against without, N rounds alternating, Cython only. The master
fills every slot it is given (ring size = burst), as DPDK does at a full ring.
"""

from __future__ import annotations

import argparse
import importlib
import mmap
import os
import statistics
import time

import numpy as np

from memif_aio import _ring

IMPLS = {"cython": "memif_aio._ring", "python": "memif_aio._ring_py"}


class Loopback:
    """Slave and master ends of one memif link over shared memfds, in this process.

    ``eventfds``: S2M and M2S interrupt eventfds (``efds``), as a queue on the loop needs."""

    def __init__(
        self,
        R,
        log2: int,
        buffer_size: int,
        burst: int,
        eventfds: bool = False,
        rx_options: dict | None = None,
    ) -> None:
        size = 1 << log2
        rb = R.ring_bytes(log2)
        self.fds = [os.memfd_create("bench-rings"), os.memfd_create("bench-buffers")]
        sizes = [2 * rb, 2 * size * buffer_size]
        for fd, n in zip(self.fds, sizes, strict=True):
            os.ftruncate(fd, n)
        self.maps = [mmap.mmap(fd, n) for fd, n in zip(self.fds, sizes, strict=True)]
        self.maps += [mmap.mmap(fd, n) for fd, n in zip(self.fds, sizes, strict=True)]
        self.slave = R.RegionTable(self.maps[:2])
        self.master = R.RegionTable(self.maps[2:])
        s2m, m2s = R.Ring(self.slave, 0, 0, log2), R.Ring(self.slave, 0, rb, log2)
        for ring in (s2m, m2s):
            ring.initialize()
        self.efds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2)] if eventfds else []
        # Signalling (when asked for) goes through the real Signaller, as on a link.
        self.signaller = _ring.Signaller() if eventfds else None
        signal = [
            {"signaller": self.signaller, "eventfd": efd} if eventfds else {}
            for efd in self.efds or (-1, -1)
        ]
        offs = np.arange(size, dtype=np.uint64) * buffer_size
        kw = dict(buffer_size=buffer_size, max_burst=burst)
        self.stx = R.TxRing(s2m, role="slave", buffer_offsets=offs, **signal[0], **kw)
        self.srx = R.RxRing(
            m2s,
            role="slave",
            buffer_offsets=offs + size * buffer_size,
            **kw,
            **(rx_options or {}),
        )
        s2m_master, m2s_master = R.Ring(self.master, 0, 0, log2), R.Ring(self.master, 0, rb, log2)
        self.mrx = R.RxRing(s2m_master, role="master", max_burst=burst)
        self.mtx = R.TxRing(m2s_master, role="master", max_burst=burst, **signal[1])
        self.srx.refill()

    def close(self) -> None:
        for q in (self.stx, self.srx, self.mrx, self.mtx):
            q.close()
        if self.signaller is not None:
            self.signaller.close()
        self.slave.close()
        self.master.close()
        for m in self.maps:
            m.close()
        for fd in self.fds + self.efds:
            os.close(fd)


def measure(tx, rx, send, seconds: float) -> float:
    """Mpps of send+receive+release over about ``seconds``."""
    packets = 0
    rounds = 1
    start = time.perf_counter()
    while True:
        for _ in range(rounds):
            send(tx)
            packets += len(rx.rx_burst())
            rx.release()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return packets / elapsed / 1e6
        rounds = min(rounds * 2, 4096)


def compare_dpdk_defence(args, send, rounds: int) -> None:
    R = importlib.import_module(IMPLS["cython"])
    defence = {"sentinel": True, "short_next_ends_packet": True}
    runs: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(rounds):
        for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
            link = Loopback(
                R,
                args.log2,
                args.buffer_size,
                args.burst,
                rx_options=defence if mode == "on" else {},
            )
            try:
                runs[mode].append(measure(link.mtx, link.srx, send, args.seconds))
                assert link.srx.errors == link.mtx.errors == 0
            finally:
                link.close()
    off, on = (statistics.median(runs[m]) for m in ("off", "on"))
    print(
        f"M2S receive, {args.size}-byte packets, bursts of {args.burst}, ring {1 << args.log2}: "
        f"Mpps (tx + rx + release) median of {rounds}"
    )
    print(f"  defence off {off:6.2f}   ({' '.join(f'{v:.2f}' for v in runs['off'])})")
    print(f"  defence on  {on:6.2f}   ({' '.join(f'{v:.2f}' for v in runs['on'])})")
    print(f"  on/off      {on / off:6.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="packet size in bytes")
    ap.add_argument("--burst", type=int, default=256, help="packets per burst")
    ap.add_argument("--log2", type=int, default=10, help="log2 of the ring size")
    ap.add_argument("--buffer-size", type=int, default=2048)
    ap.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    ap.add_argument("--dpdk-defence", type=int, metavar="ROUNDS", help="compare the defence")
    args = ap.parse_args()

    data = np.random.default_rng(1).integers(0, 256, (args.burst, args.size), np.uint8)
    lengths = np.full(args.burst, args.size, np.uint32)
    packets = [bytes(row) for row in data]
    apis = {
        "tx_burst_array": lambda tx: tx.tx_burst_array(data, lengths),
        "tx_burst(list)": lambda tx: tx.tx_burst(packets),
    }
    if args.dpdk_defence:
        compare_dpdk_defence(args, apis["tx_burst_array"], args.dpdk_defence)
        return
    print(
        f"{args.size}-byte packets, bursts of {args.burst}, ring {1 << args.log2}, "
        f"buffers {args.buffer_size} B; Mpps (tx + rx + release, one process)"
    )
    print(f"{'direction':<10}{'tx API':<17}{'cython':>10}{'python':>10}{'ratio':>9}")
    results = {}
    for name, module in IMPLS.items():
        R = importlib.import_module(module)
        link = Loopback(R, args.log2, args.buffer_size, args.burst)
        try:
            seconds = args.seconds if name == "cython" else args.seconds / 2
            for api, send in apis.items():
                results[name, "S2M", api] = measure(link.stx, link.mrx, send, seconds)
                results[name, "M2S", api] = measure(link.mtx, link.srx, send, seconds)
            assert link.mrx.errors == link.srx.errors == 0
        finally:
            link.close()
    for direction in ("S2M", "M2S"):
        for api in apis:
            cy, py = results["cython", direction, api], results["python", direction, api]
            print(f"{direction:<10}{api:<17}{cy:>10.2f}{py:>10.3f}{cy / py:>8.0f}x")


if __name__ == "__main__":
    main()
