"""Traffic for demos and benchmarks: an echo service, echo throughput, ping-pong latency, and
a windowed echo that checks every packet (numbered, sized at random) coming back.

Every figure is measured by the side that sends and receives, so it counts only packets that
made the whole trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import MemifError
from ..interface import Interface

Progress = Callable[[str], None]


async def echo_service(iface: Interface) -> None:
    """Send every packet back on the queue it came from, across reconnects, until cancelled."""

    async def echo_queue(index: int) -> None:
        while True:
            await iface.wait_connected()
            rxq, txq = iface.rx_queues[index], iface.tx_queues[index]
            try:
                async for burst in rxq.bursts():
                    # Copied ring to ring in C. Under full load neither call suspends: the
                    # queues give the loop a turn every 200 µs (the other queues, signals).
                    await txq.send_burst(burst)
            except (MemifError, IndexError):
                # The link went down, or the peer broke it (already disconnected, logged):
                # serve the next one.
                await asyncio.sleep(0)

    await iface.wait_connected()
    await asyncio.gather(*(echo_queue(i) for i in range(len(iface.rx_queues))))


@dataclass
class Throughput:
    size: int
    api: str
    packets: int
    seconds: float

    @property
    def mpps(self) -> float:
        return self.packets / self.seconds / 1e6 if self.seconds else 0.0

    @property
    def gbps(self) -> float:
        return self.mpps * self.size * 8 / 1e3


async def echo_throughput(
    iface: Interface,
    size: int,
    api: str = "burst",
    seconds: float = 2.0,
    window: int = 768,  # three bursts in flight: a single one makes it a latency test
    progress: Progress | None = None,
) -> Throughput:
    """Keep ``window`` packets in flight through an echoing peer; count completed round trips.

    ``api`` is ``"burst"`` (rx bursts, ``send_burst``) or ``"packet"`` (``async for`` and
    ``await send`` per packet).
    """
    rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
    packet = bytes(size)
    refill = [packet] * window
    await txq.send_burst(refill)
    count = 0
    start = time.perf_counter()
    clock = _ReportClock(start, seconds, lambda now: Throughput(size, api, count, now - start))

    if api == "burst":
        async for burst in rxq.bursts():
            n = len(burst)
            count += n
            await txq.send_burst(refill[:n])
            if clock.tick(progress):
                break
    else:
        send = txq.send
        async for _ in rxq:
            await send(packet)
            count += 1
            if count & 0x3FF == 0 and clock.tick(progress):
                break
    elapsed = time.perf_counter() - start
    await _drain(iface)
    return Throughput(size, api, count, elapsed)


class _ReportClock:
    """Every quarter second: report the rate so far; say when the time is up."""

    def __init__(self, start: float, seconds: float, rate: Callable[[float], Throughput]) -> None:
        self.stop = start + seconds
        self.next_report = start + 0.25
        self.rate = rate

    def tick(self, progress: Progress | None) -> bool:
        now = time.perf_counter()
        if now < self.next_report:
            return False
        self.next_report = now + 0.25
        if progress:
            progress(f"{self.rate(now).mpps:6.2f} Mpps")
        return now >= self.stop


async def _drain(iface: Interface, quiet: float = 0.05) -> None:
    """Swallow what is still in flight so the next measurement starts clean."""
    rxq = iface.rx_queues[0]
    while True:
        try:
            await asyncio.wait_for(rxq.recv_burst(), quiet)
        except asyncio.TimeoutError:
            return


async def ping_pong(
    iface: Interface, size: int = 64, seconds: float = 1.0, progress: Progress | None = None
) -> list[float]:
    """One packet in flight at a time (interrupt mode); round-trip times in microseconds."""
    rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
    packet = bytes(size)
    rtts: list[float] = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        sent = time.perf_counter_ns()
        await txq.send(packet)
        await rxq.recv_burst(1)
        rtts.append((time.perf_counter_ns() - sent) / 1e3)
        if progress and len(rtts) % 1000 == 0:
            progress(f"{len(rtts)} round trips, p50 {percentile(rtts, 50):.1f} us")
    rxq.release()
    return rtts


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(p / 100 * len(ordered)) - 1)
    return ordered[rank]


async def receive_rate(
    iface: Interface, size: int, api: str = "burst", seconds: float = 2.0, warmup: float = 0.3
) -> Throughput:
    """Count what a transmitting peer delivers to queue 0 for ``seconds``."""
    rxq = iface.rx_queues[0]
    count = 0
    begin = time.perf_counter()
    start = begin + warmup
    stop = start + seconds
    if api == "burst":
        async for burst in rxq.bursts():
            now = time.perf_counter()
            if now >= start:
                count += len(burst)
            if now >= stop:
                break
    else:
        async for _ in rxq:
            count += 1
            if count & 0x3FF == 0:
                now = time.perf_counter()
                if now < start:
                    count = 0
                elif now >= stop:
                    break
    return Throughput(size, api, count, time.perf_counter() - start)


async def send_rate(
    iface: Interface, size: int, api: str = "burst", seconds: float = 2.0
) -> Throughput:
    """Send to queue 0 as fast as the peer drains it (backpressure, nothing dropped)."""
    txq = iface.tx_queues[0]
    packet = bytes(size)
    batch = [packet] * 256
    count = 0
    start = time.perf_counter()
    stop = start + seconds
    if api == "burst":
        while time.perf_counter() < stop:
            count += await txq.send_burst(batch)
    else:
        send = txq.send
        while time.perf_counter() < stop:
            for _ in range(1024):
                await send(packet)
            count += 1024
    return Throughput(size, api, count, time.perf_counter() - start)


_NUMBERED_BLOCK = random.Random(1234).randbytes(1 << 15)


class Numbered:
    """``count`` packets: packet i starts with i (u32, little-endian), then deterministic bytes;
    its size is drawn (seeded) from ``min_size..max_size``, never one of ``exclude``."""

    def __init__(
        self, seed: int, count: int, min_size: int = 60, max_size: int = 9000, exclude=()
    ) -> None:
        if not 4 <= min_size <= max_size < len(_NUMBERED_BLOCK):
            limit = len(_NUMBERED_BLOCK) - 1
            raise ValueError(f"sizes {min_size}..{max_size} not within 4..{limit}")
        rng = random.Random(seed)
        self.sizes: list[int] = []
        while len(self.sizes) < count:
            size = rng.randint(min_size, max_size)
            if size not in exclude:
                self.sizes.append(size)
        self._seed = seed

    def __len__(self) -> int:
        return len(self.sizes)

    def packet(self, i: int) -> bytes:
        size = self.sizes[i]
        start = (i * 7919 + self._seed) % (len(_NUMBERED_BLOCK) - size)
        return (i.to_bytes(4, "little") + _NUMBERED_BLOCK[start : start + size])[:size]


@dataclass
class EchoResult:
    delivered: int = 0
    lost: int = 0  # numbers skipped, or still missing when the echo went quiet
    bad: list[str] = field(default_factory=list)  # corrupt, glued, duplicated, out of order


async def windowed_echo(txq, rxq, packets: Numbered, window: int, quiet: float = 0.5):
    """Send ``packets`` through an echoing peer with up to ``window`` in flight (a packet is in
    flight until it, or one sent after it, is back); check what comes back. A peer may drop
    (a later number arriving first means the earlier ones are lost) but must not corrupt,
    glue, duplicate or reorder. Nothing back for ``quiet`` seconds: what is in flight is lost.
    """
    count = len(packets)
    result = EchoResult()
    progress = asyncio.Event()
    state = {"next": 0, "sent": 0}  # every number below "next" is delivered or lost

    def give_up_in_flight() -> None:
        result.lost += state["sent"] - state["next"]
        state["next"] = state["sent"]

    async def wait_progress() -> bool:
        progress.clear()
        try:
            await asyncio.wait_for(progress.wait(), quiet)
        except asyncio.TimeoutError:
            return False
        return True

    async def sender() -> None:
        for i in range(count):
            while i - state["next"] >= window:
                if not await wait_progress():
                    give_up_in_flight()
            await txq.send(packets.packet(i))
            state["sent"] = i + 1

    async def receiver() -> None:
        async for pkt in rxq:
            data = bytes(pkt)
            number = int.from_bytes(data[:4], "little") if len(data) >= 4 else -1
            if not 0 <= number < count or data != packets.packet(number):
                result.bad.append(f"corrupt or glued: {len(data)} bytes, number {number}")
            elif number < state["next"]:
                result.bad.append(f"packet {number} duplicated or out of order")
            else:
                result.lost += number - state["next"]
                result.delivered += 1
                state["next"] = number + 1
            progress.set()

    receiving = asyncio.ensure_future(receiver())
    try:
        await sender()
        while state["next"] < count and not receiving.done():
            if not await wait_progress():
                give_up_in_flight()
        if receiving.done():
            receiving.result()  # raises what stopped it (a disconnect, a peer error)
    finally:
        receiving.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await receiving
    return result
