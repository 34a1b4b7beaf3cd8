"""Faults: a peer SIGKILLed mid-burst, the socket file deleted under a running master, the event
loop stopped (or closed) while connected."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket

import pytest
import uvloop
from checks import one_warning
from rawpeer import Resources, memfd_mappings

import memif_aio
from helpers import PeerProcess, open_fds, until_stopped, wait_peer_fds_closed
from memif_aio import DisconnectedError

KINDS = ("/memfd:", "anon_inode:[eventfd]", "socket:")  # pipes belong to the peer process


async def _noticed(iface: memif_aio.Interface, kill) -> float:
    loop = asyncio.get_running_loop()
    waiting = asyncio.ensure_future(iface.wait_disconnected())
    await asyncio.sleep(0)
    started = loop.time()
    await kill()
    reason = await asyncio.wait_for(waiting, 2)
    assert "closed" in reason
    return loop.time() - started


async def test_slave_sigkilled_mid_burst(memif_path):
    """Our master under a blasting slave: the kill is noticed within 100 ms, everything is
    released, and the next slave is served."""
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        before = Resources(KINDS)
        peer = await PeerProcess.start("--role", "slave", "--socket", memif_path, "--blast")
        await iface.wait_connected(timeout=10)
        rxq = iface.rx_queues[0]
        received = 0
        while received < 20_000:
            received += len(await asyncio.wait_for(rxq.recv_burst(), 5))
        receiving = asyncio.ensure_future(rxq.recv_burst())
        elapsed = await _noticed(iface, peer.kill)
        assert elapsed < 0.5, f"noticed after {elapsed * 1000:.0f} ms"  # a few ms expected
        try:
            await asyncio.wait_for(receiving, 1)  # a last burst may still have been there
        except DisconnectedError:
            pass
        assert iface.stats()["rx_packets"] >= 20_000
        await before.assert_released()
        peer = await PeerProcess.start("--role", "slave", "--socket", memif_path, "--echo")
        try:
            await iface.wait_connected(timeout=10)
            await iface.tx_queues[0].send(b"ping")
            assert await asyncio.wait_for(iface.rx_queues[0].recv(), 5) == b"ping"
        finally:
            assert await peer.stop() == 0


async def test_master_sigkilled_mid_burst(fs_path):
    """Our slave blasting into a master that froze then died: in-flight packets are counted
    as drops, everything is released, and we reconnect when a new master appears."""
    async with memif_aio.Socket(fs_path, reconnect_interval=0.1) as sock:
        iface = await sock.create_interface(id=0, role="slave", ring_size=256)
        before = Resources(KINDS)
        peer = await PeerProcess.start("--role", "master", "--socket", fs_path, "--echo")
        await iface.wait_connected(timeout=10)
        txq = iface.tx_queues[0]

        async def drain() -> None:  # the echoes come back: keep our rx ring moving
            with contextlib.suppress(DisconnectedError):
                async for burst in iface.rx_queues[0].bursts():
                    burst.release()

        draining = asyncio.ensure_future(drain())
        for _ in range(50):
            await asyncio.wait_for(txq.send_burst([b"y" * 64] * 64), 5)
        peer.proc.send_signal(signal.SIGSTOP)  # frozen: what we send now stays in flight
        await until_stopped(peer.proc.pid)
        if txq.free_slots:
            await asyncio.wait_for(txq.send_burst([b"z" * 64] * min(100, txq.free_slots)), 2)
        txq.flush()  # published now, not when the loop next turns
        stuck = 256 - txq.free_slots  # published, never consumed by the frozen master
        assert stuck > 0
        sending = asyncio.ensure_future(txq.send_burst([b"w" * 64] * 1000))  # blocks: full ring
        await asyncio.sleep(0.05)
        elapsed = await _noticed(iface, peer.kill)
        assert elapsed < 0.5, f"noticed after {elapsed * 1000:.0f} ms"  # a few ms expected
        with pytest.raises(DisconnectedError):
            await asyncio.wait_for(sending, 1)
        await asyncio.wait_for(draining, 1)
        stats = iface.stats()
        assert stats["tx_drops"] >= stuck, stats
        await asyncio.sleep(0.3)  # reconnect attempts against the stale file fail cleanly
        assert iface.state is not memif_aio.LinkState.CONNECTED
        await before.assert_released()
        peer = await PeerProcess.start("--role", "master", "--socket", fs_path, "--echo")
        try:
            await iface.wait_connected(timeout=10)
            await iface.tx_queues[0].send(b"back")
            assert await asyncio.wait_for(iface.rx_queues[0].recv(), 5) == b"back"
        finally:
            assert await peer.stop() == 0


async def test_socket_file_deleted_under_running_master(fs_path, caplog):
    async with memif_aio.Socket(fs_path) as sock:
        sock.file_check_interval = 0.05
        master = await sock.create_interface(id=0, role="master")
        async with memif_aio.connect(fs_path, timeout=5) as first:
            await master.wait_connected(timeout=5)
            os.unlink(fs_path)
            for _ in range(100):
                if os.path.exists(fs_path):
                    break
                await asyncio.sleep(0.01)
            assert os.stat(fs_path).st_mode & 0o777 == 0o600
            await one_warning(caplog, "deleted", fs_path)
            assert first.connected and master.connected  # the live link never noticed
        await asyncio.wait_for(master.wait_disconnected(), 5)
        async with memif_aio.connect(fs_path, timeout=5) as second:
            await master.wait_connected(timeout=5)
            await second.tx_queues[0].send(b"new path, same master")
            assert await asyncio.wait_for(master.rx_queues[0].recv(), 5) == b"new path, same master"
    assert not os.path.exists(fs_path)


async def test_socket_file_replaced_is_left_to_its_owner(fs_path, caplog):
    async with memif_aio.Socket(fs_path) as sock:
        sock.file_check_interval = 0.05
        await sock.create_interface(id=0, role="master")
        os.unlink(fs_path)
        other = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        other.bind(fs_path)
        await asyncio.sleep(0.2)
        await one_warning(caplog, "replaced", fs_path)
    assert os.path.exists(fs_path), "close() removed a socket file that is not ours"
    other.close()
    os.unlink(fs_path)


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop])
@pytest.mark.parametrize("variant", ["stopped", "closed"])
def test_loop_stopped_while_connected(loop_factory, variant):
    """The loop stops (run_until_complete returns, or loop.stop() from a callback) with a
    connected pair and traffic in flight; close() afterwards releases every fd and mapping:
    on the same loop, or on a new loop after the old one was closed."""
    loop_factory().close()  # a loop implementation's own one-time fds are not ours
    fds_before, maps_before = open_fds(), memfd_mappings()
    errors: list[dict] = []
    path = f"@/tmp/memif_aio-loopstop-{os.getpid()}-{variant}-{loop_factory.__module__}"
    loop = loop_factory()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))

    socks: list[memif_aio.Socket] = []

    async def connected_forever() -> None:
        socks.append(memif_aio.Socket(path))
        socks.append(memif_aio.Socket(path))
        master = await socks[0].create_interface(id=0, role="master")
        slave = await socks[1].create_interface(id=0, role="slave")
        await master.wait_connected(5)
        await slave.wait_connected(5)
        await slave.tx_queues[0].send_burst([b"in flight"] * 10)
        loop.call_soon(loop.stop)  # stop while connected, a burst unread
        await asyncio.sleep(3600)

    main = loop.create_task(connected_forever())
    loop.run_forever()
    assert len(memfd_mappings()) == len(maps_before) + 4

    async def close_all() -> None:
        for sock in socks:
            await sock.close()

    if variant == "stopped":
        main.cancel()
        loop.run_until_complete(close_all())
        loop.close()
    else:
        loop.close()  # with everything still registered on it, tasks pending
        asyncio.run(close_all())
        main._log_destroy_pending = False  # our own task: we closed its loop on purpose
    del main
    gc.collect()
    assert not errors, errors
    wait_peer_fds_closed()
    assert memfd_mappings() == maps_before
    assert open_fds() == fds_before
