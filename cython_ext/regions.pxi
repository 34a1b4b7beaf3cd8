# Regions and rings: the mapped shared memory, packet views into it, one ring's header
# and descriptors (included by ring.pyx).

@cython.final
cdef class _U32Array:
    """Owner of a C uint32 array, exported read-only: the ring's C code trusts these values,
    so nothing reachable from the numpy views handed out may write them."""


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
        # None once the garbage collector cleared this table (interpreter exit): the last
        # packet view can still be released after that.
        if self._views is None:
            return
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

    cdef object _slice(self, uint16_t region, uint64_t offset, uint64_t length):
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
        return memif_load_relaxed(ring_flags(self._hdr()))

    @flags.setter
    def flags(self, uint16_t value):
        memif_store_relaxed(ring_flags(self._hdr()), value)

    @property
    def head(self):
        return memif_load_acquire(ring_head(self._hdr()))

    @head.setter
    def head(self, uint16_t value):
        memif_store_release(ring_head(self._hdr()), value)

    @property
    def tail(self):
        return memif_load_acquire(ring_tail(self._hdr(), self.cacheline))

    @tail.setter
    def tail(self, uint16_t value):
        memif_store_release(ring_tail(self._hdr(), self.cacheline), value)

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
        memif_store_release(ring_head(hdr), 0)
        memif_store_release(ring_tail(hdr, self.cacheline), 0)

    cdef memif_desc_t *_desc(self, Py_ssize_t slot) except NULL:
        if not 0 <= slot < self.size:
            raise IndexError(f"slot {slot} not in 0..{self.size - 1}")
        return ring_descs(self._hdr(), self.cacheline) + slot

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
