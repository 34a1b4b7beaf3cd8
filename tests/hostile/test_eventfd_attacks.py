"""Attacks through the eventfds we share with the peer (hostile peers, class 1).

The peer holds the same open file description as we do for every ring's eventfd: it can clear
O_NONBLOCK and fill the counter at any instant, hand one eventfd in for two links, or signal
without ever sending. None of it may block our loop, spin it while idle, or outlive the link.
Every test here also runs under the loop-stall watchdog (conftest.py).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
import textwrap

import pytest
from checks import (
    honest_master_serves,
    honest_slave_connects,
    idle_cpu,
    one_warning,
    wait_state,
    warnings,
)
from rawpeer import (
    PeerMemory,
    RawChannel,
    RawListener,
    Resources,
    drive,
    serve_as_master,
    slave_steps,
)

import memif_aio
from memif_aio import LinkState
from memif_aio import handshake as hs

FULL = (2**64 - 2).to_bytes(8, "little")
BLOCKED = "the peer made its ring eventfd blocking"


def make_blocking_and_full(efd: int) -> None:
    """What a hostile peer does to an eventfd it shares with us."""
    fcntl.fcntl(efd, fcntl.F_SETFL, fcntl.fcntl(efd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    with open(f"/proc/self/fdinfo/{efd}") as info:
        count = int(next(line for line in info if line.startswith("eventfd-count")).split()[1])
    os.write(efd, (2**64 - 2 - count).to_bytes(8, "little"))  # count 0 so far: cannot block


async def _raw_slave_up(path: str, iface) -> tuple[RawChannel, PeerMemory]:
    mem = PeerMemory()
    chan = await RawChannel.connect(path)
    assert await drive(chan, slave_steps(mem)) is None
    await iface.wait_connected(timeout=3)
    return chan, mem


async def test_master_signal_to_a_blocking_full_eventfd(memif_path, caplog):
    """Our master transmits into a ring whose eventfd the peer made blocking and full: the
    signal cannot block (it is refused at once), the peer is disconnected with the reason."""
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        before = Resources()
        chan, mem = await _raw_slave_up(memif_path, iface)
        try:
            mem.refill_m2s()
            make_blocking_and_full(mem.m2s[0].eventfd)
            await iface.tx_queues[0].send(b"into a trap")
            got = await chan.expect_disconnect()
            assert mem.m2s[0].tail == 1  # the packet itself was delivered before the signal
        finally:
            chan.close()
            mem.close()
        assert got == BLOCKED
        await one_warning(caplog, BLOCKED, "data path", f"pid {os.getpid()}")
        await before.assert_released()
        assert await idle_cpu() < 0.05
        await honest_slave_connects(memif_path, iface)


async def test_helper_thread_takes_the_stall_where_io_uring_is_forbidden(memif_path, monkeypatch):
    """Without io_uring (a container's seccomp profile) a helper thread writes the signals. A
    blocking full eventfd then stalls that thread, never the loop (the watchdog would fail this
    test): the link keeps working both ways, and closing it frees the helper (the counter is
    drained by a read that cannot sleep), so no thread outlives the link."""
    monkeypatch.setenv("MEMIF_AIO_SIGNAL_BACKEND", "thread")
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        before = Resources()
        chan, mem = await _raw_slave_up(memif_path, iface)
        try:
            mem.refill_m2s()
            make_blocking_and_full(mem.m2s[0].eventfd)
            for i in range(3):
                await iface.tx_queues[0].send(b"%d" % i)
                iface.tx_queues[0].flush()  # one publish, one (stalled) signal each
            assert mem.m2s[0].tail == 3 and iface.connected
            mem.send_s2m(b"still listening")
            assert await asyncio.wait_for(iface.rx_queues[0].recv(), 5) == b"still listening"
            loop = asyncio.get_running_loop()
            end = loop.time() + 5
            while signal_helpers() != 1 and loop.time() < end:  # it names itself on start
                await asyncio.sleep(0.01)
            assert signal_helpers() == 1
        finally:
            chan.close()
            mem.close()
        await wait_state(iface, LinkState.DISCONNECTED)
        await before.assert_released()
        end = loop.time() + 5
        while signal_helpers() and loop.time() < end:
            await asyncio.sleep(0.01)
        assert signal_helpers() == 0, "the stalled helper thread outlived the link"
        await honest_slave_connects(memif_path, iface)


def signal_helpers() -> int:
    """Helper threads of this process (they name themselves memif-signal)."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                count += comm.read().strip() == "memif-signal"
        except FileNotFoundError:
            pass
    return count


async def test_slave_signal_to_a_blocking_full_eventfd(memif_path, caplog):
    """The same against our slave: the master makes the eventfd we created (and share with it)
    blocking and full; our slave disconnects it and serves an honest master afterwards."""
    listener = RawListener(memif_path)
    before = Resources()
    sock = memif_aio.Socket(memif_path, reconnect_interval=0.05)
    try:
        iface = await sock.create_interface(id=0, role="slave", ring_size=16)
        chan = await listener.accept()
        try:
            view = await serve_as_master(chan)
            await iface.wait_connected(timeout=3)
            make_blocking_and_full(view.s2m[0].eventfd)
            await iface.tx_queues[0].send(b"into a trap")
            got = await chan.expect_disconnect()
            view.close()
        finally:
            chan.close()
        assert got == BLOCKED
        await one_warning(caplog, BLOCKED, "data path", f"{memif_path} id 0")
        await wait_state(iface, LinkState.CONNECTING, LinkState.DISCONNECTED)
        assert await idle_cpu() < 0.05
        await honest_master_serves(listener, iface)
    finally:
        await sock.close()
        listener.close()
    await before.assert_released()


async def test_a_full_nonblocking_eventfd_is_just_a_woken_peer(memif_path, caplog):
    """A counter at its maximum means the peer has a wake-up pending: no error, no block."""
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        chan, mem = await _raw_slave_up(memif_path, iface)
        try:
            mem.refill_m2s()
            os.write(mem.m2s[0].eventfd, FULL)
            for i in range(3):
                await iface.tx_queues[0].send(b"%d" % i)
                iface.tx_queues[0].flush()  # one publish and one signal per packet
            assert mem.m2s[0].tail == 3 and iface.connected
        finally:
            chan.close()
            mem.close()
    assert warnings(caplog) == []


async def test_one_eventfd_for_two_links(memif_path, caplog):
    """A peer hands the eventfd of its link to interface 0 in again for interface 1: the second
    link is refused before it comes up; both interfaces serve honest slaves afterwards."""
    async with memif_aio.Socket(memif_path) as sock:
        first = await sock.create_interface(id=0, role="master")
        second = await sock.create_interface(id=1, role="master")
        before = Resources()
        chan, mem = await _raw_slave_up(memif_path, first)
        other = PeerMemory()
        chan2 = await RawChannel.connect(memif_path)
        try:
            steps = slave_steps(other, id=1)
            s2m = next(i for i, step in enumerate(steps) if step.label == "s2m0")
            steps[s2m].fds = (os.dup(mem.s2m[0].eventfd),)
            extra = steps[s2m].fds[0]
            got = await drive(chan2, steps)
            os.close(extra)
            assert got == hs.EVENTFD_IN_USE
            assert first.connected and second.state is not LinkState.CONNECTED
            await one_warning(caplog, hs.EVENTFD_IN_USE, "id 1")
            mem.send_s2m(b"still mine")
            assert await asyncio.wait_for(first.rx_queues[0].recv(), 3) == b"still mine"
        finally:
            chan.close()
            chan2.close()
            mem.close()
            other.close()
        await before.assert_released()
        await honest_slave_connects(memif_path, first)


def _spam(efd: int, seconds: float) -> subprocess.Popen:
    """Another process writes 1 to ``efd`` as fast as it can, publishing nothing."""
    script = textwrap.dedent(
        f"""
        import os, time
        end = time.monotonic() + {seconds}
        one = (1).to_bytes(8, "little")
        while time.monotonic() < end:
            for _ in range(1000):
                os.write({efd}, one)
        """
    )
    return subprocess.Popen([sys.executable, "-c", script], pass_fds=[efd])


async def test_interrupt_storm_costs_little_and_traffic_still_flows(memif_path, caplog):
    """A peer signalling without sending: we stop listening to it for short pauses (the
    consumer polls), so the storm costs a fraction of a CPU, and packets still arrive."""
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        chan, mem = await _raw_slave_up(memif_path, iface)
        rxq = iface.rx_queues[0]
        spammer = _spam(mem.s2m[0].eventfd, 1.5)
        try:
            receiving = asyncio.ensure_future(rxq.recv())
            await asyncio.sleep(0.2)
            assert not receiving.done()
            cpu = await idle_cpu(1.0)
            mem.send_s2m(b"during the storm")
            assert await asyncio.wait_for(receiving, 1) == b"during the storm"
        finally:
            await asyncio.to_thread(spammer.wait)
            chan.close()
            mem.close()
        assert cpu < 0.15, f"the storm cost {cpu:.0%} of a CPU"  # 5% measured; 30% undamped
        await one_warning(caplog, "signals without sending", "rx queue 0")
        await wait_state(iface, LinkState.DISCONNECTED)
        assert await idle_cpu() < 0.05


def _toggle(ring_fd: int, ring_bytes: int, efd: int, seconds: float) -> subprocess.Popen:
    """Another process leaves an unfinished chain (NEXT, never followed) in S2M slot 0 and
    moves head between 0 and 1 and back, signalling after each move and pausing long enough
    for us to handle each signal: every signal sees the counter moved, yet no packet is ever
    delivered."""
    script = textwrap.dedent(
        f"""
        import mmap, os, struct, time
        ring = mmap.mmap({ring_fd}, {ring_bytes})
        struct.pack_into("<HHIII", ring, 2 * 64, 1, 1, 64, 0, 0)  # NEXT: a chain never ended
        one = (1).to_bytes(8, "little")
        end = time.monotonic() + {seconds}
        while time.monotonic() < end:
            for head in (1, 0):
                struct.pack_into("<H", ring, 6, head)
                os.write({efd}, one)
                time.sleep(0.0001)
        """
    )
    return subprocess.Popen([sys.executable, "-c", script], pass_fds=[ring_fd, efd])


@pytest.mark.parametrize("mode", ["interrupt", "adaptive"])
async def test_a_counter_moved_back_and_forth_is_a_storm_too(memif_path, caplog, mode):
    """A peer that moves its counter over a chain it never finishes, and signals, wakes us
    with 'news' that delivers nothing: those wake-ups are counted like signals without
    news (whole packets delivered are what count), so we stop listening for pauses, the
    loop is never held, and packets still arrive. An adaptive queue is not kept polling by
    it either: only packets taken count as traffic."""
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master", rx_mode=mode)
        chan, mem = await _raw_slave_up(memif_path, iface)
        rxq = iface.rx_queues[0]
        toggler = _toggle(mem.region_fds[0], mem.sizes[0], mem.s2m[0].eventfd, 1.5)
        try:
            receiving = asyncio.ensure_future(rxq.recv())
            await asyncio.sleep(0.2)
            assert not receiving.done()
            cpu = await idle_cpu(1.0)
        finally:
            await asyncio.to_thread(toggler.wait)
        try:
            mem.send_s2m(b"after the toggling")  # slot 0, head 1: a whole packet at last
            assert await asyncio.wait_for(receiving, 1) == b"after the toggling"
        finally:
            chan.close()
            mem.close()
        assert cpu < 0.3, f"the toggling cost {cpu:.0%} of a CPU"
        await one_warning(caplog, "signals without sending", "rx queue 0")
        await wait_state(iface, LinkState.DISCONNECTED)
