"""asyncio adapters: a Protocol that knows nothing of rings, streams, flow control, EOF."""

from __future__ import annotations

import asyncio

import pytest

import memif_aio


class EchoCheckProtocol(asyncio.DatagramProtocol):
    """Sends numbered packets, expects them back in order; written only against asyncio's
    DatagramProtocol/Transport API."""

    def __init__(self, total: int, window: int = 128) -> None:
        self.total, self.window = total, window
        self.sent = self.received = 0
        self.done = asyncio.get_running_loop().create_future()
        self.lost: list[Exception | None] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        for _ in range(self.window):
            self._send_next()

    def _send_next(self) -> None:
        if self.sent < self.total:
            self.transport.sendto(self.sent.to_bytes(8, "little") * 8)
            self.sent += 1

    def datagram_received(self, data: bytes, addr) -> None:
        if data != self.received.to_bytes(8, "little") * 8 and not self.done.done():
            self.done.set_exception(AssertionError(f"packet {self.received} corrupted"))
        self.received += 1
        if self.received == self.total and not self.done.done():
            self.done.set_result(self.received)
        self._send_next()

    def connection_lost(self, exc) -> None:
        self.lost.append(exc)


@pytest.mark.dpdk
async def test_protocol_round_trips_100k_packets_through_testpmd(testpmd_peer, memif_path):
    await asyncio.to_thread(testpmd_peer, role="server", forward_mode="io")
    transport, protocol = await memif_aio.create_endpoint(
        lambda: EchoCheckProtocol(100_000), memif_path, role="slave"
    )
    try:
        assert transport.get_extra_info("memif").remote_app_name.startswith("DPDK")
        assert await asyncio.wait_for(protocol.done, 60) == 100_000
    finally:
        transport.close()
        await transport.wait_closed()
    assert protocol.lost == [None]


class Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.packets: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.events.append("made")

    def datagram_received(self, data, addr) -> None:
        self.packets.append(data)

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc) -> None:
        self.events.append(f"lost:{type(exc).__name__}")


async def test_flow_control_pauses_and_resumes_with_a_slow_reader(memif_path):
    async with memif_aio.Socket(memif_path) as sock:
        reader_side = await sock.create_interface(id=0, role="master", ring_size=256)
        transport, protocol = await memif_aio.create_endpoint(
            Recorder, memif_path, role="slave", ring_size=256
        )
        transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        await reader_side.wait_connected(timeout=10)
        packet = bytes(1000)
        for _ in range(2000):  # 2 MB, far more than a 256-slot ring holds
            transport.sendto(packet)
        assert protocol.events == ["made", "pause"]
        assert transport.get_write_buffer_size() > 64 * 1024
        received = 0
        rxq = reader_side.rx_queues[0]
        while received < 2000:  # the slow reader finally reads
            burst = await asyncio.wait_for(rxq.recv_burst(), 10)
            received += len(burst)
            await asyncio.sleep(0.001)
        assert protocol.events == ["made", "pause", "resume"]
        assert transport.get_write_buffer_size() == 0
        transport.close()
        await transport.wait_closed()
        assert protocol.events[-1] == "lost:NoneType"


async def test_stream_sees_eof_when_the_peer_disconnects(memif_path):
    async with memif_aio.Socket(memif_path) as sock:
        master = await sock.create_interface(id=0, role="master")
        reader, writer = await memif_aio.open_packet_stream(memif_path)
        await master.wait_connected(timeout=10)
        writer.write(b"ping")
        await writer.drain()
        assert await master.rx_queues[0].recv() == b"ping"
        for word in (b"one", b"two"):
            await master.tx_queues[0].send(word)
        assert await reader.read_packet() == b"one"
        assert [p async for p in _take(reader, 1)] == [b"two"]
        await master.close()
        assert await asyncio.wait_for(reader.read_packet(), 5) is None
        assert reader.at_eof()
        await writer.wait_closed()
        assert writer.is_closing()


async def _take(reader, n):
    async for packet in reader:
        yield packet
        n -= 1
        if n == 0:
            return


async def test_endpoint_refused_raises_with_reason(memif_path):
    async with memif_aio.Socket(memif_path) as sock:
        await sock.create_interface(id=0, role="master", secret="right")
        with pytest.raises(memif_aio.SecretMismatch):
            await memif_aio.create_endpoint(Recorder, memif_path, secret="wrong")


def test_run_on_uvloop_and_default():
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert memif_aio.run(which(), use_uvloop=True).startswith("uvloop")
    assert memif_aio.run(which(), use_uvloop=False).startswith("asyncio")


async def test_stream_with_limit_one_keeps_reading(memif_path):
    async with memif_aio.Socket(memif_path) as sock:
        master = await sock.create_interface(id=0, role="master")
        reader, writer = await memif_aio.open_packet_stream(memif_path, limit=1)
        await master.wait_connected(timeout=10)
        await master.tx_queues[0].send_burst([b"1", b"2", b"3"])
        got = [await asyncio.wait_for(reader.read_packet(), 5) for _ in range(3)]
        assert got == [b"1", b"2", b"3"]
        writer.close()
        await writer.wait_closed()


async def test_protocol_exception_is_reported_and_closes(memif_path):
    class Broken(Recorder):
        def datagram_received(self, data, addr):
            raise RuntimeError("application bug")

    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        async with memif_aio.Socket(memif_path) as sock:
            master = await sock.create_interface(id=0, role="master")
            transport, protocol = await memif_aio.create_endpoint(Broken, memif_path)
            await master.wait_connected(timeout=10)
            await master.tx_queues[0].send(b"boom")
            await asyncio.wait_for(transport.wait_closed(), 5)
    finally:
        loop.set_exception_handler(previous)
    assert [c["message"] for c in reported] == ["protocol.datagram_received() failed"]
    assert protocol.events[-1] == "lost:RuntimeError"
