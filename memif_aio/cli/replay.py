"""``memif-aio replay``: send the packets of a pcap or pcapng file into a memif, like tcpreplay.

Timing: by default each packet leaves at its capture time relative to the first
(``--speed X`` divides the gaps by X); ``--rate PPS`` spaces packets evenly instead;
``--topspeed`` sends as fast as the peer takes them. The file is read by batches of 256
packets; per batch, the packets already due go out together in one ``send_burst`` and the
command sleeps until the next one is due. asyncio's timers fire within about 1 ms (2 ms on a
busy machine), so at low rates every packet leaves within a few milliseconds of its time
(README: the figure measured by the tests); at high rates packets due within one timer tick
leave together in one burst, keeping the average rate.

Only Ethernet captures can be replayed (memif carries Ethernet frames), and only whole
packets: a packet cut by the capture's snaplen would go out different from what was seen, so
the file is refused with the packet's number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator

import numpy as np

from ..pcap import LINKTYPE_ETHERNET, CaptureFormatError, CaptureReader, PacketBatch
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

BATCH = 256


def register(command) -> None:
    parser = command(
        "replay",
        "send a pcap/pcapng capture into a memif, keeping or scaling its timing",
        "memif-aio replay capture.pcapng @/run/memif.sock --speed 2",
    )
    parser.add_argument("file", help="pcap or pcapng file (Ethernet), - for stdin")
    add_peer_options(parser, "slave", timeout=BY_ROLE)
    timing = parser.add_mutually_exclusive_group()
    timing.add_argument("--speed", type=float, help="replay X times faster (default 1)")
    timing.add_argument("--rate", type=float, help="packets per second, evenly spaced")
    timing.add_argument("--topspeed", action="store_true", help="as fast as the peer takes them")
    parser.add_argument("--loop", type=int, default=1, help="send the file N times (preloaded)")
    parser.add_argument("--queue", type=int, default=0, help="tx queue to send on (default 0)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(run=run)


class _Source:
    """The capture's packets by batches, checked: Ethernet, whole packets."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.reader = CaptureReader(sys.stdin.buffer if path == "-" else path)
        except OSError as exc:
            raise CommandError(f"{path}: {exc.strerror or exc}") from None
        except CaptureFormatError as exc:
            raise CommandError(f"{path}: {exc.reason}") from None
        self.seen = 0

    def batches(self) -> Iterator[PacketBatch]:
        try:
            for batch in self.reader.batches(BATCH):
                self._check(batch)
                self.seen += len(batch)
                yield batch
        except CaptureFormatError as exc:
            raise CommandError(f"{self.path}: {exc.reason}") from None

    def _check(self, batch: PacketBatch) -> None:
        for iid in np.unique(batch.interface_ids).tolist():
            info = self.reader.interfaces[iid]
            if info.linktype != LINKTYPE_ETHERNET:
                raise CommandError(
                    f"{self.path}: interface {iid} has link type {info.linktype}, not Ethernet "
                    f"({LINKTYPE_ETHERNET}): memif carries Ethernet frames"
                )
        captured = np.fromiter(map(len, batch.packets), np.int64, len(batch))
        cut = np.nonzero(captured < batch.original_lengths)[0]
        if len(cut):
            i = int(cut[0])
            raise CommandError(
                f"{self.path}: packet {self.seen + i + 1} was cut by the capture's snaplen "
                f"({captured[i]} of {batch.original_lengths[i]} bytes kept): replaying it would "
                "send something else; capture again with a larger snaplen"
            )

    def close(self) -> None:
        self.reader.close()


class _Clock:
    """When each packet is due (seconds after the start), and how late packets actually went."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.speed = args.speed or 1.0
        self.rate = args.rate
        self.topspeed = args.topspeed
        self.first_stamp: int | None = None
        self.last_due = 0.0
        self.offset = 0.0  # seconds added for the current loop
        self.index = 0  # packets scheduled so far (--rate)
        self.late_max = 0.0
        self.late_sum = 0.0
        self.timed = 0
        self.t0: float | None = None  # loop.time() of the first packet

    def due(self, batch: PacketBatch) -> np.ndarray | None:
        n = len(batch)
        if self.topspeed:
            return None
        if self.rate:
            due = (self.index + np.arange(n)) / self.rate
        else:
            stamps = batch.timestamps_ns
            if self.first_stamp is None:
                valid = stamps[stamps >= 0]
                self.first_stamp = int(valid[0]) if len(valid) else 0
            # Packets stamped before their predecessor (several interfaces) go with it.
            due = (stamps - self.first_stamp) / 1e9 / self.speed + self.offset
            due = np.maximum.accumulate(np.maximum(due, self.last_due))
        self.index += n
        self.last_due = float(due[-1])
        return due

    def next_loop(self) -> None:
        """Each loop starts where the previous one ended."""
        self.offset = self.last_due
        self.first_stamp = None

    def sent(self, due: np.ndarray, now: float) -> None:
        late = now - due
        self.late_max = max(self.late_max, float(late.max()))
        self.late_sum += float(late.sum())
        self.timed += len(due)


async def _send_batch(txq, batch: PacketBatch, due: np.ndarray | None, clock: _Clock) -> None:
    packets = batch.packets
    if due is None:
        await txq.send_burst(packets)
        await asyncio.sleep(0)  # send_burst need not suspend: let signals and the link in
        return
    loop = asyncio.get_running_loop()
    if clock.t0 is None:  # the clock starts with the first packet, once it is read
        clock.t0 = loop.time()
    t0 = clock.t0
    i, n = 0, len(packets)
    while i < n:
        now = loop.time() - t0
        ready = int(np.searchsorted(due, now, side="right"))
        if ready > i:
            await txq.send_burst(packets[i:ready])
            clock.sent(due[i:ready], loop.time() - t0)
            i = ready
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(float(due[i]) - now)


def _batches(
    source: _Source, loops: int, clock: _Clock
) -> tuple[list[PacketBatch], Iterator[PacketBatch] | None]:
    """(batches read now, the rest to stream or None). Read before connecting, so that a bad
    file is refused before anything is sent: the first batch, or everything for --loop."""
    batches = source.batches()
    if loops > 1:
        return list(batches), None
    first = next(batches, None)
    return ([] if first is None else [first]), batches


async def _stream(
    head: list[PacketBatch], rest: Iterator[PacketBatch] | None, live: bool, loops: int, clock
) -> AsyncIterator[PacketBatch]:
    for k in range(loops):
        if k:
            clock.next_loop()
        for batch in head:
            yield batch
    if rest is None:
        return
    if live:
        async for batch in _read_ahead(rest):
            yield batch
    else:
        for batch in rest:  # a file: reads do not wait
            yield batch


async def _read_ahead(batches: Iterator[PacketBatch], depth: int = 4):
    """Batches read from a pipe by a daemon thread, a few ahead: a pipe may keep us waiting,
    the loop must not (signals, the link). Daemon, so a signal need not wait for the pipe."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    room = threading.Semaphore(depth)
    done = object()

    def put(item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def read() -> None:
        try:
            for batch in batches:
                room.acquire()
                put(batch)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        put(done)

    threading.Thread(target=read, name="replay-reader", daemon=True).start()
    while (item := await queue.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        room.release()
        yield item


async def run(args: argparse.Namespace, ctx) -> int:
    if (
        args.loop < 1
        or (args.rate is not None and args.rate <= 0)
        or (args.speed is not None and args.speed <= 0)
    ):
        raise CommandError("--loop must be at least 1, --rate and --speed positive", EXIT_USAGE)
    source = _Source(args.file)
    clock = _Clock(args)
    sent = size = 0
    connected = False
    try:
        head, rest = _batches(source, args.loop, clock)
        async with open_peer(args, args.role, ctx.handler) as iface, watching(iface, ctx.console):
            if not 0 <= args.queue < len(iface.tx_queues):
                raise CommandError(
                    f"--queue {args.queue}: the link has {len(iface.tx_queues)} tx queue(s)",
                    EXIT_USAGE,
                )
            txq = iface.tx_queues[args.queue]
            connected, started = True, time.monotonic()
            async for batch in _stream(head, rest, args.file == "-", args.loop, clock):
                await _send_batch(txq, batch, clock.due(batch), clock)
                sent += len(batch)
                size += int(batch.original_lengths.sum())
            txq.flush()
    finally:
        source.close()
        if connected:
            _summary(args, sent, size, time.monotonic() - started, clock)
    return EXIT_OK if sent else EXIT_FAILED


def _summary(args: argparse.Namespace, sent: int, size: int, elapsed: float, clock: _Clock):
    timing = None
    if clock.timed:
        timing = {
            "late_max_ms": clock.late_max * 1e3,
            "late_mean_ms": clock.late_sum / clock.timed * 1e3,
        }
    if args.json:
        say(json.dumps({"packets": sent, "bytes": size, "seconds": elapsed, "timing": timing}))
        return
    rate = sent / elapsed if elapsed > 0 else 0.0
    line = f"sent {sent} packets ({size} bytes) in {elapsed:.3f} s, {rate:.0f} pps"
    if timing:
        line += (
            f"; each left at most {timing['late_max_ms']:.2f} ms after its time "
            f"(mean {timing['late_mean_ms']:.2f} ms)"
        )
    say(line)
