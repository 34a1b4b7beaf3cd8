"""``memif-aio gen``: a traffic generator (what testpmd ``txonly`` is for), and a checker when
the peer echoes (``memif-aio echo``, testpmd ``--forward-mode=io``).

Frames are Ethernet/IPv4/UDP (cli/packets.py), 64 bytes or more, their UDP ports varying over
``--flows`` pairs. The payload carries, at fixed offsets, a magic word, the queue, a sequence
number per queue and the send time (CLOCK_MONOTONIC ns), so what comes back is told apart
from anything else and counted: received, lost (sent, never back), reordered (a number below
one already seen on that queue), latency percentiles.

Per burst the work is numpy over a preallocated 2-D array: headers copied from one template
per size, numbers and times written as columns, one ``send_burst``; replies are read the same
way (``Burst.gather_into`` copies the first 64 bytes of every packet in C). ``--rate`` paces
with the loop's timers (about 1 ms granularity: packets due within a tick leave together).
Exit 1 when something came back and some packets did not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import MemifError
from . import packets
from .common import (
    BY_ROLE,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    add_peer_options,
    open_peer,
    say,
    watching,
)

BURST = 256
MAGIC = 0x4F49414D  # b"MAIO" little-endian
OFF_MAGIC, OFF_QUEUE, OFF_SEQ, OFF_TIME = 42, 46, 48, 56  # after the 42 bytes of headers
MIN_SIZE = 64  # all of the above fits in a minimum Ethernet frame (no FCS over memif)
IMIX = ((64, 7), (576, 4), (1500, 1))
_HIST_STEP = math.log(1.01)  # latency histogram: 1% wide buckets
_HIST_BINS = 4096  # up to exp(4096 * 0.00995) ns: far beyond any wait


def register(command) -> None:
    parser = command(
        "gen",
        "UDP traffic generator; with an echoing peer: received, lost, reordered, latency",
        "memif-aio gen @/tmp/e.sock --size IMIX --rate 100000 --count 1000000",
    )
    add_peer_options(parser, "slave", queues=True, timeout=BY_ROLE)
    parser.add_argument(
        "--size", default="64", help="frame bytes (64..65535), or IMIX (64/576/1500, 7:4:1)"
    )
    parser.add_argument("--rate", default="max", help="packets per second in all, or max")
    parser.add_argument("--count", type=int, help="packets to send in all (default: no limit)")
    parser.add_argument("--duration", type=float, help="seconds to send (default: no limit)")
    parser.add_argument("--flows", type=int, default=256, help="UDP port pairs (default 256)")
    parser.add_argument(
        "--wait", type=float, default=1.0, help="seconds to wait for the last replies"
    )
    parser.add_argument("--src-mac", default="02:fe:00:00:00:02")
    parser.add_argument("--dst-mac", default="02:fe:00:00:00:01")
    parser.add_argument("--src-ip", default="10.0.0.2")
    parser.add_argument("--dst-ip", default="10.0.0.1")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run)


def parse_sizes(text: str) -> np.ndarray:
    """The repeating pattern of frame sizes: one size, or IMIX spread evenly over 12."""
    if text.upper() == "IMIX":
        pattern: list[int] = []
        counts = {size: weight for size, weight in IMIX}
        while any(counts.values()):  # interleaved: 64, 576, 1500, 64, 576, 64, ...
            for size, _ in IMIX:
                if counts[size]:
                    pattern.append(size)
                    counts[size] -= 1
        return np.array(pattern, np.uint32)
    try:
        size = int(text)
    except ValueError:
        raise CommandError(f"--size {text!r}: a number or IMIX", EXIT_USAGE) from None
    if not MIN_SIZE <= size <= 65535:
        raise CommandError(f"--size {size} outside {MIN_SIZE}..65535", EXIT_USAGE)
    return np.array([size], np.uint32)


class Frames:
    """Bursts of numbered frames for one queue, built in one preallocated array."""

    def __init__(self, sizes: np.ndarray, queue: int, flows: int, addresses: tuple) -> None:
        self.sizes = sizes
        self.flows = flows
        distinct = sorted(set(sizes.tolist()))
        self._kind = np.array([distinct.index(s) for s in sizes.tolist()], np.intp)
        width = int(sizes.max())
        filler = (np.arange(width) & 0xFF).astype(np.uint8)  # payload past the numbers
        self.rows = np.tile(filler, (BURST, 1))
        src_mac, dst_mac, src_ip, dst_ip = addresses
        self._heads = np.empty((len(distinct), MIN_SIZE), np.uint8)
        for k, size in enumerate(distinct):
            payload = bytes(size - packets.HEADERS_UDP)
            frame = packets.udp(src_mac, dst_mac, src_ip, dst_ip, 0, 0, payload)
            head = np.frombuffer(frame[:MIN_SIZE], np.uint8).copy()
            head[OFF_MAGIC:OFF_QUEUE].view("<u4")[0] = MAGIC
            head[OFF_QUEUE : OFF_QUEUE + 2].view("<u2")[0] = queue
            self._heads[k] = head

    def burst(self, first: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``first .. first + n - 1`` (n <= BURST), stamped now, and their lengths."""
        numbers = np.arange(first, first + n, dtype=np.uint64)
        slot = (numbers % np.uint64(len(self.sizes))).astype(np.intp)
        rows = self.rows[:n]
        rows[:, :MIN_SIZE] = self._heads[self._kind[slot]]
        flow = (numbers % np.uint64(self.flows)).astype(np.uint16)
        rows[:, 34:36].view(">u2")[:, 0] = 1024 + flow  # UDP source port
        rows[:, 36:38].view(">u2")[:, 0] = 1024 + (flow * 7 + 3) % self.flows  # destination
        rows[:, OFF_SEQ:OFF_TIME].view("<u8")[:, 0] = numbers
        rows[:, OFF_TIME:MIN_SIZE].view("<u8")[:, 0] = time.monotonic_ns()
        return rows, self.sizes[slot]


@dataclass
class QueueReport:
    sent: int = 0
    sent_bytes: int = 0
    received: int = 0
    reordered: int = 0
    other: int = 0  # packets back that are not ours
    highest: int = -1
    latency: np.ndarray = field(default_factory=lambda: np.zeros(_HIST_BINS, np.int64))
    latency_min: int | None = None
    latency_max: int = 0

    def take(self, rows: np.ndarray, lengths: np.ndarray, queue: int, now_ns: int) -> None:
        """Count a received burst from the first 64 bytes of each packet."""
        ours = (
            (rows[:, OFF_MAGIC:OFF_QUEUE].view("<u4")[:, 0] == MAGIC)
            & (rows[:, OFF_QUEUE : OFF_QUEUE + 2].view("<u2")[:, 0] == queue)
            & (lengths >= MIN_SIZE)
        )
        mine = rows[ours]
        self.other += len(rows) - len(mine)
        if not len(mine):
            return
        numbers = mine[:, OFF_SEQ:OFF_TIME].view("<u8")[:, 0].astype(np.int64)
        running = np.maximum.accumulate(numbers)
        before = np.concatenate(([self.highest], running[:-1]))
        self.reordered += int((numbers < before).sum())
        self.highest = max(self.highest, int(running[-1]))
        self.received += len(numbers)
        waited = now_ns - mine[:, OFF_TIME:MIN_SIZE].view("<u8")[:, 0].astype(np.int64)
        waited = np.maximum(waited, 1)
        bins = np.minimum((np.log(waited) / _HIST_STEP).astype(np.intp), _HIST_BINS - 1)
        self.latency += np.bincount(bins, minlength=_HIST_BINS)
        low, high = int(waited.min()), int(waited.max())
        self.latency_min = low if self.latency_min is None else min(self.latency_min, low)
        self.latency_max = max(self.latency_max, high)


def latency_summary(reports: list[QueueReport]) -> dict | None:
    """Percentiles in microseconds (from 1%-wide buckets), min and max exact."""
    hist = np.zeros(_HIST_BINS, np.int64)
    for report in reports:
        hist += report.latency
    total = int(hist.sum())
    if not total:
        return None
    cumulative = np.cumsum(hist)
    summary = {}
    for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9)):
        index = int(np.searchsorted(cumulative, math.ceil(total * p / 100)))
        summary[name] = math.exp((index + 0.5) * _HIST_STEP) / 1e3
    summary["min"] = min(r.latency_min for r in reports if r.latency_min is not None) / 1e3
    summary["max"] = max(r.latency_max for r in reports) / 1e3
    return summary


async def run(args: argparse.Namespace, ctx) -> int:
    sizes = parse_sizes(args.size)
    rate = None if args.rate == "max" else _positive(args.rate, "--rate")
    if args.count is not None and args.count < 1 or args.flows < 1 or args.queues < 1:
        raise CommandError("--count, --flows and --queues must be at least 1", EXIT_USAGE)
    addresses = (
        packets.parse_mac(args.src_mac),
        packets.parse_mac(args.dst_mac),
        packets.parse_ip(args.src_ip),
        packets.parse_ip(args.dst_ip),
    )
    reports: list[QueueReport] = []
    started = time.monotonic()
    sending_time = 0.0
    broken: str | None = None
    async with open_peer(args, args.role, ctx.handler) as iface, watching(iface, ctx.console):
        queues = len(iface.tx_queues)
        reports = [QueueReport() for _ in range(queues)]
        receivers = [
            asyncio.ensure_future(_receive(iface.rx_queues[q], reports[q], q))
            for q in range(len(iface.rx_queues))
            if q < queues
        ]
        started = time.monotonic()
        try:
            senders = [
                _send(
                    iface.tx_queues[q],
                    Frames(sizes, q, args.flows, addresses),
                    reports[q],
                    _share(args.count, q, queues),
                    None if rate is None else rate / queues,
                    args.duration,
                )
                for q in range(queues)
            ]
            try:
                await asyncio.gather(*senders)
            except MemifError as exc:
                broken = exc.reason
            sending_time = time.monotonic() - started
            if broken is None:
                await _wait_for_replies(reports, args.wait)
        finally:
            if not sending_time:
                sending_time = time.monotonic() - started
            for task in receivers:
                task.cancel()
            await asyncio.gather(*receivers, return_exceptions=True)
            report = _report(args, reports, sending_time)
            _print(args, report)
    if broken is not None:
        raise CommandError(f"link down while sending: {broken}")
    lost_with_replies = report["received"] and report["lost"]
    return EXIT_FAILED if lost_with_replies else EXIT_OK


def _positive(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise CommandError(f"{name} {text!r}: a positive number or max", EXIT_USAGE)
    return value


def _share(total: int | None, q: int, queues: int) -> int | None:
    if total is None:
        return None
    return total // queues + (1 if q < total % queues else 0)


async def _send(txq, frames: Frames, report: QueueReport, count, rate, duration) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = None if duration is None else start + duration
    sent = 0
    while count is None or sent < count:
        now = loop.time()
        if end is not None and now >= end:
            break
        n = BURST if count is None else min(BURST, count - sent)
        if rate is not None:
            due = int((now - start) * rate) + 1 - sent  # packet k is due at k / rate
            if due <= 0:
                await asyncio.sleep((sent - (now - start) * rate) / rate)
                continue
            n = min(n, due)
        rows, lengths = frames.burst(sent, n)
        await txq.send_burst(rows, lengths)
        sent += n
        report.sent = sent
        report.sent_bytes += int(lengths.sum())
        # send_burst returns without yielding while the ring has room: let the replies in
        # (else at a rate just below what this loop can do, it would never sleep, and the
        # replies would wait until both rings are full).
        await asyncio.sleep(0)
    txq.flush()


async def _receive(rxq, report: QueueReport, queue: int) -> None:
    heads = np.zeros((BURST, MIN_SIZE), np.uint8)
    flat = heads.reshape(-1)
    offsets = np.arange(BURST, dtype=np.int64) * MIN_SIZE
    while True:
        try:
            burst = await rxq.recv_burst(BURST)
        except MemifError:
            return
        now = time.monotonic_ns()
        n = len(burst)
        heads[:n, OFF_MAGIC:OFF_QUEUE] = 0  # a short packet must not look like ours
        burst.gather_into(flat, offsets[:n], MIN_SIZE)
        lengths = np.array(burst.lengths, np.int64)
        burst.release()
        report.take(heads[:n], lengths, queue, now)


async def _wait_for_replies(reports: list[QueueReport], quiet: float) -> None:
    """Until everything is back, or nothing more came for ``quiet`` seconds."""
    if quiet <= 0:
        return
    last, since = -1, time.monotonic()
    while True:
        back = sum(r.received + r.other for r in reports)
        if sum(r.received for r in reports) >= sum(r.sent for r in reports):
            return
        if back != last:
            last, since = back, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        await asyncio.sleep(0.01)


def _report(args: argparse.Namespace, reports: list[QueueReport], seconds: float) -> dict:
    sent = sum(r.sent for r in reports)
    received = sum(r.received for r in reports)
    sent_bytes = sum(r.sent_bytes for r in reports)
    return {
        "sent": sent,
        "sent_bytes": sent_bytes,
        "seconds": seconds,
        "pps": sent / seconds if seconds > 0 else 0.0,
        "mbps": sent_bytes * 8 / seconds / 1e6 if seconds > 0 else 0.0,
        "received": received,
        "lost": max(0, sent - received),
        "reordered": sum(r.reordered for r in reports),
        "other": sum(r.other for r in reports),
        "latency_us": latency_summary(reports),
        "queues": len(reports),
        "size": args.size,
    }


def _print(args: argparse.Namespace, report: dict) -> None:
    if args.json:
        say(json.dumps(report))
        return
    say(
        f"sent {report['sent']} packets ({report['sent_bytes']} bytes) on {report['queues']} "
        f"queue(s) in {report['seconds']:.2f} s: {report['pps']:.0f} pps, "
        f"{report['mbps']:.1f} Mbit/s"
    )
    if not report["received"] and not report["other"]:
        say("nothing came back (the peer does not echo?)")
        return
    lost_pct = 100.0 * report["lost"] / report["sent"] if report["sent"] else 0.0
    say(
        f"received {report['received']}, lost {report['lost']} ({lost_pct:.2f}%), reordered "
        f"{report['reordered']}, other {report['other']}"
    )
    latency = report["latency_us"]
    if latency:
        say(
            "latency us: "
            + "  ".join(
                f"{name} {latency[name]:.1f}"
                for name in ("min", "p50", "p90", "p99", "p99.9", "max")
            )
        )
