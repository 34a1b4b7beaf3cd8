"""Control plane end to end: real sockets, real processes, real shared memory."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import pytest

import memif_aio
from helpers import PeerProcess, open_fds, peer_fds_closed
from memif_aio import DisconnectedError, HandshakeError, SecretMismatch


def memif_mappings() -> list[str]:
    with open("/proc/self/maps") as maps:
        return [line for line in maps if "memif region" in line]


def negotiated(details: dict) -> dict:
    return {
        "id": details["id"],
        "mode": details["mode"],
        "rx": [(q["index"], q["ring_size"]) for q in details["rx_queues"]],
        "tx": [(q["index"], q["ring_size"]) for q in details["tx_queues"]],
    }


@pytest.mark.parametrize("local_role", ["master", "slave"])
async def test_two_processes_connect_and_agree(memif_path, local_role):
    remote_role = "slave" if local_role == "master" else "master"
    async with memif_aio.Socket(memif_path, app_name="local-app") as sock:
        iface = await sock.create_interface(
            id=3,
            role=local_role,
            secret="pw",
            rx_queues=2,
            tx_queues=2,
            ring_size=256,
            name="local-if",
        )
        peer = await PeerProcess.start(
            "--role",
            remote_role,
            "--socket",
            memif_path,
            "--id",
            "3",
            "--secret",
            "pw",
            "--queues",
            "2",
            "--ring-size",
            "256",
            "--name",
            "remote-if",
        )
        try:
            remote = (await peer.expect("connected"))["details"]
            await iface.wait_connected(timeout=10)
            local = dataclasses.asdict(iface.details())
        finally:
            assert await peer.stop() == 0
    assert local["link_up"] and remote["link_up"]
    assert local["remote_name"] == "remote-if" and remote["remote_name"] == "local-if"
    assert remote["remote_app_name"] == "local-app"
    # one side's rx queues are the other's tx queues
    assert negotiated(local)["rx"] == negotiated(remote)["tx"] == [(0, 256), (1, 256)]
    assert negotiated(local)["tx"] == negotiated(remote)["rx"] == [(0, 256), (1, 256)]
    assert local["id"] == remote["id"] == 3 and local["mode"] == remote["mode"] == "ethernet"


async def test_four_interfaces_on_one_master_socket_and_id_in_use(memif_path):
    async with memif_aio.Socket(memif_path) as sock:
        ifaces = [await sock.create_interface(id=i, role="master") for i in range(4)]
        peers = [
            await PeerProcess.start(
                "--role", "slave", "--socket", memif_path, "--id", str(i), "--name", f"slave{i}"
            )
            for i in range(4)
        ]
        try:
            for i, peer in enumerate(peers):
                details = (await peer.expect("connected"))["details"]
                assert details["remote_name"] == f"memif{i}"
            for i, iface in enumerate(ifaces):
                await iface.wait_connected(timeout=10)
                assert iface.details().remote_name == f"slave{i}"
            # A second slave for id 2 is refused with a reason, and id 2 stays up.
            with pytest.raises(HandshakeError, match="already connected"):
                async with memif_aio.connect(memif_path, id=2, timeout=10):
                    pass
            assert ifaces[2].connected
        finally:
            for peer in peers:
                assert await peer.stop() == 0


async def test_unknown_id_and_wrong_secret_are_refused_with_reason(memif_path):
    async with memif_aio.Socket(memif_path) as sock:
        master = await sock.create_interface(id=0, role="master", secret="right")
        with pytest.raises(HandshakeError, match="unknown interface id 9"):
            async with memif_aio.connect(memif_path, id=9, timeout=10):
                pass
        with pytest.raises(SecretMismatch, match="secret mismatch"):
            async with memif_aio.connect(memif_path, id=0, secret="wrong", timeout=10):
                pass
        assert "secret mismatch" in master.details().last_disconnect_reason
        async with memif_aio.connect(memif_path, id=0, secret="right", timeout=10) as slave:
            assert slave.connected


async def test_slave_waits_for_master_and_reconnects_after_master_restart(fs_path):
    async with memif_aio.Socket(fs_path, reconnect_interval=0.2) as sock:
        slave = await sock.create_interface(id=0, role="slave")
        await asyncio.sleep(0.5)
        assert not slave.connected
        master = await PeerProcess.start("--role", "master", "--socket", fs_path)
        await master.expect("connected")
        await slave.wait_connected(timeout=10)
        await master.kill()  # SIGKILL: the socket file stays behind, stale
        reason = await asyncio.wait_for(slave.wait_disconnected(), 5)
        assert "closed" in reason
        assert os.path.exists(fs_path)
        master = await PeerProcess.start("--role", "master", "--socket", fs_path)
        try:
            await master.expect("connected")
            await slave.wait_connected(timeout=10)
        finally:
            assert await master.stop() == 0
        await asyncio.wait_for(slave.wait_disconnected(), 5)
        assert slave.details().last_disconnect_reason == "interface closed"


async def test_live_socket_is_not_stolen(fs_path, memif_path):
    for path in (fs_path, memif_path):
        async with memif_aio.Socket(path) as first:
            await first.create_interface(id=0, role="master")
            second = memif_aio.Socket(path)
            with pytest.raises(OSError, match="address in use"):
                await second.create_interface(id=0, role="master")
            await second.close()
    assert not os.path.exists(fs_path)


async def test_filesystem_socket_is_owner_only(fs_path):
    async with memif_aio.Socket(fs_path) as sock:
        await sock.create_interface(id=0, role="master")
        assert os.stat(fs_path).st_mode & 0o777 == 0o600


async def test_close_releases_every_fd_and_mapping(memif_path):
    fds_before, maps_before = open_fds(), memif_mappings()
    async with memif_aio.Socket(memif_path) as master_sock:
        await master_sock.create_interface(id=0, role="master", rx_queues=2, tx_queues=2)
        async with memif_aio.connect(memif_path, rx_queues=2, tx_queues=2) as slave:
            assert len(memif_mappings()) == len(maps_before) + 4  # 2 regions, both sides
            assert len(open_fds()) > len(fds_before)
            assert slave.connected
    await peer_fds_closed()
    assert memif_mappings() == maps_before
    assert open_fds() == fds_before


async def test_close_during_handshake_releases_everything(memif_path):
    """A master that never answers: the slave is closed mid-handshake."""
    fds_before = open_fds()
    import socket as pysocket

    listener = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_SEQPACKET)
    listener.bind("\0" + memif_path[1:])
    listener.listen()
    try:
        async with memif_aio.Socket(memif_path) as sock:
            slave = await sock.create_interface(id=0, role="slave")
            await asyncio.sleep(0.2)
            assert slave.state is memif_aio.LinkState.CONNECTING
    finally:
        listener.close()
    await peer_fds_closed()
    assert open_fds() == fds_before


async def test_close_tells_the_peer_why(memif_pair):
    master, slave = memif_pair
    waiting = asyncio.ensure_future(master.wait_disconnected())
    await slave.close(reason="maintenance window (SIGTERM)")
    assert await asyncio.wait_for(waiting, 5) == "maintenance window (SIGTERM)"
    assert master.details().last_disconnect_reason == "maintenance window (SIGTERM)"


async def test_socket_close_tells_every_peer_why(memif_path):
    async with memif_aio.Socket(memif_path) as sock:
        master = await sock.create_interface(id=0, role="master")
        async with memif_aio.connect(memif_path, timeout=10) as slave:
            await master.wait_connected(timeout=10)
            waiting = asyncio.ensure_future(slave.wait_disconnected())
            await sock.close(reason="memif-aio echo stopped")
            assert await asyncio.wait_for(waiting, 5) == "memif-aio echo stopped"


class Events:
    """An on_link_event callback that records, and lets a test wait for a kind."""

    def __init__(self) -> None:
        self.seen: list[memif_aio.LinkEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: memif_aio.LinkEvent) -> None:
        self.seen.append(event)
        self._changed.set()

    async def next(self, kind: str, timeout: float = 5.0) -> memif_aio.LinkEvent:
        async def wait() -> memif_aio.LinkEvent:
            while True:
                for event in self.seen:
                    if event.kind == kind:
                        self.seen.remove(event)
                        return event
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(wait(), timeout)


async def test_link_events_up_down_both_sides(memif_path):
    master_events, slave_events = Events(), Events()
    async with memif_aio.Socket(memif_path, on_link_event=master_events) as sock:
        master = await sock.create_interface(id=3, role="master")
        async with memif_aio.connect(
            memif_path, id=3, timeout=10, on_link_event=slave_events, app_name="events test"
        ) as slave:
            up = await master_events.next("up")
            assert up.interface is master and up.error is None and f"pid {os.getpid()}" in up.peer
            assert (await slave_events.next("up")).interface is slave
            await slave.close(reason="done here")
            down = await master_events.next("down")
            assert down.interface is master and down.reason == "done here"
            assert isinstance(down.error, DisconnectedError)
            slave_down = await slave_events.next("down")
            assert slave_down.reason == "done here" and slave_down.error is None  # ours
    assert master_events.seen == [] and slave_events.seen == []


async def test_link_events_for_refusals(memif_path, caplog):
    master_events, slave_events = Events(), Events()
    async with memif_aio.Socket(memif_path, on_link_event=master_events) as sock:
        master = await sock.create_interface(id=0, role="master", secret="right")
        with pytest.raises(SecretMismatch):
            async with memif_aio.connect(
                memif_path, secret="wrong", timeout=10, on_link_event=slave_events
            ):
                pass
        refused = await slave_events.next("refused")
        assert isinstance(refused.error, SecretMismatch) and refused.interface is not None
        on_master = await master_events.next("refused")
        assert on_master.interface is master and isinstance(on_master.error, SecretMismatch)
        with pytest.raises(HandshakeError):
            async with memif_aio.connect(memif_path, id=9, timeout=10):
                pass
        unknown = await master_events.next("refused")
        assert unknown.interface is None and "9" in unknown.peer


async def test_a_raising_link_event_callback_is_logged_not_fatal(memif_path, caplog):
    def broken(event: memif_aio.LinkEvent) -> None:
        raise RuntimeError("user bug")

    async with memif_aio.Socket(memif_path, on_link_event=broken) as sock:
        master = await sock.create_interface(id=0, role="master")
        async with memif_aio.connect(memif_path, timeout=10) as slave:
            await master.wait_connected(timeout=10)
            await slave.tx_queues[0].send(b"still fine")
            assert await asyncio.wait_for(master.rx_queues[0].recv(), 5) == b"still fine"
    assert any("on_link_event(up) raised" in r.getMessage() for r in caplog.records)
