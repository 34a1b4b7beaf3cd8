# Transmit: planning and copying a burst into peer or own buffers, TxRing (included by
# ring.pyx).

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
            need = 1 if length == 0 else (length + c.buffer_size - 1) // c.buffer_size
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
                region = c.buffer_region
                off = c.table[slot]
                cap = c.buffer_size
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
            self.c.buffer_region = buffer_region
            self.c.buffer_size = buffer_size
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
            self.c.pos = memif_load_acquire(ring_head(hdr))
        else:
            self.c.pos = memif_load_acquire(ring_tail(hdr, ring.cacheline))
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
        if self.staged_descs:
            self._flush()
        self.staged_room = 0
        return 0

    cdef uint32_t _free(self) except? 0xFFFFFFFF:
        cdef char *hdr = self.ring._hdr()
        cdef uint16_t cur, used
        self.c.descs = ring_descs(hdr, self.ring.cacheline)
        if self.slave:
            cur = memif_load_acquire(ring_tail(hdr, self.ring.cacheline))
            used = self.c.pos - cur
            if used > self.c.size:
                self.errors += 1
                raise PeerProtocolError(
                    f"tail {cur} out of range: head {self.c.pos}, ring size {self.c.size}")
            self.c.free = self.c.size - used
            return self.c.free
        cur = memif_load_acquire(ring_head(hdr))
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
        if self.staged_descs:
            self._flush()
        self.staged_room = 0
        return self._free()

    @property
    def staged(self):
        """Packets copied in by :meth:`stage` and not published yet."""
        return self.staged_packets

    cdef bint _peer_polls(self) except -1:
        return (memif_load_relaxed(ring_flags(self.ring._hdr())) & MASK_INT) != 0

    cdef uint32_t _flush(self) except? 0xFFFFFFFF:
        cdef uint32_t n = self.staged_packets
        cdef uint64_t nbytes = self.staged_bytes
        cdef uint32_t ndesc = self.staged_descs
        self.staged_descs = 0
        self.staged_packets = 0
        self.staged_bytes = 0
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
        if self.staged_descs == 0:
            return 0
        return self._flush()

    def discard(self):
        """Forget the staged packets without publishing them; return how many."""
        cdef uint32_t n = self.staged_packets
        self.staged_descs = 0
        self.staged_packets = 0
        self.staged_bytes = 0
        return n

    cdef int _stage_one(self) except -1:
        """Plan and copy c.src[0] at pos + staged_descs within staged_room; 1 if it went, 0 if no room."""
        cdef int rc
        cdef uint16_t pos = self.c.pos
        cdef char *hdr = self.ring._hdr()
        if self.staged_room == 0:
            return 0
        self.c.descs = ring_descs(hdr, self.ring.cacheline)
        self.c.pos = pos + self.staged_descs
        self.c.free = self.staged_room
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
        self.staged_descs += self.c.ndesc
        self.staged_room -= self.c.ndesc
        self.staged_packets += 1
        self.staged_bytes += self.c.nbytes
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
                if free < self.staged_descs:
                    self.errors += 1
                    raise PeerProtocolError(
                        f"peer counter moved back over {self.staged_descs} staged descriptors")
                self.staged_room = free - self.staged_descs
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
            memif_store_release(ring_head(hdr), self.c.pos)
        else:
            memif_store_release(ring_tail(hdr, self.ring.cacheline), self.c.pos)
        if self.signaller is not None:
            memif_fence()  # the counter is visible before MASK_INT is read: no lost wake-up
            if not memif_load_relaxed(ring_flags(hdr)) & MASK_INT:
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
                views.append(self.regions._slice(self.c.buffer_region, self.c.table[slot], self.c.buffer_size))
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
            cap = self.c.buffer_size if self.slave else self.c.snap_cap[i]
            if not 0 <= lens[i] <= cap:
                raise LocalProtocolError(f"length {lens[i]} of buffer {i} > capacity {cap}")
        _fill_meta(self.c.src_meta, metadata, m, m)
        cdef char *hdr = self.ring._hdr()
        self.c.descs = ring_descs(hdr, self.ring.cacheline)
        for i in range(m):
            slot = <uint16_t>(self.c.pos + i) & self.c.mask
            d = &self.c.descs[slot]
            d.flags = 0
            d.length = lens[i]
            d.metadata = self.c.src_meta[i]
            nbytes += d.length
            if self.slave:
                d.region = self.c.buffer_region
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
        if rx.c.buffer_region != self.c.buffer_region or rx.c.buffer_size != self.c.buffer_size:
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
            d.region = self.c.buffer_region
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
