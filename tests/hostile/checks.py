"""Assertions shared by the hostile-peer tests: one WARNING line, the interface serving again."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from rawpeer import PeerMemory, RawChannel, RawListener, drive, serve_as_master, slave_steps

import memif_aio


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("memif_aio")
    ]


async def one_warning(caplog, *parts: str, timeout: float = 2.0) -> str:
    """Exactly one WARNING line from memif_aio, containing every ``part``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not warnings(caplog) and loop.time() < end:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # a second line would show up now
    lines = warnings(caplog)
    assert len(lines) == 1, lines
    for part in parts:
        assert part in lines[0], (part, lines[0])
    caplog.clear()
    return lines[0]


async def honest_slave_connects(path: str, iface: memif_aio.Interface) -> None:
    """A well-behaved raw slave gets through: the master is listening again."""
    await wait_state(iface, memif_aio.LinkState.DISCONNECTED)
    mem = PeerMemory()
    chan = await RawChannel.connect(path)
    try:
        assert await drive(chan, slave_steps(mem)) is None
        await iface.wait_connected(timeout=3)
        mem.send_s2m(b"after the storm")
        assert await asyncio.wait_for(iface.rx_queues[0].recv(), 3) == b"after the storm"
    finally:
        chan.close()
        mem.close()
    await wait_state(iface, memif_aio.LinkState.DISCONNECTED)


async def honest_master_serves(listener: RawListener, iface: memif_aio.Interface) -> None:
    """Our slave comes back to a well-behaved raw master and the link works."""
    chan = await listener.accept(timeout=5)
    try:
        view = await serve_as_master(chan)
        await iface.wait_connected(timeout=3)
        await iface.tx_queues[0].send(b"hello again")
        ring = view.s2m[0]
        for _ in range(300):  # sends may be published at the end of the loop iteration
            if ring.head == 1:
                break
            await asyncio.sleep(0.01)
        assert ring.head == 1
        _, region, length, offset = ring.desc(0)
        assert bytes(view.maps[region][offset : offset + length]) == b"hello again"
        view.close()
    finally:
        chan.close()
    await wait_state(iface, memif_aio.LinkState.CONNECTING, memif_aio.LinkState.DISCONNECTED)


async def wait_state(iface: memif_aio.Interface, *states, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while iface.state not in states:
        assert loop.time() < end, f"{iface} never reached {states}"
        await asyncio.sleep(0.01)


async def idle_cpu(seconds: float = 0.5) -> float:
    """Share of a CPU the event loop's thread used while the test slept: the victim at rest
    (the loop-stall watchdog's beats included)."""
    cpu, wall = time.thread_time(), time.monotonic()
    await asyncio.sleep(seconds)
    return (time.thread_time() - cpu) / (time.monotonic() - wall)


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")
