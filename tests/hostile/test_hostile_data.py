"""Hostile descriptors and counters from a raw peer, against both roles: the breach raises
PeerProtocolError at the reader, the link goes down with DISCONNECT(reason), one WARNING line,
everything is released and the interface serves an honest peer again."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest
from checks import honest_master_serves, honest_slave_connects, one_warning, wait_state
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
from memif_aio import DisconnectedError, LinkState, PeerProtocolError

# --------------------------------------------------------------- our master, raw slave


def _bad_region(mem: PeerMemory) -> None:
    ring = mem.s2m[0]
    ring.set_desc(0, 0, 5, 10, 0)
    ring.head = 1


def _beyond_region(mem: PeerMemory) -> None:
    ring = mem.s2m[0]
    ring.set_desc(0, 0, 1, 100, mem.sizes[1] - 10)
    ring.head = 1


def _beyond_region_wrapping(mem: PeerMemory) -> None:
    ring = mem.s2m[0]
    ring.set_desc(0, 0, 1, 0xFFFFFFFF, 0xFFFFFFFF)
    ring.head = 1


def _rings_region_overflow(mem: PeerMemory) -> None:
    ring = mem.s2m[0]
    ring.set_desc(0, 0, 0, mem.sizes[0], 1)  # region 0 (rings), one byte too far
    ring.head = 1


def _endless_chain(mem: PeerMemory) -> None:
    ring = mem.s2m[0]
    for slot in range(ring.size):
        ring.set_desc(slot, NEXT, 1, 8, 0)
    ring.head = ring.size


def _head_jump(mem: PeerMemory) -> None:
    mem.s2m[0].head = 3000


def _head_jump_by_one_more(mem: PeerMemory) -> None:
    mem.s2m[0].head = mem.s2m[0].size + 1


MASTER_RX = {
    "region-does-not-exist": (_bad_region, "region 5 does not exist"),
    "offset-plus-length-beyond": (_beyond_region, "beyond region 1"),
    "u32-wraparound": (_beyond_region_wrapping, "beyond region 1"),
    "beyond-rings-region": (_rings_region_overflow, "beyond region 0"),
    "endless-next-chain": (_endless_chain, "NEXT chain longer than ring"),
    "head-jump": (_head_jump, "head moved by 3000 > ring size 16"),
    "head-jump-ring-plus-one": (_head_jump_by_one_more, "head moved by 17 > ring size 16"),
}


async def _raw_slave_up(path: str, iface) -> tuple[RawChannel, PeerMemory]:
    mem = PeerMemory()
    chan = await RawChannel.connect(path)
    assert await drive(chan, slave_steps(mem)) is None
    await iface.wait_connected(timeout=3)
    return chan, mem


@pytest.mark.parametrize("case", list(MASTER_RX))
async def test_master_rx_breach(memif_path, caplog, case):
    corrupt, reason = MASTER_RX[case]
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        before = Resources()
        chan, mem = await _raw_slave_up(memif_path, iface)
        try:
            rxq = iface.rx_queues[0]
            receiving = asyncio.ensure_future(rxq.recv())
            await asyncio.sleep(0.01)
            corrupt(mem)
            mem.s2m[0].signal()
            with pytest.raises(PeerProtocolError, match=reason):
                await asyncio.wait_for(receiving, 3)
            got = await chan.expect_disconnect()
        finally:
            chan.close()
            mem.close()
        assert reason in got
        await one_warning(caplog, reason, "data path", f"pid {os.getpid()}")
        assert iface.stats()["rx_errors"] == 1  # one breach, counted once
        with pytest.raises(DisconnectedError):
            rxq.recv_burst_nowait()
        await before.assert_released()
        await honest_slave_connects(memif_path, iface)


async def test_zero_length_s2m_descriptor_is_an_empty_packet(memif_path, caplog):
    """Length 0 is a legal (empty) packet on receive, not a breach: delivered, link stays up."""
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        chan, mem = await _raw_slave_up(memif_path, iface)
        try:
            mem.send_s2m(b"")
            assert await asyncio.wait_for(iface.rx_queues[0].recv(), 3) == b""
            assert iface.connected
        finally:
            chan.close()
            mem.close()
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize(
    "desc, reason",
    [
        ((0, 1, 0, 0), "tx descriptor capacity 0"),  # length 0: no room at all
        ((0, 9, 2048, 0), "region 9 does not exist"),
        ((0, 1, 4096, None), "beyond region 1"),  # larger than what is left of the region
    ],
    ids=["capacity-zero", "bad-region", "capacity-beyond-region"],
)
async def test_master_tx_breach_in_refilled_descriptors(memif_path, caplog, desc, reason):
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        before = Resources()
        chan, mem = await _raw_slave_up(memif_path, iface)
        try:
            mem.refill_m2s()
            flags, region, length, offset = desc
            if offset is None:
                offset = mem.sizes[1] - 100
            mem.m2s[0].set_desc(0, flags, region, length, offset)
            txq = iface.tx_queues[0]
            with pytest.raises((PeerProtocolError, DisconnectedError)):
                for _ in range(3):
                    await txq.send(b"x" * 64)
                    txq.flush()  # publishing checks the peer's tail
            got = await chan.expect_disconnect()
        finally:
            chan.close()
            mem.close()
        assert reason in got
        await one_warning(caplog, reason, "data path")
        await before.assert_released()
        await honest_slave_connects(memif_path, iface)


async def test_peer_scribbling_while_we_read(memif_path):
    """Another process rewrites descriptors and head while we read them: we only ever see
    in-bounds packets or a clean PeerProtocolError, never a crash."""
    async with memif_aio.Socket(memif_path, reconnect_interval=0.05) as sock:
        iface = await sock.create_interface(id=0, role="master")
        before = Resources()
        outcomes = {"packets": 0, "errors": 0}
        for _ in range(3):
            chan, mem = await _raw_slave_up(memif_path, iface)
            script = textwrap.dedent(
                f"""
                import mmap, os, random, struct, sys, time
                rings = mmap.mmap({mem.region_fds[0]}, {mem.sizes[0]})
                efd = {mem.s2m[0].eventfd}
                size, limit = {mem.s2m[0].size}, {mem.sizes[1]}
                rng = random.Random()
                head = 0
                start = time.monotonic()
                while time.monotonic() < start + 0.4:
                    hostile = time.monotonic() > start + 0.2  # honest at first, then not
                    for slot in range(size):
                        bad = hostile and rng.random() < 0.002
                        length = rng.choice((0, 1, 64, 2048, limit + 1 if bad else 100))
                        offset = rng.randrange(0, limit - 2048)
                        flags = 1 if rng.random() < 0.05 else 0
                        struct.pack_into("<HHII", rings, 128 + 16 * slot, flags, 1, length, offset)
                    tail = struct.unpack_from("<H", rings, 64)[0]
                    room = size - ((head - tail) & 0xFFFF)
                    jump = size + 2 if hostile and rng.random() < 0.001 else 0
                    head = head + rng.randrange(0, room + 1) + jump
                    struct.pack_into("<H", rings, 6, head & 0xFFFF)
                    os.write(efd, (1).to_bytes(8, "little"))
                """
            )
            fds = [mem.region_fds[0], mem.s2m[0].eventfd]
            proc = subprocess.Popen([sys.executable, "-c", script], pass_fds=fds)
            try:
                rxq = iface.rx_queues[0]
                end = asyncio.get_running_loop().time() + 0.5
                while asyncio.get_running_loop().time() < end:
                    try:
                        burst = await asyncio.wait_for(rxq.recv_burst(), 0.5)
                    except (PeerProtocolError, DisconnectedError):
                        outcomes["errors"] += 1
                        break
                    except asyncio.TimeoutError:
                        continue
                    for i in range(len(burst)):
                        assert len(burst[i]) <= 1 << 20
                    outcomes["packets"] += len(burst)
                    burst.release()
            finally:
                await asyncio.to_thread(proc.wait)
                chan.close()
                mem.close()
            await wait_state(iface, LinkState.DISCONNECTED)
        assert outcomes["packets"] > 0
        await before.assert_released()


# --------------------------------------------------------------- our slave, raw master


@pytest.fixture
async def slave_env(memif_path):
    listener = RawListener(memif_path)
    before = Resources()
    sock = memif_aio.Socket(memif_path, reconnect_interval=0.05)
    try:
        iface = await sock.create_interface(id=0, role="slave", ring_size=16, buffer_size=256)
        yield listener, iface
    finally:
        await sock.close()
        listener.close()
    await before.assert_released()


def _m2s_too_long(view) -> None:
    ring = view.m2s[0]
    _, region, _, offset = ring.desc(0)
    ring.set_desc(0, 0, region, 257, offset)
    ring.tail = 1


def _m2s_tail_jump(view) -> None:
    view.m2s[0].tail = 40


def _m2s_endless_chain(view) -> None:
    ring = view.m2s[0]
    for slot in range(ring.size):
        _, region, _, offset = ring.desc(slot)
        ring.set_desc(slot, NEXT, region, 8, offset)
    ring.tail = ring.size


SLAVE_RX = {
    "length-beyond-buffer": (_m2s_too_long, "length 257 > buffer size 256"),
    "tail-jump": (_m2s_tail_jump, "tail 40 is 24 slots past head 16"),
    "endless-next-chain": (_m2s_endless_chain, "NEXT chain longer than ring"),
}


@pytest.mark.parametrize("case", list(SLAVE_RX))
async def test_slave_rx_breach(slave_env, caplog, case):
    listener, iface = slave_env
    corrupt, reason = SLAVE_RX[case]
    chan = await listener.accept()
    try:
        view = await serve_as_master(chan)
        await iface.wait_connected(timeout=3)
        ring = view.m2s[0]
        for _ in range(100):  # the slave refills its rx ring at link-up
            if ring.head == ring.size:
                break
            await asyncio.sleep(0.01)
        receiving = asyncio.ensure_future(iface.rx_queues[0].recv())
        await asyncio.sleep(0.01)
        corrupt(view)
        ring.signal()
        with pytest.raises(PeerProtocolError, match=reason):
            await asyncio.wait_for(receiving, 3)
        got = await chan.expect_disconnect()
        view.close()
    finally:
        chan.close()
    assert reason in got
    await one_warning(caplog, reason, "data path", f"{listener.path} id 0")
    assert iface.stats()["rx_errors"] == 1  # one breach, counted once
    await wait_state(iface, LinkState.CONNECTING, LinkState.DISCONNECTED)
    await honest_master_serves(listener, iface)


async def test_slave_tx_breach_tail_beyond_head(slave_env, caplog):
    listener, iface = slave_env
    chan = await listener.accept()
    try:
        view = await serve_as_master(chan)
        await iface.wait_connected(timeout=3)
        view.s2m[0].tail = 100  # we published nothing, yet the master "consumed" 100
        with pytest.raises((PeerProtocolError, DisconnectedError)):
            for _ in range(3):
                await iface.tx_queues[0].send(b"x")
                iface.tx_queues[0].flush()  # publishing checks the peer's tail
        got = await chan.expect_disconnect()
        view.close()
    finally:
        chan.close()
    assert "out of range" in got
    await one_warning(caplog, "out of range", "data path")
    assert iface.stats()["tx_errors"] == 1  # one breach, counted once
    await wait_state(iface, LinkState.CONNECTING, LinkState.DISCONNECTED)
    await honest_master_serves(listener, iface)
