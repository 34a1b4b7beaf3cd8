"""Queues: the asyncio face of the rings.

The C half of each queue (:class:`~memif_aio._ring.RxQueueCore`,
:class:`~memif_aio._ring.TxQueueCore`) takes bursts, runs ``async for`` and ``send`` without a
coroutine per packet, and holds the queue's one gate: ``closed_reason``, None while the link is
up. This module adds the waiting.

An :class:`RxQueue` waits in one of three modes (``rxq.mode``), all in C
(:meth:`~memif_aio._ring.RxQueueCore._wait_c`; ``async for`` needs no coroutine to wait):

- ``"interrupt"`` (default): it sleeps until the peer signals, so an idle queue costs nothing.
  The link's :class:`~memif_aio.interrupts.InterruptSet` watches the eventfd (never read) and
  its reader resumes the waiting task on the spot, inside the callback, on a reused
  :class:`~memif_aio._ring.Waiter`: no Future, no extra loop iteration per wake-up. What is
  left is mostly the event loop's own wake-up: a round trip costs 0.9-1.6x what two uvloop
  processes ping-ponging eventfds pay, 1.6-3.3x a raw eventfd ping-pong without an event loop
  (``benchmarks/bench_latency.py``; README "Receive modes and latency").
- ``"polling"``: ``MASK_INT`` asks the peer not to signal; the consumer spins in C on the
  ring's counter, for up to ``spin`` seconds (default 50 µs) between two loop turns: no loop
  iteration per look, and the loop still runs its other tasks and timers at least every
  ``spin``. A round trip between two polling processes on two CPUs takes ~2 µs; each polling
  consumer keeps its CPU busy. After 5 µs without news the spin yields the CPU between looks
  (``sched_yield``): a peer on the same CPU then gets to answer within microseconds instead of
  a scheduler tick; on a CPU of its own the yield returns at once.
- ``"adaptive"``: like VPP's. Interrupts while idle; after traffic it polls (``MASK_INT`` set)
  for ``adaptive_window`` seconds (default 300 µs), then asks for interrupts again: clears
  ``MASK_INT``, looks at the ring once more, then sleeps (no lost wake-up: a packet published
  before the flag changed is seen by that look, one published after it is signalled). A busy
  link gets polling latency, an idle one costs nothing.

``rxq.spin_releases_gil`` (default True): whether the spin releases the GIL. Measured, it makes
no difference to the round trip (p50 1.4 µs either way on two CPUs); with a CPU-bound Python
thread in the process both suffer from the GIL's switch interval (p99 9 ms released, 12 ms
held). Released, the process's other threads (executors, memif_aio's fd closers) run while the
loop's thread spins, so that is the default.

A :class:`TxQueue` copies packets into the ring and, since memif never signals "space freed",
waits for room by re-checking on a short, growing timer: backpressure, never a silent drop. A
task that sends in a loop and never has to wait still gives its loop a turn at least every
200 µs of sending (``TURN_INTERVAL_NS``, checked every ``max_burst`` sends and after every
``send_burst``): receivers and timers on the same loop keep running, for ~5 % of the send
rate. The same holds for a consumer whose ring always has packets (``async for``,
``recv_burst``, ``bursts()``): once per 200 µs without a wait it yields once. The queues of
a link share one clock, so a task that receives and sends yields once per interval
(``turn_interval``, in seconds, on any queue of the link; on the asyncio loop a turn costs
more than on uvloop: ~8 % of a 64-byte burst echo at 200 µs).

A queue belongs to the thread running its event loop and to one consumer task at a time. Queues
live as long as one connection: when the link goes down they are closed and every waiter gets
:class:`~memif_aio.DisconnectedError`; the next link-up builds new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, overload

from . import _ring
from .errors import (
    ConfigError,
    DisconnectedError,
    LocalProtocolError,
    MemifError,
    PeerProtocolError,
)
from .interrupts import InterruptSet

DEFAULT_BURST = _ring.DEFAULT_BURST
DEFAULT_SPIN = 50e-6  # seconds a polling consumer spins per look before the loop's turn
DEFAULT_ADAPTIVE_WINDOW = 300e-6  # seconds an adaptive queue keeps polling after traffic
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


class RxMode(str, enum.Enum):
    """How an :class:`RxQueue` waits for packets (see the module's documentation)."""

    INTERRUPT = "interrupt"
    POLLING = "polling"
    ADAPTIVE = "adaptive"

    @classmethod
    def parse(cls, value: RxMode | str) -> RxMode:
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"rx mode {value!r}: choose interrupt, polling or adaptive") from None


class _Seconds:
    """A queue setting in seconds, kept in nanoseconds on the C core, within 0..maximum."""

    def __init__(self, field: str, maximum: float, doc: str, why: str = "") -> None:
        self.field = field
        self.maximum = maximum
        self.why = why
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, queue: None, owner: type) -> _Seconds: ...
    @overload
    def __get__(self, queue: object, owner: type) -> float: ...
    def __get__(self, queue: object, owner: type) -> float | _Seconds:
        if queue is None:
            return self
        return int(getattr(queue, self.field)) / 1e9

    def __set__(self, queue: object, seconds: float) -> None:
        if not 0 <= seconds <= self.maximum:
            raise ConfigError(f"{self.name} {seconds} s outside 0..{self.maximum:g}{self.why}")
        setattr(queue, self.field, int(seconds * 1e9))


def _stats(ring: _ring.RxRing | _ring.TxRing, drops: int) -> dict[str, int]:
    """What both queue kinds report: the ring's counters and the packets lost at link-down."""
    return {"packets": ring.packets, "bytes": ring.bytes, "errors": ring.errors, "drops": drops}


_TURN_INTERVAL = _Seconds(
    "_turn_ns",
    0.1,
    "Seconds a task that never has to wait on this link's queues keeps its loop before it "
    "gives it a turn (default 200 µs; shared by the queues of one link; 0: at every look).",
)


class RxQueue(_ring.RxQueueCore):
    """Receive side of one ring.

    - ``async for pkt in rxq``: one zero-copy ``memoryview`` per packet (chained packets come
      joined, as ``bytes``), valid until the loop advances; ``bytes(pkt)`` keeps it. Backed
      by :class:`~memif_aio._ring.PacketStream`: no coroutine per packet while a burst lasts.
    - ``await rxq.recv()``: one packet as ``bytes`` (a copy you own).
    - ``async for burst in rxq.bursts(max_packets=256)``: :class:`~memif_aio._ring.Burst`
      objects (``len()``, ``burst[i]``, ``burst.lengths`` numpy view, ``burst.segments(i)``),
      valid until the next burst is taken or ``burst.release()``.
    - ``rxq.recv_burst_nowait()``: the same without waiting, for busy-poll loops.
    - ``rxq.mode``: ``"interrupt"``, ``"polling"`` or ``"adaptive"`` (``rxq.polling = True``
      is short for polling); ``rxq.spin``, ``rxq.adaptive_window`` and
      ``rxq.spin_releases_gil`` tune the last two (see the module's documentation).

    Before it sleeps or spins, a consumer publishes what its link's transmit queues have
    staged (``flush_tx``): a reply sent just before waiting for the next request goes out now.
    One task waits on a queue at a time (a second gets ``LocalProtocolError``). Modes, spin
    and window belong to this queue, so to this link: the next link's queues start from the
    interface's ``rx_mode``.
    A peer that signals without publishing packets (more than 200 empty wake-ups in 100 ms)
    is not listened to for 100 ms at a time: meanwhile the consumer polls every millisecond,
    so a storm costs a few percent of a CPU instead of all of it. ``on_notice(text)`` hears
    of the first such pause.

    Example::

        rxq = iface.rx_queues[0]
        rxq.mode = "adaptive"
        async for packet in rxq:
            handle(packet)
    """

    def __init__(
        self,
        index: int,
        ring: _ring.RxRing,
        eventfd: int,
        interrupts: InterruptSet,
        on_peer_error: ErrorHandler,
        on_notice: NoticeHandler | None = None,
        *,
        mode: RxMode | str = RxMode.INTERRUPT,
        spin: float = DEFAULT_SPIN,
        adaptive_window: float = DEFAULT_ADAPTIVE_WINDOW,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        super().__init__(index, ring, on_peer_error, self._loop)
        self._eventfd = eventfd
        self._interrupts = interrupts
        self._on_notice = on_notice
        self.drops = 0
        self._mode = RxMode.INTERRUPT
        self.spin = spin
        self.adaptive_window = adaptive_window
        self._storm_start = 0.0
        self._empty_wakeups = 0
        self._deaf: asyncio.TimerHandle | None = None  # set while a storm is being sat out
        self._storm_reported = False  # one warning per queue, however long the storm
        interrupts.watch(eventfd, self._interrupt)
        if ring.role == "slave":
            ring.refill()  # the master can send as soon as the link is up
        self.mode = mode

    # -- modes ----------------------------------------------------------------------------------

    @property
    def mode(self) -> RxMode:
        return self._mode

    @mode.setter
    def mode(self, value: RxMode | str) -> None:
        """Switch mode at any time; a waiting consumer goes on in the new one, nothing lost."""
        mode = RxMode.parse(value)
        self._check_open()
        self._mode = mode
        self.ring.mask_interrupts = mode is RxMode.POLLING  # adaptive starts idle: interrupts
        if mode is RxMode.POLLING:
            self._interrupts.unwatch(self._eventfd)
        elif self._deaf is None:
            self._interrupts.watch(self._eventfd, self._interrupt)
        self._set_wait_mode()
        self._wake()

    def _set_wait_mode(self) -> None:
        # The core waits in the queue's mode, in C; during an interrupt storm, _wait() polls.
        self._wait_mode = "python" if self._deaf is not None else self._mode.value

    @property
    def polling(self) -> bool:
        """Short for ``mode == "polling"``; setting False means interrupt mode."""
        return self._mode is RxMode.POLLING

    @polling.setter
    def polling(self, value: bool) -> None:
        self.mode = RxMode.POLLING if value else RxMode.INTERRUPT

    spin = _Seconds(
        "_spin_ns",
        0.01,
        "Seconds a polling (or adaptive, while busy) consumer spins per look, at most.",
        " (the loop must get its turn)",
    )
    adaptive_window = _Seconds(
        "_window_ns", 1.0, "Seconds an adaptive queue keeps polling after it last saw traffic."
    )
    turn_interval = _TURN_INTERVAL

    # -- interrupts -----------------------------------------------------------------------------

    # The interrupt callback is the core's _interrupt(): it wakes the consumer and runs it
    # right there (no task runs in an fd callback), one loop iteration sooner; a signal that
    # brought nothing comes here.

    def _wake(self) -> None:
        self._waiter.wake()

    def _empty_wakeup(self) -> None:
        if self._deaf is not None:  # already sitting a storm out (polling on a timer)
            return
        now = self._loop.time()
        if now - self._storm_start > _STORM_WINDOW:
            self._storm_start = now
            self._empty_wakeups = 0
        self._empty_wakeups += 1
        if self._empty_wakeups < _STORM_LIMIT:
            return
        self._interrupts.unwatch(self._eventfd)
        self._deaf = self._loop.call_later(_STORM_PAUSE, self._listen_again)
        self._set_wait_mode()
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
        if not self.closed and self._mode is not RxMode.POLLING:
            self._interrupts.watch(self._eventfd, self._interrupt)
        self._set_wait_mode()
        self._wake()

    # -- receive --------------------------------------------------------------------------------

    async def recv_burst(self, max_packets: int = DEFAULT_BURST) -> _ring.Burst:
        """Wait for at least one packet and return the burst."""
        if self.ring.has_news() and self._turn_now():
            # Packets keep coming without a wait: the loop's turn, before the take (a task
            # cancelled in its turn has taken nothing).
            await asyncio.sleep(0)
        burst = self.recv_burst_nowait(max_packets)
        while not len(burst):
            await self._wait()
            burst = self.recv_burst_nowait(max_packets)
            if not len(burst):
                # Woken for nothing (a mode switch, a chain published in part, a peer moving
                # its counter to wake us): counted, and the loop gets a turn before the next
                # look, so no peer can keep this coroutine from suspending.
                self._empty_wakeup()
                await asyncio.sleep(0)
        return burst

    def _wait(self) -> Awaitable[None]:
        """Return when there may be packets (the caller looks), in the queue's mode."""
        self._check_open()
        if self._deaf is not None:
            return asyncio.sleep(_STORM_POLL)
        return self._wait_c()

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

    # -- lifecycle ------------------------------------------------------------------------------

    def release(self) -> None:
        """Give the current burst's buffers back to the ring."""
        if not self.closed:
            self.ring.release()

    def stats(self) -> dict[str, int]:
        return _stats(self.ring, self.drops)

    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self._shut(reason)
        # memif does not order DISCONNECT with the rings: what is still published to us is lost
        # (so is what a peer published before breaking the rules). Counted as packets, once,
        # and without counting the peer's error again.
        self.drops += self.ring.unread_packets()
        self._interrupts.unwatch(self._eventfd)
        if self._deaf is not None:
            self._deaf.cancel()
            self._deaf = None
        self.ring.close()
        self._waiter.fail(DisconnectedError(reason))


class TxQueue(_ring.TxQueueCore):
    """Transmit side of one ring.

    - ``await txq.send(data)``: copy one packet in (chained across buffers when larger than one);
      waits while the ring is full. Packets are staged and published together once per loop
      iteration (or every ``max_burst`` packets; every 32 when the peer polls): one counter
      store and at most one eventfd write for the lot. ``txq.flush()`` publishes now. A task
      that sends in a loop gives the loop a turn at least every 200 µs of sending, so
      receivers and timers on the same loop keep running.
    - ``await txq.send_burst(packets)``: a sequence of bytes-like objects, a 2-D uint8 numpy
      array plus ``lengths``, or a received ``Burst`` (copied in C, metadata kept: the echo
      path); returns when all are in the ring.
    - Every transmit call takes ``metadata``: one u32 per packet, written into the packet's
      descriptors (0 by default); the receiver reads it as ``burst.metadata``.
    - ``bufs = await txq.alloc(n)`` then ``txq.commit(lengths)``: build packets in place.
    - ``txq.forward(burst)`` (slave): hand received buffers over without copying.

    Example::

        txq = iface.tx_queues[0]
        for payload in payloads:
            await txq.send(payload)
    """

    turn_interval = _TURN_INTERVAL

    def __init__(
        self,
        index: int,
        ring: _ring.TxRing,
        on_peer_error: ErrorHandler,
        max_burst: int = DEFAULT_BURST,
    ) -> None:
        super().__init__(index, ring, on_peer_error, asyncio.get_running_loop(), max_burst)
        self.drops = 0

    @property
    def free_slots(self) -> int:
        self._check_open()
        return self.ring.free_slots()

    def _guard(self, call: Callable[..., Any], *args: Any) -> Any:
        self._check_open()
        try:
            return call(*args)
        except PeerProtocolError as exc:
            self._peer_error(exc)
            raise

    def send_nowait(self, data: Any, *, metadata: int = 0) -> bool:
        """Send one packet if it fits now; False when the ring is full."""
        return bool(self._guard(self.ring.tx_burst, (data,), (metadata,)) == 1)

    def send_burst_nowait(self, packets: Sequence[Any], *, metadata: Any = None) -> int:
        """Send as many leading packets as fit now; return how many."""
        return int(self._guard(self.ring.tx_burst, packets, metadata))

    async def _send_slow(self, data: Any, metadata: int) -> None:
        self._check_open()
        self.flush()
        attempt = 0
        while True:
            attempt = await self._wait_for_room(attempt)
            if self._guard(self.ring.stage, data, metadata):
                self.flush()
                return

    async def send_burst(self, packets: Any, lengths: Any = None, *, metadata: Any = None) -> int:
        """Send every packet in order, waiting for room as needed; return the count.

        ``metadata`` (one u32 per packet) is checked in full before the first packet goes;
        do not change it until this returns. A received :class:`~memif_aio._ring.Burst` is
        copied ring to ring with its own metadata, from its first packet not taken by
        ``forward()``; it must stay unreleased until this returns (else
        ``LocalProtocolError``: nothing more is sent from it).
        """
        if isinstance(packets, _ring.Burst):
            if lengths is not None or metadata is not None:
                raise ValueError("a Burst carries its own lengths and metadata")
            return await self._send_received(packets)
        if self._turn_now():  # before anything is staged: see _send_received
            await asyncio.sleep(0)
        total = len(packets)
        sent = attempt = 0
        while sent < total:
            meta = None if metadata is None else metadata[sent:] if sent else metadata
            if lengths is None:
                chunk = packets[sent:] if sent else packets
                n = self._guard(self.ring.tx_burst, chunk, meta)
            else:
                n = self._guard(self.ring.tx_burst_array, packets[sent:], lengths[sent:], meta)
            if n:
                sent += n
                attempt = 0
            else:
                attempt = await self._wait_for_room(attempt)
        return sent

    async def _send_received(self, burst: _ring.Burst) -> int:
        # A task whose bursts always find room never suspends: once per turn_interval its
        # loop gets a turn, so the other tasks (a receiver of the same link, timers) run.
        # Taken before anything is staged: a task cancelled in its turn has sent nothing.
        if self._turn_now():
            await asyncio.sleep(0)
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
            n = self._guard(self.ring.tx_burst_from, burst, position)
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
            buffers: list[memoryview] = self._guard(self.ring.alloc, n)
            if buffers:
                return buffers
            attempt = await self._wait_for_room(attempt)

    def commit(self, lengths: Sequence[int], *, metadata: Any = None) -> int:
        """Publish the first ``len(lengths)`` allocated buffers with these lengths."""
        return int(self._guard(self.ring.commit, lengths, metadata))

    def forward(self, burst: _ring.Burst) -> int:
        """Zero-copy (slave role): move received packets of ``burst`` to this ring."""
        return int(self._guard(self.ring.forward, burst))

    async def _wait_for_room(self, attempt: int) -> int:
        # Nothing in memif signals freed slots: re-check, first by yielding, then on a timer.
        self._check_open()
        if attempt < _SPIN_CHECKS:
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(min(_MAX_BACKOFF, 20e-6 * (1 << min(attempt - _SPIN_CHECKS, 6))))
        self._turned()
        self._check_open()
        return attempt + 1

    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self._shut(reason)
        self.drops += self.ring.discard()  # staged, never published
        if self.ring.role == "slave" and not self.peer_broke_it:
            # Descriptors we published that the master never consumed are lost with the link.
            # (Not when the master's counter broke the rules: asking again would count that
            # error twice, and what it says is not to be trusted.)
            with contextlib.suppress(MemifError):
                self.drops += self.ring.ring.size - self.ring.free_slots()
        self.ring.close()

    def stats(self) -> dict[str, int]:
        return _stats(self.ring, self.drops)
