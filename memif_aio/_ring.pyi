"""Type stub of the Cython ring core (cython_ext/ring.pyx); memif_aio._ring_py has the same API.

Shared-memory layout (MEMIF-PROTOCOL.md): ring header = cookie u32 @0, flags u16 @4, head u16 @6,
tail u16 @CL, descriptors @2*CL; descriptor = u16 flags, u16 region, u32 length, u32 offset,
u32 metadata. head and tail are free-running u16 counters. The slave owns every head, the
master every tail. Peer violations raise ``PeerProtocolError``, API misuse
``LocalProtocolError``, bad arguments ``ValueError``. None of these objects is thread-safe.
"""

from asyncio import AbstractEventLoop
from collections.abc import Awaitable, Callable, Generator, Sequence
from contextvars import Context
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

from .errors import PeerProtocolError

RING_COOKIE: int
DESC_FLAG_NEXT: int
RING_FLAG_MASK_INT: int
DESC_SIZE: int
MAX_LOG2_RING_SIZE: int
DEFAULT_MAX_PACKET_SIZE: int
DEFAULT_BURST: int
MAX_SIGNAL_SLOTS: int

_Metadata = Sequence[int] | npt.NDArray[np.integer] | None

def ring_bytes(log2_size: int, cacheline: int = 64) -> int:
    """``2 * cacheline + 16 << log2_size``; ValueError unless 0 <= log2 <= 14, CL in (64, 128)."""

class RegionTable:
    """Regions of one side, by index. Holds a buffer export on each buffer until close().

    Packet and alloc() memoryviews are counted exports into those buffers: while one is alive
    (even after close()), ``mmap.close()`` raises BufferError instead of leaving it dangling.
    """

    def __init__(self, buffers: Sequence[Buffer]) -> None: ...
    def __len__(self) -> int: ...
    def size(self, index: int) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def live_views(self) -> int:
        """Packet memoryviews alive (Cython only); after close() they keep the exports."""
    def close(self) -> None:
        """Stop the rings on this table (idempotent); exports released with the last view."""

class Ring:
    """Raw view of one ring; ValueError unless it exists and fits inside its region."""

    def __init__(
        self, regions: RegionTable, region: int, offset: int, log2_size: int, cacheline: int = 64
    ) -> None: ...
    @property
    def regions(self) -> RegionTable: ...
    @property
    def region(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def log2_size(self) -> int: ...
    @property
    def cacheline(self) -> int: ...
    cookie: int
    flags: int
    head: int
    tail: int
    def initialize(self) -> None:
        """Creator (slave): zero header and descriptors, write the cookie."""
    def check_cookie(self) -> None:
        """PeerProtocolError("bad ring cookie 0x...") unless the cookie is right."""
    def reset(self) -> None:
        """head = tail = 0 (both sides, at CONNECT)."""
    def descriptor(self, slot: int) -> tuple[int, int, int, int, int]:
        """(flags, region, length, offset, metadata) of ``slot``."""
    def set_descriptor(
        self, slot: int, flags: int, region: int, length: int, offset: int, metadata: int = 0
    ) -> None: ...

class Burst:
    """Packets of the last rx_burst(); reused. Valid until the next rx_burst()/release().

    ``len()`` is 0 after release. Views point into shared memory: do not use them after release.
    """

    def __len__(self) -> int: ...
    @property
    def lengths(self) -> npt.NDArray[np.uint32]:
        """Read-only view of the packet lengths over a buffer allocated once per ring."""
    @property
    def nsegments(self) -> npt.NDArray[np.uint32]:
        """Read-only view: descriptors per packet (1 unless chained)."""
    @property
    def metadata(self) -> npt.NDArray[np.uint32]:
        """Read-only view: the metadata word of each packet's first descriptor."""
    @property
    def generation(self) -> int:
        """Changes whenever the burst's packets go away (next rx_burst, release, close)."""
    @property
    def forwarded(self) -> int:
        """Leading packets taken by TxRing.forward(); indexing them raises LocalProtocolError."""
    def __getitem__(self, i: int) -> memoryview | bytes:
        """Zero-copy writable memoryview (one segment) or joined bytes copy (chained)."""
    def segments(self, i: int) -> list[memoryview]: ...
    def copy_into(self, i: int, out: Buffer) -> int:
        """Copy packet ``i`` into ``out``; ValueError if it is too small. Returns the length."""
    def gather_into(self, out: Buffer, offsets: npt.NDArray[np.int64], snaplen: int = 0) -> int:
        """Copy every packet (joined; its first ``snaplen`` bytes if > 0) to
        ``out[offsets[i]:]``, all checked first; return the bytes copied."""
    def release(self) -> None: ...

class RxRing:
    """Receive side. slave: M2S ring, own buffers, refill; master: S2M ring, tail store.

    Build it once head/tail are in their connected state: our own counter is cached.
    The slave reads each slot from the buffer it refilled it with (descriptor region/offset
    written by the master are ignored); call refill() once after CONNECT.
    """

    def __init__(
        self,
        ring: Ring,
        *,
        role: Literal["slave", "master"],
        buffer_size: int = 2048,
        buffer_region: int = 1,
        buffer_offsets: npt.ArrayLike | None = None,
        max_burst: int = 256,
        max_packet_size: int = ...,
        start: int | None = None,
        sentinel: bool = False,
        short_next_ends_packet: bool = False,
    ) -> None: ...
    @property
    def ring(self) -> Ring: ...
    @property
    def role(self) -> str: ...
    @property
    def burst(self) -> Burst: ...
    @property
    def sentinel(self) -> bool:
        """Slave: at most size - 1 slots published, a capacity-0 descriptor at head (DPDK)."""
    @property
    def short_next_ends_packet(self) -> bool:
        """Slave: NEXT on a partly filled slot ends the packet (stale flag of DPDK < 23.03)."""
    @property
    def buffer_offsets(self) -> npt.NDArray[np.uint32] | None:
        """Copy of the slave's per-slot buffer offsets."""
    packets: int
    bytes: int
    errors: int
    def rx_burst(self, max_packets: int | None = None) -> Burst:
        """Release the previous burst, then read up to max_packets (<= max_burst) whole packets."""
    def release(self) -> None:
        """Give the burst's slots back (master: one tail store; slave: refill). Idempotent."""
    def refill(self) -> int:
        """Slave: publish every free slot as an empty descriptor (one head store)."""
    def pending(self) -> int:
        """Descriptors the peer published that we have not read."""
    def has_news(self) -> bool:
        """The peer's counter moved since we last read (one load, no validation)."""
    def wait_news(self, budget_ns: int, release_gil: bool = True) -> bool:
        """Spin up to ``budget_ns`` for the peer's counter to move; whether it did."""
    def unread_packets(self) -> int:
        """Packets published and never delivered; never raises for the peer, counts no error."""
    mask_interrupts: bool
    def close(self) -> None:
        """Stop using the ring; shared memory is not touched afterwards."""

class TxRing:
    """Transmit side. slave: S2M ring, own buffers; master: M2S ring, peer's empty descriptors.

    Each call: at most max_burst packets, one counter store, at most one signal, none
    while the receiver has set MASK_INT. stage() copies without publishing; every other
    transmit call flushes the staged packets first, so order is kept. Packets go whole or not
    at all, in order; a call stops at the first packet that does not fit. Large packets are
    NEXT-chained over several buffers.

    ``metadata``: one u32 per packet (None = all 0), written into every descriptor of the
    packet. A wrong count or any value outside 0..2**32-1 (also of packets that would not
    fit now) raises ValueError before a packet of the call is written; packets staged
    earlier are still published first. forward() and tx_burst_from() keep each packet's
    received metadata.
    """

    def __init__(
        self,
        ring: Ring,
        *,
        role: Literal["slave", "master"],
        signaller: Signaller | None = None,
        eventfd: int = -1,
        buffer_size: int = 2048,
        buffer_region: int = 1,
        buffer_offsets: npt.ArrayLike | None = None,
        max_burst: int = 256,
        max_packet_size: int = ...,
        start: int | None = None,
    ) -> None: ...
    @property
    def ring(self) -> Ring: ...
    @property
    def role(self) -> str: ...
    @property
    def buffer_offsets(self) -> npt.NDArray[np.uint32] | None: ...
    packets: int
    bytes: int
    errors: int
    def free_slots(self) -> int:
        """Free descriptors now; flushes staged packets first."""
    @property
    def staged(self) -> int:
        """Packets staged and not yet published."""
    def stage(self, data: Buffer, metadata: int = 0) -> bool:
        """Copy one packet into the next free slot(s), unpublished; False if it does not fit."""
    def flush(self) -> int:
        """Publish staged packets (one store, at most one signal); return how many."""
    def discard(self) -> int:
        """Forget staged packets without publishing; return how many."""
    def tx_burst(self, packets: Sequence[Buffer], metadata: _Metadata = None) -> int:
        """Copy packets in; return how many were sent (a prefix of ``packets``)."""
    def tx_burst_array(
        self,
        data: npt.NDArray[np.uint8],
        lengths: npt.NDArray[np.uint32],
        metadata: _Metadata = None,
    ) -> int:
        """Rows of a 2-D C-contiguous uint8 array, ``lengths[i] <= data.shape[1]``."""
    def tx_burst_from(self, burst: Burst, start: int = 0) -> int:
        """Copy packets ``start..`` of a received burst (with their metadata); a prefix goes.

        LocalProtocolError if the burst's ring is closed or packet ``start`` was forwarded,
        IndexError if ``start`` is outside 0..len(burst).
        """
    def alloc(self, n: int) -> list[memoryview]:
        """Up to n writable buffers at the next free slots; pending until commit()."""
    def commit(self, lengths: Sequence[int], metadata: _Metadata = None) -> int:
        """Publish the first len(lengths) allocated buffers; the rest is abandoned."""
    def forward(self, burst: Burst) -> int:
        """Slave only, zero-copy: swap buffers of the burst's leading single-segment packets."""
    def signal(self) -> None:
        """Signal the peer now through the signaller, regardless of MASK_INT."""
    def close(self) -> None: ...

class Completed:
    """Already-done awaitable: ``await c`` gives its value (once) without suspending."""

    def __init__(self, value: object = None) -> None: ...
    def __await__(self) -> Generator[None, None, object]: ...

AM_SEND: bool
DONE: Completed
TURN_INTERVAL_NS: int

class YieldOnce:
    """Awaitable that gives the loop one turn (like ``asyncio.sleep(0)``), then its value
    (None unless a packet stream handed one over); reusable."""

    def __await__(self) -> Generator[None, None, Any]: ...

class InterruptCore:
    """Drains a private edge-triggered epoll set; ``callbacks[fd]()`` for each signal."""

    def __init__(self, epoll_fd: int, callbacks: dict[int, Callable[[], None]]) -> None: ...
    def ready(self) -> None:
        """The loop's reader callback: never raises."""
    def close(self) -> None: ...

class Waiter:
    """A reusable future for the one task waiting on a queue; ``wake(True)`` from a loop
    callback resumes it at once, other outcomes arrive through ``call_soon``."""

    _asyncio_future_blocking: bool
    def __init__(self, loop: AbstractEventLoop) -> None: ...
    def get_loop(self) -> AbstractEventLoop: ...
    @property
    def pending(self) -> bool: ...
    def arm(self) -> Waiter:
        """Ready for one wait (``RuntimeError`` while one is pending); returns self."""
    def done(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def result(self) -> None: ...
    def exception(self) -> BaseException | None: ...
    def add_done_callback(
        self, fn: Callable[[Any], object], *, context: Context | None = None
    ) -> None: ...
    def remove_done_callback(self, fn: Callable[[Any], object]) -> int: ...
    def wake(self, direct: bool = False) -> None:
        """Resume the waiting task: now if ``direct`` and no task runs, else next iteration."""
    def fail(self, exc: BaseException) -> None:
        """The waiting task gets ``exc`` (next iteration)."""
    def cancel(self, msg: object = None) -> bool: ...
    def __await__(self) -> Generator[Any]: ...

class QueueCore:
    """Index, the gate (``closed_reason``: None while the link is up), peer-error reporting."""

    def __init__(self, index: int, on_peer_error: Callable[[PeerProtocolError], None]) -> None: ...
    @property
    def index(self) -> int: ...
    @property
    def closed_reason(self) -> str | None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def on_peer_error(self) -> Callable[[PeerProtocolError], None]: ...
    peer_broke_it: bool
    def _check_open(self) -> None:
        """``DisconnectedError(closed_reason)`` once the gate is closed."""
    def _peer_error(self, exc: PeerProtocolError) -> None: ...
    def _shut(self, reason: str) -> None:
        """Close the gate."""
    _turn_ns: int  # a task that never suspends on the queue yields after this long (ns)
    def _share_turns_with(self, other: QueueCore) -> None:
        """Count turns on ``other``'s clock (the queues of one link share one)."""
    def _turn_now(self) -> bool:
        """True (and the turn counted) once the caller has kept its loop for ``_turn_ns``
        without suspending: it should yield once now."""
    def _turned(self) -> None:
        """The caller just suspended: its loop had a turn."""

class RxQueueCore(QueueCore):
    """The C half of ``RxQueue``: bursts, and ``async for`` (subclasses define ``_wait``)."""

    def __init__(
        self,
        index: int,
        ring: RxRing,
        on_peer_error: Callable[[PeerProtocolError], None],
        loop: AbstractEventLoop | None = None,
    ) -> None: ...
    @property
    def ring(self) -> RxRing: ...
    @property
    def _waiter(self) -> Waiter:
        """The consumer's reused waiter (queues built with a loop only)."""
    _wait_mode: Literal["python", "interrupt", "polling", "adaptive"]  # how waits happen
    _spin_ns: int  # polling: the longest spin between two loop turns
    _window_ns: int  # adaptive: how long to poll after traffic
    _last_traffic: int  # adaptive: the clock (ns) of the last traffic seen
    spin_releases_gil: bool
    def _wait_c(self) -> Awaitable[None]:
        """One wait in the queue's mode (a reused awaitable)."""
    def _set_flush_queues(self, queues: Sequence[TxQueueCore]) -> None: ...
    def flush_tx(self) -> None:
        """Publish what the queues of ``_set_flush_queues`` have staged."""
    def _interrupt(self) -> None:
        """Interrupt callback: wake (and run) the consumer; ``_empty_wakeup()`` if no news."""
    def _empty_wakeup(self) -> None: ...
    def recv_burst_nowait(self, max_packets: int = 256) -> Burst:
        """Take what is there now (possibly nothing); releases the previous burst."""
    def __aiter__(self) -> PacketStream: ...
    def _wait(self) -> Awaitable[None]: ...

class PacketResume:
    """The reused awaitable of an interrupt-mode wait in ``async for``."""

    def __await__(self) -> Generator[Any, None, memoryview | bytes]: ...

class PacketStream:
    """``async for`` over a queue: a reused Completed per packet, a coroutine only to wait."""

    def __init__(self, queue: RxQueueCore, max_packets: int = 0) -> None: ...
    def __aiter__(self) -> PacketStream: ...
    def __anext__(self) -> Awaitable[memoryview | bytes]: ...

class TxQueueCore(QueueCore):
    """The C half of ``TxQueue``: ``send`` (subclasses define ``_send_slow``)."""

    def __init__(
        self,
        index: int,
        ring: TxRing,
        on_peer_error: Callable[[PeerProtocolError], None],
        loop: AbstractEventLoop,
        max_burst: int = 256,
    ) -> None: ...
    @property
    def ring(self) -> TxRing: ...
    _yield_every: int  # sends between looks at the clock (0: never yields; a testing knob)
    def send(self, data: Buffer, metadata: int = 0) -> Awaitable[None]:
        """Stage one packet; DONE (or YieldOnce every max_burst) when it fit, else the
        subclass's ``_send_slow(data, metadata)``."""
    def flush(self) -> int:
        """Publish what ``send`` staged now; how many packets."""
    async def _send_slow(self, data: Buffer, metadata: int) -> None: ...

def signal_backend() -> Literal["io_uring", "thread"]:
    """How this process writes peer eventfds without ever blocking (probed once)."""

class Signaller:
    """Writes 1 to the peer's eventfds of one link; no call ever blocks the caller.

    ``on_fault(reason)`` is called once if the peer breaks its eventfd (made it blocking).
    """

    def __init__(
        self,
        on_fault: Callable[[str], None] | None = None,
        *,
        backend: Literal["io_uring", "thread"] | None = None,
    ) -> None: ...
    @property
    def backend(self) -> str: ...
    closed: bool
    fault: str | None
    signals: int
    failures: int
    def add(self, fd: int) -> int:
        """Give ``fd`` a slot; return it."""
    def signal(self, slot: int) -> None:
        """Wake the peer through ``slot``; never blocks."""
    def close(self) -> None:
        """Stop signalling; close the fds afterwards."""
