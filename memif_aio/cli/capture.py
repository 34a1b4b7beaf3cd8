"""``memif-aio capture`` and ``memif-aio tap``: the tcpdump of memif.

capture: one end of a link that receives everything the peer sends and writes it to pcapng.
tap: the middle of two links (one per application), forwarding both ways ring to ring in C
and, with ``-w``, recording both directions into one file.

Both write one Interface Description Block per (direction, queue), nanosecond timestamps
(one clock read per burst: every packet of a burst shares it), and at the end one Interface
Statistics Block per IDB with what the queue received and dropped. The file is written
burst by burst (one ``write()`` each) and flushed every half second, so ``-w -`` streams
into ``tshark -r -``. Both follow their links across disconnects and reconnects until
stopped (``-c N``, SIGINT, SIGTERM), then say goodbye to their peers and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..errors import MemifError
from ..pcap import DEFAULT_SNAPLEN, FLAG_INBOUND, FLAG_OUTBOUND, PcapngWriter
from .common import (
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    Console,
    add_peer_options,
    closes_on_signal,
    in_background,
    interface_options,
    label,
    watching,
)

BURST = 256
LIVE_INTERVAL = 0.5  # seconds between flushes (and live counters on a terminal)
LOG_INTERVAL = 10.0  # seconds between counter lines when stderr is not a terminal


def register(command) -> None:
    parser = command(
        "capture",
        "receive what the peer sends and write it to a pcapng file (-w - for stdout)",
        "memif-aio capture @/run/memif.sock -w - | tshark -r -",
    )
    add_peer_options(parser, "slave", queues=True, timeout=None)
    _add_recording_options(parser, required=True)
    parser.set_defaults(run=run_capture)

    parser = command(
        "tap",
        "sit between two apps: forward both ways (ring to ring, in C) and record both",
        "memif-aio tap @/run/app1.sock /run/app2.sock -w both.pcapng",
    )
    parser.add_argument("socket_a", help="A: the first app's socket (default: A is a master)")
    parser.add_argument("socket_b", help="B: the second app's socket (default: B is a slave)")
    for side, role in (("a", "slave"), ("b", "master")):
        upper = side.upper()
        parser.add_argument(
            f"--role-{side}",
            choices=("master", "slave"),
            default=role,
            help=f"our role toward {upper} (default {role})",
        )
        parser.add_argument(
            f"--id-{side}", type=int, default=0, help=f"interface id toward {upper}"
        )
        parser.add_argument(f"--secret-{side}", help=f"interface secret toward {upper}")
    parser.add_argument(
        "--queues", type=int, default=1, help="queue pairs (slave: asks; master: accepts)"
    )
    parser.add_argument("--ring-size", type=int, help="slots per ring (slave: asks; default 1024)")
    _add_recording_options(parser, required=False)
    parser.set_defaults(run=run_tap)


def _add_recording_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "-w",
        "--write",
        metavar="FILE",
        required=required,
        help="pcapng file to write, - for stdout" + ("" if required else " (default: none)"),
    )
    parser.add_argument("-c", "--count", type=int, help="stop after this many packets")
    parser.add_argument(
        "--snaplen", type=int, default=0, help="bytes kept of each packet (default: all)"
    )


# ------------------------------------------------------------------------------- recording


@dataclass
class _Stream:
    """One IDB: a direction of one queue, over every link."""

    idb: int | None
    packets: int = 0  # recorded (or, without a file, counted)
    first: float | None = None  # time.monotonic() of the first and last burst
    last: float = 0.0
    _closed: dict = field(default_factory=lambda: {"packets": 0, "bytes": 0, "drops": 0})
    _queues: list = field(default_factory=list)  # receive queues of links still up

    def track(self, queue) -> None:
        """Count ``queue`` (this stream's queue on the current link) from now on."""
        if not any(q is queue for q in self._queues):
            self._queues.append(queue)
        for old in [q for q in self._queues if q.closed]:  # their counters are final
            for name in self._closed:
                self._closed[name] += old.stats()[name]
            self._queues.remove(old)

    def queue_counter(self, name: str) -> int:
        """``packets``, ``bytes`` (received from the ring) or ``drops`` (lost with a link),
        over all links."""
        return self._closed[name] + sum(q.stats()[name] for q in self._queues)


@dataclass
class Recorder:
    """Counters per stream and, with a writer, the pcapng file. ``count`` packets in all, then
    ``finished`` is set."""

    writer: PcapngWriter | None
    snaplen: int
    count: int | None
    streams: dict[tuple[str, int], _Stream] = field(default_factory=dict)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    output_closed: bool = False

    @classmethod
    def open(cls, path: str | None, snaplen: int, count: int | None, comment: str) -> Recorder:
        if snaplen < 0 or (count is not None and count < 1):
            raise CommandError("--snaplen must be >= 0 and -c at least 1", EXIT_USAGE)
        writer = None
        if path is not None:
            target = sys.stdout.buffer if path == "-" else path
            try:
                writer = PcapngWriter(
                    target,
                    application=f"memif-aio {__version__}",
                    os_name=f"{platform.system()} {platform.release()}",
                    comment=comment,
                )
            except OSError as exc:
                raise CommandError(f"{path}: {exc.strerror or exc}") from None
        return cls(writer, snaplen, count)

    @property
    def remaining(self) -> int:
        if self.count is None:
            return BURST
        return max(0, self.count - self.total_packets)

    @property
    def total_packets(self) -> int:
        return sum(s.packets for s in self.streams.values())

    def stream(self, key: tuple[str, int], name: str, description: str) -> _Stream:
        stream = self.streams.get(key)
        if stream is None:
            idb = None
            if self.writer is not None:
                idb = self.writer.add_interface(
                    name=name, description=description, snaplen=self.snaplen or DEFAULT_SNAPLEN
                )
            stream = self.streams[key] = _Stream(idb)
        return stream

    def record(self, stream: _Stream, burst, flags: int) -> int:
        """Write (all of, or what ``-c`` leaves of) a received burst; return how many."""
        n = min(len(burst), self.remaining)
        if n == 0:
            return 0
        if self.writer is not None and stream.idb is not None and not self.output_closed:
            packets = burst if n == len(burst) else [burst[i] for i in range(n)]
            try:
                self.writer.write_burst(stream.idb, packets, time.time_ns(), flags=flags)
            except BrokenPipeError:
                self._output_gone()
        now = time.monotonic()
        if stream.first is None:
            stream.first = now
        stream.last = now
        stream.packets += n
        if self.count is not None and self.remaining == 0:
            self.finished.set()
        return n

    def _output_gone(self) -> None:
        # The reader of -w - went away (tshark quit): stop like tcpdump, without the noise
        # of a later flush failing at exit.
        self.output_closed = True
        self.finished.set()
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)

    def flush(self) -> None:
        if self.writer is not None and not self.output_closed:
            try:
                self.writer.flush()
            except BrokenPipeError:
                self._output_gone()

    def close(self) -> None:
        if self.writer is None:
            return
        if not self.output_closed:
            for stream in self.streams.values():
                if stream.idb is not None:
                    self.writer.set_statistics(
                        stream.idb,
                        received=stream.queue_counter("packets"),
                        dropped=stream.queue_counter("drops"),
                    )
        try:
            self.writer.close(time.time_ns())
        except BrokenPipeError:
            self._output_gone()
            with contextlib.suppress(Exception):
                self.writer.close()

    def counters(self) -> tuple[int, int, int]:
        """Packets recorded, bytes received, packets dropped by the interface."""
        streams = self.streams.values()
        return (
            sum(s.packets for s in streams),
            sum(s.queue_counter("bytes") for s in streams),
            sum(s.queue_counter("drops") for s in streams),
        )


@contextlib.asynccontextmanager
async def live_counter(recorder: Recorder, console: Console, describe) -> AsyncIterator[None]:
    """Flush the file every half second; show ``describe()`` live on a terminal, every 10 s
    otherwise (when it changed)."""

    async def tick() -> None:
        last_line, last_logged = "", time.monotonic()
        while True:
            await asyncio.sleep(LIVE_INTERVAL)
            recorder.flush()
            text = describe()
            if console.tty:
                console.progress(text)
            elif text != last_line and time.monotonic() - last_logged >= LOG_INTERVAL:
                console.event(text)
                last_line, last_logged = text, time.monotonic()

    async with in_background(tick()):
        yield


async def _share_the_loop() -> None:
    """After a full burst: recv_burst and send_burst return without suspending while there are
    packets and room, so a busy queue would keep the loop from the other queues, the other
    direction, the live counter and the signals."""
    await asyncio.sleep(0)


async def _until_done_or_down(
    pumps: Sequence[asyncio.Future[Any]], *waits: asyncio.Future[Any]
) -> None:
    """Run the pumps of one link until they end (link down), or one of ``waits`` fires; then
    stop them all and raise what broke one (a failing write), if anything."""
    gathered = asyncio.gather(*pumps)
    try:
        await asyncio.wait([gathered, *waits], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (*pumps, *waits):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gathered
        await asyncio.gather(*waits, return_exceptions=True)


# --------------------------------------------------------------------------------- capture


async def run_capture(args: argparse.Namespace, ctx) -> int:
    from .. import Socket

    console = ctx.console
    recorder = Recorder.open(
        args.write, args.snaplen, args.count, f"memif-aio capture {args.socket}"
    )
    started = time.monotonic()
    try:
        async with closes_on_signal(Socket(args.socket, app_name="memif-aio capture")) as sock:
            iface = await sock.create_interface(role=args.role, **interface_options(args))
            where = "stdout" if args.write == "-" else args.write
            console.event(f"capturing on {label(iface)}, writing {where}")

            def describe() -> str:
                packets, size, dropped = recorder.counters()
                return f"{packets} packets ({size} bytes) captured, {dropped} dropped"

            async with watching(iface, console), live_counter(recorder, console, describe):
                await _capture_links(iface, recorder, args)
    finally:
        recorder.close()
        packets, size, dropped = recorder.counters()
        console.event(
            f"{packets} packets ({size} bytes) captured on {len(recorder.streams)} queue(s) in "
            f"{time.monotonic() - started:.1f} s, {dropped} dropped by the interface"
            + ("; the output was closed" if recorder.output_closed else "")
        )
    return EXIT_OK


async def _capture_links(iface, recorder: Recorder, args: argparse.Namespace) -> None:
    where = f"{args.socket} id {args.id}"
    while not recorder.finished.is_set():
        await iface.wait_connected()
        details = iface.details()
        peer = f"peer {details.remote_name!r} (app {details.remote_app_name!r})"
        queues = list(iface.rx_queues)
        streams = [
            recorder.stream(
                ("rx", q),
                f"{where} rx q{q}",
                f"memif {args.role} at {where}: what {peer} sent on queue {q}",
            )
            for q in range(len(queues))
        ]

        async def pump(rxq, stream: _Stream) -> None:
            with contextlib.suppress(MemifError):  # the link went down
                while not recorder.finished.is_set():
                    burst = await rxq.recv_burst(min(BURST, recorder.remaining))
                    full = recorder.record(stream, burst, FLAG_INBOUND) == BURST
                    burst.release()
                    if full:
                        await _share_the_loop()

        for rxq, stream in zip(queues, streams, strict=True):
            stream.track(rxq)
        pumps = [asyncio.ensure_future(pump(q, s)) for q, s in zip(queues, streams, strict=True)]
        finished = asyncio.ensure_future(recorder.finished.wait())
        await _until_done_or_down(pumps, finished)


# ------------------------------------------------------------------------------------- tap


async def run_tap(args: argparse.Namespace, ctx) -> int:
    from .. import Socket

    console = ctx.console
    recorder = Recorder.open(
        args.write, args.snaplen, args.count, f"memif-aio tap {args.socket_a} {args.socket_b}"
    )
    try:
        async with (
            closes_on_signal(Socket(args.socket_a, app_name="memif-aio tap")) as sock_a,
            closes_on_signal(Socket(args.socket_b, app_name="memif-aio tap")) as sock_b,
        ):
            a = await sock_a.create_interface(**_side_options(args, "a"))
            b = await sock_b.create_interface(**_side_options(args, "b"))
            where = (
                ""
                if args.write is None
                else (", recording to " + ("stdout" if args.write == "-" else args.write))
            )
            console.event(f"tap between A = {label(a)} and B = {label(b)}{where}")
            rates = _Rates(recorder)
            async with watching(a, console), watching(b, console):
                async with live_counter(recorder, console, rates.describe):
                    await _tap_links(a, b, recorder, args)
    finally:
        recorder.close()
        console.event(_tap_summary(recorder))
    return EXIT_OK


def _side_options(args: argparse.Namespace, side: str) -> dict:
    options = {
        "role": getattr(args, f"role_{side}"),
        "id": getattr(args, f"id_{side}"),
        "secret": getattr(args, f"secret_{side}"),
        "rx_queues": args.queues,
        "tx_queues": args.queues,
        "ring_size": args.ring_size,
        "name": f"tap-{side}",
    }
    return {k: v for k, v in options.items() if v is not None}


class _Rates:
    """The live line of a tap: packets and packets per second, each way."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.before = {"A->B": 0, "B->A": 0}
        self.at = time.monotonic()

    def describe(self) -> str:
        now = time.monotonic()
        parts = []
        for direction in ("A->B", "B->A"):
            total = _direction_packets(self.recorder, direction)
            rate = (total - self.before[direction]) / max(now - self.at, 1e-9)
            self.before[direction] = total
            parts.append(f"{direction} {total} packets ({_rate(rate)})")
        self.at = now
        return ", ".join(parts)


def _rate(pps: float) -> str:
    return f"{pps / 1e6:.3f} Mpps" if pps >= 100_000 else f"{pps:.0f} pps"


def _direction_packets(recorder: Recorder, direction: str) -> int:
    return sum(s.packets for (d, _), s in recorder.streams.items() if d == direction)


def _tap_summary(recorder: Recorder) -> str:
    parts = []
    for direction in ("A->B", "B->A"):
        streams = [s for (d, _), s in recorder.streams.items() if d == direction]
        packets = sum(s.packets for s in streams)
        starts = [s.first for s in streams if s.first is not None]
        span = max((s.last for s in streams), default=0.0) - min(starts, default=0.0)
        rate = f", {_rate(packets / span)} from first to last burst" if span > 0 else ""
        dropped = sum(s.queue_counter("drops") for s in streams)
        parts.append(f"{direction} {packets} packets{rate}, {dropped} dropped")
    return "forwarded " + "; ".join(parts)


async def _tap_links(a, b, recorder: Recorder, args: argparse.Namespace) -> None:
    while not recorder.finished.is_set():
        await a.wait_connected()
        await b.wait_connected()
        if not (a.connected and b.connected):
            continue  # A went down while B came up
        pumps = []
        for direction, src, dst, flags in (
            ("A->B", a, b, FLAG_INBOUND),
            ("B->A", b, a, FLAG_OUTBOUND),
        ):
            src_where = f"{src.socket_path} id {src.id}"
            dst_where = f"{dst.socket_path} id {dst.id}"
            d_src, d_dst = src.details(), dst.details()
            tx_queues = list(dst.tx_queues)
            for q, rxq in enumerate(src.rx_queues):
                stream = recorder.stream(
                    (direction, q),
                    f"{direction} q{q}",
                    f"memif tap {direction}, queue {q}: from {src_where} (peer "
                    f"{d_src.remote_name!r}, app {d_src.remote_app_name!r}) to {dst_where} "
                    f"(peer {d_dst.remote_name!r}, app {d_dst.remote_app_name!r})",
                )
                stream.track(rxq)
                txq = tx_queues[q % len(tx_queues)]
                pumps.append(asyncio.ensure_future(_forward(rxq, txq, stream, recorder, flags)))
        waits = [
            asyncio.ensure_future(a.wait_disconnected()),
            asyncio.ensure_future(b.wait_disconnected()),
            asyncio.ensure_future(recorder.finished.wait()),
        ]
        await _until_done_or_down(pumps, *waits)


async def _forward(rxq, txq, stream: _Stream, recorder: Recorder, flags: int) -> None:
    """One direction of one queue: record the burst, then copy it ring to ring (in C)."""
    with contextlib.suppress(MemifError):  # either link went down
        while not recorder.finished.is_set():
            burst = await rxq.recv_burst(min(BURST, recorder.remaining))
            full = recorder.record(stream, burst, flags) == BURST
            await txq.send_burst(burst)  # never forward() first: gather_into needs the data
            burst.release()
            if full:
                await _share_the_loop()
