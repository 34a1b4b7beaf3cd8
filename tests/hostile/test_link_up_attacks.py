"""Link-up (hostile peers, class 6): nothing the peer did to the rings during the handshake,
and no failure half-way through building the data plane, may leave state behind.

Both sides start from head == tail == 0 at link-up: our slave writes its rings' counters back
to 0 and neither side takes its own counter from shared memory. Building the data plane is all
or nothing: here it is made to fail half-way (the process runs out of file descriptors between
the epoll set and the signaller, a real EMFILE), and everything built so far must be released,
the peer told why, and the next honest link must work (interrupts included: a reader left on a
closed fd number would make it deaf).
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import resource

from checks import honest_master_serves, honest_slave_connects, one_warning, wait_state, warnings
from rawpeer import (
    MasterView,
    PeerMemory,
    RawChannel,
    RawListener,
    RawRing,
    Resources,
    open_fds,
    serve_as_master,
    slave_steps,
)

import memif_aio
from memif_aio import LinkState
from memif_aio import protocol as p


@contextlib.contextmanager
def only_free_fds(count: int):
    """Until the block ends, this process can open exactly ``count`` more fds: the fd limit
    is lowered a little above what is in use and every free number below it filled."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(open_fds()) + 64, hard))
    try:
        with contextlib.suppress(OSError):  # EMFILE: the table is full
            while True:
                fillers.append(os.dup(0))
        for _ in range(count):
            os.close(fillers.pop())
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_slave_resets_counters_the_master_scribbled_before_connected(memif_path, caplog):
    listener = RawListener(memif_path)
    before = Resources()
    sock = memif_aio.Socket(memif_path, reconnect_interval=0.05)
    try:
        iface = await sock.create_interface(id=0, role="slave", ring_size=16)
        chan = await listener.accept()
        try:
            view = await _master_until_connect(chan)
            for ring in view.s2m + view.m2s:  # garbage in every counter before CONNECTED
                ring.head, ring.tail = 777, 5000
            chan.send(p.Connected("rawmaster-if"))
            await iface.wait_connected(timeout=3)
            assert [(r.head, r.tail) for r in view.s2m] == [(0, 0)]
            m2s = view.m2s[0]
            assert (m2s.head, m2s.tail) == (16, 0)  # refilled from 0
            _, region, _, offset = m2s.desc(0)  # the master sends a packet, honestly now
            view.maps[region][offset : offset + 5] = b"hello"
            m2s.set_desc(0, 0, region, 5, offset)
            m2s.tail = 1
            m2s.signal()
            assert await asyncio.wait_for(iface.rx_queues[0].recv(), 3) == b"hello"
            view.close()
        finally:
            chan.close()
        assert warnings(caplog) == []
        await wait_state(iface, LinkState.CONNECTING, LinkState.DISCONNECTED)
        await honest_master_serves(listener, iface)
    finally:
        await sock.close()
        listener.close()
    await before.assert_released()


async def _honest_master_sends(listener: RawListener, iface, packet: bytes) -> None:
    """An honest master sends one packet; our slave, waiting on interrupts, receives it."""
    chan = await listener.accept(timeout=5)
    try:
        view = await serve_as_master(chan)
        await iface.wait_connected(timeout=3)
        receiving = asyncio.ensure_future(iface.rx_queues[0].recv())
        m2s = view.m2s[0]
        while m2s.head == 0:  # the slave refills at link-up
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)  # the receiver is asleep on its interrupt by now
        _, region, _, offset = m2s.desc(0)
        view.maps[region][offset : offset + len(packet)] = packet
        m2s.set_desc(0, 0, region, len(packet), offset)
        m2s.tail = 1
        m2s.signal()
        assert await asyncio.wait_for(receiving, 3) == packet
        view.close()
    finally:
        chan.close()
    await wait_state(iface, LinkState.CONNECTING, LinkState.DISCONNECTED)


async def _master_until_connect(chan: RawChannel):
    """An honest master's side up to the slave's CONNECT (not answered)."""
    view = MasterView()
    chan.send(p.Hello("rawmaster"))
    await chan.expect(p.Init)
    chan.send(p.Ack())
    while True:
        data, fds = await chan.recv()
        message = p.decode(data)
        if isinstance(message, p.AddRegion):
            view.regions.append((fds[0], message.size))
            view.maps.append(mmap.mmap(fds[0], message.size))
        elif isinstance(message, p.AddRing):
            ring = RawRing(
                view.maps[message.region], message.offset, message.log2_ring_size, fds[0]
            )
            (view.s2m if message.s2m else view.m2s).append(ring)
        elif isinstance(message, p.Connect):
            return view
        chan.send(p.Ack())


async def test_master_link_up_fails_half_way_and_leaves_nothing(memif_path, caplog):
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        before = Resources()
        mem = PeerMemory()
        chan = await RawChannel.connect(memif_path)
        try:
            await chan.expect(p.Hello)
            steps = slave_steps(mem)
            for step in steps[:-1]:
                chan.send(step.data, step.fds)
                await chan.expect(p.Ack)
            # Room for the two mappings (mmap keeps a dup of each region fd) and the epoll
            # set, none for the signaller.
            with only_free_fds(3):
                chan.send(steps[-1].data)  # CONNECT
                await chan.expect(p.Connected)
                reason = await chan.expect_disconnect()
        finally:
            chan.close()
            mem.close()
        assert reason.startswith("cannot set up the link:") and "open files" in reason
        await one_warning(caplog, "cannot set up the link", f"pid {os.getpid()}")
        assert iface.state is not LinkState.CONNECTED
        await before.assert_released()
        await honest_slave_connects(memif_path, iface)  # receives by interrupt


async def test_slave_link_up_fails_half_way_and_leaves_nothing(memif_path, caplog):
    listener = RawListener(memif_path)
    before = Resources()
    sock = memif_aio.Socket(memif_path, reconnect_interval=0.05)
    try:
        iface = await sock.create_interface(id=0, role="slave", ring_size=16)
        chan = await listener.accept()
        try:
            view = await _master_until_connect(chan)
            with only_free_fds(1):  # room for the epoll set, none for the signaller
                chan.send(p.Connected("rawmaster-if"))
                reason = await chan.expect_disconnect()
            view.close()
        finally:
            chan.close()
        assert reason.startswith("cannot set up the link:") and "open files" in reason
        await one_warning(caplog, "cannot set up the link", f"{memif_path} id 0")
        await wait_state(iface, LinkState.CONNECTING, LinkState.DISCONNECTED)
        await _honest_master_sends(listener, iface, b"heard by interrupt")
        await honest_master_serves(listener, iface)
    finally:
        await sock.close()
        listener.close()
    await before.assert_released()
