# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
#
# memif ring hot path (module memif_aio._ring). Pure-Python twin: memif_aio/_ring_py.py.
#
# This file holds what every part shares; the parts are included at the end: regions.pxi
# (mapped regions, packet views, one ring's header and descriptors), rx.pxi (receive: RxRing,
# Burst), tx.pxi (transmit: TxRing), aio.pxi (the asyncio glue: already-done awaitables,
# `async for`, the per-packet send), signal.pxi (eventfd writes that cannot block). Every
# extension type and its C attributes are declared in memif_aio/_ring.pxd.
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
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from libc.string cimport memcpy, memmove, memset
from posix.fcntl cimport F_GETFL, O_NONBLOCK, fcntl

import os

import numpy as np

from memif_aio.errors import DisconnectedError, LocalProtocolError, PeerProtocolError

cnp.import_array()



RING_COOKIE = 0x3E31F20
DESC_FLAG_NEXT = 1
RING_FLAG_MASK_INT = 1
DESC_SIZE = 16
MAX_LOG2_RING_SIZE = 14
#: Default bound on one packet (chained descriptors joined): the largest IP packet plus
#: link-layer headers, with room to spare. A longer packet from the peer is a peer error.
DEFAULT_MAX_PACKET_SIZE = 65536 + 512
#: Packets a burst takes at most, by default.
DEFAULT_BURST = 256

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


# Packet metadata (one u32 per packet) and buffer formats, checked where users hand them in.


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


include "regions.pxi"
include "rx.pxi"
include "aio.pxi"
include "tx.pxi"
include "signal.pxi"
