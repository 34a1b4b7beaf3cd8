"""A raw, hostile slave against our master: every bad control-channel input gets DISCONNECT with
its reason, one WARNING line naming the peer, no leaked fd/mapping/task, and the interface is
listening again for an honest slave."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct

import pytest
from checks import honest_slave_connects, one_warning, warnings
from rawpeer import (
    PeerMemory,
    RawChannel,
    Resources,
    Step,
    drive,
    frame,
    memfd,
    raw_frame,
    slave_steps,
)

import memif_aio
from memif_aio import handshake as hs
from memif_aio import protocol as p

PEER = f"pid {os.getpid()}"


def _replace(label: str, *new: Step):
    def edit(steps: list[Step], mem: PeerMemory, env: dict) -> list[Step]:
        i = next(i for i, s in enumerate(steps) if s.label == label)
        return steps[:i] + list(new) + steps[i + 1 :]

    return edit


def _with(label: str, make):
    """Replace step ``label`` by ``make(step, mem, env) -> Step | list[Step]``."""

    def edit(steps, mem, env):
        i = next(i for i, s in enumerate(steps) if s.label == label)
        new = make(steps[i], mem, env)
        return steps[:i] + (new if isinstance(new, list) else [new]) + steps[i + 1 :]

    return edit


def _first(*new_steps):
    def edit(steps, mem, env):
        made = [s(mem, env) if callable(s) else s for s in new_steps]
        return made + steps

    return edit


def _before(label: str, make):
    def edit(steps, mem, env):
        i = next(i for i, s in enumerate(steps) if s.label == label)
        return steps[:i] + [make(mem, env)] + steps[i:]

    return edit


def _ring(step: Step, **changes) -> Step:
    msg = p.decode(step.data)
    fields = {k: getattr(msg, k) for k in ("flags", "index", "region", "offset", "log2_ring_size")}
    fields.update(changes)
    return Step(frame(p.AddRing(**fields)), step.fds, step.label)


def _disk_file(mem, env) -> int:
    path = env["tmp"] / "region.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, mem.sizes[0])
    env["extra_fds"].append(fd)
    return fd


def _extra(env, fd: int) -> int:
    env["extra_fds"].append(fd)
    return fd


def _many_regions(steps, mem, env):
    fd = _extra(env, memfd("small", 4096))
    regions = [Step(frame(p.AddRegion(i, 4096)), (fd,), f"r{i}") for i in range(257)]
    return steps[:1] + regions


CASES = {
    # frames
    "truncated": (_first(Step(frame(p.Init())[:60])), "frame of 60 bytes"),
    "oversized": (_first(Step(frame(p.Init()) + bytes(72))), "frame of 200 bytes"),
    "huge-frame": (_first(Step(bytes(4096))), "frame of"),
    "unknown-type": (_first(Step(raw_frame(9))), "unknown message type 9"),
    "type-zero": (_first(Step(raw_frame(0))), "unknown message type 0"),
    "bad-mode": (_first(Step(raw_frame(3, struct.pack("<HIB", 0x200, 0, 9)))), "unknown mode"),
    # order
    "add-ring-before-init": (
        lambda steps, mem, env: [steps[3]] + steps,
        f"{hs.OUT_OF_ORDER}: ADD_RING in wait-init",
    ),
    "region-before-init": (lambda steps, mem, env: [steps[1]] + steps, hs.OUT_OF_ORDER),
    "connect-before-init": (lambda steps, mem, env: [steps[-1]] + steps, hs.OUT_OF_ORDER),
    "connect-before-region": (
        lambda steps, mem, env: steps[:1] + [steps[-1]],
        hs.NO_REGIONS,
    ),
    "connect-without-rings": (lambda steps, mem, env: steps[:3] + [steps[-1]], hs.NO_RINGS),
    "second-init": (_before("region0", lambda m, e: Step(frame(p.Init()))), hs.OUT_OF_ORDER),
    "hello-from-slave": (_first(Step(frame(p.Hello()))), f"{hs.OUT_OF_ORDER}: HELLO"),
    "ack-from-slave": (_before("region0", lambda m, e: Step(frame(p.Ack()))), hs.OUT_OF_ORDER),
    "connected-from-slave": (
        _before("connect", lambda m, e: Step(frame(p.Connected("x")))),
        hs.OUT_OF_ORDER,
    ),
    "region-after-ring": (
        _before("m2s0", lambda m, e: Step(frame(p.AddRegion(2, 4096)), (m.region_fds[0],))),
        hs.OUT_OF_ORDER,
    ),
    "fd-with-init": (
        lambda steps, mem, env: [Step(steps[0].data, (mem.region_fds[0],))] + steps[1:],
        hs.EXTRA_FDS,
    ),
    "five-fds": (
        lambda steps, mem, env: [Step(steps[0].data, tuple(mem.region_fds) * 2 + (0,))],
        hs.EXTRA_FDS,
    ),
    # regions
    "region-without-fd": (_with("region0", lambda s, m, e: Step(s.data)), hs.MISSING_FD),
    "region-two-fds": (
        _with("region0", lambda s, m, e: Step(s.data, (m.region_fds[0], m.region_fds[1]))),
        hs.EXTRA_FDS,
    ),
    "region-eventfd": (
        _with("region0", lambda s, m, e: Step(s.data, (m.s2m[0].eventfd,))),
        hs.REGION_NOT_FILE,
    ),
    "region-socket": (
        _with("region0", lambda s, m, e: Step(s.data, (_extra(e, socket.socket().detach()),))),
        hs.REGION_NOT_FILE,
    ),
    "region-disk-file": (
        _with("region0", lambda s, m, e: Step(s.data, (_disk_file(m, e),))),
        hs.REGION_NOT_MEMFD,
    ),
    "region-unsealable-memfd": (
        _with(
            "region0",
            lambda s, m, e: Step(s.data, (_extra(e, memfd("x", m.sizes[0], False, False)),)),
        ),
        hs.REGION_NOT_SEALABLE,
    ),
    "region-too-small": (
        _with("region1", lambda s, m, e: Step(frame(p.AddRegion(1, m.sizes[1] + 1)), s.fds)),
        hs.REGION_TOO_SMALL,
    ),
    "region-huge": (
        _with("region1", lambda s, m, e: Step(frame(p.AddRegion(1, 1 << 62)), s.fds)),
        hs.REGION_SIZE,
    ),
    "region-size-zero": (
        _with("region1", lambda s, m, e: Step(frame(p.AddRegion(1, 0)), s.fds)),
        hs.REGION_SIZE,
    ),
    "region-index-skips": (
        _with("region1", lambda s, m, e: Step(frame(p.AddRegion(2, m.sizes[1])), s.fds)),
        hs.REGION_NOT_SEQUENTIAL,
    ),
    "regions-beyond-limit": (_many_regions, f"{hs.REGION_LIMIT}: 256"),
    # rings
    "ring-without-fd": (_with("s2m0", lambda s, m, e: Step(s.data)), hs.MISSING_FD),
    "ring-memfd-not-eventfd": (
        _with("s2m0", lambda s, m, e: Step(s.data, (m.region_fds[0],))),
        hs.RING_NOT_EVENTFD,
    ),
    "ring-blocking-eventfd": (
        _with("s2m0", lambda s, m, e: Step(s.data, (_extra(e, os.eventfd(0)),))),
        hs.RING_NOT_EVENTFD,
    ),
    "ring-semaphore-eventfd": (
        _with(
            "s2m0",
            lambda s, m, e: Step(
                s.data, (_extra(e, os.eventfd(0, os.EFD_NONBLOCK | os.EFD_SEMAPHORE)),)
            ),
        ),
        f"{hs.RING_SEMAPHORE}: s2m 0",
    ),
    "ring-eventfd-twice": (
        # Another fd number for the same eventfd: told apart by the kernel's eventfd id.
        _with("m2s0", lambda s, m, e: Step(s.data, (_extra(e, os.dup(m.s2m[0].eventfd)),))),
        f"{hs.RING_EVENTFD_SHARED}: m2s 0",
    ),
    "ring-outside-region": (
        _with("m2s0", lambda s, m, e: _ring(s, offset=m.sizes[0] - 64)),
        hs.RING_OUTSIDE,
    ),
    "ring-offset-huge": (
        _with("m2s0", lambda s, m, e: _ring(s, offset=0xFFFFFFFF)),
        hs.RING_OUTSIDE,
    ),
    "ring-unknown-region": (_with("s2m0", lambda s, m, e: _ring(s, region=7)), hs.RING_REGION),
    "ring-log2-zero": (_with("s2m0", lambda s, m, e: _ring(s, log2_ring_size=0)), hs.RING_SIZE),
    "ring-log2-15": (_with("s2m0", lambda s, m, e: _ring(s, log2_ring_size=15)), hs.RING_SIZE),
    "ring-log2-255": (_with("s2m0", lambda s, m, e: _ring(s, log2_ring_size=255)), hs.RING_SIZE),
    "ring-index-beyond-count": (
        _with("m2s0", lambda s, m, e: _ring(s, index=1)),
        f"{hs.RING_LIMIT}: m2s 1",
    ),
    "ring-index-beyond-hello": (
        _with("s2m0", lambda s, m, e: _ring(s, index=300)),
        f"{hs.RING_LIMIT}: s2m 300",
    ),
    "ring-repeated": (
        _with("m2s0", lambda s, m, e: _ring(s, flags=1, index=0)),
        hs.RING_DUPLICATE,
    ),
    "ring-private-header": (
        _with(
            "s2m0",
            lambda s, m, e: Step(
                frame(p.AddRing(1, 0, 0, m.s2m[0].offset, m.log2, private_hdr_size=64)), s.fds
            ),
        ),
        hs.PRIVATE_HDR,
    ),
    "ring-bad-cookie": (
        _before("connect", lambda m, e: _corrupt_cookie(m)),
        "bad ring cookie 0xdeadbeef",
    ),
    # identity
    "unknown-id": (_with("init", lambda s, m, e: Step(frame(p.Init(id=5)))), "unknown interface"),
    "wrong-version": (
        _with("init", lambda s, m, e: Step(frame(p.Init(version=0x0100)))),
        hs.VERSION_MISMATCH,
    ),
    "wrong-mode": (
        _with("init", lambda s, m, e: Step(frame(p.Init(mode=p.Mode.IP)))),
        hs.MODE_MISMATCH,
    ),
}


def _corrupt_cookie(mem: PeerMemory) -> Step:
    struct.pack_into("<I", mem.maps[0], mem.m2s[0].offset, 0xDEADBEEF)
    return Step(b"", label="noop")


@pytest.mark.parametrize("case", list(CASES))
async def test_master_refuses(memif_path, tmp_path, caplog, case):
    edit, reason = CASES[case]
    async with memif_aio.Socket(memif_path, handshake_timeout=2) as sock:
        iface = await sock.create_interface(id=0, role="master")
        before = Resources()
        mem = PeerMemory()
        env: dict = {"tmp": tmp_path, "extra_fds": []}
        steps = [s for s in edit(slave_steps(mem), mem, env) if s.label != "noop"]
        chan = await RawChannel.connect(memif_path)
        try:
            got = await drive(chan, steps)
        finally:
            chan.close()
            mem.close()
            for fd in env["extra_fds"]:
                os.close(fd)
        assert got is not None and reason in got, got
        line = await one_warning(caplog, reason, PEER)
        assert "handshake failed" in line
        assert iface.state is not memif_aio.LinkState.CONNECTED
        await before.assert_released()
        await honest_slave_connects(memif_path, iface)
        await before.assert_released()


async def test_unsealed_memfd_is_sealed_by_us_and_accepted(memif_path):
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        mem = PeerMemory(seal=False)
        chan = await RawChannel.connect(memif_path)
        try:
            assert await drive(chan, slave_steps(mem)) is None
            await iface.wait_connected(timeout=3)
            for fd in mem.region_fds:
                assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
                with pytest.raises(PermissionError):
                    os.ftruncate(fd, 0)  # the SIGBUS attack no longer works
        finally:
            chan.close()
            mem.close()


async def test_allow_unsealed_regions_takes_a_trusted_peers_unsealable_memory(memif_path, caplog):
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master", allow_unsealed_regions=True)
        mem = PeerMemory(seal=False, sealing=False)  # like DPDK's zero-copy memseg memfd
        assert fcntl.fcntl(mem.region_fds[1], fcntl.F_GET_SEALS) & fcntl.F_SEAL_SEAL
        chan = await RawChannel.connect(memif_path)
        try:
            assert await drive(chan, slave_steps(mem)) is None
            await iface.wait_connected(timeout=3)
        finally:
            chan.close()
            mem.close()
        await asyncio.wait_for(iface.wait_disconnected(), 5)
        assert any(
            r.levelname == "WARNING" and "cannot be sealed" in r.getMessage()
            for r in caplog.records
        )
        # Even so, the size is still checked just before mapping.
        reason = await _shrink_buffers_before_connect(memif_path, sealing=False)
        assert hs.REGION_TOO_SMALL in reason


async def test_allow_unsealed_regions_is_a_master_option(memif_path):
    async with memif_aio.Socket(memif_path) as sock:
        with pytest.raises(memif_aio.ConfigError, match="role='master'"):
            await sock.create_interface(id=0, role="slave", allow_unsealed_regions=True)


async def _shrink_buffers_before_connect(path: str, sealing: bool) -> str:
    """A raw slave shrinks its buffer region after ADD_REGION was accepted, then sends
    CONNECT; returns the master's DISCONNECT reason."""
    mem = PeerMemory(seal=False, sealing=sealing)
    steps = slave_steps(mem)
    chan = await RawChannel.connect(path)
    try:
        await chan.expect(p.Hello)
        for step in steps[:-1]:
            chan.send(step.data, step.fds)
            await chan.expect(p.Ack)
        os.ftruncate(mem.region_fds[1], 4096)
        chan.send(steps[-1].data)
        return await chan.expect_disconnect()
    finally:
        chan.close()
        mem.close()


async def test_a_sealable_region_cannot_be_shrunk_once_sent(memif_path, caplog):
    """A region that allows sealing is sealed against shrinking as it arrives, before its
    size is read: the peer's truncate after ADD_REGION fails, and the link comes up."""
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        mem = PeerMemory(seal=False, sealing=True)
        steps = slave_steps(mem)
        chan = await RawChannel.connect(memif_path)
        try:
            await chan.expect(p.Hello)
            for step in steps[:-1]:
                chan.send(step.data, step.fds)
                await chan.expect(p.Ack)
            with pytest.raises(PermissionError):
                os.ftruncate(mem.region_fds[1], 4096)
            chan.send(steps[-1].data)
            await chan.expect(p.Connected)
            await iface.wait_connected(timeout=3)
        finally:
            chan.close()
            mem.close()
    assert warnings(caplog) == []


async def test_names_without_nul_and_not_utf8(memif_path, caplog):
    """Full 32-byte names carry no terminator: read exactly 32 bytes, whatever they are."""
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        mem = PeerMemory()
        steps = slave_steps(mem)
        init = bytearray(steps[0].data)
        init[33:65] = b"\xff" * 32  # INIT name: 32 bytes, no NUL, not UTF-8
        connect = raw_frame(6, b"N" * 32 + b"overflow?")  # the bytes after the field are padding
        steps[0] = Step(bytes(init), (), "init")
        steps[-1] = Step(connect, (), "connect")
        chan = await RawChannel.connect(memif_path)
        try:
            assert await drive(chan, steps) is None
            await iface.wait_connected(timeout=3)
            details = iface.details()
            assert details.remote_name == "N" * 32
            assert details.remote_app_name == "\\xff" * 32  # shown escaped, never raw
        finally:
            chan.close()
            mem.close()
        assert warnings(caplog) == []


async def test_peer_that_never_speaks_times_out(memif_path, caplog):
    async with memif_aio.Socket(memif_path, handshake_timeout=0.3) as sock:
        iface = await sock.create_interface(id=0, role="master")
        before = Resources()
        chan = await RawChannel.connect(memif_path)
        try:
            await chan.expect(p.Hello)
            started = asyncio.get_running_loop().time()
            reason = await chan.expect_disconnect(timeout=3)
            elapsed = asyncio.get_running_loop().time() - started
        finally:
            chan.close()
        assert reason == hs.TIMEOUT and 0.2 < elapsed < 3.0  # 0.3 s configured
        await one_warning(caplog, hs.TIMEOUT, PEER)
        await before.assert_released()
        await honest_slave_connects(memif_path, iface)


async def test_peer_that_stops_after_init_times_out_and_frees_the_id(memif_path, caplog):
    async with memif_aio.Socket(memif_path, handshake_timeout=0.3) as sock:
        iface = await sock.create_interface(id=0, role="master")
        before = Resources()
        mem = PeerMemory()
        chan = await RawChannel.connect(memif_path)
        try:
            await chan.expect(p.Hello)
            for step in slave_steps(mem)[:3]:  # INIT and both regions, then silence
                chan.send(step.data, step.fds)
                await chan.expect(p.Ack)
            assert iface.state is memif_aio.LinkState.CONNECTING
            assert await chan.expect_disconnect(timeout=3) == hs.TIMEOUT
        finally:
            chan.close()
            mem.close()
        await one_warning(caplog, hs.TIMEOUT, PEER, "id 0")
        await before.assert_released()
        await honest_slave_connects(memif_path, iface)


async def test_peer_leaving_mid_handshake_is_not_a_warning(memif_path, caplog):
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        before = Resources()
        mem = PeerMemory()
        for cut in range(5):
            chan = await RawChannel.connect(memif_path)
            await chan.expect(p.Hello)
            for step in slave_steps(mem)[:cut]:
                chan.send(step.data, step.fds)
                await chan.expect(p.Ack)
            chan.close()
            await asyncio.sleep(0.02)
        mem.close()
        await before.assert_released()
        assert warnings(caplog) == []
        await honest_slave_connects(memif_path, iface)


async def test_disconnect_after_link_up_and_garbage_after_link_up(memif_path, caplog):
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        before = Resources()
        mem = PeerMemory()
        chan = await RawChannel.connect(memif_path)
        assert await drive(chan, slave_steps(mem)) is None
        await iface.wait_connected(timeout=3)
        chan.send(raw_frame(5, b"\x01"))  # an ADD_RING frame after CONNECTED, no fd
        try:
            reason = await chan.expect_disconnect()
        finally:
            chan.close()
            mem.close()
        assert hs.OUT_OF_ORDER in reason
        await one_warning(caplog, hs.OUT_OF_ORDER, PEER)
        await before.assert_released()
        await honest_slave_connects(memif_path, iface)


async def test_flood_of_connections(memif_path, caplog):
    """1 000 connection attempts (silent, garbage, half handshakes) at once: the master keeps
    at most ``max_pending`` of them, an honest slave still connects during the flood, and
    everything is released afterwards."""
    async with memif_aio.Socket(memif_path, handshake_timeout=1.0, max_pending=32) as sock:
        iface = await sock.create_interface(id=0, role="master")
        before = Resources()
        addr = "\0" + memif_path[1:]

        def flood() -> int:
            refused = 0
            socks = []
            for i in range(1000):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                s.settimeout(5)
                try:
                    s.connect(addr)
                    if i % 3 == 1:
                        s.send(b"\x03\x00garbage")
                    elif i % 3 == 2:
                        s.send(frame(p.Init()))
                except OSError:
                    refused += 1
                socks.append(s)
            for s in socks:
                s.close()
            return refused

        flooding = asyncio.ensure_future(asyncio.to_thread(flood))
        most = 0
        while not flooding.done():
            most = max(most, len(sock._pending))
            await asyncio.sleep(0.001)
        refused = await flooding
        assert 0 < most <= 32
        assert refused < 1000
        assert len(sock._pending) <= 32
        await before.assert_released(timeout=5)
        assert not sock._pending
        await honest_slave_connects(memif_path, iface)
        lines = warnings(caplog)
        assert lines and all("pid" in line for line in lines)
