"""Soak test (not CI): reconnect cycles with traffic, for a long time; resources must stay flat.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--uvloop]

One process hosts a master and, cycle after cycle, a slave that connects, exchanges packets
both ways (the master echoes), and disconnects; every 10th cycle also brings a refused slave
(wrong secret) and a raw connection that sends garbage. Every ``--report`` seconds it prints
open fds, RSS and mappings (all, and memif memfd ones); at the end it says whether they stayed
flat (fds and memfd mappings exactly; RSS within ``--rss-slack-mb``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
import time

import memif_aio


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def mappings() -> tuple[int, int]:
    with open("/proc/self/maps") as maps:
        lines = maps.readlines()
    return len(lines), sum("/memfd:" in line for line in lines)


async def echo(master: memif_aio.Interface) -> None:
    while True:
        await master.wait_connected()
        try:
            rxq, txq = master.rx_queues[0], master.tx_queues[0]
            async for burst in rxq.bursts():
                await txq.send_burst(burst)
        except memif_aio.DisconnectedError:
            continue


async def one_cycle(path: str, packets: int) -> int:
    async with memif_aio.connect(path, secret="soak", timeout=10) as slave:
        txq, rxq = slave.tx_queues[0], slave.rx_queues[0]
        payload = [b"s" * 200] * 32
        got = 0
        sent = 0
        while got < packets:
            if sent - got < 256:
                sent += await txq.send_burst(payload)
            burst = await asyncio.wait_for(rxq.recv_burst(), 5)
            got += len(burst)
            burst.release()
        return got


async def hostile_cycle(path: str) -> None:
    with contextlib.suppress(memif_aio.HandshakeError):
        async with memif_aio.connect(path, secret="wrong", timeout=5):
            raise AssertionError("a wrong secret was accepted")
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    raw.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(raw, "\0" + path[1:])
        raw.send(b"\x03\x00garbage")
        await asyncio.sleep(0.01)
    finally:
        raw.close()


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


async def main(args: argparse.Namespace) -> int:
    path = f"@/tmp/memif_aio-soak-{os.getpid()}"
    warnings = _Count()  # the refused slaves: counted, not printed
    logger = logging.getLogger("memif_aio")
    logger.addHandler(warnings)
    logger.propagate = False
    samples: list[tuple[float, int, int, int, int, int, int]] = []
    async with memif_aio.Socket(path, handshake_timeout=1.0) as sock:
        master = await sock.create_interface(id=0, role="master", secret="soak")
        echo_task = asyncio.create_task(echo(master))
        start = time.monotonic()
        next_report = start
        cycles = packets = 0
        print(
            f"{'t (s)':>6} {'cycles':>7} {'packets':>10} {'fds':>5} {'RSS (MiB)':>10}"
            f" {'maps':>6} {'memfd maps':>10}",
            flush=True,
        )
        while True:
            now = time.monotonic()
            if now >= next_report:
                total, memfd = mappings()
                sample = (now - start, cycles, packets, fd_count(), rss_kb(), total, memfd)
                samples.append(sample)
                print(
                    f"{sample[0]:6.0f} {cycles:7d} {packets:10d} {sample[3]:5d}"
                    f" {sample[4] / 1024:10.1f} {total:6d} {memfd:10d}",
                    flush=True,
                )
                next_report += args.report
                if now - start >= args.minutes * 60:
                    break
            packets += await one_cycle(path, args.packets)
            cycles += 1
            if cycles % 10 == 0:
                await hostile_cycle(path)
            await master.wait_disconnected()
        echo_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await echo_task
    # Compare from the second sample on: the first cycles warm caches, imports and pools.
    base, last = samples[1] if len(samples) > 2 else samples[0], samples[-1]
    flat_fds = base[3] == last[3]
    flat_memfd = base[6] == last[6]
    rss_growth = (last[4] - base[4]) / 1024
    flat_rss = rss_growth <= args.rss_slack_mb
    print(
        f"{cycles} reconnect cycles, {packets} packets echoed in {last[0]:.0f} s;"
        f" fds {base[3]} -> {last[3]}, memfd mappings {base[6]} -> {last[6]},"
        f" mappings {base[5]} -> {last[5]}, RSS {base[4] / 1024:.1f} -> {last[4] / 1024:.1f} MiB"
        f" ({rss_growth:+.1f}), {warnings.count} warnings for refused peers:"
        f" {'flat' if flat_fds and flat_memfd and flat_rss else 'NOT FLAT'}"
    )
    return 0 if flat_fds and flat_memfd and flat_rss else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--report", type=float, default=60.0, help="seconds between lines")
    parser.add_argument("--packets", type=int, default=2000, help="echoed per cycle")
    parser.add_argument("--rss-slack-mb", type=float, default=4.0)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        sys.exit(uvloop.run(main(args)))
    sys.exit(asyncio.run(main(args)))
