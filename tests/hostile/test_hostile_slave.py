"""A raw, hostile master against our slave: every bad input gets DISCONNECT with its reason, one
WARNING line, our shared memory released, and the slave reconnects to an honest master."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest
from checks import honest_master_serves, one_warning, wait_state, warnings
from rawpeer import RawChannel, RawListener, Resources, frame, memfd, raw_frame, serve_as_master

import memif_aio
from memif_aio import LinkState
from memif_aio import handshake as hs
from memif_aio import protocol as p


def our_mappings() -> int:
    with open("/proc/self/maps") as maps:
        return sum("memif region" in line for line in maps)


async def until_init(chan: RawChannel) -> None:
    chan.send(p.Hello("rawmaster"))
    await chan.expect(p.Init)


async def until_connect(chan: RawChannel) -> None:
    await until_init(chan)
    chan.send(p.Ack())
    while True:
        got = await chan.recv()
        assert got is not None
        if isinstance(p.decode(got[0]), p.Connect):
            return
        chan.send(p.Ack())


def _send(*frames):
    async def run(chan: RawChannel) -> None:
        for f in frames:
            chan.send(f)

    return run


def _after(prefix, *frames):
    async def run(chan: RawChannel) -> None:
        await prefix(chan)
        for f in frames:
            chan.send(f)

    return run


async def _hello_with_fd(chan: RawChannel) -> None:
    fd = memfd("x", 4096)
    chan.send(p.Hello(), (fd,))
    os.close(fd)


async def _region_from_master(chan: RawChannel) -> None:
    fd = memfd("x", 4096)
    chan.send(p.AddRegion(0, 4096), (fd,))
    os.close(fd)


CASES = {
    "truncated-hello": (_send(frame(p.Hello())[:100]), "frame of 100 bytes"),
    "oversized-hello": (_send(frame(p.Hello()) + bytes(200)), "frame of 256 bytes"),
    "empty-ish-frame": (_send(b"\x02"), "frame of 1 bytes"),
    "unknown-type": (_send(raw_frame(42)), "unknown message type 42"),
    "hello-with-fd": (_hello_with_fd, hs.EXTRA_FDS),
    "ack-before-hello": (_send(frame(p.Ack())), f"{hs.OUT_OF_ORDER}: ACK in wait-hello"),
    "connected-before-hello": (_send(frame(p.Connected("x"))), hs.OUT_OF_ORDER),
    "init-from-master": (_send(frame(p.Init())), hs.OUT_OF_ORDER),
    "connect-from-master": (_send(frame(p.Connect("x"))), hs.OUT_OF_ORDER),
    "region-from-master": (_region_from_master, hs.EXTRA_FDS),
    "second-hello": (_after(until_init, frame(p.Hello())), f"{hs.OUT_OF_ORDER}: HELLO"),
    "connected-instead-of-ack": (
        _after(until_init, frame(p.Connected("x"))),
        f"{hs.OUT_OF_ORDER}: CONNECTED in wait-ack",
    ),
    "ack-instead-of-connected": (
        _after(until_connect, frame(p.Ack())),
        f"{hs.OUT_OF_ORDER}: ACK in wait-connected",
    ),
    "version-mismatch": (
        _send(frame(p.Hello(min_version=0x0300, max_version=0x0301))),
        hs.VERSION_MISMATCH,
    ),
    "version-range-inverted": (
        _send(frame(p.Hello(min_version=0x0201, max_version=0x0100))),
        hs.VERSION_MISMATCH,
    ),
    "max-log2-zero": (_send(frame(p.Hello(max_log2_ring_size=0))), hs.PEER_UNSUPPORTED),
    "garbage-after-init": (_after(until_init, raw_frame(0xEE, os.urandom(126))), hs.BAD_FRAME),
}


@pytest.fixture
async def slave_env(memif_path):
    listener = RawListener(memif_path)
    before = Resources()
    sock = memif_aio.Socket(memif_path, reconnect_interval=0.05, handshake_timeout=0.5)
    try:
        iface = await sock.create_interface(id=0, role="slave", ring_size=16)
        yield listener, iface
    finally:
        await sock.close()
        listener.close()
    await before.assert_released()


@pytest.mark.parametrize("case", list(CASES))
async def test_slave_refuses(slave_env, caplog, case):
    listener, iface = slave_env
    misbehave, reason = CASES[case]
    chan = await listener.accept()
    try:
        await misbehave(chan)
        got = await chan.expect_disconnect()
    finally:
        chan.close()
    assert reason in got, got
    line = await one_warning(caplog, reason, f"{listener.path} id 0", "handshake failed")
    assert line
    assert our_mappings() == 0  # the memory made for this attempt is gone
    assert iface.state is not LinkState.CONNECTED
    await honest_master_serves(listener, iface)


async def test_master_refusal_is_logged_and_retried(slave_env, caplog):
    listener, iface = slave_env
    chan = await listener.accept()
    try:
        await until_init(chan)
        chan.send(p.Disconnect(3, "go away" * 20))  # 140 bytes: cut to 96, no NUL
        await chan.expect_eof()
    finally:
        chan.close()
    await one_warning(caplog, "go away", "handshake failed")
    assert iface.details().last_disconnect_reason == ("go away" * 20)[:96]
    await honest_master_serves(listener, iface)


async def test_master_that_never_speaks(slave_env, caplog):
    listener, iface = slave_env
    chan = await listener.accept()
    started = asyncio.get_running_loop().time()
    try:
        assert await chan.expect_disconnect(timeout=3) == hs.TIMEOUT
    finally:
        chan.close()
    assert asyncio.get_running_loop().time() - started < 1.5
    await one_warning(caplog, hs.TIMEOUT)
    await honest_master_serves(listener, iface)


async def test_master_that_stops_mid_handshake(slave_env, caplog):
    listener, iface = slave_env
    chan = await listener.accept()
    try:
        await until_init(chan)
        chan.send(p.Ack())
        await chan.expect(p.AddRegion)
        assert our_mappings() > 0
        assert await chan.expect_disconnect(timeout=3) == hs.TIMEOUT
    finally:
        chan.close()
    await one_warning(caplog, hs.TIMEOUT)
    assert our_mappings() == 0
    await honest_master_serves(listener, iface)


@pytest.mark.parametrize("bad", ["ack", "fd", "truncated"])
async def test_garbage_after_link_up(slave_env, caplog, bad):
    listener, iface = slave_env
    chan = await listener.accept()
    try:
        view = await serve_as_master(chan)
        await iface.wait_connected(timeout=3)
        if bad == "ack":
            chan.send(p.Ack())
        elif bad == "fd":
            fd = memfd("x", 4096)
            chan.send(p.Ack(), (fd,))
            os.close(fd)
        else:
            chan.send(b"\x01\x00")
        reason = await chan.expect_disconnect()
        view.close()
    finally:
        chan.close()
    assert reason.startswith((hs.OUT_OF_ORDER, hs.EXTRA_FDS, hs.BAD_FRAME))
    await one_warning(caplog, reason, "link closed")
    await wait_state(iface, LinkState.CONNECTING, LinkState.DISCONNECTED)
    assert our_mappings() == 0
    await honest_master_serves(listener, iface)


async def test_strange_but_legal_hello(slave_env, caplog):
    """A 32-byte name without NUL, limits beyond ours, a single region: clamped, connected."""
    listener, iface = slave_env
    chan = await listener.accept()
    hello = raw_frame(2, b"\xfe" * 32 + struct.pack("<HHHHHB", 0x0100, 0x0300, 0, 9999, 9999, 200))
    try:
        view = await serve_as_master(chan, hello)
        await iface.wait_connected(timeout=3)
        assert len(view.regions) == 1  # max_region 0: rings and buffers in one region
        assert [r.log2 for r in view.s2m + view.m2s] == [4, 4]  # our ring_size=16
        assert iface.details().remote_app_name == "\\xfe" * 32  # shown escaped
        view.close()
    finally:
        chan.close()
    await wait_state(iface, LinkState.CONNECTING, LinkState.DISCONNECTED)
    assert warnings(caplog) == []
