"""fds whose close can block (hostile peers, class 2).

The last close() of a TCP socket with SO_LINGER and a full send buffer waits for the peer's
chosen linger time. A peer can pass such a socket with SCM_RIGHTS on any frame: a garbage frame
before INIT, a HELLO toward our slave, or 250 of them at once. We refuse the frame, and the
fds are closed off the loop: the loop-stall watchdog (conftest.py) fails the test otherwise.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct
import time

import pytest
from checks import honest_master_serves, honest_slave_connects, one_warning, wait_state
from rawpeer import RawChannel, RawListener, Resources, frame, raw_frame

import memif_aio
from memif_aio import LinkState
from memif_aio import handshake as hs
from memif_aio import protocol as p

LINGER_SECONDS = 30


@contextlib.contextmanager
def lingering_socket():
    """A loopback TCP socket whose last close() would wait LINGER_SECONDS: SO_LINGER on, and a
    send buffer its peer never drains. Yields its raw fd, which the caller must close."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.connect(server.getsockname())
    accepted, _ = server.accept()
    accepted.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            client.send(bytes(65536))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, LINGER_SECONDS))
    try:
        yield client.detach()
    finally:
        accepted.close()
        server.close()


def _send_with_fds(chan: RawChannel, data: bytes, fds: list[int]) -> None:
    chan.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def _proves_lingering(fd: int) -> None:
    """The attack is real: SO_LINGER is on, so a blocking last close would take its time."""
    view = socket.socket(fileno=os.dup(fd))  # not the last reference: closes at once
    try:
        linger = struct.unpack("ii", view.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
        assert linger == (1, LINGER_SECONDS)
    finally:
        view.close()


@pytest.mark.parametrize("count", [1, 250], ids=["one-socket", "250-fds"])
async def test_master_closes_lingering_sockets_off_the_loop(memif_path, caplog, count):
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        before = Resources()
        chan = await RawChannel.connect(memif_path)
        try:
            await chan.expect(p.Hello)
            with lingering_socket() as fd:
                _proves_lingering(fd)
                _send_with_fds(chan, raw_frame(9, b"garbage"), [fd] * count)
                # Before the loop runs again: the copies in flight are the last references,
                # so whoever closes the last one we receive waits LINGER_SECONDS if it can.
                os.close(fd)
                started = time.monotonic()
                reason = await chan.expect_disconnect()
        finally:
            chan.close()
        await before.assert_released(timeout=5)
        assert "unknown message type 9" in reason
        await one_warning(caplog, "unknown message type 9")
        assert time.monotonic() - started < LINGER_SECONDS / 3
        await honest_slave_connects(memif_path, iface)


async def test_slave_closes_a_lingering_socket_sent_with_hello(memif_path, caplog):
    listener = RawListener(memif_path)
    before = Resources()
    sock = memif_aio.Socket(memif_path, reconnect_interval=0.05)
    try:
        iface = await sock.create_interface(id=0, role="slave", ring_size=16)
        chan = await listener.accept()
        try:
            with lingering_socket() as fd:
                _send_with_fds(chan, frame(p.Hello("rawmaster")), [fd])
                os.close(fd)
                reason = await chan.expect_disconnect()
        finally:
            chan.close()
        assert reason == hs.EXTRA_FDS
        await one_warning(caplog, hs.EXTRA_FDS)
        await wait_state(iface, LinkState.CONNECTING, LinkState.DISCONNECTED)
        await honest_master_serves(listener, iface)
    finally:
        await sock.close()
        listener.close()
    await before.assert_released(timeout=5)
