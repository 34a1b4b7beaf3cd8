"""Verifiable traffic: packet i has a deterministic size and content, so a receiver checks
integrity and order without keeping copies."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field

_BLOCK = random.Random(1234).randbytes(1 << 15)


class Pattern:
    def __init__(self, seed: int, min_size: int = 1, max_size: int = 9000) -> None:
        rng = random.Random(seed)
        self._sizes = [rng.randint(min_size, max_size) for _ in range(4096)]
        self._seed = seed

    def packet(self, i: int) -> bytes:
        size = self._sizes[i % len(self._sizes)]
        start = (i * 7919 + self._seed) % (len(_BLOCK) - 9100)
        return (i.to_bytes(8, "little") + _BLOCK[start : start + size])[:size]


async def wait_until_echoing(txq, rxq, timeout: float = 10.0) -> None:
    """Probe until an echoing peer answers, then drain its late answers.

    DPDK's client polls its rx ring as soon as the rings are shared but drops on tx until it
    has processed CONNECTED, so packets sent right at link-up can vanish inside the peer.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        await txq.send(b"\xff" * 60)
        try:
            await asyncio.wait_for(rxq.recv(), 0.05)
            break
        except asyncio.TimeoutError:
            if loop.time() > end:
                raise AssertionError("peer never echoed a probe") from None
    while True:
        try:
            await asyncio.wait_for(rxq.recv(), 0.2)
        except asyncio.TimeoutError:
            return


async def echo_integrity(txq, rxq, count: int, pattern: Pattern, window: int = 64) -> int:
    """Send ``count`` packets on ``txq`` and check they come back on ``rxq`` identical and in
    order; at most ``window`` packets in flight so an echoing peer never runs out of room."""
    received = 0
    room = asyncio.Event()

    async def sender() -> None:
        for i in range(count):
            while i - received >= window:
                room.clear()
                await room.wait()
            await txq.send(pattern.packet(i))

    async def receiver() -> None:
        nonlocal received
        async for pkt in rxq:
            expected = pattern.packet(received)
            if pkt != expected:
                raise AssertionError(
                    f"packet {received}: got {len(pkt)} bytes, expected {len(expected)}"
                    f" (first bytes {bytes(pkt[:8]).hex()} vs {expected[:8].hex()})"
                )
            received += 1
            room.set()
            if received == count:
                return

    send_task = asyncio.ensure_future(sender())
    try:
        await receiver()
        await send_task
    finally:
        send_task.cancel()
    return received


class Numbered:
    """``count`` packets: packet i starts with i (u32, little-endian), then deterministic bytes;
    its size is drawn (seeded) from ``min_size..max_size``, never one of ``exclude``."""

    def __init__(
        self, seed: int, count: int, min_size: int = 60, max_size: int = 9000, exclude=()
    ) -> None:
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
        start = (i * 7919 + self._seed) % (len(_BLOCK) - size)
        return (i.to_bytes(4, "little") + _BLOCK[start : start + size])[:size]


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
