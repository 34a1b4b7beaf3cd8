"""Packet size bounds (hostile peers, class 3).

A chain of in-bounds descriptors can add up to gigabytes: without a bound, joining it for the
user allocates that much. ``max_packet_size`` (default 64 KiB + 512) bounds what a peer may send
us: beyond it the chain is a peer error, found before a byte is copied. The same bound, and the
size of the peer's whole ring, stop our transmit from waiting forever for room that can never
come: refused at once with a clear error.
"""

from __future__ import annotations

import asyncio
import os
import re

import pytest
from checks import honest_master_serves, honest_slave_connects, one_warning, rss_mib, wait_state
from rawpeer import (
    NEXT,
    PeerMemory,
    RawChannel,
    RawListener,
    Resources,
    drive,
    serve_as_master,
    slave_steps,
)

import memif_aio
from memif_aio import DEFAULT_MAX_PACKET_SIZE, LinkState, LocalProtocolError, PeerProtocolError


async def _raw_slave_up(path: str, iface, mem: PeerMemory) -> RawChannel:
    chan = await RawChannel.connect(path)
    assert await drive(chan, slave_steps(mem)) is None
    await iface.wait_connected(timeout=3)
    return chan


async def test_master_refuses_a_256_mib_chain_without_copying_it(memif_path, caplog):
    """64 descriptors of 4 MiB in a sparse region: every one in bounds, 256 MiB in all."""
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        before = Resources()
        mem = PeerMemory(log2=6, buffer_size=4 << 20)  # a sparse 512 MiB buffer region
        chan = await _raw_slave_up(memif_path, iface, mem)
        rss = rss_mib()
        try:
            receiving = asyncio.ensure_future(iface.rx_queues[0].recv())
            ring = mem.s2m[0]
            for slot in range(64):
                ring.set_desc(slot, NEXT if slot < 63 else 0, 1, 4 << 20, slot * (4 << 20))
            ring.head = 64
            ring.signal()
            with pytest.raises(PeerProtocolError, match="exceeds max_packet_size"):
                await asyncio.wait_for(receiving, 3)
            reason = await chan.expect_disconnect()
        finally:
            chan.close()
            mem.close()
        assert f"descriptor 0: packet of at least {4 << 20} bytes exceeds max_packet_size" in reason
        assert rss_mib() - rss < 16
        await one_warning(caplog, "exceeds max_packet_size", "data path")
        await before.assert_released()
        await honest_slave_connects(memif_path, iface)


async def test_slave_refuses_a_chain_longer_than_max_packet_size(memif_path, caplog):
    listener = RawListener(memif_path)
    before = Resources()
    sock = memif_aio.Socket(memif_path, reconnect_interval=0.05)
    try:
        iface = await sock.create_interface(id=0, role="slave", ring_size=64, buffer_size=2048)
        chan = await listener.accept()
        try:
            view = await serve_as_master(chan)
            await iface.wait_connected(timeout=3)
            ring = view.m2s[0]
            while ring.head != 64:  # the slave refills its rx ring at link-up
                await asyncio.sleep(0.005)
            receiving = asyncio.ensure_future(iface.rx_queues[0].recv())
            for slot in range(40):  # 80 KiB in 2 KiB buffers, each one legal
                _, region, _, offset = ring.desc(slot)
                ring.set_desc(slot, NEXT if slot < 39 else 0, region, 2048, offset)
            ring.tail = 40
            ring.signal()
            with pytest.raises(PeerProtocolError, match="exceeds max_packet_size"):
                await asyncio.wait_for(receiving, 3)
            reason = await chan.expect_disconnect()
            view.close()
        finally:
            chan.close()
        assert f"exceeds max_packet_size {DEFAULT_MAX_PACKET_SIZE}" in reason
        await one_warning(caplog, "exceeds max_packet_size", "data path")
        await wait_state(iface, LinkState.CONNECTING, LinkState.DISCONNECTED)
        await honest_master_serves(listener, iface)
    finally:
        await sock.close()
        listener.close()
    await before.assert_released()


async def test_master_refuses_to_wait_for_room_that_can_never_come(memif_path, caplog):
    """The slave's whole rx ring holds 16 x 32 bytes: a 600-byte packet can never fit. Every
    transmit path says so at once (no DISCONNECT: the mistake is ours), and the link goes on."""
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        mem = PeerMemory(log2=4)
        chan = await _raw_slave_up(memif_path, iface, mem)
        try:
            ring = mem.m2s[0]
            for slot in range(ring.size):
                ring.set_desc(slot, 0, 1, 32, mem.buffer_offset(1, slot))
            ring.head = ring.size
            txq = iface.tx_queues[0]
            big = os.urandom(600)
            never = re.escape("600 bytes can never fit the peer's ring (16 slots holding 512 bytes")
            with pytest.raises(LocalProtocolError, match=never):
                await asyncio.wait_for(txq.send(big), 2)
            with pytest.raises(LocalProtocolError, match=never):
                await asyncio.wait_for(txq.send_burst([big]), 2)
            mem.send_s2m(big)  # a received burst holding it, echoed ring to ring
            burst = await asyncio.wait_for(iface.rx_queues[0].recv_burst(), 2)
            with pytest.raises(LocalProtocolError, match=never):
                await asyncio.wait_for(txq.send_burst(burst), 2)
            burst.release()
            too_big = bytes(DEFAULT_MAX_PACKET_SIZE + 1)
            with pytest.raises(LocalProtocolError, match="exceed max_packet_size"):
                await asyncio.wait_for(txq.send_burst([too_big]), 2)
            await txq.send(b"still fine")
            txq.flush()
            assert ring.tail == 1 and iface.connected
        finally:
            chan.close()
            mem.close()
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


async def test_slave_refuses_a_packet_above_max_packet_size(memif_path):
    """The slave's own ring could hold it (2 MiB of buffers), max_packet_size says no."""
    async with memif_aio.Socket(memif_path) as master_sock:
        await master_sock.create_interface(id=0, role="master")
        async with memif_aio.connect(memif_path, max_packet_size=4096) as slave:
            with pytest.raises(LocalProtocolError, match="5000 bytes exceed max_packet_size 4096"):
                await slave.tx_queues[0].send(bytes(5000))
            assert slave.connected
