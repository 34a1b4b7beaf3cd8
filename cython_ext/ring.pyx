# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
#
# memif ring hot path (module memif_aio._ring). Pure-Python twin: memif_aio/_ring_py.py.
#
# Theory of operation
# -------------------
# A ring lives in a shared-memory region: cookie u32 @0, flags u16 @4, head u16 @6, tail u16
# alone on the next cache line (@CL), then 2**log2 16-byte descriptors (@2*CL). head and tail
# are free-running u16 counters; slot = counter & (size - 1); every distance between them is
# computed modulo 2**16.
#
# Each counter has exactly one writer; the slave owns every head, the master every tail:
#   S2M (slave transmits):  slave fills descriptors [head, ...) and moves head;
#                           master reads [tail, head) and moves tail to give the slots back.
#   M2S (master transmits): slave "refills": writes EMPTY descriptors (its own free buffers)
#                           at head and moves head; master fills [tail, head) (honouring each
#                           descriptor's length as capacity) and moves tail; the slave then
#                           reads [its last tail, tail) and, once released, refills them.
# So a slot belongs to the producer of the counter it sits behind until that counter passes it,
# then to the other side until the other counter passes it. Our own counter is cached in this
# process and never re-read from shared memory: a peer scribbling on the header can make us
# see a bogus *peer* counter (which we bound-check) but cannot corrupt our accounting.
#
# Ordering: the producer writes buffers and descriptors with plain stores, then publishes its
# counter with ONE release store per burst; the consumer acquire-loads the peer's counter before
# touching any descriptor or buffer. After publishing, at most one eventfd write per burst,
# skipped while the ring's receiver has set MASK_INT (flags bit 0; receiver-owned, relaxed).
#
# Trust: every peer-written descriptor is copied once (volatile snapshot), the copy validated
# (region exists, offset + length inside it in 64-bit math, chain bounded), and only the copy
# used, so a peer rewriting it mid-burst cannot redirect a memcpy. The slave ignores region and
# offset in M2S descriptors entirely: it reads from the buffer it refilled that slot with.
#
# A slave facing DPDK keeps one more slot back (RxRing(sentinel=True)): DPDK's transmit may
# step one descriptor past head, so head's descriptor is kept empty (capacity 0).
#
# Lifetime of a received slot: from rx_burst() until release() (or the next rx_burst()), the
# packet memoryviews point straight into the peer-visible buffers; after release the peer may
# overwrite them. RegionTable.close() invalidates every ring built on it: each public call
# checks it first, and the nogil loops hold RegionTable.busy so close() cannot unmap under them.

cimport cython
cimport numpy as cnp
from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS,
    PyBUF_FORMAT,
    PyBUF_ND,
    PyBUF_SIMPLE,
    PyBUF_WRITABLE,
    PyBuffer_FillInfo,
    PyBuffer_Release,
    PyObject_CheckBuffer,
    PyObject_GetBuffer,
)
from cpython.memoryview cimport PyMemoryView_FromObject
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_Fetch, PyErr_Restore
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.number cimport PyNumber_Index
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from ring cimport *
from libc.string cimport memcpy, memmove, memset
from posix.fcntl cimport F_GETFL, O_NONBLOCK, fcntl

import os

import numpy as np

from memif_aio.errors import LocalProtocolError, PeerProtocolError

cnp.import_array()


cdef class RxRing
cdef class TxRing
cdef class _PacketBuffer
cdef class Signaller

RING_COOKIE = 0x3E31F20
DESC_FLAG_NEXT = 1
RING_FLAG_MASK_INT = 1
DESC_SIZE = 16
MAX_LOG2_RING_SIZE = 14
#: Default bound on one packet (chained descriptors joined): the largest IP packet plus
#: link-layer headers, with room to spare. A longer packet from the peer is a peer error.
DEFAULT_MAX_PACKET_SIZE = 65536 + 512

cdef uint32_t COOKIE = 0x3E31F20
cdef uint16_t NEXT = 1
cdef uint16_t MASK_INT = 1
cdef uint64_t U32_MAX = 0xFFFFFFFFu
cdef object _ZERO = 0


def ring_bytes(int log2_size, int cacheline=64):
    """Bytes taken by one ring: two header cache lines plus ``2**log2_size`` descriptors."""
    _check_geometry(log2_size, cacheline)
    return 2 * cacheline + (DESC_SIZE << log2_size)


cdef int _check_geometry(int log2_size, int cacheline) except -1:
    if not 0 <= log2_size <= MAX_LOG2_RING_SIZE:
        raise ValueError(f"log2 ring size {log2_size} not in 0..{MAX_LOG2_RING_SIZE}")
    if cacheline != 64 and cacheline != 128:
        raise ValueError(f"cache line size {cacheline} is neither 64 nor 128")
    return 0


cdef object _side_table(Ring ring, str role, object max_burst, object buffer_size,
                        object buffer_region, object buffer_offsets, object max_packet_size,
                        object start):
    """Checks shared by RxRing and TxRing; the slave's (buffer owner's) validated buffer
    table, None for the master."""
    if role not in ("slave", "master"):
        raise ValueError(f"role must be 'slave' or 'master', not {role!r}")
    if not 1 <= max_burst <= 65536:
        raise ValueError(f"max_burst {max_burst} not in 1..65536")
    if not 1 <= max_packet_size <= U32_MAX:
        raise ValueError(f"max_packet_size {max_packet_size} not in 1..{U32_MAX}")
    if start is not None and not 0 <= start <= 0xFFFF:
        raise ValueError(f"start {start} is not a u16 counter value")
    ring.regions._check()
    if role == "slave":
        return _buffer_table(ring, buffer_region, buffer_size, buffer_offsets)
    if buffer_offsets is not None:
        raise ValueError("buffer_offsets is only used with role='slave'")
    return None


@cython.final
cdef class _U32Array:
    """Owner of a C uint32 array, exported read-only: the ring's C code trusts these values,
    so nothing reachable from the numpy views handed out may write them."""

    cdef uint32_t *data
    cdef Py_ssize_t n
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]

    def __cinit__(self, Py_ssize_t n):
        self.data = <uint32_t *>_xmalloc(n * sizeof(uint32_t))
        self.n = n

    def __dealloc__(self):
        PyMem_Free(self.data)

    def __getbuffer__(self, Py_buffer *view, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("read-only: the ring owns these values")
        self.shape[0] = self.n
        self.strides[0] = sizeof(uint32_t)
        view.buf = self.data
        view.obj = self
        view.len = self.n * sizeof(uint32_t)
        view.readonly = 1
        view.itemsize = sizeof(uint32_t)
        view.format = b"I"
        view.ndim = 1
        view.shape = self.shape
        view.strides = self.strides
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer *view):
        pass


cdef void *_xmalloc(size_t n) except NULL:
    cdef void *p = PyMem_Malloc(n if n else 1)
    if p == NULL:
        raise MemoryError()
    memset(p, 0, n)
    return p


cdef object _err_message(ring_err *e):
    if e.code == ERR_REGION:
        return f"descriptor {e.slot}: region {e.a} does not exist"
    if e.code == ERR_BOUNDS:
        return f"descriptor {e.slot}: offset {e.a} + length {e.b} beyond region {e.c} ({e.d} bytes)"
    if e.code == ERR_TOO_LONG:
        return f"descriptor {e.slot}: length {e.a} > buffer size {e.b}"
    if e.code == ERR_CHAIN:
        return f"descriptor {e.slot}: NEXT chain longer than ring ({e.a} descriptors)"
    if e.code == ERR_CAP_ZERO:
        return f"descriptor {e.slot}: tx descriptor capacity 0"
    if e.code == ERR_CAP_BOUNDS:
        return (f"descriptor {e.slot}: offset {e.a} + capacity {e.b} beyond region {e.c} "
                f"({e.d} bytes)")
    if e.code == ERR_PKT_TOO_LONG:
        return (f"descriptor {e.slot}: packet of at least {e.a} bytes exceeds "
                f"max_packet_size {e.b}")
    return f"ring error {e.code}"


LOCAL_ERRORS = frozenset((ERR_PKT_TOO_BIG, ERR_PKT_OVER_MAX, ERR_NEVER_FITS))


cdef object _local_message(ring_err *e, uint64_t first):
    """The message of a transmit the caller asked for that can never succeed."""
    if e.code == ERR_PKT_OVER_MAX:
        return f"packet {e.a + first}: {e.b} bytes exceed max_packet_size {e.c}"
    if e.code == ERR_NEVER_FITS:
        return (f"packet {e.a + first}: {e.b} bytes can never fit the peer's ring "
                f"({e.d} slots holding {e.c} bytes in all)")
    return f"packet {e.a + first}: {e.b} bytes need {e.c} descriptors, ring has {e.d}"


cdef inline int _set_err(ring_err *e, int code, uint32_t slot, uint64_t a, uint64_t b,
                         uint64_t c, uint64_t d) noexcept nogil:
    e.code = code
    e.slot = slot
    e.a = a
    e.b = b
    e.c = c
    e.d = d
    return code


cdef object _buffer_table(Ring ring, object buffer_region, object buffer_size, object offsets):
    """Validated uint32 copy of the slave's per-slot buffer offsets."""
    cdef RegionTable regions = ring.regions
    if not 0 <= buffer_region < regions.n:
        raise ValueError(f"buffer region {buffer_region} does not exist")
    if not 0 < buffer_size <= 0xFFFFFFFF:
        raise ValueError(f"buffer size {buffer_size} not in 1..2**32-1")
    if offsets is None:
        raise ValueError("role='slave' needs buffer_offsets (one buffer per ring slot)")
    a = np.asarray(offsets)
    if a.ndim != 1 or a.shape[0] != ring.size:
        raise ValueError(f"buffer_offsets must have exactly {ring.size} entries")
    if a.dtype.kind not in "iu":
        raise ValueError("buffer_offsets must be integers")
    a = a.astype(np.int64)
    rsize = regions.sizes[<uint16_t>buffer_region]
    bad = (a < 0) | (a > 0xFFFFFFFF) | (a + buffer_size > rsize)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"buffer {i} at offset {int(a[i])} + {buffer_size} beyond region {buffer_region} "
            f"({rsize} bytes)"
        )
    return np.ascontiguousarray(a, dtype=np.uint32)


@cython.final
cdef class RegionTable:
    """The shared-memory regions of one side of an interface, by region index.

    ``buffers`` are writable, contiguous buffer objects (normally ``mmap.mmap``); index in the
    list = memif region index. A buffer export is held on each until :meth:`close`, so the
    mappings cannot be closed while rings use them. Packet memoryviews handed out by bursts and
    ``TxRing.alloc`` are exported by small :class:`_PacketBuffer` objects counted in ``live``:
    if :meth:`close` runs while one is alive, the table keeps its exports until the last view
    is released, so ``mmap.close()`` raises ``BufferError`` and the mapping outlives the view
    (it may show stale bytes, never unmapped memory).
    """

    cdef Py_ssize_t n
    cdef char **base
    cdef uint64_t *sizes
    cdef Py_buffer *bufs
    cdef list _views
    cdef bint _closed
    cdef bint _held         # bufs/_views exports still held
    cdef Py_ssize_t live    # packet views alive (buffer exports of _PacketBuffer)
    cdef int busy

    def __init__(self, buffers):
        if self.bufs != NULL:
            raise LocalProtocolError("RegionTable is already initialised")
        buffers = list(buffers)
        cdef Py_ssize_t count = len(buffers)
        if count > 65536:
            raise ValueError(f"{count} regions: memif region indices are u16")
        self.bufs = <Py_buffer *>_xmalloc(count * sizeof(Py_buffer))
        self.base = <char **>_xmalloc(count * sizeof(char *))
        self.sizes = <uint64_t *>_xmalloc(count * sizeof(uint64_t))
        self._views = []
        cdef Py_ssize_t i
        try:
            for i in range(count):
                mv = memoryview(buffers[i])
                if mv.readonly:
                    raise ValueError(f"region {i}: buffer is read-only")
                if not mv.c_contiguous:
                    raise ValueError(f"region {i}: buffer is not contiguous")
                if mv.ndim != 1 or mv.format != "B":
                    mv = mv.cast("B")
                PyObject_GetBuffer(mv, &self.bufs[i], PyBUF_WRITABLE)
                self.n = i + 1
                self._held = True
                self.base[i] = <char *>self.bufs[i].buf
                self.sizes[i] = <uint64_t>self.bufs[i].len
                self._views.append(mv)
        except BaseException:
            self.close()
            raise

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self._held:
            for i in range(self.n):
                PyBuffer_Release(&self.bufs[i])
        PyMem_Free(self.bufs)
        PyMem_Free(self.base)
        PyMem_Free(self.sizes)

    def __len__(self):
        return self.n

    def size(self, Py_ssize_t index):
        """Size in bytes of region ``index``."""
        if not 0 <= index < self.n:
            raise IndexError(f"region {index} does not exist")
        return self.sizes[index]

    @property
    def closed(self):
        """True once :meth:`close` ran; every ring built on this table then refuses work."""
        return self._closed

    @property
    def live_views(self):
        """Packet memoryviews currently alive (each pins the mappings after close)."""
        return self.live

    def close(self):
        """Stop every ring on this table (idempotent) and release the buffer exports.

        While packet views are alive the exports are kept and released with the last view.
        """
        if self._closed:
            return
        if self.busy:
            raise LocalProtocolError("region table is in use by a burst in another thread")
        self._closed = True
        if self.live == 0:
            self._release_exports()

    cdef void _release_exports(self) noexcept:
        cdef Py_ssize_t i
        cdef PyObject *etype
        cdef PyObject *evalue
        cdef PyObject *etb
        if not self._held:
            return
        self._held = False
        for i in range(self.n):
            PyBuffer_Release(&self.bufs[i])
        # Reached from a buffer release, possibly while an exception propagates: keep it.
        PyErr_Fetch(&etype, &evalue, &etb)
        self._release_views()
        PyErr_Restore(etype, evalue, etb)

    cdef void _release_views(self) noexcept:
        for mv in self._views:
            try:
                mv.release()
            except BufferError:  # pragma: no cover - only our own exports, released above
                pass
        self._views = []

    cdef int _check(self) except -1:
        if self._closed:
            raise LocalProtocolError("region table is closed")
        return 0

    cdef inline object _slice(self, uint16_t region, uint64_t offset, uint64_t length):
        # Callers validated region/offset/length against this table.
        cdef _PacketBuffer pb = _PacketBuffer.__new__(_PacketBuffer)
        pb.table = self
        pb.buf = self.base[region] + offset
        pb.len = <Py_ssize_t>length
        return PyMemoryView_FromObject(pb)


@cython.final
@cython.freelist(32)
cdef class _PacketBuffer:
    """Exporter of one packet memoryview; counts itself on its RegionTable while exported."""

    cdef RegionTable table
    cdef char *buf
    cdef Py_ssize_t len

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self.buf, self.len, 0, flags)
        self.table.live += 1

    def __releasebuffer__(self, Py_buffer *view):
        cdef RegionTable t = self.table
        t.live -= 1
        if t.live == 0 and t._closed:
            t._release_exports()


@cython.final
cdef class Ring:
    """One ring (header + descriptors) at ``offset`` in region ``region`` of ``regions``.

    Raw access for setup and tests; the data path lives in :class:`RxRing` / :class:`TxRing`.
    Raises ``ValueError`` unless the region exists, ``0 <= log2_size <= 14``, ``cacheline`` is
    64 or 128, ``offset`` is 4-byte aligned and the whole ring fits inside the region.
    """

    cdef readonly RegionTable regions
    cdef readonly uint16_t region
    cdef readonly uint64_t offset
    cdef readonly uint32_t size
    cdef readonly int log2_size
    cdef readonly int cacheline
    cdef uint32_t mask

    def __init__(self, RegionTable regions not None, int region, object offset, int log2_size,
                 int cacheline=64):
        regions._check()
        if not 0 <= region < regions.n:
            raise ValueError(f"region {region} does not exist")
        _check_geometry(log2_size, cacheline)
        if offset < 0 or offset % 4:
            raise ValueError(f"ring offset {offset} is negative or not 4-byte aligned")
        nbytes = ring_bytes(log2_size, cacheline)
        if offset + nbytes > regions.sizes[region]:
            raise ValueError(
                f"ring at offset {offset} ({nbytes} bytes) beyond region {region} "
                f"({regions.sizes[region]} bytes)"
            )
        self.regions = regions
        self.region = region
        self.offset = offset
        self.log2_size = log2_size
        self.cacheline = cacheline
        self.size = 1u << log2_size
        self.mask = self.size - 1

    cdef char *_hdr(self) except NULL:
        self.regions._check()
        return self.regions.base[self.region] + self.offset

    @property
    def cookie(self):
        return (<uint32_t *>self._hdr())[0]

    @cookie.setter
    def cookie(self, uint32_t value):
        (<uint32_t *>self._hdr())[0] = value

    @property
    def flags(self):
        return memif_load_relaxed(<uint16_t *>(self._hdr() + 4))

    @flags.setter
    def flags(self, uint16_t value):
        memif_store_relaxed(<uint16_t *>(self._hdr() + 4), value)

    @property
    def head(self):
        return memif_load_acquire(<uint16_t *>(self._hdr() + 6))

    @head.setter
    def head(self, uint16_t value):
        memif_store_release(<uint16_t *>(self._hdr() + 6), value)

    @property
    def tail(self):
        return memif_load_acquire(<uint16_t *>(self._hdr() + self.cacheline))

    @tail.setter
    def tail(self, uint16_t value):
        memif_store_release(<uint16_t *>(self._hdr() + self.cacheline), value)

    def initialize(self):
        """Creator (slave) side: zero header and descriptors, then write the cookie."""
        cdef char *hdr = self._hdr()
        memset(hdr, 0, 2 * self.cacheline + DESC_SIZE * self.size)
        (<uint32_t *>hdr)[0] = COOKIE

    def check_cookie(self):
        """Raise ``PeerProtocolError`` unless the ring carries the memif cookie."""
        cdef uint32_t cookie = (<uint32_t *>self._hdr())[0]
        if cookie != COOKIE:
            raise PeerProtocolError(f"bad ring cookie 0x{cookie:08x}")

    def reset(self):
        """head = tail = 0, as both sides do at CONNECT."""
        cdef char *hdr = self._hdr()
        memif_store_release(<uint16_t *>(hdr + 6), 0)
        memif_store_release(<uint16_t *>(hdr + self.cacheline), 0)

    cdef memif_desc_t *_desc(self, Py_ssize_t slot) except NULL:
        if not 0 <= slot < self.size:
            raise IndexError(f"slot {slot} not in 0..{self.size - 1}")
        return <memif_desc_t *>(self._hdr() + 2 * self.cacheline) + slot

    def descriptor(self, Py_ssize_t slot):
        """``(flags, region, length, offset, metadata)`` of descriptor ``slot`` (tests)."""
        cdef memif_desc_t d
        memif_desc_snapshot(self._desc(slot), &d)
        return (d.flags, d.region, d.length, d.offset, d.metadata)

    def set_descriptor(self, Py_ssize_t slot, uint16_t flags, uint16_t region, uint32_t length,
                       uint32_t offset, uint32_t metadata=0):
        """Write descriptor ``slot`` verbatim (setup and hostile-peer tests)."""
        cdef memif_desc_t *d = self._desc(slot)
        d.flags = flags
        d.region = region
        d.length = length
        d.offset = offset
        d.metadata = metadata

    def __repr__(self):
        return (f"<Ring region={self.region} offset={self.offset} size={self.size} "
                f"cacheline={self.cacheline}>")


# ---------------------------------------------------------------------------------------------
# receive


cdef inline void _rx_record(rx_ctx *c, uint32_t n, uint32_t first, uint32_t end,
                            uint64_t total, uint32_t meta) noexcept nogil:
    c.first[n] = first
    c.nsegs[n] = end - first
    c.lengths[n] = <uint32_t>total
    c.meta[n] = meta


cdef int _rx_parse(rx_ctx *c) noexcept nogil:
    """Validate and record up to maxp whole packets among c.avail descriptors from c.last."""
    cdef uint32_t d = 0, start, first, slot, n = 0, meta = 0
    cdef uint64_t total, nbytes = 0, off, length
    cdef uint16_t region
    cdef bint more
    cdef memif_desc_t desc
    while n < c.maxp and d < c.avail:
        start = d
        first = d
        total = 0
        while True:
            if d >= c.avail:
                if d - start >= c.size:
                    return _set_err(&c.err, ERR_CHAIN, (c.last + start) & c.mask, c.size,
                                    0, 0, 0)
                d = start  # chain not complete yet: leave it for the next burst
                break
            slot = (c.last + d) & c.mask
            memif_desc_snapshot(&c.descs[slot], &desc)
            length = desc.length
            more = (desc.flags & NEXT) != 0
            if c.slave:
                if length > c.bs:
                    return _set_err(&c.err, ERR_TOO_LONG, slot, length, c.bs, 0, 0)
                if more and c.short_next and 0 < length < c.bs:
                    # DPDK < 23.03 fills every slot it continues from: NEXT on a partly filled
                    # one is stale, left by a dropped chain on a packet's first slot. So a
                    # packet starts here, and a chain we are in ended with a stale NEXT too.
                    if d > first:
                        _rx_record(c, n, first, d, total, meta)
                        nbytes += total
                        n += 1
                        break
                    more = False
                if more and length == 0 and d == first and c.skip_empty:
                    d += 1  # an empty slot (capacity 0) the peer stepped over
                    first = d
                    continue
                region = c.br
                off = c.table[slot]
            else:
                region = desc.region
                off = desc.offset
                if region >= c.nregions:
                    return _set_err(&c.err, ERR_REGION, slot, region, 0, 0, 0)
                if off + length > c.rsize[region]:
                    return _set_err(&c.err, ERR_BOUNDS, slot, off, length, region,
                                    c.rsize[region])
            total += length
            if total > c.max_packet:
                return _set_err(&c.err, ERR_PKT_TOO_LONG, slot, total, c.max_packet, 0, 0)
            if d == first:
                meta = desc.metadata
            c.seg_region[d] = region
            c.seg_offset[d] = <uint32_t>off
            c.seg_len[d] = <uint32_t>length
            d += 1
            if not more:
                _rx_record(c, n, first, d, total, meta)
                nbytes += total
                n += 1
                break
        if d == start:
            break
    c.n = n
    c.ndesc = d
    c.nbytes = nbytes
    return 0


cdef object _packet(RxRing rx, uint32_t i):
    """Packet i of rx's burst (already checked): a view (one segment) or joined bytes."""
    cdef rx_ctx *c = &rx.c
    cdef uint32_t f = c.first[i], k = c.nsegs[i], s
    if k == 1:
        return rx.regions._slice(c.seg_region[f], c.seg_offset[f], c.seg_len[f])
    out = PyBytes_FromStringAndSize(NULL, c.lengths[i])
    cdef char *dst = PyBytes_AS_STRING(out)
    cdef char **base = rx.regions.base
    for s in range(f, f + k):
        memcpy(dst, base[c.seg_region[s]] + c.seg_offset[s], c.seg_len[s])
        dst += c.seg_len[s]
    return out


from libc.stdint cimport int64_t  # Burst.gather_into's offsets


@cython.final
cdef class Burst:
    """Packets of one ``RxRing.rx_burst()``; preallocated and reused by its ring.

    Valid until the next ``rx_burst()`` or ``release()`` (after which ``len()`` is 0). Packet
    memoryviews point into shared memory and must not be used after the burst is released:
    the peer may overwrite the buffers. ``burst[i]`` gives a zero-copy memoryview for a
    single-segment packet and a joined ``bytes`` copy for a chained one; negative indices work.
    """

    cdef RxRing rx
    cdef object _lengths_view
    cdef object _nsegs_view
    cdef object _meta_view

    def __cinit__(self, RxRing rx not None):
        self.rx = rx

    def __len__(self):
        return self.rx.c.n

    @property
    def lengths(self):
        """numpy uint32 view of the packet lengths (over a buffer allocated once per ring)."""
        if self._lengths_view is None:
            self._lengths_view = self.rx._lengths_arr[:self.rx.c.n]
        return self._lengths_view

    @property
    def nsegments(self):
        """numpy uint32 view: number of descriptors of each packet (1 unless chained)."""
        if self._nsegs_view is None:
            self._nsegs_view = self.rx._nsegs_arr[:self.rx.c.n]
        return self._nsegs_view

    @property
    def metadata(self):
        """numpy uint32 view: the ``metadata`` word of each packet's first descriptor."""
        if self._meta_view is None:
            self._meta_view = self.rx._meta_arr[:self.rx.c.n]
        return self._meta_view

    @property
    def forwarded(self):
        """How many leading packets ``TxRing.forward()`` took (they are no longer readable)."""
        return self.rx.fwd

    @property
    def generation(self):
        """Changes whenever this burst's packets go away (next ``rx_burst``, release, close)."""
        return self.rx.generation

    cdef int _check_packet(self, Py_ssize_t *i) except -1:
        cdef Py_ssize_t n = self.rx.c.n
        if i[0] < 0:
            i[0] += n
        if not 0 <= i[0] < n:
            raise IndexError("packet index out of range")
        self.rx._check_open()
        self.rx.regions._check()
        if i[0] < self.rx.fwd:
            raise LocalProtocolError(f"packet {i[0]} was forwarded")
        return 0

    def __getitem__(self, Py_ssize_t i):
        self._check_packet(&i)
        return _packet(self.rx, <uint32_t>i)

    def segments(self, Py_ssize_t i):
        """Zero-copy memoryviews of the descriptors making up packet ``i``."""
        self._check_packet(&i)
        cdef rx_ctx *c = &self.rx.c
        cdef uint32_t f = c.first[i], s
        return [self.rx.regions._slice(c.seg_region[s], c.seg_offset[s], c.seg_len[s])
                for s in range(f, f + c.nsegs[i])]

    def copy_into(self, Py_ssize_t i, out):
        """Copy packet ``i`` (segments joined) into writable buffer ``out``; return its length.

        ``ValueError`` if ``out`` is too small.
        """
        self._check_packet(&i)
        cdef rx_ctx *c = &self.rx.c
        cdef uint32_t f = c.first[i], s
        cdef Py_buffer pb
        PyObject_GetBuffer(out, &pb, PyBUF_WRITABLE)
        cdef char *dst = <char *>pb.buf
        cdef char **base = self.rx.regions.base
        try:
            if <uint64_t>pb.len < c.lengths[i]:
                raise ValueError(f"buffer of {pb.len} bytes < packet of {c.lengths[i]} bytes")
            for s in range(f, f + c.nsegs[i]):
                memcpy(dst, base[c.seg_region[s]] + c.seg_offset[s], c.seg_len[s])
                dst += c.seg_len[s]
        finally:
            PyBuffer_Release(&pb)
        return c.lengths[i]

    def gather_into(self, out, offsets, Py_ssize_t snaplen=0):
        """Copy every packet (segments joined; its first ``snaplen`` bytes if ``snaplen`` > 0)
        to ``out[offsets[i]:]``; return the bytes copied. One call per burst, no Python object
        per packet: what a capture file writer needs.

        ``offsets``: 1-D contiguous int64, one per packet. Everything is checked before the
        first byte moves: ``ValueError`` if an offset is negative or a packet would not fit in
        the writable buffer ``out``; ``LocalProtocolError`` if packets were forwarded.
        """
        cdef Py_ssize_t n = self.rx.c.n
        self.rx._check_open()
        self.rx.regions._check()
        if snaplen < 0:
            raise ValueError(f"snaplen {snaplen} is negative")
        if self.rx.fwd:
            raise LocalProtocolError(f"{self.rx.fwd} packets of the burst were forwarded")
        cdef rx_ctx *c = &self.rx.c
        cdef char **base = self.rx.regions.base
        cdef Py_buffer ob, fb
        cdef const int64_t *at
        cdef uint64_t length, want, total = 0
        cdef uint32_t s, i
        cdef char *dst
        PyObject_GetBuffer(offsets, &fb, PyBUF_ND | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS)
        try:
            if fb.ndim != 1 or not (_is_format(&fb, b'q', 8) or _is_format(&fb, b'l', 8)):
                raise ValueError("offsets must be a 1-D contiguous int64 array")
            if fb.shape[0] != n:
                raise ValueError(f"{fb.shape[0]} offsets for {n} packets")
            at = <const int64_t *>fb.buf
            PyObject_GetBuffer(out, &ob, PyBUF_WRITABLE)
            try:
                for i in range(n):
                    want = c.lengths[i]
                    if snaplen and want > <uint64_t>snaplen:
                        want = <uint64_t>snaplen
                    if at[i] < 0 or <uint64_t>at[i] + want > <uint64_t>ob.len:
                        raise ValueError(
                            f"packet {i} ({want} bytes at offset {at[i]}) does not fit in "
                            f"{ob.len} bytes")
                for i in range(n):
                    want = c.lengths[i]
                    if snaplen and want > <uint64_t>snaplen:
                        want = <uint64_t>snaplen
                    total += want
                    dst = <char *>ob.buf + at[i]
                    s = c.first[i]
                    while want:
                        length = c.seg_len[s] if c.seg_len[s] < want else want
                        # out may itself be a view of shared memory: memmove, never memcpy.
                        memmove(dst, base[c.seg_region[s]] + c.seg_offset[s], length)
                        dst += length
                        want -= length
                        s += 1
            finally:
                PyBuffer_Release(&ob)
        finally:
            PyBuffer_Release(&fb)
        return total

    def release(self):
        """Give the burst's slots back to the ring (same as ``RxRing.release()``)."""
        self.rx.release()

    def __repr__(self):
        return f"<Burst packets={self.rx.c.n}>"


@cython.final
cdef class RxRing:
    """Receive side of one ring.

    ``role="slave"``: the ring is M2S. The slave owns the buffers: ``buffer_offsets`` gives one
    ``buffer_size``-byte buffer per slot in ``buffer_region``. :meth:`refill` publishes every
    free slot as an empty descriptor; packets arrive in ``[last_tail, tail)``. Region/offset the
    master may have written into those descriptors are ignored (the slot's own buffer is read);
    a length above ``buffer_size`` is a peer violation. Call :meth:`refill` once after CONNECT.

    ``role="master"``: the ring is S2M. Packets arrive in ``[last_head, head)``; descriptor
    region/offset/length are validated against the regions; released slots are returned with
    one ``tail`` store.

    A packet longer than ``max_packet_size`` bytes (descriptors of a chain added up) is a peer
    violation. Our own counter is cached here and never re-read from shared memory: ``start``
    is the value both counters have when the link comes up (0 after CONNECT); without it the
    ring's current head/tail are taken as the connected state (tests). The peer may write any
    counter at any time: each burst bound-checks what it reads. Not thread-safe.

    Defences against DPDK's ``net_memif`` transmit off-by-one (slave only; README "Interop
    notes"). DPDK's copy-mode transmit may step one descriptor past our head when a packet
    needs more slots than it has. ``sentinel=True`` keeps that descriptor empty: we publish at
    most ``size - 1`` slots and write a capacity-0 descriptor at head, so the extra step copies
    nothing and DPDK drops the packet instead of writing into a slot we hold (or moving tail
    past head). The previous sentinel is handed over as it is (capacity 0) unless the peer's
    tail had reached it: a DPDK burst that read the old head may still step onto it, so it
    must not change while such a burst can run. A leading empty ``NEXT`` slot is stepped over.
    ``short_next_ends_packet=True`` (DPDK < 23.03 only, whose real chains fill every slot
    they continue from) takes ``NEXT`` on a partly filled slot as the stale flag a dropped
    chain left on it, and ends the packet there.
    """

    cdef readonly Ring ring
    cdef RegionTable regions
    cdef bint slave
    cdef bint closed
    cdef readonly bint sentinel
    cdef readonly bint short_next_ends_packet
    cdef uint32_t limit     # slave: most slots ever published (size, or size - 1 with sentinel)
    cdef uint32_t max_burst
    cdef uint16_t rel       # slots before rel are back with their owner
    cdef uint16_t head      # slave: what we published; cached, never re-read
    cdef uint16_t bstart    # counter value of the current burst's first descriptor
    cdef uint32_t fwd       # packets of the current burst already forwarded
    cdef rx_ctx c
    cdef object _table_arr
    cdef object _lengths_arr
    cdef object _nsegs_arr
    cdef object _meta_arr
    cdef readonly Burst burst
    cdef readonly uint64_t generation  # bumped whenever the burst's contents go away
    cdef readonly uint64_t packets
    cdef readonly uint64_t bytes
    cdef readonly uint64_t errors

    def __init__(self, Ring ring not None, *, str role, buffer_size=2048, buffer_region=1,
                 buffer_offsets=None, max_burst=256, max_packet_size=DEFAULT_MAX_PACKET_SIZE,
                 start=None, bint sentinel=False, bint short_next_ends_packet=False):
        if self.burst is not None:
            raise LocalProtocolError("RxRing is already initialised")
        self._table_arr = _side_table(ring, role, max_burst, buffer_size, buffer_region,
                                      buffer_offsets, max_packet_size, start)
        self.slave = self._table_arr is not None
        if (sentinel or short_next_ends_packet) and not self.slave:
            raise ValueError("sentinel and short_next_ends_packet are for role='slave'")
        if sentinel and ring.size < 2:
            raise ValueError("a sentinel slot needs a ring of at least 2 slots")
        self.sentinel = sentinel
        self.short_next_ends_packet = short_next_ends_packet
        self.limit = ring.size - 1 if sentinel else ring.size
        self.c.skip_empty = sentinel
        self.c.short_next = short_next_ends_packet
        cdef RegionTable regions = ring.regions
        if self.slave:
            self.c.table = <uint32_t *>cnp.PyArray_DATA(self._table_arr)
            self.c.br = buffer_region
            self.c.bs = buffer_size
        self.ring = ring
        self.regions = regions
        self.max_burst = max_burst
        self.c.max_packet = max_packet_size
        self.c.size = ring.size
        self.c.mask = ring.mask
        self.c.slave = self.slave
        self.c.base = regions.base
        self.c.rsize = regions.sizes
        self.c.nregions = regions.n
        cdef _U32Array lengths = _U32Array(max_burst), nsegs = _U32Array(max_burst)
        cdef _U32Array meta = _U32Array(max_burst)
        self.c.lengths = lengths.data
        self.c.nsegs = nsegs.data
        self.c.meta = meta.data
        self._lengths_arr, self._nsegs_arr, self._meta_arr = [
            np.frombuffer(a, np.uint32) for a in (lengths, nsegs, meta)]
        self.c.first = <uint32_t *>_xmalloc(max_burst * sizeof(uint32_t))
        self.c.seg_region = <uint16_t *>_xmalloc(ring.size * sizeof(uint16_t))
        self.c.seg_offset = <uint32_t *>_xmalloc(ring.size * sizeof(uint32_t))
        self.c.seg_len = <uint32_t *>_xmalloc(ring.size * sizeof(uint32_t))
        cdef char *hdr = ring._hdr()
        if start is not None:
            self.c.last = self.head = start
        else:
            self.c.last = memif_load_acquire(<uint16_t *>(hdr + ring.cacheline))
            self.head = memif_load_acquire(<uint16_t *>(hdr + 6))
            if self.slave and <uint16_t>(self.head - self.c.last) > ring.size:
                raise ValueError("ring head/tail are inconsistent; reset() the ring first")
        self.rel = self.c.last
        self.bstart = self.c.last
        self.burst = Burst(self)

    def __dealloc__(self):
        PyMem_Free(self.c.first)
        PyMem_Free(self.c.seg_region)
        PyMem_Free(self.c.seg_offset)
        PyMem_Free(self.c.seg_len)

    @property
    def role(self):
        return "slave" if self.slave else "master"

    @property
    def buffer_offsets(self):
        """Copy of the slave's per-slot buffer offsets (None for the master)."""
        return None if self._table_arr is None else self._table_arr.copy()

    cdef int _check_open(self) except -1:
        if self.closed:
            raise LocalProtocolError("rx ring is closed")
        return 0

    cdef int _set_hdr(self) except -1:
        self.c.hdr = self.ring._hdr()
        self.c.descs = <memif_desc_t *>(self.c.hdr + 2 * self.ring.cacheline)
        return 0

    cdef uint32_t _available(self) except? 0xFFFFFFFF:
        # Checked against what we had given the peer, before any release or refill: moving
        # our head first could make an overrun look legal.
        cdef char *hdr = self.ring._hdr()
        cdef uint16_t cur, avail, published, held
        if self.slave:
            cur = memif_load_acquire(<uint16_t *>(hdr + self.ring.cacheline))
            avail = cur - self.c.last
            published = self.head - self.c.last
            if avail > published:
                self.errors += 1
                raise PeerProtocolError(
                    f"tail {cur} is {<uint16_t>(avail - published)} slots past head {self.head} "
                    f"(ring size {self.c.size})")
        else:
            cur = memif_load_acquire(<uint16_t *>(hdr + 6))
            avail = cur - self.c.last
            held = self.c.last - self.rel
            if avail > self.c.size - held:
                self.errors += 1
                raise PeerProtocolError(
                    f"head moved by {<uint16_t>(cur - self.rel)} > ring size {self.c.size}")
        return avail

    def pending(self):
        """Descriptors published by the peer and not yet read (acquire load, validated)."""
        self._check_open()
        return self._available()

    def has_news(self):
        """Whether the peer's counter moved since we last read: one load, no validation and no
        error counted (a bogus counter is news too: the next rx_burst() reports it). False
        once closed. What an interrupt is checked against."""
        if self.closed or self.regions._closed:
            return False
        cdef char *hdr = self.ring._hdr()
        if self.slave:
            return memif_load_acquire(<uint16_t *>(hdr + self.ring.cacheline)) != self.c.last
        return memif_load_acquire(<uint16_t *>(hdr + 6)) != self.c.last

    def rx_burst(self, max_packets=None):
        """Receive up to ``max_packets`` (default and cap: ``max_burst``) whole packets.

        Non-blocking. Releases the previous burst first, then returns this ring's reused
        :class:`Burst` (empty when nothing is there). A chain not yet fully published stays
        for a later burst. Raises ``PeerProtocolError`` on a peer violation; nothing is
        consumed then, and the ring stays safe to call again.
        """
        cdef uint32_t maxp = self.max_burst
        if max_packets is not None:
            if max_packets < 0:
                raise ValueError("max_packets must be >= 0")
            if max_packets < maxp:
                maxp = max_packets
        self._check_open()
        self._take(maxp)
        return self.burst

    cdef int _take(self, uint32_t maxp) except -1:
        cdef uint32_t avail = self._available()
        self._release(<uint16_t>(self.c.last + avail), True)
        self.c.avail = avail
        self.c.maxp = maxp
        self._set_hdr()
        cdef int rc
        self.regions.busy += 1
        with nogil:
            rc = _rx_parse(&self.c)
        self.regions.busy -= 1
        if rc:
            self.c.n = 0
            self.errors += 1
            raise PeerProtocolError(_err_message(&self.c.err))
        self.bstart = self.c.last
        self.c.last += self.c.ndesc
        self.packets += self.c.n
        self.bytes += self.c.nbytes
        return 0

    cdef void _forget_burst(self) noexcept:
        self.c.n = 0
        self.fwd = 0
        self.generation += 1
        self.burst._lengths_view = None
        self.burst._nsegs_view = None
        self.burst._meta_view = None

    cdef int _release(self, uint16_t seen_tail=0, bint have_tail=False) except -1:
        cdef uint16_t slot
        self._forget_burst()
        if self.slave:
            self.rel = self.c.last
            self._set_hdr()
            if not have_tail:
                seen_tail = memif_load_acquire(<uint16_t *>(self.c.hdr + self.ring.cacheline))
            self._refill(seen_tail)
        elif self.rel != self.c.last:
            self._set_hdr()
            # Clear the flags of the slots we hand back: DPDK's copy-mode tx never resets them
            # on a packet's first descriptor, so a stale NEXT from an earlier lap would glue
            # two packets together. The slots are ours until the tail store below.
            slot = self.rel
            while slot != self.c.last:
                self.c.descs[slot & self.c.mask].flags = 0
                slot += 1
            memif_store_release(<uint16_t *>(self.c.hdr + self.ring.cacheline), self.c.last)
            self.rel = self.c.last
        return 0

    def release(self):
        """Give the current burst's slots back (master: one tail store; slave: refill).

        Idempotent. Memoryviews of the burst must not be used afterwards.
        """
        self._check_open()
        self._release()

    cdef uint32_t _refill(self, uint16_t seen_tail) noexcept nogil:
        cdef uint32_t used = <uint16_t>(self.head - self.rel), free, first = 0, i, slot
        cdef memif_desc_t *d
        if used >= self.limit:
            return 0
        free = self.limit - used
        if self.sentinel and seen_tail != self.head:
            # A peer burst that read our previous head may still step onto desc[head]: it must
            # stay empty, so it is handed over as it is (capacity 0), with at least one real
            # slot, or not yet.
            if free < 2:
                return 0
            first = 1
        for i in range(first, free):
            slot = <uint16_t>(self.head + i) & self.c.mask
            d = &self.c.descs[slot]
            d.flags = 0
            d.region = self.c.br
            d.length = self.c.bs
            d.offset = self.c.table[slot]
            d.metadata = 0
        if self.sentinel:
            slot = <uint16_t>(self.head + free) & self.c.mask
            d = &self.c.descs[slot]
            d.flags = 0
            d.region = self.c.br
            d.length = 0
            d.offset = self.c.table[slot]
            d.metadata = 0
        self.head += free
        memif_store_release(<uint16_t *>(self.c.hdr + 6), self.head)
        return free

    def refill(self):
        """Slave only: publish an empty descriptor for every free slot; return how many.

        With ``sentinel``, one slot stays back and head's descriptor is written empty.
        """
        self._check_open()
        if not self.slave:
            raise LocalProtocolError("refill() is for role='slave' (the buffer owner)")
        self._set_hdr()
        return self._refill(memif_load_acquire(<uint16_t *>(self.c.hdr + self.ring.cacheline)))

    def unread_packets(self):
        """Packets the peer published that were never delivered (at link-down: drops).

        Counts the packets in the descriptors up to the peer's counter, bounded by what we had
        given it (a chain published in part counts too); never raises for what the peer wrote
        and counts no error. 0 once closed.
        """
        if self.closed or self.regions._closed:
            return 0
        cdef char *hdr = self.ring._hdr()
        cdef uint16_t bound, d, slot
        cdef uint32_t count = 0
        cdef memif_desc_t desc
        cdef bint more = False, in_chain = False
        if self.slave:
            bound = memif_load_acquire(<uint16_t *>(hdr + self.ring.cacheline)) - self.c.last
            if bound > <uint16_t>(self.head - self.c.last):
                bound = self.head - self.c.last
        else:
            bound = memif_load_acquire(<uint16_t *>(hdr + 6)) - self.c.last
            if bound > self.c.size - <uint16_t>(self.c.last - self.rel):
                bound = self.c.size - <uint16_t>(self.c.last - self.rel)
        self._set_hdr()
        for d in range(bound):  # as _rx_parse splits them
            slot = <uint16_t>(self.c.last + d) & self.c.mask
            memif_desc_snapshot(&self.c.descs[slot], &desc)
            more = (desc.flags & NEXT) != 0
            if more and self.c.short_next and 0 < desc.length < self.c.bs:
                count += in_chain
                more = False
            if more and desc.length == 0 and not in_chain and self.c.skip_empty:
                continue
            in_chain = more
            count += not more
        return count + in_chain  # a chain published in part is a packet too

    @property
    def mask_interrupts(self):
        """MASK_INT of the ring: True = 'I poll, do not signal me'. We are the receiver."""
        return bool(memif_load_relaxed(<uint16_t *>(self.ring._hdr() + 4)) & MASK_INT)

    @mask_interrupts.setter
    def mask_interrupts(self, bint value):
        self._check_open()
        cdef uint16_t *flags = <uint16_t *>(self.ring._hdr() + 4)
        if value:
            memif_flags_or(flags, MASK_INT)
        else:
            memif_flags_and(flags, <uint16_t>~MASK_INT)

    def close(self):
        """Stop using the ring (idempotent): no shared memory is touched afterwards."""
        self.closed = True
        self._forget_burst()

    def __repr__(self):
        return (f"<RxRing role={self.role} size={self.c.size} packets={self.packets} "
                f"errors={self.errors}>")


# ---------------------------------------------------------------------------------------------
# per-packet async iteration


cdef extern from *:
    """
    #if PY_VERSION_HEX >= 0x030A0000
    typedef PySendResult (*memif_sendfunc)(PyObject *, PyObject *, PyObject **);
    static int memif_set_am_send(PyTypeObject *t, void *fn) {
        if (t->tp_as_async == NULL) return 0;
        t->tp_as_async->am_send = (memif_sendfunc)fn;
        PyType_Modified(t);
        return 1;
    }
    #else
    static int memif_set_am_send(PyTypeObject *t, void *fn) { (void)t; (void)fn; return 0; }
    #endif
    """
    int memif_set_am_send(PyTypeObject *t, void *fn)


@cython.final
cdef class Completed:
    """An awaitable that is already done: ``await`` gives ``value`` without suspending.

    Reusable: the value is handed over (and dropped here) by each await. On CPython >= 3.10
    the result goes through ``am_send``, so no StopIteration is created per await.
    """

    cdef object value

    def __cinit__(self, value=None):
        self.value = value

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        value = self.value
        self.value = None
        raise StopIteration(value)

    def send(self, arg):
        return self.__next__()

    def throw(self, typ, val=None, tb=None):
        if val is None:
            raise typ
        raise val

    def close(self):
        pass


cdef int _completed_send(PyObject *self, PyObject *arg, PyObject **result) noexcept:
    cdef Completed r = <Completed>self
    value = r.value
    r.value = None
    Py_INCREF(value)
    result[0] = <PyObject *>value
    return 0  # PYGEN_RETURN


AM_SEND = bool(memif_set_am_send(<PyTypeObject *>Completed, <void *>_completed_send))

#: StagedSender flushes every this many staged packets when the receiver polls.
POLLED_FLUSH = 32
cdef uint32_t _POLLED_FLUSH = 32

#: ``await DONE`` is ``None`` at once; ``TxQueue.send`` returns it when the packet is staged.
DONE = Completed(None)


@cython.final
cdef class PacketStream:
    """``async for pkt in rxq``: one packet per step, no coroutine per packet.

    While the current burst has packets, ``__anext__`` returns a reused :class:`Completed`.
    When it is empty it takes a new burst at once (releasing the old one); only when that is
    empty too does it return a coroutine that awaits ``wait()`` (the queue's wake-up logic,
    which raises ``DisconnectedError`` once the link is down) and tries again.
    ``on_peer_error(exc)`` is called before a ``PeerProtocolError`` propagates. Packets are
    single-segment memoryviews (valid until the next step) or joined ``bytes`` (chains).
    """

    cdef RxRing rx
    cdef object wait
    cdef object on_peer_error
    cdef uint32_t maxp
    cdef uint32_t i
    cdef Completed ready

    def __cinit__(self, RxRing rx not None, wait, on_peer_error, uint32_t max_packets=0):
        self.rx = rx
        self.wait = wait
        self.on_peer_error = on_peer_error
        self.maxp = max_packets if 0 < max_packets < rx.max_burst else rx.max_burst
        self.ready = Completed()

    def __aiter__(self):
        return self

    cdef int _take(self) except -1:
        try:
            self.rx._take(self.maxp)
        except PeerProtocolError as exc:
            self.on_peer_error(exc)
            raise
        self.i = 0
        return 0

    cdef inline object _next(self):
        cdef RxRing rx = self.rx
        cdef uint32_t i = self.i
        if i < rx.fwd:
            raise LocalProtocolError(f"packet {i} was forwarded")
        self.i = i + 1
        return _packet(rx, i)

    def __anext__(self):
        cdef RxRing rx = self.rx
        if not rx.closed and not rx.regions._closed:
            if self.i >= rx.c.n:
                self._take()
            if self.i < rx.c.n:
                self.ready.value = self._next()
                return self.ready
        return self._slow()

    async def _slow(self):
        cdef RxRing rx = self.rx
        while True:
            await self.wait()
            if rx.closed or rx.regions._closed:
                raise LocalProtocolError("rx ring is closed")
            self._take()
            if rx.c.n:
                return self._next()


@cython.final
cdef class StagedSender:
    """``TxQueue.send`` in C: ``sender(data)`` stages one packet and returns :data:`DONE`.

    The first packet staged in a loop iteration schedules one ``flush`` with
    ``loop.call_soon``; ``max_burst`` staged packets flush at once, and so do every
    ``POLLED_FLUSH`` (32) when the receiver polls (MASK_INT): then a flush is one store, no
    syscall, and publishing early keeps a polling peer (DPDK) busy instead of idle. When the packet does not
    fit, or the ring is closed, it returns ``slow(data)`` (the queue's coroutine that flushes,
    waits for room and raises ``DisconnectedError``). ``on_peer_error(exc)`` is called before
    a ``PeerProtocolError`` propagates.
    """

    cdef TxRing tx
    cdef object call_soon
    cdef object slow
    cdef object on_peer_error
    cdef uint32_t max_burst
    cdef bint scheduled

    def __cinit__(self, TxRing tx not None, loop, slow, on_peer_error, uint32_t max_burst):
        self.tx = tx
        self.call_soon = loop.call_soon
        self.slow = slow
        self.on_peer_error = on_peer_error
        self.max_burst = max_burst if max_burst else 1

    def __call__(self, data, metadata=0):
        cdef TxRing tx = self.tx
        cdef int ok
        cdef uint32_t meta = _meta_value(metadata, 0)
        if not tx.closed and not tx.alloc_n:
            try:
                ok = tx._stage(data, meta)
            except PeerProtocolError as exc:
                self.on_peer_error(exc)
                raise
            if ok:
                if tx.spk >= self.max_burst or (
                        tx.spk % _POLLED_FLUSH == 0 and tx._peer_polls()):
                    tx._flush()
                elif not self.scheduled:
                    self.scheduled = True
                    self.call_soon(self._scheduled_flush)
                return DONE
        return self.slow(data, meta)

    def _scheduled_flush(self):
        # Loop callback: never raises; publishing reads nothing the peer wrote.
        self.scheduled = False
        if not self.tx.closed and self.tx.sdesc:
            try:
                self.tx._flush()
            except Exception:  # pragma: no cover - table closed under us: nothing to publish
                pass


# ---------------------------------------------------------------------------------------------
# transmit


cdef int _tx_snap(tx_ctx *c, uint32_t d) noexcept nogil:
    """Master: copy and validate the peer's empty descriptor at burst position d."""
    cdef uint32_t slot = <uint16_t>(c.pos + d) & c.mask
    cdef memif_desc_t desc
    memif_desc_snapshot(&c.descs[slot], &desc)
    if desc.region >= c.nregions:
        return _set_err(&c.err, ERR_REGION, slot, desc.region, 0, 0, 0)
    if desc.length == 0:
        return _set_err(&c.err, ERR_CAP_ZERO, slot, 0, 0, 0, 0)
    if <uint64_t>desc.offset + desc.length > c.rsize[desc.region]:
        return _set_err(&c.err, ERR_CAP_BOUNDS, slot, desc.offset, desc.length, desc.region,
                        c.rsize[desc.region])
    c.snap_region[d] = desc.region
    c.snap_off[d] = desc.offset
    c.snap_cap[d] = desc.length
    return 0


cdef int _tx_plan(tx_ctx *c) noexcept nogil:
    """How many of the c.npk packets fit whole in c.free descriptors (c.n, c.ndesc)."""
    cdef uint32_t n = 0, d = 0, start, rc
    cdef uint64_t length, need, rem, take
    c.nsnap = 0
    while n < c.npk:
        length = c.src_len[n]
        if length > c.max_packet:
            return _set_err(&c.err, ERR_PKT_OVER_MAX, 0, n, length, c.max_packet, 0)
        if c.slave:
            need = 1 if length == 0 else (length + c.bs - 1) // c.bs
            if need > c.size:
                return _set_err(&c.err, ERR_PKT_TOO_BIG, 0, n, length, need, c.size)
            if d + need > c.free:
                break
            d += <uint32_t>need
        else:
            start = d
            rem = length
            while True:
                if d >= c.free:
                    if start == 0 and c.free >= c.size:
                        # Every slot of the ring is ours and the packet still does not fit:
                        # waiting for room would wait forever.
                        return _set_err(&c.err, ERR_NEVER_FITS, 0, n, length, length - rem,
                                        c.size)
                    d = start
                    break
                if d >= c.nsnap:
                    rc = _tx_snap(c, d)
                    if rc:
                        return rc
                    c.nsnap = d + 1
                take = rem if rem < c.snap_cap[d] else c.snap_cap[d]
                rem -= take
                d += 1
                if rem == 0:
                    break
            if d == start:
                break
        n += 1
    c.n = n
    c.ndesc = d
    return 0


cdef void _tx_write(tx_ctx *c) noexcept nogil:
    """Copy the c.n planned packets and write their descriptors (not published yet)."""
    cdef uint32_t p, d = 0, slot, off
    cdef uint64_t rem, take, cap, nbytes = 0
    cdef uint16_t region
    cdef const char *src
    cdef memif_desc_t *desc
    for p in range(c.n):
        src = c.src[p]
        rem = c.src_len[p]
        nbytes += rem
        while True:
            slot = <uint16_t>(c.pos + d) & c.mask
            if c.slave:
                region = c.br
                off = c.table[slot]
                cap = c.bs
            else:
                region = c.snap_region[d]
                off = c.snap_off[d]
                cap = c.snap_cap[d]
            take = rem if rem < cap else cap
            memmove(c.base[region] + off, src, take)  # a hostile peer may overlap them
            src += take
            rem -= take
            desc = &c.descs[slot]
            desc.flags = NEXT if rem else 0
            desc.length = <uint32_t>take
            desc.metadata = c.src_meta[p]
            if c.slave:
                desc.region = region
                desc.offset = off
            d += 1
            if rem == 0:
                break
    c.nbytes = nbytes


cdef bint _is_format(Py_buffer *pb, char code, Py_ssize_t itemsize):
    cdef const char *f = pb.format
    if pb.itemsize != itemsize or f == NULL:
        return False
    if f[0] == b'=' or f[0] == b'<' or f[0] == b'@':
        f += 1
    return f[0] == code and f[1] == 0


cdef uint32_t _meta_value(object value, Py_ssize_t i) except? 0xFFFFFFFF:
    if value is _ZERO:  # the default, on the per-packet path
        return 0
    value = PyNumber_Index(value)
    if not 0 <= value <= U32_MAX:
        raise ValueError(f"metadata[{i}] = {value} not in 0..{U32_MAX}")
    return <uint32_t>value


cdef int _fill_meta(uint32_t *out, object metadata, Py_ssize_t count, uint32_t n) except -1:
    """out[:n] = metadata[:n] (zeros for None). metadata must hold one valid value for each
    of the ``count`` packets offered, checked before any is sent (n <= count go now)."""
    cdef Py_buffer pb
    cdef Py_ssize_t i
    cdef uint32_t value
    if metadata is None:
        memset(out, 0, n * sizeof(uint32_t))
        return 0
    if len(metadata) != count:
        raise ValueError(f"{len(metadata)} metadata values for {count} packets")
    if PyObject_CheckBuffer(metadata):
        try:
            PyObject_GetBuffer(metadata, &pb, PyBUF_ND | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS)
        except (BufferError, ValueError):
            pass  # e.g. a strided array: taken value by value below
        else:
            try:
                if pb.ndim == 1 and pb.shape[0] == count and _is_format(&pb, b'I', 4):
                    memcpy(out, pb.buf, n * sizeof(uint32_t))  # every u32 is valid
                    return 0
            finally:
                PyBuffer_Release(&pb)
    for i in range(count):
        value = _meta_value(metadata[i], i)
        if i < n:
            out[i] = value
    return 0


@cython.final
cdef class TxRing:
    """Transmit side of one ring.

    ``role="slave"``: the ring is S2M; the slave owns one ``buffer_size`` buffer per slot
    (``buffer_offsets`` in ``buffer_region``). Free slots = ``size - (head - tail)``.

    ``role="master"``: the ring is M2S; the slave published empty descriptors in
    ``[tail, head)``; each one's ``length`` is its capacity (validated, never assumed).

    Every call publishes at most one counter store and signals the peer at most once (through
    ``signaller``, slot of ``eventfd``), unless the receiver set MASK_INT. At most
    ``max_burst`` packets go per call. A packet larger than a buffer is split over
    NEXT-chained descriptors; a packet goes whole or not at all, and a burst stops at the first
    packet that does not fit. A packet longer than ``max_packet_size``, or one that cannot fit
    even when the peer has given us the whole ring, raises ``LocalProtocolError``. ``start``:
    as for :class:`RxRing`. Not thread-safe.
    """

    cdef readonly Ring ring
    cdef RegionTable regions
    cdef bint slave
    cdef bint closed
    cdef Signaller signaller
    cdef int signal_slot
    cdef uint32_t max_burst
    cdef uint32_t alloc_n
    cdef bint in_call       # a transmit call is running (see _enter)
    cdef uint32_t sdesc     # staged: descriptors written after pos, not published yet
    cdef uint32_t spk       # staged packets
    cdef uint64_t sbytes    # staged bytes
    cdef uint32_t sfree     # free descriptors after the staged ones, as last loaded
    cdef tx_ctx c
    cdef Py_buffer *pybufs
    cdef object _table_arr
    cdef readonly uint64_t packets
    cdef readonly uint64_t bytes
    cdef readonly uint64_t errors

    def __init__(self, Ring ring not None, *, str role, Signaller signaller=None, int eventfd=-1,
                 buffer_size=2048, buffer_region=1, buffer_offsets=None, max_burst=256,
                 max_packet_size=DEFAULT_MAX_PACKET_SIZE, start=None):
        if self.ring is not None:
            raise LocalProtocolError("TxRing is already initialised")
        if (signaller is None) != (eventfd < 0):
            raise ValueError("signaller and eventfd go together")
        self._table_arr = _side_table(ring, role, max_burst, buffer_size, buffer_region,
                                      buffer_offsets, max_packet_size, start)
        self.slave = self._table_arr is not None
        cdef RegionTable regions = ring.regions
        if self.slave:
            self.c.table = <uint32_t *>cnp.PyArray_DATA(self._table_arr)
            self.c.br = buffer_region
            self.c.bs = buffer_size
        self.regions = regions
        self.signal_slot = -1 if signaller is None else signaller.add(eventfd)
        self.signaller = signaller
        self.max_burst = max_burst
        self.c.max_packet = max_packet_size
        self.c.size = ring.size
        self.c.mask = ring.mask
        self.c.slave = self.slave
        self.c.base = regions.base
        self.c.rsize = regions.sizes
        self.c.nregions = regions.n
        self.c.src = <const char **>_xmalloc(max_burst * sizeof(char *))
        self.c.src_len = <uint64_t *>_xmalloc(max_burst * sizeof(uint64_t))
        self.c.src_meta = <uint32_t *>_xmalloc(max_burst * sizeof(uint32_t))
        self.pybufs = <Py_buffer *>_xmalloc(max_burst * sizeof(Py_buffer))
        if not self.slave:
            self.c.snap_region = <uint16_t *>_xmalloc(ring.size * sizeof(uint16_t))
            self.c.snap_off = <uint32_t *>_xmalloc(ring.size * sizeof(uint32_t))
            self.c.snap_cap = <uint32_t *>_xmalloc(ring.size * sizeof(uint32_t))
        cdef char *hdr = ring._hdr()
        if start is not None:
            self.c.pos = start
        elif self.slave:
            self.c.pos = memif_load_acquire(<uint16_t *>(hdr + 6))
        else:
            self.c.pos = memif_load_acquire(<uint16_t *>(hdr + ring.cacheline))
        self.ring = ring

    def __dealloc__(self):
        PyMem_Free(self.c.src)
        PyMem_Free(self.c.src_len)
        PyMem_Free(self.c.src_meta)
        PyMem_Free(self.pybufs)
        PyMem_Free(self.c.snap_region)
        PyMem_Free(self.c.snap_off)
        PyMem_Free(self.c.snap_cap)

    @property
    def role(self):
        return "slave" if self.slave else "master"

    @property
    def buffer_offsets(self):
        """Copy of the slave's per-slot buffer offsets (None for the master)."""
        return None if self._table_arr is None else self._table_arr.copy()

    cdef int _enter(self) except -1:
        # A transmit call must not start while another one on this ring is between reading
        # the ring and publishing (a GC finalizer that sends, run by an allocation inside
        # the first call): it would overwrite the first call's plan.
        if self.in_call:
            raise LocalProtocolError("transmit call re-entered while another is in progress")
        self.in_call = True
        return 0

    cdef int _check_ready(self) except -1:
        if self.closed:
            raise LocalProtocolError("tx ring is closed")
        if self.alloc_n:
            raise LocalProtocolError("alloc() pending: commit() first")
        if self.sdesc:
            self._flush()
        self.sfree = 0
        return 0

    cdef uint32_t _free(self) except? 0xFFFFFFFF:
        cdef char *hdr = self.ring._hdr()
        cdef uint16_t cur, used
        self.c.descs = <memif_desc_t *>(hdr + 2 * self.ring.cacheline)
        if self.slave:
            cur = memif_load_acquire(<uint16_t *>(hdr + self.ring.cacheline))
            used = self.c.pos - cur
            if used > self.c.size:
                self.errors += 1
                raise PeerProtocolError(
                    f"tail {cur} out of range: head {self.c.pos}, ring size {self.c.size}")
            self.c.free = self.c.size - used
            return self.c.free
        cur = memif_load_acquire(<uint16_t *>(hdr + 6))
        used = cur - self.c.pos
        if used > self.c.size:
            self.errors += 1
            raise PeerProtocolError(f"head moved by {used} > ring size {self.c.size}")
        self.c.free = used
        return used

    def free_slots(self):
        """Descriptors we may fill now (validated acquire load of the peer's counter).

        Publishes staged packets first (:meth:`flush`).
        """
        self._enter()
        try:
            return self._free_slots_unguarded()
        finally:
            self.in_call = False

    cdef object _free_slots_unguarded(self):
        if self.closed:
            raise LocalProtocolError("tx ring is closed")
        if self.sdesc:
            self._flush()
        self.sfree = 0
        return self._free()

    @property
    def staged(self):
        """Packets copied in by :meth:`stage` and not published yet."""
        return self.spk

    cdef bint _peer_polls(self) except -1:
        return (memif_load_relaxed(<uint16_t *>(self.ring._hdr() + 4)) & MASK_INT) != 0

    cdef uint32_t _flush(self) except? 0xFFFFFFFF:
        cdef uint32_t n = self.spk
        cdef uint64_t nbytes = self.sbytes
        cdef uint32_t ndesc = self.sdesc
        self.sdesc = 0
        self.spk = 0
        self.sbytes = 0
        self._publish(ndesc)
        self.packets += n
        self.bytes += nbytes
        return n

    def flush(self):
        """Publish every staged packet: one release store, at most one eventfd write (none
        under MASK_INT). Returns how many packets went out (0 if nothing was staged)."""
        self._enter()
        try:
            return self._flush_unguarded()
        finally:
            self.in_call = False

    cdef object _flush_unguarded(self):
        if self.closed:
            raise LocalProtocolError("tx ring is closed")
        if self.sdesc == 0:
            return 0
        return self._flush()

    def discard(self):
        """Forget the staged packets without publishing them; return how many."""
        cdef uint32_t n = self.spk
        self.sdesc = 0
        self.spk = 0
        self.sbytes = 0
        return n

    cdef int _stage_one(self) except -1:
        """Plan and copy c.src[0] at pos + sdesc within sfree; 1 if it went, 0 if no room."""
        cdef int rc
        cdef uint16_t pos = self.c.pos
        cdef char *hdr = self.ring._hdr()
        if self.sfree == 0:
            return 0
        self.c.descs = <memif_desc_t *>(hdr + 2 * self.ring.cacheline)
        self.c.pos = pos + self.sdesc
        self.c.free = self.sfree
        self.c.npk = 1
        rc = _tx_plan(&self.c)
        if rc == 0 and self.c.n:
            _tx_write(&self.c)
        self.c.pos = pos
        if rc in LOCAL_ERRORS:
            raise LocalProtocolError(_local_message(&self.c.err, 0))
        if rc:
            self.errors += 1
            raise PeerProtocolError(_err_message(&self.c.err))
        if self.c.n == 0:
            return 0
        self.sdesc += self.c.ndesc
        self.sfree -= self.c.ndesc
        self.spk += 1
        self.sbytes += self.c.nbytes
        return 1

    def stage(self, data, metadata=0):
        """Copy one bytes-like packet into the next free slot(s) without publishing it.

        Chains over several buffers like :meth:`tx_burst`; ``metadata`` (a u32) goes into
        each of the packet's descriptors. Returns False (nothing staged)
        when it does not fit now. Staged packets go out, in order, with :meth:`flush` or
        before any other transmit call (``tx_burst``, ``alloc``, ``forward``, ``free_slots``
        ...). ``LocalProtocolError`` if the packet could never fit, ``PeerProtocolError`` if
        a peer descriptor is invalid.
        """
        if self.closed:
            raise LocalProtocolError("tx ring is closed")
        if self.alloc_n:
            raise LocalProtocolError("alloc() pending: commit() first")
        return self._stage(data, _meta_value(metadata, 0)) == 1

    cdef int _stage(self, data, uint32_t metadata) except -1:
        self._enter()
        try:
            return self._stage_unguarded(data, metadata)
        finally:
            self.in_call = False

    cdef int _stage_unguarded(self, data, uint32_t metadata) except -1:
        cdef Py_buffer pb
        cdef int ok
        cdef uint32_t free
        PyObject_GetBuffer(data, &pb, PyBUF_SIMPLE)
        try:
            if <uint64_t>pb.len > U32_MAX:
                raise ValueError("packet 0 longer than 4 GiB")
            self.c.src[0] = <const char *>pb.buf
            self.c.src_len[0] = <uint64_t>pb.len
            self.c.src_meta[0] = metadata
            ok = self._stage_one()
            if not ok:
                free = self._free()
                if free < self.sdesc:
                    self.errors += 1
                    raise PeerProtocolError(
                        f"peer counter moved back over {self.sdesc} staged descriptors")
                self.sfree = free - self.sdesc
                ok = self._stage_one()
        finally:
            PyBuffer_Release(&pb)
        return ok

    cdef int _publish(self, uint32_t ndesc) except -1:
        cdef char *hdr = self.ring._hdr()
        if ndesc == 0:
            return 0
        self.c.pos += ndesc
        if self.slave:
            memif_store_release(<uint16_t *>(hdr + 6), self.c.pos)
        else:
            memif_store_release(<uint16_t *>(hdr + self.ring.cacheline), self.c.pos)
        if self.signaller is not None and not (
                memif_load_relaxed(<uint16_t *>(hdr + 4)) & MASK_INT):
            self.signaller._signal(self.signal_slot)
        return 0

    cdef int _plan(self, uint32_t npk, uint64_t first=0) except -1:
        """How many of c.src_len[:npk] fit (c.n, c.ndesc); raises on a peer violation.
        ``first``: the caller's index of packet 0, for messages."""
        cdef int rc
        self.c.npk = npk
        rc = _tx_plan(&self.c)
        if rc in LOCAL_ERRORS:
            raise LocalProtocolError(_local_message(&self.c.err, first))
        if rc:
            self.errors += 1
            raise PeerProtocolError(_err_message(&self.c.err))
        return 0

    cdef int _write_and_publish(self) except -1:
        """Copy the c.n planned packets from c.src, then publish them."""
        self.regions.busy += 1
        with nogil:
            _tx_write(&self.c)
        self.regions.busy -= 1
        self._publish(self.c.ndesc)
        self.packets += self.c.n
        self.bytes += self.c.nbytes
        return 0

    cdef int _run(self, uint32_t npk) except -1:
        """Plan, copy and publish c.src[:npk]; leaves c.n = packets sent."""
        self._plan(npk)
        return self._write_and_publish()

    def tx_burst(self, packets, metadata=None):
        """Copy bytes-like ``packets`` (a sequence) into the ring; return how many were sent.

        ``metadata``: None (all 0) or one u32 per packet (a sequence or a uint32 array),
        written into each descriptor of its packet. Sends a prefix: stops at the first packet
        that does not fit whole, and after ``max_burst`` packets. Raises ``PeerProtocolError`` (nothing sent) if a peer
        descriptor is invalid, ``LocalProtocolError`` if a packet could never fit.
        """
        self._enter()
        try:
            return self._tx_burst_unguarded(packets, metadata)
        finally:
            self.in_call = False

    cdef object _tx_burst_unguarded(self, packets, metadata=None):
        self._check_ready()
        cdef uint32_t free = self._free()
        cdef Py_ssize_t count = len(packets)
        cdef uint32_t npk = self.max_burst, got = 0, i
        if count < npk:
            npk = <uint32_t>count
        if free < npk:
            npk = free
        try:
            for i in range(npk):
                PyObject_GetBuffer(packets[i], &self.pybufs[i], PyBUF_SIMPLE)
                got += 1
                self.c.src[i] = <const char *>self.pybufs[i].buf
                self.c.src_len[i] = <uint64_t>self.pybufs[i].len
                if self.c.src_len[i] > U32_MAX:
                    raise ValueError(f"packet {i} longer than 4 GiB")
            _fill_meta(self.c.src_meta, metadata, count, npk)
            self._run(npk)
        finally:
            for i in range(got):
                PyBuffer_Release(&self.pybufs[i])
        return self.c.n

    def tx_burst_array(self, data, lengths, metadata=None):
        """Like :meth:`tx_burst` for packets stored as rows of a 2-D C-contiguous uint8 array.

        ``lengths`` is a 1-D uint32 array, one entry per row, each ``<= data.shape[1]``;
        ``metadata`` is None or one u32 per row.
        """
        self._enter()
        try:
            return self._tx_burst_array_unguarded(data, lengths, metadata)
        finally:
            self.in_call = False

    cdef object _tx_burst_array_unguarded(self, data, lengths, metadata=None):
        self._check_ready()
        cdef Py_buffer db, lb
        cdef uint32_t npk, i, free
        cdef Py_ssize_t rows, width
        cdef const uint32_t *lens
        cdef const char *rowp
        PyObject_GetBuffer(data, &db, PyBUF_ND | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS)
        try:
            PyObject_GetBuffer(lengths, &lb, PyBUF_ND | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS)
            try:
                if db.ndim != 2 or not _is_format(&db, b'B', 1):
                    raise ValueError("data must be a 2-D C-contiguous uint8 array")
                if lb.ndim != 1 or not _is_format(&lb, b'I', 4):
                    raise ValueError("lengths must be a 1-D contiguous uint32 array")
                rows = db.shape[0]
                width = db.shape[1]
                if lb.shape[0] != rows:
                    raise ValueError(f"{lb.shape[0]} lengths for {rows} packets")
                lens = <const uint32_t *>lb.buf
                for i in range(rows):
                    if lens[i] > width:
                        raise ValueError(f"lengths[{i}] = {lens[i]} > row width {width}")
                free = self._free()
                npk = self.max_burst
                if rows < npk:
                    npk = <uint32_t>rows
                if free < npk:
                    npk = free
                _fill_meta(self.c.src_meta, metadata, rows, npk)
                rowp = <const char *>db.buf
                for i in range(npk):
                    self.c.src[i] = rowp
                    self.c.src_len[i] = lens[i]
                    rowp += width
                self._run(npk)
            finally:
                PyBuffer_Release(&lb)
        finally:
            PyBuffer_Release(&db)
        return self.c.n

    def tx_burst_from(self, Burst burst not None, Py_ssize_t start=0):
        """Copy packets ``start..`` of a received ``burst`` into the ring, each with its
        metadata; return how many were sent (like :meth:`tx_burst`: a prefix).

        The echo/copy-forward primitive: no Python object per packet (a chained packet that
        fits is joined into one temporary ``bytes``). Works between any roles and region
        tables. ``LocalProtocolError`` if the burst's ring is closed or packet ``start`` was
        forwarded, ``IndexError`` if ``start`` is outside ``0..len(burst)``.
        """
        self._enter()
        try:
            return self._tx_burst_from_unguarded(burst, start)
        finally:
            self.in_call = False

    cdef object _tx_burst_from_unguarded(self, Burst burst, Py_ssize_t start=0):
        # The only GC-tracked allocation, before any ring state is read: no finalizer can
        # run (and release the burst) between reading the burst and copying it.
        cdef list joined = []
        self._check_ready()
        cdef RxRing rx = burst.rx
        rx._check_open()
        rx.regions._check()
        cdef uint32_t n = rx.c.n, npk, k, i, f
        if not 0 <= start <= n:
            raise IndexError(f"start {start} outside 0..{n}")
        if start < rx.fwd:
            raise LocalProtocolError(f"packet {start} was forwarded")
        cdef uint32_t free = self._free()
        npk = self.max_burst
        if n - start < npk:
            npk = n - <uint32_t>start
        if free < npk:
            npk = free
        for k in range(npk):
            i = <uint32_t>start + k
            self.c.src_len[k] = rx.c.lengths[i]
            self.c.src_meta[k] = rx.c.meta[i]
        rx.regions.busy += 1
        self.regions.busy += 1
        try:
            self._plan(npk, start)
            for k in range(self.c.n):
                i = <uint32_t>start + k
                f = rx.c.first[i]
                if rx.c.nsegs[i] == 1:
                    self.c.src[k] = rx.regions.base[rx.c.seg_region[f]] + rx.c.seg_offset[f]
                else:  # only packets that fit are joined
                    packet = _packet(rx, i)
                    joined.append(packet)  # alive until copied below
                    self.c.src[k] = PyBytes_AS_STRING(packet)
        finally:
            self.regions.busy -= 1
            rx.regions.busy -= 1
        self._write_and_publish()
        return self.c.n

    def alloc(self, Py_ssize_t n):
        """Up to ``n`` writable single-buffer memoryviews at the next free slots.

        Capacity is ``buffer_size`` (slave) or the peer's descriptor length (master). Fill
        them, then :meth:`commit`. Until then other transmit calls raise
        ``LocalProtocolError``. Returns ``[]`` (and nothing is pending) when the ring is full.
        """
        self._enter()
        try:
            return self._alloc_unguarded(n)
        finally:
            self.in_call = False

    cdef object _alloc_unguarded(self, Py_ssize_t n):
        self._check_ready()
        if n < 0:
            raise ValueError("n must be >= 0")
        cdef uint32_t free = self._free(), k = self.max_burst, i, slot
        cdef int rc
        if n < k:
            k = <uint32_t>n
        if free < k:
            k = free
        views = []
        if self.slave:
            for i in range(k):
                slot = <uint16_t>(self.c.pos + i) & self.c.mask
                views.append(self.regions._slice(self.c.br, self.c.table[slot], self.c.bs))
        else:
            for i in range(k):
                rc = _tx_snap(&self.c, i)
                if rc:
                    self.errors += 1
                    raise PeerProtocolError(_err_message(&self.c.err))
            for i in range(k):
                views.append(self.regions._slice(self.c.snap_region[i], self.c.snap_off[i],
                                                 self.c.snap_cap[i]))
        self.alloc_n = k
        return views

    def commit(self, lengths, metadata=None):
        """Publish the first ``len(lengths)`` allocated buffers with these lengths.

        Each length must be ``<=`` its buffer's capacity (else ``LocalProtocolError`` and the
        allocation stays pending); ``metadata`` is None or one u32 per buffer (else
        ``ValueError``, allocation still pending). The rest of the allocation is abandoned.
        Returns the count.
        """
        self._enter()
        try:
            return self._commit_unguarded(lengths, metadata)
        finally:
            self.in_call = False

    cdef object _commit_unguarded(self, lengths, metadata=None):
        if self.closed:
            raise LocalProtocolError("tx ring is closed")
        cdef Py_ssize_t m = len(lengths)
        cdef uint32_t i, slot, cap
        cdef uint64_t nbytes = 0
        cdef memif_desc_t *d
        if m == 0 and self.alloc_n == 0:
            return 0
        if self.alloc_n == 0:
            raise LocalProtocolError("commit() without alloc()")
        if m > self.alloc_n:
            raise LocalProtocolError(f"commit of {m} buffers, only {self.alloc_n} allocated")
        lens = [PyNumber_Index(x) for x in lengths]
        for i in range(m):
            cap = self.c.bs if self.slave else self.c.snap_cap[i]
            if not 0 <= lens[i] <= cap:
                raise LocalProtocolError(f"length {lens[i]} of buffer {i} > capacity {cap}")
        _fill_meta(self.c.src_meta, metadata, m, m)
        cdef char *hdr = self.ring._hdr()
        self.c.descs = <memif_desc_t *>(hdr + 2 * self.ring.cacheline)
        for i in range(m):
            slot = <uint16_t>(self.c.pos + i) & self.c.mask
            d = &self.c.descs[slot]
            d.flags = 0
            d.length = lens[i]
            d.metadata = self.c.src_meta[i]
            nbytes += d.length
            if self.slave:
                d.region = self.c.br
                d.offset = self.c.table[slot]
        self.alloc_n = 0
        self._publish(<uint32_t>m)
        self.packets += m
        self.bytes += nbytes
        return m

    def forward(self, Burst burst not None):
        """Slave only: send single-segment packets of ``burst`` without copying.

        ``burst`` must come from a slave :class:`RxRing` on the same :class:`RegionTable`,
        buffer region and buffer size. Each forwarded packet's buffer moves to a tx slot and
        that slot's old (free) buffer moves to the rx slot, so buffer ownership stays a
        permutation; each packet keeps its metadata. Forwards the leading packets of the burst not forwarded yet, stopping at
        the first chained packet, a full ring or ``max_burst``; returns how many. Forwarded
        packets can no longer be read from the burst.
        """
        self._enter()
        try:
            return self._forward_unguarded(burst)
        finally:
            self.in_call = False

    cdef object _forward_unguarded(self, Burst burst):
        self._check_ready()
        cdef RxRing rx = burst.rx
        if not self.slave or not rx.slave:
            raise LocalProtocolError("forward() needs a slave TxRing and a slave RxRing burst")
        rx._check_open()
        if rx.regions is not self.regions:
            raise LocalProtocolError("forward() needs both rings on the same RegionTable")
        if rx.c.br != self.c.br or rx.c.bs != self.c.bs:
            raise LocalProtocolError("forward() needs the same buffer region and buffer size")
        cdef uint32_t free = self._free(), k = 0, i = rx.fwd, f, rslot, tslot, off
        cdef uint64_t nbytes = 0
        cdef memif_desc_t *d
        while i < rx.c.n and k < free and k < self.max_burst:
            f = rx.c.first[i]
            if rx.c.nsegs[i] != 1:
                break
            rslot = <uint16_t>(rx.bstart + f) & rx.c.mask
            tslot = <uint16_t>(self.c.pos + k) & self.c.mask
            off = rx.c.table[rslot]
            d = &self.c.descs[tslot]
            d.flags = 0
            d.region = self.c.br
            d.length = rx.c.seg_len[f]
            d.offset = off
            d.metadata = rx.c.meta[i]
            rx.c.table[rslot] = self.c.table[tslot]
            self.c.table[tslot] = off
            nbytes += rx.c.seg_len[f]
            k += 1
            i += 1
        rx.fwd = i
        self._publish(k)
        self.packets += k
        self.bytes += nbytes
        return k

    def signal(self):
        """Wake the peer now (regardless of MASK_INT); no-op without a signaller."""
        if self.signaller is not None:
            self.signaller.signal(self.signal_slot)

    def close(self):
        """Stop using the ring (idempotent): no shared memory is touched afterwards.

        Staged packets are not published (see :meth:`discard`)."""
        self.closed = True
        self.alloc_n = 0
        self.discard()

    def __repr__(self):
        return (f"<TxRing role={self.role} size={self.c.size} packets={self.packets} "
                f"errors={self.errors}>")


include "signal.pxi"
