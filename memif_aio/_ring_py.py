"""Pure-Python reference implementation of :mod:`memif_aio._ring` (same API, same semantics).

This is the oracle of the differential tests and a readable statement of the ring rules; it is
one to two orders of magnitude slower than the Cython core and is not meant for the data path.
Every public call must give the same results, raise the same exceptions with the same reasons,
and leave the same bytes in shared memory as the Cython module. The theory of operation (who
owns head and tail, ordering, slot lifetime) is at the top of ``cython_ext/ring.pyx``; Python
needs no explicit barriers here because the oracle is only ever run in one process.
"""

from __future__ import annotations

import asyncio
import functools
import operator
import os
import select
import struct
import time
from collections.abc import Sequence

import numpy as np

from .errors import DisconnectedError, LocalProtocolError, PeerProtocolError

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "DESC_FLAG_NEXT",
    "DESC_SIZE",
    "MAX_LOG2_RING_SIZE",
    "RING_COOKIE",
    "RING_FLAG_MASK_INT",
    "Burst",
    "RegionTable",
    "Ring",
    "RxRing",
    "TxRing",
    "Completed",
    "DONE",
    "YieldOnce",
    "InterruptCore",
    "Waiter",
    "QueueCore",
    "RxQueueCore",
    "PacketStream",
    "PacketResume",
    "QueueWait",
    "TxQueueCore",
    "ring_bytes",
]

RING_COOKIE = 0x3E31F20
DESC_FLAG_NEXT = 1
RING_FLAG_MASK_INT = 1
DESC_SIZE = 16
MAX_LOG2_RING_SIZE = 14
DEFAULT_MAX_PACKET_SIZE = 65536 + 512
DEFAULT_BURST = 256

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_DESC = struct.Struct("<HHIII")
_FLAGS = struct.Struct("<H")
_U32_MAX = 0xFFFFFFFF


def ring_bytes(log2_size: int, cacheline: int = 64) -> int:
    """Bytes taken by one ring: two header cache lines plus ``2**log2_size`` descriptors."""
    _check_geometry(log2_size, cacheline)
    return 2 * cacheline + (DESC_SIZE << log2_size)


def _check_geometry(log2_size: int, cacheline: int) -> None:
    if not 0 <= log2_size <= MAX_LOG2_RING_SIZE:
        raise ValueError(f"log2 ring size {log2_size} not in 0..{MAX_LOG2_RING_SIZE}")
    if cacheline not in (64, 128):
        raise ValueError(f"cache line size {cacheline} is neither 64 nor 128")


def _buffer_table(ring: Ring, buffer_region: int, buffer_size: int, offsets) -> np.ndarray:
    regions = ring.regions
    if not 0 <= buffer_region < len(regions):
        raise ValueError(f"buffer region {buffer_region} does not exist")
    if not 0 < buffer_size <= _U32_MAX:
        raise ValueError(f"buffer size {buffer_size} not in 1..2**32-1")
    if offsets is None:
        raise ValueError("role='slave' needs buffer_offsets (one buffer per ring slot)")
    a = np.asarray(offsets)
    if a.ndim != 1 or a.shape[0] != ring.size:
        raise ValueError(f"buffer_offsets must have exactly {ring.size} entries")
    if a.dtype.kind not in "iu":
        raise ValueError("buffer_offsets must be integers")
    a = a.astype(np.int64)
    rsize = regions.size(buffer_region)
    bad = (a < 0) | (a > _U32_MAX) | (a + buffer_size > rsize)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"buffer {i} at offset {int(a[i])} + {buffer_size} beyond region {buffer_region} "
            f"({rsize} bytes)"
        )
    return np.ascontiguousarray(a, dtype=np.uint32)


def _format_is(mv: memoryview, code: str, itemsize: int) -> bool:
    fmt = mv.format.lstrip("=<@")
    return mv.itemsize == itemsize and fmt == code


class RegionTable:
    """The shared-memory regions of one side of an interface, by region index."""

    def __init__(self, buffers) -> None:
        if hasattr(self, "_views"):
            raise LocalProtocolError("RegionTable is already initialised")
        buffers = list(buffers)
        if len(buffers) > 65536:
            raise ValueError(f"{len(buffers)} regions: memif region indices are u16")
        views: list[memoryview] = []
        try:
            for i, buf in enumerate(buffers):
                mv = memoryview(buf)
                if mv.readonly:
                    raise ValueError(f"region {i}: buffer is read-only")
                if not mv.c_contiguous:
                    raise ValueError(f"region {i}: buffer is not contiguous")
                if mv.ndim != 1 or mv.format != "B":
                    mv = mv.cast("B")
                views.append(mv)
        except BaseException:
            for mv in views:
                mv.release()
            raise
        self._views = views
        self._sizes = [len(mv) for mv in views]
        self._closed = False

    def __len__(self) -> int:
        return len(self._sizes)

    def size(self, index: int) -> int:
        if not 0 <= index < len(self._sizes):
            raise IndexError(f"region {index} does not exist")
        return self._sizes[index]

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for mv in self._views:
            mv.release()
        self._views = []

    def _view(self, region: int) -> memoryview:
        if self._closed:
            raise LocalProtocolError("region table is closed")
        return self._views[region]

    def _check(self) -> None:
        if self._closed:
            raise LocalProtocolError("region table is closed")


class Ring:
    """One ring (header + descriptors) at ``offset`` in region ``region`` of ``regions``."""

    def __init__(
        self, regions: RegionTable, region: int, offset: int, log2_size: int, cacheline: int = 64
    ) -> None:
        if not isinstance(regions, RegionTable):
            raise TypeError("regions must be a RegionTable")
        regions._check()
        if not 0 <= region < len(regions):
            raise ValueError(f"region {region} does not exist")
        _check_geometry(log2_size, cacheline)
        if offset < 0 or offset % 4:
            raise ValueError(f"ring offset {offset} is negative or not 4-byte aligned")
        nbytes = ring_bytes(log2_size, cacheline)
        if offset + nbytes > regions.size(region):
            raise ValueError(
                f"ring at offset {offset} ({nbytes} bytes) beyond region {region} "
                f"({regions.size(region)} bytes)"
            )
        self._regions = regions
        self._region = region
        self._offset = offset
        self._log2 = log2_size
        self._cl = cacheline
        self._size = 1 << log2_size
        self._mask = self._size - 1

    regions = property(lambda self: self._regions)
    region = property(lambda self: self._region)
    offset = property(lambda self: self._offset)
    size = property(lambda self: self._size)
    log2_size = property(lambda self: self._log2)
    cacheline = property(lambda self: self._cl)

    def _mem(self) -> memoryview:
        return self._regions._view(self._region)

    def _get16(self, at: int) -> int:
        return _U16.unpack_from(self._mem(), self._offset + at)[0]

    def _set16(self, at: int, value: int) -> None:
        _U16.pack_into(self._mem(), self._offset + at, value)

    @property
    def cookie(self) -> int:
        return _U32.unpack_from(self._mem(), self._offset)[0]

    @cookie.setter
    def cookie(self, value: int) -> None:
        _U32.pack_into(self._mem(), self._offset, value)

    flags = property(lambda self: self._get16(4), lambda self, v: self._set16(4, v))
    head = property(lambda self: self._get16(6), lambda self, v: self._set16(6, v))
    tail = property(lambda self: self._get16(self._cl), lambda self, v: self._set16(self._cl, v))

    def initialize(self) -> None:
        mem = self._mem()
        nbytes = 2 * self._cl + DESC_SIZE * self._size
        mem[self._offset : self._offset + nbytes] = bytes(nbytes)
        _U32.pack_into(mem, self._offset, RING_COOKIE)

    def check_cookie(self) -> None:
        cookie = self.cookie
        if cookie != RING_COOKIE:
            raise PeerProtocolError(f"bad ring cookie 0x{cookie:08x}")

    def reset(self) -> None:
        self.head = 0
        self.tail = 0

    def _desc_at(self, slot: int) -> int:
        if not 0 <= slot < self._size:
            raise IndexError(f"slot {slot} not in 0..{self._size - 1}")
        return self._offset + 2 * self._cl + DESC_SIZE * slot

    def descriptor(self, slot: int) -> tuple[int, int, int, int, int]:
        at = self._desc_at(slot)
        return _DESC.unpack_from(self._mem(), at)

    def set_descriptor(
        self, slot: int, flags: int, region: int, length: int, offset: int, metadata: int = 0
    ) -> None:
        at = self._desc_at(slot)
        _DESC.pack_into(self._mem(), at, flags, region, length, offset, metadata)

    def __repr__(self) -> str:
        return (
            f"<Ring region={self._region} offset={self._offset} size={self._size} "
            f"cacheline={self._cl}>"
        )


class Burst:
    """Packets of one ``RxRing.rx_burst()``; preallocated and reused by its ring."""

    def __init__(self, rx: RxRing) -> None:
        self._rx = rx
        self._lengths_view: np.ndarray | None = None
        self._nsegs_view: np.ndarray | None = None
        self._meta_view: np.ndarray | None = None

    def __len__(self) -> int:
        return self._rx._n

    @property
    def lengths(self) -> np.ndarray:
        if self._lengths_view is None:
            self._lengths_view = _frozen(self._rx._lengths_w[: self._rx._n])
        return self._lengths_view

    @property
    def nsegments(self) -> np.ndarray:
        if self._nsegs_view is None:
            self._nsegs_view = _frozen(self._rx._nsegs_w[: self._rx._n])
        return self._nsegs_view

    @property
    def metadata(self) -> np.ndarray:
        if self._meta_view is None:
            self._meta_view = _frozen(self._rx._meta_w[: self._rx._n])
        return self._meta_view

    @property
    def forwarded(self) -> int:
        return self._rx._fwd

    @property
    def generation(self) -> int:
        return self._rx.generation

    def _check_packet(self, i: int) -> int:
        n = self._rx._n
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("packet index out of range")
        self._rx._check_open()
        self._rx._regions._check()
        if i < self._rx._fwd:
            raise LocalProtocolError(f"packet {i} was forwarded")
        return i

    def _segs(self, i: int):
        rx = self._rx
        f = rx._first[i]
        return rx._segs[f : f + int(rx._nsegs_w[i])]

    def __getitem__(self, i: int):
        i = self._check_packet(i)
        segs = self._segs(i)
        regions = self._rx._regions
        if len(segs) == 1:
            region, off, length = segs[0]
            return regions._view(region)[off : off + length]
        return b"".join(regions._view(r)[o : o + n] for r, o, n in segs)

    def segments(self, i: int) -> list[memoryview]:
        i = self._check_packet(i)
        regions = self._rx._regions
        return [regions._view(r)[o : o + n] for r, o, n in self._segs(i)]

    def copy_into(self, i: int, out) -> int:
        i = self._check_packet(i)
        total = int(self._rx._lengths_w[i])
        with memoryview(out) as mv:
            if mv.readonly:
                raise BufferError("out is not writable")
            if not mv.c_contiguous:
                raise BufferError("out is not contiguous")
            if mv.nbytes < total:
                raise ValueError(f"buffer of {mv.nbytes} bytes < packet of {total} bytes")
            with mv.cast("B") as dst:
                at = 0
                for r, o, n in self._segs(i):
                    dst[at : at + n] = self._rx._regions._view(r)[o : o + n]
                    at += n
        return total

    def gather_into(self, out, offsets, snaplen: int = 0) -> int:
        rx = self._rx
        n = rx._n
        rx._check_open()
        rx._regions._check()
        snaplen = operator.index(snaplen)
        if snaplen < 0:
            raise ValueError(f"snaplen {snaplen} is negative")
        if rx._fwd:
            raise LocalProtocolError(f"{rx._fwd} packets of the burst were forwarded")
        with memoryview(offsets) as fv:
            if fv.ndim != 1 or fv.format.lstrip("=<@") not in ("q", "l") or fv.itemsize != 8:
                raise ValueError("offsets must be a 1-D contiguous int64 array")
            if not fv.c_contiguous:
                raise ValueError("offsets must be a 1-D contiguous int64 array")
            at = fv.tolist()
        if len(at) != n:
            raise ValueError(f"{len(at)} offsets for {n} packets")
        with memoryview(out) as mv:
            if mv.readonly:
                raise BufferError("out is not writable")
            if not mv.c_contiguous:
                raise BufferError("out is not contiguous")
            size = mv.nbytes
            wants = [
                min(int(rx._lengths_w[i]), snaplen) if snaplen else int(rx._lengths_w[i])
                for i in range(n)
            ]
            for i in range(n):
                if at[i] < 0 or at[i] + wants[i] > size:
                    raise ValueError(
                        f"packet {i} ({wants[i]} bytes at offset {at[i]}) does not fit in "
                        f"{size} bytes"
                    )
            total = 0
            with mv.cast("B") as dst:
                for i in range(n):
                    pos, want = at[i], wants[i]
                    total += want
                    for r, o, length in self._segs(i):
                        if not want:
                            break
                        length = min(length, want)
                        dst[pos : pos + length] = self._rx._regions._view(r)[o : o + length]
                        pos += length
                        want -= length
        return total

    def release(self) -> None:
        self._rx.release()

    def __repr__(self) -> str:
        return f"<Burst packets={self._rx._n}>"


def _guarded(method):
    """A transmit call may not start while another on the same ring is in progress (a GC
    finalizer that sends, run by an allocation inside the first call)."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if self._in_call:
            raise LocalProtocolError("transmit call re-entered while another is in progress")
        self._in_call = True
        try:
            return method(self, *args, **kwargs)
        finally:
            self._in_call = False

    return call


def _frozen(values: np.ndarray) -> np.ndarray:
    """A read-only copy nobody can make writable (over bytes): what users see of the
    ring's per-packet arrays."""
    return np.frombuffer(values.tobytes(), values.dtype)


def _meta_value(value, i: int) -> int:
    value = operator.index(value)
    if not 0 <= value <= _U32_MAX:
        raise ValueError(f"metadata[{i}] = {value} not in 0..{_U32_MAX}")
    return value


def _metadata(metadata, count: int, n: int) -> list[int]:
    """The first n of one u32 per packet (zeros for None)."""
    if metadata is None:
        return [0] * n
    if len(metadata) != count:
        raise ValueError(f"{len(metadata)} metadata values for {count} packets")
    return [_meta_value(metadata[i], i) for i in range(count)][:n]


class _RingSide:
    """What RxRing and TxRing share: arguments, the slave's buffer table, counters."""

    def __init__(
        self,
        ring: Ring,
        *,
        role: str,
        buffer_size: int = 2048,
        buffer_region: int = 1,
        buffer_offsets=None,
        max_burst: int = 256,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        start: int | None = None,
    ) -> None:
        if not isinstance(ring, Ring):
            raise TypeError("ring must be a Ring")
        if role not in ("slave", "master"):
            raise ValueError(f"role must be 'slave' or 'master', not {role!r}")
        if not 1 <= max_burst <= 65536:
            raise ValueError(f"max_burst {max_burst} not in 1..65536")
        if not 1 <= max_packet_size <= _U32_MAX:
            raise ValueError(f"max_packet_size {max_packet_size} not in 1..{_U32_MAX}")
        if start is not None and not 0 <= start <= 0xFFFF:
            raise ValueError(f"start {start} is not a u16 counter value")
        self._slave = role == "slave"
        regions = ring.regions
        regions._check()
        # Buffer offset per slot; only a slave owns the buffers, a master's stays empty.
        self._table: np.ndarray = np.empty(0, np.uint32)
        self._buffer_region = 0
        self._buffer_size = 0
        if self._slave:
            self._table = _buffer_table(ring, buffer_region, buffer_size, buffer_offsets)
            self._buffer_region = buffer_region
            self._buffer_size = buffer_size
        elif buffer_offsets is not None:
            raise ValueError("buffer_offsets is only used with role='slave'")
        self._ring = ring
        self._regions = regions
        self._max_burst = max_burst
        self._max_packet = max_packet_size
        self._start = start
        self._size = ring.size
        self._mask = ring.size - 1
        self._closed = False
        self.packets = 0
        self.bytes = 0
        self.errors = 0

    ring = property(lambda self: self._ring)
    role = property(lambda self: "slave" if self._slave else "master")

    @property
    def buffer_offsets(self):
        return self._table.copy() if self._slave else None

    def _peer_error(self, reason: str) -> PeerProtocolError:
        self.errors += 1
        return PeerProtocolError(reason)


class RxRing(_RingSide):
    """Receive side of one ring (see the Cython module for the full contract)."""

    def __init__(
        self,
        ring: Ring,
        *,
        sentinel: bool = False,
        short_next_ends_packet: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(ring, **kwargs)
        if (sentinel or short_next_ends_packet) and not self._slave:
            raise ValueError("sentinel and short_next_ends_packet are for role='slave'")
        if sentinel and ring.size < 2:
            raise ValueError("a sentinel slot needs a ring of at least 2 slots")
        self._sentinel = bool(sentinel)
        self._short_next = bool(short_next_ends_packet)
        self._limit = ring.size - 1 if sentinel else ring.size
        max_burst = self._max_burst
        self._lengths_w = np.zeros(max_burst, np.uint32)  # ours; the user sees frozen copies
        self._nsegs_w = np.zeros(max_burst, np.uint32)
        self._meta_w = np.zeros(max_burst, np.uint32)
        self.generation = 0
        self._first = [0] * max_burst
        self._segs: list[tuple[int, int, int]] = [(0, 0, 0)] * ring.size
        self._n = 0
        self._fwd = 0
        if self._start is not None:
            self._last = self._head = self._start
        else:
            self._last = ring.tail
            self._head = ring.head
            if self._slave and (self._head - self._last) & 0xFFFF > ring.size:
                raise ValueError("ring head/tail are inconsistent; reset() the ring first")
        self._released = self._last
        self._bstart = self._last
        self._seen = self._last
        self._burst = Burst(self)

    burst = property(lambda self: self._burst)

    def _check_open(self) -> None:
        if self._closed:
            raise LocalProtocolError("rx ring is closed")

    @property
    def sentinel(self) -> bool:
        return self._sentinel

    @property
    def short_next_ends_packet(self) -> bool:
        return self._short_next

    def _available(self) -> int:
        """Descriptors the peer published, checked against what we had given it (before any
        release or refill, so an overrun cannot be made to look legal by moving our head)."""
        ring = self._ring
        if self._slave:
            tail = self._seen = ring.tail
            avail = (tail - self._last) & 0xFFFF
            published = (self._head - self._last) & 0xFFFF
            if avail > published:
                raise self._peer_error(
                    f"tail {tail} is {avail - published} slots past head {self._head} "
                    f"(ring size {self._size})"
                )
        else:
            self._seen = ring.head
            avail = (self._seen - self._last) & 0xFFFF
            if avail > self._size - ((self._last - self._released) & 0xFFFF):
                moved = (self._last + avail - self._released) & 0xFFFF
                raise self._peer_error(f"head moved by {moved} > ring size {self._size}")
        return avail

    def pending(self) -> int:
        self._check_open()
        return self._available()

    def has_news(self) -> bool:
        if self._closed or self._regions.closed:
            return False
        ring = self._ring
        return (ring.tail if self._slave else ring.head) != self._last

    def _moved(self) -> bool:
        if self._closed or self._regions.closed:
            return False
        ring = self._ring
        return (ring.tail if self._slave else ring.head) != self._seen

    def wait_news(self, budget_ns: int, release_gil: bool = True) -> bool:
        deadline = time.monotonic_ns() + budget_ns
        while not self._moved():
            if self._closed or self._regions.closed or time.monotonic_ns() >= deadline:
                return False
        return True

    def rx_burst(self, max_packets: int | None = None) -> Burst:
        maxp = self._max_burst
        if max_packets is not None:
            if max_packets < 0:
                raise ValueError("max_packets must be >= 0")
            maxp = min(maxp, max_packets)
        self._check_open()
        avail = self._available()
        self._release((self._last + avail) & 0xFFFF)
        try:
            n, ndesc, nbytes = self._parse(avail, maxp)
        except PeerProtocolError:
            self._n = 0
            self.errors += 1
            raise
        self._n = n
        self._bstart = self._last
        self._last = (self._last + ndesc) & 0xFFFF
        self.packets += n
        self.bytes += nbytes
        return self._burst

    def _parse(self, avail: int, maxp: int) -> tuple[int, int, int]:
        ring = self._ring
        mem = ring._mem()
        descs = ring.offset + 2 * ring.cacheline
        regions = self._regions
        size, mask, last = self._size, self._mask, self._last
        d = n = nbytes = first_meta = 0
        while n < maxp and d < avail:
            start = first = d
            total = 0
            while True:
                if d >= avail:
                    if d - start >= size:
                        raise PeerProtocolError(
                            f"descriptor {(last + start) & mask}: NEXT chain longer than ring "
                            f"({size} descriptors)"
                        )
                    d = start
                    break
                slot = (last + d) & mask
                flags, region, length, off, meta = _DESC.unpack_from(mem, descs + DESC_SIZE * slot)
                more = flags & DESC_FLAG_NEXT
                if self._slave:
                    if length > self._buffer_size:
                        raise PeerProtocolError(
                            f"descriptor {slot}: length {length} > buffer size {self._buffer_size}"
                        )
                    if more and self._short_next and 0 < length < self._buffer_size:
                        # DPDK < 23.03 fills every slot it continues from: NEXT on a partly
                        # filled one is stale (a dropped chain left it on a packet's first
                        # slot). A packet starts here; a chain we are in ended before it.
                        if d > first:
                            self._record(n, first, d, total, first_meta)
                            nbytes += total
                            n += 1
                            break
                        more = 0
                    if more and length == 0 and d == first and self._sentinel:
                        d += 1  # an empty slot (capacity 0) the peer stepped over
                        first = d
                        continue
                    region = self._buffer_region
                    off = int(self._table[slot])
                else:
                    if region >= len(regions):
                        raise PeerProtocolError(
                            f"descriptor {slot}: region {region} does not exist"
                        )
                    rsize = regions.size(region)
                    if off + length > rsize:
                        raise PeerProtocolError(
                            f"descriptor {slot}: offset {off} + length {length} beyond region "
                            f"{region} ({rsize} bytes)"
                        )
                total += length
                if total > self._max_packet:
                    raise PeerProtocolError(
                        f"descriptor {slot}: packet of at least {total} bytes exceeds "
                        f"max_packet_size {self._max_packet}"
                    )
                if d == first:
                    first_meta = meta
                self._segs[d] = (region, off, length)
                d += 1
                if not more:
                    self._record(n, first, d, total, first_meta)
                    nbytes += total
                    n += 1
                    break
            if d == start:
                break
        return n, d, nbytes

    def _record(self, n: int, first: int, end: int, total: int, meta: int) -> None:
        self._first[n] = first
        self._nsegs_w[n] = end - first
        self._lengths_w[n] = total
        self._meta_w[n] = meta

    def unread_packets(self) -> int:
        if self._closed or self._regions.closed:
            return 0
        ring = self._ring
        mem = ring._mem()
        if self._slave:
            bound = min((ring.tail - self._last) & 0xFFFF, (self._head - self._last) & 0xFFFF)
        else:
            room = self._size - ((self._last - self._released) & 0xFFFF)
            bound = min((ring.head - self._last) & 0xFFFF, room)
        descs = ring.offset + 2 * ring.cacheline
        count = 0
        in_chain = False
        for d in range(bound):  # as _parse splits them
            slot = (self._last + d) & self._mask
            flags, _, length, _, _ = _DESC.unpack_from(mem, descs + DESC_SIZE * slot)
            more = bool(flags & DESC_FLAG_NEXT)
            if more and self._short_next and 0 < length < self._buffer_size:
                count += in_chain
                more = False
            if more and length == 0 and not in_chain and self._sentinel:
                continue
            in_chain = more
            count += not more
        return count + in_chain  # a chain published in part is a packet too

    def _forget_burst(self) -> None:
        self._n = 0
        self._fwd = 0
        self.generation += 1
        self._burst._lengths_view = None
        self._burst._nsegs_view = None
        self._burst._meta_view = None

    def _release(self, seen_tail: int | None = None) -> None:
        self._forget_burst()
        if self._slave:
            self._released = self._last
            self._refill(seen_tail)
        elif self._released != self._last:
            # Clear flags of returned slots (DPDK leaves a stale NEXT on a packet's first one).
            ring = self._ring
            mem = ring._mem()
            descs = ring.offset + 2 * ring.cacheline
            slot = self._released
            while slot != self._last:
                _FLAGS.pack_into(mem, descs + DESC_SIZE * (slot & self._mask), 0)
                slot = (slot + 1) & 0xFFFF
            ring.tail = self._last
            self._released = self._last

    def release(self) -> None:
        self._check_open()
        self._release()

    def _refill(self, seen_tail: int | None = None) -> int:
        ring = self._ring
        mem = ring._mem()
        free = self._limit - ((self._head - self._released) & 0xFFFF)
        if free <= 0:
            return 0
        descs = ring.offset + 2 * ring.cacheline
        first = 0
        if self._sentinel:
            if seen_tail is None:
                seen_tail = ring.tail
            if seen_tail != self._head:
                # A peer burst that read our previous head may still step onto desc[head]: it
                # must stay empty, so it is handed over as it is (capacity 0), with at least
                # one real slot, or not yet.
                if free < 2:
                    return 0
                first = 1
        for i in range(first, free):
            slot = (self._head + i) & self._mask
            _DESC.pack_into(
                mem,
                descs + DESC_SIZE * slot,
                0,
                self._buffer_region,
                self._buffer_size,
                int(self._table[slot]),
                0,
            )
        if self._sentinel:
            slot = (self._head + free) & self._mask
            _DESC.pack_into(
                mem, descs + DESC_SIZE * slot, 0, self._buffer_region, 0, int(self._table[slot]), 0
            )
        self._head = (self._head + free) & 0xFFFF
        ring.head = self._head
        return free

    def refill(self) -> int:
        self._check_open()
        if not self._slave:
            raise LocalProtocolError("refill() is for role='slave' (the buffer owner)")
        return self._refill()

    @property
    def mask_interrupts(self) -> bool:
        return bool(self._ring.flags & RING_FLAG_MASK_INT)

    @mask_interrupts.setter
    def mask_interrupts(self, value: bool) -> None:
        self._check_open()
        flags = self._ring.flags
        if value:
            self._ring.flags = flags | RING_FLAG_MASK_INT
        else:
            self._ring.flags = flags & ~RING_FLAG_MASK_INT & 0xFFFF

    def close(self) -> None:
        self._closed = True
        self._forget_burst()

    def __repr__(self) -> str:
        return (
            f"<RxRing role={self.role} size={self._size} packets={self.packets} "
            f"errors={self.errors}>"
        )


class TxRing(_RingSide):
    """Transmit side of one ring (see the Cython module for the full contract)."""

    def __init__(self, ring: Ring, *, signaller=None, eventfd: int = -1, **kwargs) -> None:
        if (signaller is None) != (eventfd < 0):
            raise ValueError("signaller and eventfd go together")
        super().__init__(ring, **kwargs)
        self._signaller = signaller
        self._signal_slot = -1 if signaller is None else signaller.add(eventfd)
        self._alloc_n = 0
        self._in_call = False
        self._staged_descs = self._staged_packets = self._staged_bytes = self._staged_room = (
            0  # stage(): not published yet
        )
        self._snap: list[tuple[int, int, int]] = []
        if self._start is not None:
            self._pos = self._start
        else:
            self._pos = ring.head if self._slave else ring.tail
        self._free_n = 0

    def _check_ready(self) -> None:
        if self._closed:
            raise LocalProtocolError("tx ring is closed")
        if self._alloc_n:
            raise LocalProtocolError("alloc() pending: commit() first")
        if self._staged_descs:
            self._flush()
        self._staged_room = 0

    def _free(self) -> int:
        ring = self._ring
        if self._slave:
            tail = ring.tail
            used = (self._pos - tail) & 0xFFFF
            if used > self._size:
                raise self._peer_error(
                    f"tail {tail} out of range: head {self._pos}, ring size {self._size}"
                )
            return self._size - used
        used = (ring.head - self._pos) & 0xFFFF
        if used > self._size:
            raise self._peer_error(f"head moved by {used} > ring size {self._size}")
        return used

    @_guarded
    def free_slots(self) -> int:
        if self._closed:
            raise LocalProtocolError("tx ring is closed")
        if self._staged_descs:
            self._flush()
        self._staged_room = 0
        return self._free()

    @property
    def staged(self) -> int:
        return self._staged_packets

    def _flush(self) -> int:
        n, nbytes, ndesc = self._staged_packets, self._staged_bytes, self._staged_descs
        self._staged_descs = self._staged_packets = self._staged_bytes = 0
        self._publish(ndesc)
        self.packets += n
        self.bytes += nbytes
        return n

    @_guarded
    def flush(self) -> int:
        if self._closed:
            raise LocalProtocolError("tx ring is closed")
        return self._flush() if self._staged_descs else 0

    def discard(self) -> int:
        n = self._staged_packets
        self._staged_descs = self._staged_packets = self._staged_bytes = 0
        return n

    def _stage_one(self, src: memoryview, meta: int) -> bool:
        self._ring._mem()  # region table still open
        if self._staged_room == 0:
            return False
        pos = self._pos
        self._pos = (pos + self._staged_descs) & 0xFFFF
        try:
            try:
                n, ndesc = self._plan([len(src)], self._staged_room)
            except PeerProtocolError:
                self.errors += 1
                raise
            nbytes = self._write([src], [meta], n) if n else 0
        finally:
            self._pos = pos
        if not n:
            return False
        self._staged_descs += ndesc
        self._staged_room -= ndesc
        self._staged_packets += 1
        self._staged_bytes += nbytes
        return True

    @_guarded
    def stage(self, data, metadata: int = 0) -> bool:
        if self._closed:
            raise LocalProtocolError("tx ring is closed")
        if self._alloc_n:
            raise LocalProtocolError("alloc() pending: commit() first")
        meta = _meta_value(metadata, 0)
        mv = memoryview(data)
        if not mv.c_contiguous:
            raise BufferError("packet buffer is not contiguous")
        mv = mv.cast("B") if (mv.ndim != 1 or mv.format != "B") else mv
        if mv.nbytes > _U32_MAX:
            raise ValueError("packet 0 longer than 4 GiB")
        if self._stage_one(mv, meta):
            return True
        free = self._free()
        if free < self._staged_descs:
            raise self._peer_error(
                f"peer counter moved back over {self._staged_descs} staged descriptors"
            )
        self._staged_room = free - self._staged_descs
        return self._stage_one(mv, meta)

    def _publish(self, ndesc: int) -> None:
        ring = self._ring
        ring._mem()  # region table still open
        if ndesc == 0:
            return
        self._pos = (self._pos + ndesc) & 0xFFFF
        if self._slave:
            ring.head = self._pos
        else:
            ring.tail = self._pos
        if self._signaller is not None and not ring.flags & RING_FLAG_MASK_INT:
            self._signaller.signal(self._signal_slot)

    def _snap_desc(self, mem: memoryview, d: int) -> tuple[int, int, int]:
        """Master: validated (region, offset, capacity) of the peer's descriptor at pos + d."""
        ring = self._ring
        slot = (self._pos + d) & self._mask
        _, region, cap, off, _ = _DESC.unpack_from(
            mem, ring.offset + 2 * ring.cacheline + DESC_SIZE * slot
        )
        if region >= len(self._regions):
            raise PeerProtocolError(f"descriptor {slot}: region {region} does not exist")
        if cap == 0:
            raise PeerProtocolError(f"descriptor {slot}: tx descriptor capacity 0")
        rsize = self._regions.size(region)
        if off + cap > rsize:
            raise PeerProtocolError(
                f"descriptor {slot}: offset {off} + capacity {cap} beyond region {region} "
                f"({rsize} bytes)"
            )
        return region, off, cap

    def _plan(self, lens: list[int], free: int, first: int = 0) -> tuple[int, int]:
        mem = self._ring._mem()
        snap = self._snap = []
        n = d = 0
        while n < len(lens):
            length = lens[n]
            if length > self._max_packet:
                raise LocalProtocolError(
                    f"packet {n + first}: {length} bytes exceed max_packet_size {self._max_packet}"
                )
            if self._slave:
                need = 1 if length == 0 else -(-length // self._buffer_size)
                if need > self._size:
                    raise LocalProtocolError(
                        f"packet {n + first}: {length} bytes need {need} descriptors, "
                        f"ring has {self._size}"
                    )
                if d + need > free:
                    break
                d += need
            else:
                start, rem = d, length
                while True:
                    if d >= free:
                        if start == 0 and free >= self._size:
                            raise LocalProtocolError(
                                f"packet {n + first}: {length} bytes can never fit the peer's "
                                f"ring ({self._size} slots holding {length - rem} bytes in all)"
                            )
                        d = start
                        break
                    if d >= len(snap):
                        snap.append(self._snap_desc(mem, d))
                    rem -= min(rem, snap[d][2])
                    d += 1
                    if rem == 0:
                        break
                if d == start:
                    break
            n += 1
        return n, d

    def _write(self, srcs: list, metas: list[int], n: int) -> int:
        ring = self._ring
        mem = ring._mem()
        descs = ring.offset + 2 * ring.cacheline
        d = nbytes = 0
        for p in range(n):
            src = srcs[p]
            rem = len(src)
            nbytes += rem
            at = 0
            while True:
                slot = (self._pos + d) & self._mask
                if self._slave:
                    region, off, cap = (
                        self._buffer_region,
                        int(self._table[slot]),
                        self._buffer_size,
                    )
                else:
                    region, off, cap = self._snap[d]
                take = min(rem, cap)
                self._regions._view(region)[off : off + take] = src[at : at + take]
                at += take
                rem -= take
                flags = DESC_FLAG_NEXT if rem else 0
                at_desc = descs + DESC_SIZE * slot
                if self._slave:
                    _DESC.pack_into(mem, at_desc, flags, region, take, off, metas[p])
                else:
                    _U16.pack_into(mem, at_desc, flags)
                    _U32.pack_into(mem, at_desc + 4, take)
                    _U32.pack_into(mem, at_desc + 12, metas[p])
                d += 1
                if rem == 0:
                    break
        return nbytes

    def _run(self, srcs: list, metas: list[int], first: int = 0) -> int:
        free = self._free_n
        try:
            n, ndesc = self._plan([len(s) for s in srcs], free, first)
        except PeerProtocolError:
            self.errors += 1
            raise
        nbytes = self._write(srcs, metas, n)
        self._publish(ndesc)
        self.packets += n
        self.bytes += nbytes
        return n

    @_guarded
    def tx_burst(self, packets: Sequence, metadata=None) -> int:
        self._check_ready()
        free = self._free_n = self._free()
        npk = min(self._max_burst, len(packets), free)
        srcs = []
        for i in range(npk):
            mv = memoryview(packets[i])
            if not mv.c_contiguous:
                raise BufferError("packet buffer is not contiguous")
            mv = mv.cast("B") if (mv.ndim != 1 or mv.format != "B") else mv
            if mv.nbytes > _U32_MAX:
                raise ValueError(f"packet {i} longer than 4 GiB")
            srcs.append(mv)
        return self._run(srcs, _metadata(metadata, len(packets), npk))

    @_guarded
    def tx_burst_array(self, data, lengths, metadata=None) -> int:
        self._check_ready()
        dmv = memoryview(data)
        lmv = memoryview(lengths)
        if not dmv.c_contiguous or not lmv.c_contiguous:
            raise ValueError("ndarray is not C-contiguous")
        if dmv.ndim != 2 or not _format_is(dmv, "B", 1):
            raise ValueError("data must be a 2-D C-contiguous uint8 array")
        if lmv.ndim != 1 or not _format_is(lmv, "I", 4):
            raise ValueError("lengths must be a 1-D contiguous uint32 array")
        assert dmv.shape is not None and lmv.shape is not None  # ndim checked above
        rows, width = dmv.shape
        if lmv.shape[0] != rows:
            raise ValueError(f"{lmv.shape[0]} lengths for {rows} packets")
        lens = lmv.tolist()
        for i, length in enumerate(lens):
            if length > width:
                raise ValueError(f"lengths[{i}] = {length} > row width {width}")
        free = self._free_n = self._free()
        npk = min(self._max_burst, rows, free)
        metas = _metadata(metadata, rows, npk)
        flat = dmv.cast("B") if dmv.nbytes else memoryview(b"")  # cast refuses zero shapes
        srcs = [flat[i * width : i * width + lens[i]] for i in range(npk)]
        return self._run(srcs, metas)

    @_guarded
    def tx_burst_from(self, burst: Burst, start: int = 0) -> int:
        if not isinstance(burst, Burst):
            raise TypeError("burst must be a Burst")
        start = operator.index(start)
        self._check_ready()
        rx = burst._rx
        rx._check_open()
        rx._regions._check()
        n = rx._n
        if not 0 <= start <= n:
            raise IndexError(f"start {start} outside 0..{n}")
        if start < rx._fwd:
            raise LocalProtocolError(f"packet {start} was forwarded")
        free = self._free_n = self._free()
        npk = min(self._max_burst, n - start, free)
        srcs = [memoryview(burst[i]) for i in range(start, start + npk)]
        return self._run(srcs, [int(m) for m in rx._meta_w[start : start + npk]], start)

    @_guarded
    def alloc(self, n: int) -> list[memoryview]:
        self._check_ready()
        if n < 0:
            raise ValueError("n must be >= 0")
        free = self._free()
        k = min(n, free, self._max_burst)
        if self._slave:
            views = []
            for i in range(k):
                slot = (self._pos + i) & self._mask
                off = int(self._table[slot])
                views.append(
                    self._regions._view(self._buffer_region)[off : off + self._buffer_size]
                )
        else:
            mem = self._ring._mem()
            try:
                snap = [self._snap_desc(mem, i) for i in range(k)]
            except PeerProtocolError:
                self.errors += 1
                raise
            self._snap = snap
            views = [self._regions._view(r)[o : o + c] for r, o, c in snap]
        self._alloc_n = k
        return views

    @_guarded
    def commit(self, lengths: Sequence[int], metadata=None) -> int:
        if self._closed:
            raise LocalProtocolError("tx ring is closed")
        m = len(lengths)
        if m == 0 and self._alloc_n == 0:
            return 0
        if self._alloc_n == 0:
            raise LocalProtocolError("commit() without alloc()")
        if m > self._alloc_n:
            raise LocalProtocolError(f"commit of {m} buffers, only {self._alloc_n} allocated")
        lens = [operator.index(x) for x in lengths]
        for i in range(m):
            cap = self._buffer_size if self._slave else self._snap[i][2]
            if not 0 <= lens[i] <= cap:
                raise LocalProtocolError(f"length {lens[i]} of buffer {i} > capacity {cap}")
        metas = _metadata(metadata, m, m)
        ring = self._ring
        mem = ring._mem()
        descs = ring.offset + 2 * ring.cacheline
        for i in range(m):
            slot = (self._pos + i) & self._mask
            at = descs + DESC_SIZE * slot
            if self._slave:
                _DESC.pack_into(
                    mem, at, 0, self._buffer_region, lens[i], int(self._table[slot]), metas[i]
                )
            else:
                _U16.pack_into(mem, at, 0)
                _U32.pack_into(mem, at + 4, lens[i])
                _U32.pack_into(mem, at + 12, metas[i])
        self._alloc_n = 0
        self._publish(m)
        self.packets += m
        self.bytes += sum(lens)
        return m

    @_guarded
    def forward(self, burst: Burst) -> int:
        self._check_ready()
        if not isinstance(burst, Burst):
            raise TypeError("burst must be a Burst")
        rx = burst._rx
        if not self._slave or not rx._slave:
            raise LocalProtocolError("forward() needs a slave TxRing and a slave RxRing burst")
        rx._check_open()
        if rx._regions is not self._regions:
            raise LocalProtocolError("forward() needs both rings on the same RegionTable")
        if rx._buffer_region != self._buffer_region or rx._buffer_size != self._buffer_size:
            raise LocalProtocolError("forward() needs the same buffer region and buffer size")
        free = self._free()
        ring = self._ring
        mem = ring._mem()
        descs = ring.offset + 2 * ring.cacheline
        k, i, nbytes = 0, rx._fwd, 0
        while i < rx._n and k < free and k < self._max_burst:
            f = rx._first[i]
            if rx._nsegs_w[i] != 1:
                break
            rslot = (rx._bstart + f) & rx._mask
            tslot = (self._pos + k) & self._mask
            off = int(rx._table[rslot])
            length = rx._segs[f][2]
            meta = int(rx._meta_w[i])
            _DESC.pack_into(
                mem, descs + DESC_SIZE * tslot, 0, self._buffer_region, length, off, meta
            )
            rx._table[rslot] = self._table[tslot]
            self._table[tslot] = off
            nbytes += length
            k += 1
            i += 1
        rx._fwd = i
        self._publish(k)
        self.packets += k
        self.bytes += nbytes
        return k

    def signal(self) -> None:
        if self._signaller is not None:
            self._signaller.signal(self._signal_slot)

    def close(self) -> None:
        self._closed = True
        self._alloc_n = 0
        self.discard()

    def __repr__(self) -> str:
        return (
            f"<TxRing role={self.role} size={self._size} packets={self.packets} "
            f"errors={self.errors}>"
        )


# ------------------------------------------------------------------------ the asyncio glue


class Completed:
    """An awaitable that is already done: ``await`` gives ``value`` without suspending."""

    def __init__(self, value=None) -> None:
        self.value = value

    def __await__(self):
        value, self.value = self.value, None
        return value
        yield  # pragma: no cover - makes this a generator that returns at once


DONE = Completed(None)
TURN_INTERVAL_NS = 200_000
POLLED_FLUSH = 32


class YieldOnce:
    """Gives the loop one turn, like ``asyncio.sleep(0)``; reusable."""

    def __await__(self):
        yield


class InterruptCore:
    """Drains a private edge-triggered epoll set and calls ``callbacks[fd]()`` per signal."""

    def __init__(self, epoll_fd: int, callbacks: dict) -> None:
        self._epoll = select.epoll.fromfd(os.dup(epoll_fd))
        self._callbacks = callbacks

    def ready(self) -> None:
        if self._epoll.closed:
            return
        for fd, _ in self._epoll.poll(0, 256):
            callback = self._callbacks.get(fd)
            if callback is not None:
                callback()

    def close(self) -> None:
        self._epoll.close()


_IDLE, _PENDING, _DONE = 0, 1, 2


class Waiter:
    """A reusable future for the one task that waits on a queue; ``wake(True)`` from a loop
    callback resumes that task at once (see the Cython class for the whole story)."""

    def __init__(self, loop) -> None:
        self._loop = loop
        self._asyncio_future_blocking = False
        self._state = _IDLE
        self._callback = None
        self._context = None
        self._outcome: BaseException | None = None

    def get_loop(self):
        return self._loop

    @property
    def pending(self) -> bool:
        return self._state == _PENDING

    def arm(self) -> Waiter:
        if self._state == _PENDING:
            raise RuntimeError("another task is already waiting here")
        self._state = _PENDING
        self._outcome = None
        return self

    def done(self) -> bool:
        return self._state != _PENDING

    def _disarm(self) -> None:
        if self._state == _PENDING:
            self._state = _IDLE
            self._callback = self._context = None

    def cancelled(self) -> bool:
        return self._state == _DONE and isinstance(self._outcome, asyncio.CancelledError)

    def result(self) -> None:
        if self._state == _PENDING:
            raise asyncio.InvalidStateError("result is not set")
        if self._outcome is not None:
            raise self._outcome
        return None

    def exception(self) -> BaseException | None:
        if self._state == _PENDING:
            raise asyncio.InvalidStateError("exception is not set")
        if isinstance(self._outcome, asyncio.CancelledError):
            raise self._outcome
        return self._outcome

    def add_done_callback(self, fn, *, context=None) -> None:
        if self._state != _PENDING:
            self._deliver(fn, context)
            return
        if self._callback is not None:
            raise RuntimeError("another task is already waiting here")
        self._callback = fn
        self._context = context

    def remove_done_callback(self, fn) -> int:
        if self._callback is not None and self._callback == fn:
            self._callback = self._context = None
            return 1
        return 0

    def _deliver(self, fn, context) -> None:
        future = self._loop.create_future()
        if self._outcome is None:
            future.set_result(None)
        elif isinstance(self._outcome, asyncio.CancelledError):
            future.cancel(*self._outcome.args)
        else:
            future.set_exception(self._outcome)
        self._loop.call_soon(fn, future, context=context)

    def _finish(self, outcome):
        fn = self._callback
        if self._state != _PENDING:
            return None
        self._state = _DONE
        self._outcome = outcome
        self._callback = None
        return fn

    def wake(self, direct: bool = False) -> None:
        context = self._context
        fn = self._finish(None)
        if fn is None:
            return
        self._context = None
        if direct and asyncio.current_task(self._loop) is None:
            if context is None:
                fn(self)
            else:
                context.run(fn, self)
        else:
            self._deliver(fn, context)

    def fail(self, exc: BaseException) -> None:
        context = self._context
        fn = self._finish(exc)
        self._context = None
        if fn is not None:
            self._deliver(fn, context)

    def cancel(self, msg=None) -> bool:
        if self._state != _PENDING:
            return False
        context = self._context
        cancelled = asyncio.CancelledError() if msg is None else asyncio.CancelledError(msg)
        fn = self._finish(cancelled)
        self._context = None
        if fn is not None:
            self._deliver(fn, context)
        return True

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        if self._state == _PENDING:
            self._asyncio_future_blocking = True
            return self
        if self._outcome is not None:
            raise self._outcome
        raise StopIteration

    def send(self, arg):
        return self.__next__()

    def throw(self, typ, val=None, tb=None):
        if val is None:
            raise typ
        raise val

    def close(self) -> None:
        pass


class TurnClock:
    def __init__(self) -> None:
        self.interval_ns = TURN_INTERVAL_NS
        self.last = 0


class QueueCore:
    def __init__(self, index: int, on_peer_error) -> None:
        self.index = index
        self.on_peer_error = on_peer_error
        self.closed_reason: str | None = None
        self.peer_broke_it = False
        self._clock = TurnClock()
        self._turn = YieldOnce()

    @property
    def closed(self) -> bool:
        return self.closed_reason is not None

    @property
    def _turn_ns(self) -> int:
        return self._clock.interval_ns

    @_turn_ns.setter
    def _turn_ns(self, value: int) -> None:
        self._clock.interval_ns = value

    def _share_turns_with(self, other: QueueCore) -> None:
        self._clock = other._clock

    def _turn_now(self) -> bool:
        now = time.monotonic_ns()
        if now - self._clock.last >= self._clock.interval_ns:
            self._clock.last = now
            return True
        return False

    def _turned(self) -> None:
        self._clock.last = time.monotonic_ns()

    def _check_open(self) -> None:
        if self.closed_reason is not None:
            raise DisconnectedError(self.closed_reason)

    def _peer_error(self, exc: PeerProtocolError) -> None:
        self.peer_broke_it = True
        self.on_peer_error(exc)

    def _shut(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason


_WAIT_MODES = ("python", "interrupt", "polling", "adaptive")


class RxQueueCore(QueueCore):
    def __init__(self, index: int, ring: RxRing, on_peer_error, loop=None) -> None:
        if not isinstance(ring, RxRing):
            raise TypeError("ring must be an RxRing")
        super().__init__(index, on_peer_error)
        self.ring = ring
        self._tx_queues: tuple = ()
        self._mode = "python"
        self._spin_ns = 0
        self._window_ns = 0
        self.spin_releases_gil = True
        self._last_traffic = 0
        self._packets_seen = 0
        self._packets_at_signal = ring.packets
        self._waiter = Waiter(loop) if loop is not None else None

    @property
    def _wait_mode(self) -> str:
        return self._mode

    @_wait_mode.setter
    def _wait_mode(self, value: str) -> None:
        if value not in _WAIT_MODES:
            raise KeyError(value)
        if value != "python" and self._waiter is None:
            raise LocalProtocolError("waiting in C needs the queue's loop")
        self._mode = value

    def _set_flush_queues(self, queues) -> None:
        checked = tuple(queues)
        for queue in checked:
            if not isinstance(queue, TxQueueCore):
                raise TypeError(f"{queue!r} is not a TxQueueCore")
        self._tx_queues = checked

    def flush_tx(self) -> None:
        for queue in self._tx_queues:
            if queue.closed_reason is None and not queue.ring._closed and queue.ring._staged_descs:
                queue.ring.flush()

    def _interrupt(self) -> None:
        packets = self.ring.packets
        delivered = packets != self._packets_at_signal
        self._packets_at_signal = packets
        if self.closed_reason is None and not self.ring.has_news():
            if not delivered:
                self._empty_wakeup()
            return
        if self._waiter is not None:
            self._waiter.wake(True)

    def _empty_wakeup(self) -> None:
        """A signal that brought nothing (subclasses count them: interrupt storms)."""

    def _wait_c(self):
        return QueueWait(self)

    def _heat(self, now: int) -> None:
        self._last_traffic = now
        self.ring._ring.flags = self.ring._ring.flags | RING_FLAG_MASK_INT

    def _waiting(self):
        """One wait in the queue's mode (the Cython _wait_step as a generator): yields what
        the task suspends on (the Waiter, or None for a loop turn); returns when there may be
        packets."""
        waiter, rx = self._waiter, self.ring
        turned = False
        while True:
            self._check_open()
            mode = self._mode
            if mode == "python" or rx._closed or rx._regions.closed:
                return
            # looks before publishing (see the Cython _wait_step)
            if mode != "interrupt":
                now = time.monotonic_ns()
                if mode == "adaptive" and rx.packets != self._packets_seen:
                    self._packets_seen = rx.packets
                    self._heat(now)
                if mode == "polling" or now - self._last_traffic < self._window_ns:
                    self.flush_tx()
                    if not turned and now - self._clock.last >= self._spin_ns:
                        self._clock.last = now
                        turned = True
                        yield None
                        continue
                    if rx.wait_news(self._spin_ns, self.spin_releases_gil):
                        return
                    self._clock.last = time.monotonic_ns()
                    turned = True
                    yield None
                    continue
                if rx._ring.flags & RING_FLAG_MASK_INT:
                    rx._ring.flags = rx._ring.flags & ~RING_FLAG_MASK_INT & 0xFFFF
                    if rx._moved():
                        return
            if rx._moved():
                return
            self.flush_tx()
            if waiter.pending:
                raise LocalProtocolError(f"rx queue {self.index}: another task is already waiting")
            waiter.arm()
            try:
                while waiter.pending:
                    waiter._asyncio_future_blocking = True
                    yield waiter
            except BaseException:
                waiter._disarm()
                raise
            self._clock.last = time.monotonic_ns()
            if waiter._outcome is not None:
                raise waiter._outcome
            self._check_open()
            return

    def recv_burst_nowait(self, max_packets: int = DEFAULT_BURST) -> Burst:
        self._check_open()
        try:
            return self.ring.rx_burst(max_packets)
        except PeerProtocolError as exc:
            self._peer_error(exc)
            raise

    def __aiter__(self) -> PacketStream:
        return PacketStream(self, DEFAULT_BURST)


class QueueWait:
    def __init__(self, queue: RxQueueCore) -> None:
        self._queue = queue

    def __await__(self):
        return self._queue._waiting()


class PacketStream:
    def __init__(self, queue: RxQueueCore, max_packets: int = 0) -> None:
        self._queue = queue
        self._rx = queue.ring
        self._maxp = max_packets if 0 < max_packets < self._rx._max_burst else self._rx._max_burst
        self._i = 0

    def __aiter__(self) -> PacketStream:
        return self

    def _take(self) -> None:
        try:
            self._rx.rx_burst(self._maxp)
        except PeerProtocolError as exc:
            self._queue._peer_error(exc)
            raise
        self._i = 0

    def _next(self):
        i = self._i
        if i < self._rx._fwd:
            raise LocalProtocolError(f"packet {i} was forwarded")
        self._i = i + 1
        return self._rx._burst[i]

    def __anext__(self):
        rx = self._rx
        if self._queue.closed_reason is None and not rx._closed and not rx._regions.closed:
            if self._i >= rx._n:
                if rx.has_news() and self._queue._turn_now():
                    return PacketResume(self, turn_first=True)
                self._take()
            if self._i < rx._n:
                return Completed(self._next())
            if self._queue._mode != "python":
                return PacketResume(self)
        return self._slow()

    def _resume(self, take_first: bool = False):
        """PacketResume: look once more, wait in the queue's mode, take; woken for nothing,
        count an empty wake-up and give the loop a turn before looking again. After a turn
        (``take_first``) it takes before anything else."""
        queue, rx = self._queue, self._rx
        if take_first and self._take_checked():
            return self._next()
        while True:
            self._check_live()
            if rx._moved():
                self._take()
                if self._i < rx._n:
                    return self._next()
            if queue._mode == "python":
                return (yield from self._slow().__await__())
            yield from queue._waiting()
            if self._take_checked():
                return self._next()
            queue._empty_wakeup()
            yield None

    def _check_live(self) -> None:
        self._queue._check_open()
        if self._rx._closed or self._rx._regions.closed:
            raise LocalProtocolError("rx ring is closed")

    def _take_checked(self) -> bool:
        """Take a burst if the link and ring are still up; whether it has a packet."""
        self._check_live()
        self._take()
        return self._i < self._rx._n

    async def _slow(self):
        while True:
            await self._queue._wait()
            if self._take_checked():
                return self._next()


class PacketResume:
    """What PacketStream hands out when it must wait in the queue's mode (or, first, give
    the loop a turn)."""

    def __init__(self, stream: PacketStream, turn_first: bool = False) -> None:
        self._stream = stream
        self._turn_first = turn_first

    def __await__(self):
        if self._turn_first:
            yield None
        return (yield from self._stream._resume(self._turn_first))


class TxQueueCore(QueueCore):
    def __init__(
        self, index: int, ring: TxRing, on_peer_error, loop, max_burst: int = DEFAULT_BURST
    ) -> None:
        if not isinstance(ring, TxRing):
            raise TypeError("ring must be a TxRing")
        super().__init__(index, on_peer_error)
        self.ring = ring
        self._call_soon = loop.call_soon
        self._max_burst = max_burst or 1
        self._scheduled = False
        self._since_turn = 0
        self._yield_every_n = self._max_burst

    @property
    def _yield_every(self) -> int:
        return self._yield_every_n

    @_yield_every.setter
    def _yield_every(self, value: int) -> None:
        self._yield_every_n = value
        self._since_turn = 0

    def send(self, data, metadata=0):
        tx = self.ring
        meta = 0 if metadata == 0 and type(metadata) is int else _meta_value(metadata, 0)
        if self.closed_reason is None and not tx._closed and not tx._alloc_n:
            try:
                ok = tx.stage(data, meta)
            except PeerProtocolError as exc:
                self._peer_error(exc)
                raise
            if ok:
                if tx._staged_packets >= self._max_burst or (
                    (not self._scheduled or tx._staged_packets % POLLED_FLUSH == 0)
                    and tx.ring.flags & RING_FLAG_MASK_INT
                ):
                    tx.flush()
                if not self._scheduled:
                    self._scheduled = True
                    self._call_soon(self._scheduled_flush)
                self._since_turn += 1
                if self._since_turn >= self._yield_every_n and self._yield_every_n:
                    self._since_turn = 0
                    if self._turn_now():
                        return self._turn
                return DONE
        self._since_turn = 0
        self._clock.last = time.monotonic_ns()
        return self._send_slow(data, meta)

    def flush(self) -> int:
        if self.closed_reason is not None:
            return 0
        return self.ring.flush()

    def _scheduled_flush(self) -> None:
        self._scheduled = False
        if self.closed_reason is None and not self.ring._closed and self.ring._staged_descs:
            try:
                self.ring.flush()
            except Exception:  # pragma: no cover - table closed under us
                pass
