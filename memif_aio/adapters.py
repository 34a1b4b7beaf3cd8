"""asyncio adapters: memif behind the interfaces asyncio code already speaks.

- :func:`create_endpoint` - a datagram-style ``(transport, protocol)`` pair, modelled on
  ``loop.create_datagram_endpoint``: ``protocol.datagram_received(data, addr)`` per packet,
  ``transport.sendto(data)``, ``pause_writing()``/``resume_writing()`` flow control with
  asyncio's high/low water marks.
- :func:`open_packet_stream` - ``(reader, writer)`` modelled on ``asyncio.open_connection``,
  packet-framed: ``await reader.read_packet()``, ``async for pkt in reader``,
  ``writer.write(pkt)``, ``await writer.drain()``.

One endpoint is one link: when the peer goes away the protocol hears ``connection_lost`` (the
reader sees EOF) and the endpoint's socket is closed; make a new endpoint to reconnect. The
endpoint uses queue 0 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from .errors import ConfigError, DisconnectedError, MemifError
from .interface import Interface
from .socket import open_interface

log = logging.getLogger(__name__)

DEFAULT_HIGH_WATER = 256 * 1024


class MemifTransport(asyncio.DatagramTransport):
    """Packets in and out of one queue pair of a connected :class:`Interface`.

    ``sendto`` copies into the ring at once when there is room; otherwise the packet waits in a
    buffer (never dropped) and the protocol is paused above the high-water mark.
    """

    def __init__(
        self,
        iface: Interface,
        protocol: asyncio.BaseProtocol,
        *,
        queue: int = 0,
        owns: contextlib.AbstractAsyncContextManager[Interface] | None = None,
    ) -> None:
        super().__init__({"memif": iface.details(), "interface": iface})
        self._iface = iface
        self._protocol = protocol
        self._rxq = iface.rx_queues[queue]
        self._txq = iface.tx_queues[queue]
        self._owned = owns  # the interface's socket, closed with the transport
        self._loop = asyncio.get_running_loop()
        self._address = (iface.socket_path, iface.id)
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_bytes = 0
        self._high_water = DEFAULT_HIGH_WATER
        self._low_water = DEFAULT_HIGH_WATER // 4
        self._writing_paused = False
        self._reading = asyncio.Event()
        self._reading.set()
        self._closing = False
        self._lost = False
        self._closed = self._loop.create_future()
        self._flusher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()  # the loop keeps only weak references
        self._reader = self._loop.create_task(self._read_loop())
        self._watcher = self._loop.create_task(self._watch_link())

    # -- asyncio.BaseTransport --------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading, send what is buffered, then disconnect."""
        if self._closing:
            return
        self._closing = True
        self._reader.cancel()
        self._in_background(self._shutdown(flush=True))

    def abort(self) -> None:
        if self._lost:
            return
        self._closing = True
        self._reader.cancel()
        self._pending.clear()
        self._pending_bytes = 0
        self._in_background(self._shutdown(flush=False))

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    # -- reading ------------------------------------------------------------------------------

    def pause_reading(self) -> None:
        """Leave packets in the ring (the peer sees backpressure) until ``resume_reading``."""
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def is_reading(self) -> bool:
        return self._reading.is_set()

    async def _read_loop(self) -> None:
        receive = self._protocol.datagram_received  # type: ignore[attr-defined]
        address = self._address
        try:
            async for burst in self._rxq.bursts():
                for i in range(len(burst)):
                    if not self._reading.is_set():
                        await self._reading.wait()
                    if self._closing:
                        return
                    try:
                        receive(bytes(burst[i]), address)
                    except Exception as exc:  # the application's bug: report, then close
                        self._loop.call_exception_handler(
                            {
                                "message": "protocol.datagram_received() failed",
                                "exception": exc,
                                "transport": self,
                            }
                        )
                        self._lose(exc)
                        return
        except DisconnectedError as exc:
            self._lose(exc)
        except MemifError as exc:
            self._lose(exc)

    async def _watch_link(self) -> None:
        # The reader may be paused and the writer idle: the link's end must still be heard.
        reason = await self._iface.wait_disconnected()
        self._lose(DisconnectedError(reason))

    # -- writing ------------------------------------------------------------------------------

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            raise RuntimeError("transport is closing")
        if not self._pending and self._txq.send_nowait(data):
            return
        packet = bytes(data)
        self._pending.append(packet)
        self._pending_bytes += len(packet)
        if self._flusher is None:
            self._flusher = self._loop.create_task(self._flush())
        self._maybe_pause()

    def get_write_buffer_size(self) -> int:
        return self._pending_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low_water, self._high_water

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        high = DEFAULT_HIGH_WATER if high is None else high
        low = high // 4 if low is None else low
        if not 0 <= low <= high:
            raise ValueError(f"high ({high}) must be >= low ({low}) >= 0")
        self._high_water, self._low_water = high, low
        self._maybe_pause()

    def _maybe_pause(self) -> None:
        if not self._writing_paused and self._pending_bytes > self._high_water:
            self._writing_paused = True
            self._call_protocol("pause_writing")

    async def _flush(self) -> None:
        try:
            while self._pending:
                packet = self._pending[0]
                await self._txq.send(packet)
                self._pending.popleft()
                self._pending_bytes -= len(packet)
                if self._writing_paused and self._pending_bytes <= self._low_water:
                    self._writing_paused = False
                    self._call_protocol("resume_writing")
        except MemifError as exc:
            self._lose(exc)
        finally:
            self._flusher = None

    def _call_protocol(self, name: str, *args: Any) -> None:
        try:
            getattr(self._protocol, name)(*args)
        except Exception as exc:  # the application's bug: report it like asyncio does
            self._loop.call_exception_handler(
                {"message": f"protocol.{name}() failed", "exception": exc, "transport": self}
            )

    # -- teardown -----------------------------------------------------------------------------

    async def _shutdown(self, flush: bool) -> None:
        if flush and self._flusher is not None:
            with contextlib.suppress(MemifError):
                await asyncio.shield(self._flusher)
        self._lose(None)

    def _lose(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._reader.cancel()
        self._watcher.cancel()
        if self._flusher is not None:
            self._flusher.cancel()
        self._in_background(self._release(exc))

    async def _release(self, exc: Exception | None) -> None:
        try:
            if self._owned is not None:
                await self._owned.__aexit__(None, None, None)
            else:
                await self._iface.close()
        finally:
            self._call_protocol("connection_lost", exc)
            if not self._closed.done():
                self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)


async def create_endpoint(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    path: str,
    *,
    id: int = 0,
    role: str = "slave",
    timeout: float | None = 10.0,
    queue: int = 0,
    **options: Any,
) -> tuple[MemifTransport, asyncio.BaseProtocol]:
    """Connect (slave) or listen (master) on ``path`` and wire a protocol to the link.

    Returns once the link is up and ``protocol.connection_made(transport)`` ran. Options are
    those of :class:`~memif_aio.Socket` and :class:`~memif_aio.Interface`.
    """
    opened = open_interface(
        path, role=role, id=id, timeout=timeout, fail_fast=role in ("slave", "client"), **options
    )
    iface = await opened.__aenter__()
    try:
        protocol = protocol_factory()
        transport = MemifTransport(iface, protocol, queue=queue, owns=opened)
    except BaseException:
        await opened.__aexit__(None, None, None)
        raise
    protocol.connection_made(transport)
    return transport, protocol


# -- packet streams ---------------------------------------------------------------------------


class _StreamProtocol(asyncio.DatagramProtocol):
    def __init__(self, limit: int) -> None:
        self._packets: collections.deque[bytes] = collections.deque()
        self._limit = limit
        self._transport: MemifTransport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.eof = False
        self.exception: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, MemifTransport)
        self._transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._packets.append(data)
        if len(self._packets) >= self._limit and self._transport is not None:
            self._transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.exception = exc
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next_packet(self) -> bytes | None:
        while not self._packets:
            if self.eof:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        packet = self._packets.popleft()
        if len(self._packets) <= self._limit // 2 and self._transport is not None:
            self._transport.resume_reading()
        return packet

    async def drain(self) -> None:
        if self.eof and self.exception is not None:
            raise DisconnectedError(str(self.exception))
        while self._paused and not self.eof:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter


class PacketReader:
    """Packets as they arrive; ``None`` from :meth:`read_packet` (or the end of ``async for``)
    means the peer went away."""

    def __init__(self, protocol: _StreamProtocol) -> None:
        self._protocol = protocol

    async def read_packet(self) -> bytes | None:
        """The next packet, or ``None`` once the peer has gone and every packet was read."""
        return await self._protocol.next_packet()

    def at_eof(self) -> bool:
        return self._protocol.eof and not self._protocol._packets

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (packet := await self.read_packet()) is not None:
            yield packet


class PacketWriter:
    """``write()`` never blocks and never drops; ``await drain()`` applies backpressure."""

    def __init__(self, transport: MemifTransport, protocol: _StreamProtocol) -> None:
        self.transport = transport
        self._protocol = protocol

    def write(self, packet: Any) -> None:
        self.transport.sendto(packet)

    def writelines(self, packets: Any) -> None:
        for packet in packets:
            self.transport.sendto(packet)

    async def drain(self) -> None:
        await self._protocol.drain()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.transport.close()

    async def wait_closed(self) -> None:
        await self.transport.wait_closed()


async def open_packet_stream(
    path: str,
    *,
    id: int = 0,
    role: str = "slave",
    limit: int = 1024,
    **options: Any,
) -> tuple[PacketReader, PacketWriter]:
    """``asyncio.open_connection`` for packets: ``(reader, writer)`` over one memif link.

    ``limit`` packets may wait in the reader before reading from the ring pauses.
    """
    if limit < 1:
        raise ConfigError(f"limit={limit} must be at least 1")
    transport, protocol = await create_endpoint(
        lambda: _StreamProtocol(limit), path, id=id, role=role, **options
    )
    assert isinstance(protocol, _StreamProtocol)
    return PacketReader(protocol), PacketWriter(transport, protocol)
