"""Queues: the asyncio face of the rings.

An :class:`RxQueue` waits for its ring's interrupts (the link's
:class:`~memif_aio.interrupts.InterruptSet` watches the eventfd, so an idle queue costs nothing)
or, in polling mode, sets ``MASK_INT`` and is driven by its consumer. A
:class:`TxQueue` copies packets into the ring and, since memif never signals "space freed",
waits for room by re-checking on a short, growing timer: backpressure, never a silent drop.

A queue belongs to the thread running its event loop and to one consumer task at a time. Queues
live as long as one connection: when the link goes down they are closed and every waiter gets
:class:`~memif_aio.DisconnectedError`; the next link-up builds new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from . import _ring
from .errors import DisconnectedError, LocalProtocolError, MemifError, PeerProtocolError
from .interrupts import InterruptSet

DEFAULT_BURST = 256
_U32_MAX = 0xFFFFFFFF
_SPIN_CHECKS = 16  # re-checks of a full tx ring that only yield to the loop
_MAX_BACKOFF = 0.001  # then sleeps growing from 20 us to this
# Interrupt storms: a peer signalling without publishing anything. A legitimate peer signals
# once per burst it publishes; this many empty wake-ups in a window is abuse, and the queue
# stops listening for a pause (its consumer polls every _STORM_POLL meanwhile).
_STORM_WINDOW = 0.1
_STORM_LIMIT = 200
_STORM_PAUSE = 0.1
_STORM_POLL = 0.001

ErrorHandler = Callable[[PeerProtocolError], None]
NoticeHandler = Callable[[str], None]


class _Queue:
    def __init__(self, index: int, on_peer_error: ErrorHandler) -> None:
        self.index = index
        self._on_peer_error = on_peer_error
        self._closed_reason: str | None = None
        self._peer_broke_it = False  # this queue's ring saw the peer's violation

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    def _check_open(self) -> None:
        if self._closed_reason is not None:
            raise DisconnectedError(self._closed_reason)

    def _peer_error(self, exc: PeerProtocolError) -> None:
        # The interface disconnects with this reason; the caller sees the exception too.
        self._peer_broke_it = True
        self._on_peer_error(exc)


class RxQueue(_Queue):
    """Receive side of one ring.

    - ``async for pkt in rxq``: one zero-copy ``memoryview`` per packet (chained packets come
      joined, as ``bytes``), valid until the loop advances; ``bytes(pkt)`` keeps it. Backed
      by :class:`~memif_aio._ring.PacketStream`: no coroutine per packet while a burst lasts.
    - ``await rxq.recv()``: one packet as ``bytes`` (a copy you own).
    - ``async for burst in rxq.bursts(max_packets=256)``: :class:`~memif_aio._ring.Burst`
      objects (``len()``, ``burst[i]``, ``burst.lengths`` numpy view, ``burst.segments(i)``),
      valid until the next burst is taken or ``burst.release()``.
    - ``rxq.recv_burst_nowait()``: the same without waiting, for busy-poll loops.

    A peer that signals without publishing packets (more than 200 empty wake-ups in 100 ms)
    is not listened to for 100 ms at a time: meanwhile the consumer polls every millisecond,
    so a storm costs a few percent of a CPU instead of all of it. ``on_notice(text)`` hears
    of the first such pause.
    """

    def __init__(
        self,
        index: int,
        ring: _ring.RxRing,
        eventfd: int,
        interrupts: InterruptSet,
        on_peer_error: ErrorHandler,
        on_notice: NoticeHandler | None = None,
    ):
        super().__init__(index, on_peer_error)
        self._ring = ring
        self._eventfd = eventfd
        self._interrupts = interrupts
        self._on_notice = on_notice
        self.drops = 0
        self._loop = asyncio.get_running_loop()
        self._wakeup: asyncio.Future[None] | None = None
        self._polling = False
        self._storm_start = 0.0
        self._empty_wakeups = 0
        self._deaf: asyncio.TimerHandle | None = None  # set while a storm is being sat out
        self._storm_reported = False  # one warning per queue, however long the storm
        interrupts.watch(eventfd, self._interrupt)
        if ring.role == "slave":
            ring.refill()  # the master can send as soon as the link is up

    # -- modes ----------------------------------------------------------------------------------

    @property
    def polling(self) -> bool:
        return self._polling

    @polling.setter
    def polling(self, value: bool) -> None:
        """Polling mode: ask the peer not to signal us (``MASK_INT``); waiters busy-poll."""
        self._check_open()
        if value == self._polling:
            return
        self._polling = value
        self._ring.mask_interrupts = value
        if value:
            self._interrupts.unwatch(self._eventfd)
        elif self._deaf is None:
            self._interrupts.watch(self._eventfd, self._interrupt)

    def _interrupt(self) -> None:
        # Interrupt callback: never raises; it only wakes the consumer, which reads the ring.
        if not self._has_news():
            self._empty_wakeup()
            return
        self._wake()

    def _wake(self) -> None:
        waiter, self._wakeup = self._wakeup, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _has_news(self) -> bool:
        # A bogus counter counts as news: the consumer's next read reports it (once).
        return self._closed_reason is not None or self._ring.has_news()

    def _empty_wakeup(self) -> None:
        now = self._loop.time()
        if now - self._storm_start > _STORM_WINDOW:
            self._storm_start = now
            self._empty_wakeups = 0
        self._empty_wakeups += 1
        if self._empty_wakeups < _STORM_LIMIT:
            return
        self._interrupts.unwatch(self._eventfd)
        self._deaf = self._loop.call_later(_STORM_PAUSE, self._listen_again)
        self._wake()  # a waiting consumer goes on by polling
        if self._on_notice is not None and not self._storm_reported:
            self._storm_reported = True
            self._on_notice(
                f"rx queue {self.index}: the peer signals without sending "
                f"({self._empty_wakeups} empty wake-ups in {_STORM_WINDOW * 1000:.0f} ms): "
                f"not listening for {_STORM_PAUSE * 1000:.0f} ms"
            )

    def _listen_again(self) -> None:
        self._deaf = None
        self._empty_wakeups = 0
        if not self.closed and not self._polling:
            self._interrupts.watch(self._eventfd, self._interrupt)
        self._wake()

    # -- receive --------------------------------------------------------------------------------

    def recv_burst_nowait(self, max_packets: int = DEFAULT_BURST) -> _ring.Burst:
        """Take what is there now (possibly nothing); releases the previous burst."""
        self._check_open()
        try:
            return self._ring.rx_burst(max_packets)
        except PeerProtocolError as exc:
            self._peer_error(exc)
            raise

    async def recv_burst(self, max_packets: int = DEFAULT_BURST) -> _ring.Burst:
        """Wait for at least one packet and return the burst."""
        while True:
            burst = self.recv_burst_nowait(max_packets)
            if len(burst):
                return burst
            await self._wait()

    async def _wait(self) -> None:
        self._check_open()
        if self._polling:
            await asyncio.sleep(0)
            return
        if self._deaf is not None:
            await asyncio.sleep(_STORM_POLL)
            return
        # No lost wake-up: the peer publishes before it signals, and nothing runs between the
        # caller's empty check and this future, so any later signal finds it.
        self._wakeup = self._loop.create_future()
        try:
            await self._wakeup
        finally:
            self._wakeup = None
        self._check_open()

    async def bursts(self, max_packets: int = DEFAULT_BURST) -> AsyncIterator[_ring.Burst]:
        """Yield bursts as they arrive, until the link goes down."""
        while True:
            yield await self.recv_burst(max_packets)

    async def recv(self) -> bytes:
        """One packet, copied (chained segments joined)."""
        burst = await self.recv_burst(1)
        packet = bytes(burst[0])
        burst.release()
        return packet

    def __aiter__(self) -> _ring.PacketStream:
        return _ring.PacketStream(self._ring, self._wait, self._peer_error, DEFAULT_BURST)

    # -- lifecycle ------------------------------------------------------------------------------

    def release(self) -> None:
        """Give the current burst's buffers back to the ring."""
        if not self.closed:
            self._ring.release()

    def stats(self) -> dict[str, int]:
        r = self._ring
        return {"packets": r.packets, "bytes": r.bytes, "errors": r.errors, "drops": self.drops}

    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self._closed_reason = reason
        # memif does not order DISCONNECT with the rings: what is still published to us is lost
        # (so is what a peer published before breaking the rules). Counted as packets, once,
        # and without counting the peer's error again.
        self.drops += self._ring.unread_packets()
        self._interrupts.unwatch(self._eventfd)
        if self._deaf is not None:
            self._deaf.cancel()
            self._deaf = None
        self._ring.close()
        waiter, self._wakeup = self._wakeup, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(DisconnectedError(reason))


class TxQueue(_Queue):
    """Transmit side of one ring.

    - ``await txq.send(data)``: copy one packet in (chained across buffers when larger than one);
      waits while the ring is full. Packets are staged and published together once per loop
      iteration (or every ``max_burst`` packets; every 32 when the peer polls): one counter
      store and at most one eventfd write for the lot. ``txq.flush()`` publishes now.
    - ``await txq.send_burst(packets)``: a sequence of bytes-like objects, a 2-D uint8 numpy
      array plus ``lengths``, or a received ``Burst`` (copied in C, metadata kept: the echo
      path); returns when all are in the ring.
    - Every transmit call takes ``metadata``: one u32 per packet, written into the packet's
      descriptors (0 by default); the receiver reads it as ``burst.metadata``.
    - ``bufs = await txq.alloc(n)`` then ``txq.commit(lengths)``: build packets in place.
    - ``txq.forward(burst)`` (slave): hand received buffers over without copying.
    """

    def __init__(
        self,
        index: int,
        ring: _ring.TxRing,
        on_peer_error: ErrorHandler,
        max_burst: int = DEFAULT_BURST,
    ) -> None:
        super().__init__(index, on_peer_error)
        self._ring = ring
        self._loop = asyncio.get_running_loop()
        self.drops = 0
        # ``await txq.send(data)``: the per-packet path, in C. The packet is copied into the
        # ring when send() is called and published by the end of the loop iteration (every
        # max_burst packets, every 32 when the peer polls); ordering with every other transmit
        # call is kept. While it fits, the awaitable is already complete; on a full ring it
        # is _send_slow(), which flushes and waits for room. ``send(data, metadata)``.
        self.send: Callable[..., Awaitable[None]] = _ring.StagedSender(
            ring, self._loop, self._send_slow, self._peer_error, max_burst
        )
        """``await txq.send(data, metadata=0)``: copy one packet into the ring (chained when
        larger than a buffer), waiting while the ring is full; published by the end of the
        loop iteration, or now with :meth:`flush`."""

    @property
    def free_slots(self) -> int:
        self._check_open()
        return self._ring.free_slots()

    def _guard(self, call: Callable[..., int], *args: Any) -> int:
        self._check_open()
        try:
            return call(*args)
        except PeerProtocolError as exc:
            self._peer_error(exc)
            raise

    def send_nowait(self, data: Any, *, metadata: int = 0) -> bool:
        """Send one packet if it fits now; False when the ring is full."""
        return self._guard(self._ring.tx_burst, (data,), (metadata,)) == 1

    def send_burst_nowait(self, packets: Sequence[Any], *, metadata: Any = None) -> int:
        """Send as many leading packets as fit now; return how many."""
        return self._guard(self._ring.tx_burst, packets, metadata)

    async def _send_slow(self, data: Any, metadata: int) -> None:
        self._check_open()
        self.flush()
        attempt = 0
        while True:
            attempt = await self._wait_for_room(attempt)
            if self._guard(self._ring.stage, data, metadata):
                self.flush()
                return

    def flush(self) -> int:
        """Publish packets staged by :meth:`send` now; return how many."""
        if self._closed_reason is not None:
            return 0
        return self._ring.flush()

    async def send_burst(self, packets: Any, lengths: Any = None, *, metadata: Any = None) -> int:
        """Send every packet in order, waiting for room as needed; return the count.

        ``metadata`` (one u32 per packet) is checked in full before the first packet goes.
        A received :class:`~memif_aio._ring.Burst` is copied ring to ring with its own metadata,
        from its first packet not taken by ``forward()``; it must stay unreleased until this
        returns (else ``LocalProtocolError``: nothing more is sent from it).
        """
        if isinstance(packets, _ring.Burst):
            if lengths is not None or metadata is not None:
                raise ValueError("a Burst carries its own lengths and metadata")
            return await self._send_received(packets)
        total = len(packets)
        metadata = _metadata_array(metadata, total)
        sent = attempt = 0
        while sent < total:
            meta = metadata if metadata is None or not sent else metadata[sent:]
            if lengths is None:
                chunk = packets[sent:] if sent else packets
                n = self._guard(self._ring.tx_burst, chunk, meta)
            else:
                n = self._guard(self._ring.tx_burst_array, packets[sent:], lengths[sent:], meta)
            if n:
                sent += n
                attempt = 0
            else:
                attempt = await self._wait_for_room(attempt)
        return sent

    async def _send_received(self, burst: _ring.Burst) -> int:
        generation = burst.generation
        first = position = burst.forwarded
        total = len(burst)
        attempt = 0
        while position < total:
            if burst.generation != generation:
                raise LocalProtocolError(
                    f"the burst was released (or its ring closed) while send_burst waited: "
                    f"{position - first} of {total - first} packets sent"
                )
            n = self._guard(self._ring.tx_burst_from, burst, position)
            if n:
                position += n
                attempt = 0
            else:
                attempt = await self._wait_for_room(attempt)
        return position - first

    async def alloc(self, n: int) -> list[memoryview]:
        """Up to ``n`` writable buffers (at least one; waits for room)."""
        attempt = 0
        while True:
            buffers = self._guard(self._ring.alloc, n)
            if buffers:
                return buffers
            attempt = await self._wait_for_room(attempt)

    def commit(self, lengths: Sequence[int], *, metadata: Any = None) -> int:
        """Publish the first ``len(lengths)`` allocated buffers with these lengths."""
        return self._guard(self._ring.commit, lengths, metadata)

    def forward(self, burst: _ring.Burst) -> int:
        """Zero-copy (slave role): move received packets of ``burst`` to this ring."""
        return self._guard(self._ring.forward, burst)

    async def _wait_for_room(self, attempt: int) -> int:
        # Nothing in memif signals freed slots: re-check, first by yielding, then on a timer.
        self._check_open()
        if attempt < _SPIN_CHECKS:
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(min(_MAX_BACKOFF, 20e-6 * (1 << min(attempt - _SPIN_CHECKS, 6))))
        self._check_open()
        return attempt + 1

    def stats(self) -> dict[str, int]:
        r = self._ring
        return {"packets": r.packets, "bytes": r.bytes, "errors": r.errors, "drops": self.drops}

    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self._closed_reason = reason
        self.drops += self._ring.discard()  # staged, never published
        if self._ring.role == "slave" and not self._peer_broke_it:
            # Descriptors we published that the master never consumed are lost with the link.
            # (Not when the master's counter broke the rules: asking again would count that
            # error twice, and what it says is not to be trusted.)
            with contextlib.suppress(MemifError):
                self.drops += self._ring.ring.size - self._ring.free_slots()
        self._ring.close()


def _metadata_array(metadata: Any, count: int) -> np.ndarray | None:
    """``metadata`` checked in full once, as a private uint32 array the ring then copies
    without checks; indexed like the ring indexes it, with the ring's messages."""
    if metadata is None:
        return None
    if len(metadata) != count:
        raise ValueError(f"{len(metadata)} metadata values for {count} packets")
    if isinstance(metadata, np.ndarray) and metadata.ndim == 1 and metadata.dtype.kind in "iu":
        bad = (metadata < 0) | (metadata > _U32_MAX)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"metadata[{i}] = {int(metadata[i])} not in 0..{_U32_MAX}")
        return metadata.astype(np.uint32)  # a copy: the caller may change theirs meanwhile
    values = np.empty(count, np.uint32)
    for i in range(count):
        value = operator.index(metadata[i])
        if not 0 <= value <= _U32_MAX:
            raise ValueError(f"metadata[{i}] = {value} not in 0..{_U32_MAX}")
        values[i] = value
    return values
