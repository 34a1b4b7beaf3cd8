"""Verifiable traffic: packet i has a deterministic size and content, so a receiver checks
integrity and order without keeping copies."""

from __future__ import annotations

import asyncio
import random

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
