# Receive: parsing a burst of peer descriptors, the Burst handed to the user, RxRing
# (included by ring.pyx).

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
                if length > c.buffer_size:
                    return _set_err(&c.err, ERR_TOO_LONG, slot, length, c.buffer_size, 0, 0)
                if more and c.short_next and 0 < length < c.buffer_size:
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
                region = c.buffer_region
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


cdef extern from "<sched.h>" nogil:
    int sched_yield()


# A spin looks at the counter alone this long, then gives the CPU away between looks
# (sched_yield): a peer on the same CPU can then run and answer, where pure spinning would
# hold the CPU until the scheduler preempts us (milliseconds); on a CPU of its own the yield
# returns at once.
cdef uint64_t _SPIN_ALONE_NS = 5000
#: (ns) how long RxRing.wait_news spins before it yields the CPU between looks
SPIN_ALONE_NS = _SPIN_ALONE_NS


cdef bint _spin_for_change(uint16_t *counter, uint16_t seen, uint64_t budget_ns) noexcept nogil:
    cdef uint64_t start = memif_now_ns(), now
    cdef uint32_t turns = 0
    while True:
        if memif_load_acquire(counter) != seen:
            return True
        turns += 1
        if (turns & 31) == 0:
            now = memif_now_ns()
            if now - start >= budget_ns:
                return False
            if now - start >= _SPIN_ALONE_NS:
                sched_yield()
                continue
        memif_cpu_relax()


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


@cython.final
cdef class Burst:
    """Packets of one ``RxRing.rx_burst()``; preallocated and reused by its ring.

    Valid until the next ``rx_burst()`` or ``release()`` (after which ``len()`` is 0). Packet
    memoryviews point into shared memory and must not be used after the burst is released:
    the peer may overwrite the buffers. ``burst[i]`` gives a zero-copy memoryview for a
    single-segment packet and a joined ``bytes`` copy for a chained one; negative indices work.
    """


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
            self.c.buffer_region = buffer_region
            self.c.buffer_size = buffer_size
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
            self.c.last = memif_load_acquire(ring_tail(hdr, ring.cacheline))
            self.head = memif_load_acquire(ring_head(hdr))
            if self.slave and <uint16_t>(self.head - self.c.last) > ring.size:
                raise ValueError("ring head/tail are inconsistent; reset() the ring first")
        self.released = self.c.last
        self.bstart = self.c.last
        self.seen = self.c.last
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
        self.c.descs = ring_descs(self.c.hdr, self.ring.cacheline)
        return 0

    cdef uint32_t _available(self) except? 0xFFFFFFFF:
        # Checked against what we had given the peer, before any release or refill: moving
        # our head first could make an overrun look legal.
        cdef char *hdr = self.ring._hdr()
        cdef uint16_t cur, avail, published, held
        if self.slave:
            cur = memif_load_acquire(ring_tail(hdr, self.ring.cacheline))
            self.seen = cur
            avail = cur - self.c.last
            published = self.head - self.c.last
            if avail > published:
                self.errors += 1
                raise PeerProtocolError(
                    f"tail {cur} is {<uint16_t>(avail - published)} slots past head {self.head} "
                    f"(ring size {self.c.size})")
        else:
            cur = memif_load_acquire(ring_head(hdr))
            self.seen = cur
            avail = cur - self.c.last
            held = self.c.last - self.released
            if avail > self.c.size - held:
                self.errors += 1
                raise PeerProtocolError(
                    f"head moved by {<uint16_t>(cur - self.released)} > ring size {self.c.size}")
        return avail

    def pending(self):
        """Descriptors published by the peer and not yet read (acquire load, validated)."""
        self._check_open()
        return self._available()

    def wait_news(self, uint64_t budget_ns, bint release_gil=True):
        """Spin up to ``budget_ns`` for the peer's counter to move from where we last saw it
        (our last receive or ``pending()``); whether it did.

        Busy-polling without a loop iteration per look: one acquire load per turn, a pause
        between turns, a clock read every 32, and after ``SPIN_ALONE_NS`` a ``sched_yield``
        at each clock read. With ``release_gil`` other threads run meanwhile (the loop's
        thread is taken all the same); the caller bounds the budget so its loop still gets a
        turn. False at once once closed."""
        return self._spin(budget_ns, release_gil)

    cdef bint _spin(self, uint64_t budget_ns, bint release_gil) except -1:
        if self.closed or self.regions._closed:
            return False
        cdef char *hdr = self.ring._hdr()
        cdef uint16_t *peer = ring_tail(hdr, self.ring.cacheline) if self.slave else ring_head(hdr)
        cdef uint16_t seen = self.seen
        cdef bint moved
        self.regions.busy += 1
        try:
            if release_gil:
                with nogil:
                    moved = _spin_for_change(peer, seen, budget_ns)
            else:
                moved = _spin_for_change(peer, seen, budget_ns)
        finally:
            self.regions.busy -= 1
        return moved

    cdef bint _moved(self) noexcept:
        # The peer's counter moved since we last looked (our last receive or pending()): a
        # packet published in part does not count twice, so a waiter still sleeps.
        if self.closed or self.regions._closed:
            return False
        cdef char *hdr = self.ring._hdr()
        if self.slave:
            return memif_load_acquire(ring_tail(hdr, self.ring.cacheline)) != self.seen
        return memif_load_acquire(ring_head(hdr)) != self.seen

    def has_news(self):
        """Whether the peer's counter moved since we last read: one load, no validation and no
        error counted (a bogus counter is news too: the next rx_burst() reports it). False
        once closed. What an interrupt is checked against."""
        return self._has_news()

    cdef bint _has_news(self) noexcept:
        if self.closed or self.regions._closed:
            return False
        cdef char *hdr = self.ring._hdr()
        if self.slave:
            return memif_load_acquire(ring_tail(hdr, self.ring.cacheline)) != self.c.last
        return memif_load_acquire(ring_head(hdr)) != self.c.last

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
            self.released = self.c.last
            self._set_hdr()
            if not have_tail:
                seen_tail = memif_load_acquire(ring_tail(self.c.hdr, self.ring.cacheline))
            self._refill(seen_tail)
        elif self.released != self.c.last:
            self._set_hdr()
            # Clear the flags of the slots we hand back: DPDK's copy-mode tx never resets them
            # on a packet's first descriptor, so a stale NEXT from an earlier lap would glue
            # two packets together. The slots are ours until the tail store below.
            slot = self.released
            while slot != self.c.last:
                self.c.descs[slot & self.c.mask].flags = 0
                slot += 1
            memif_store_release(ring_tail(self.c.hdr, self.ring.cacheline), self.c.last)
            self.released = self.c.last
        return 0

    def release(self):
        """Give the current burst's slots back (master: one tail store; slave: refill).

        Idempotent. Memoryviews of the burst must not be used afterwards.
        """
        self._check_open()
        self._release()

    cdef uint32_t _refill(self, uint16_t seen_tail) noexcept nogil:
        cdef uint32_t used = <uint16_t>(self.head - self.released), free, first = 0, i, slot
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
            d.region = self.c.buffer_region
            d.length = self.c.buffer_size
            d.offset = self.c.table[slot]
            d.metadata = 0
        if self.sentinel:
            slot = <uint16_t>(self.head + free) & self.c.mask
            d = &self.c.descs[slot]
            d.flags = 0
            d.region = self.c.buffer_region
            d.length = 0
            d.offset = self.c.table[slot]
            d.metadata = 0
        self.head += free
        memif_store_release(ring_head(self.c.hdr), self.head)
        return free

    def refill(self):
        """Slave only: publish an empty descriptor for every free slot; return how many.

        With ``sentinel``, one slot stays back and head's descriptor is written empty.
        """
        self._check_open()
        if not self.slave:
            raise LocalProtocolError("refill() is for role='slave' (the buffer owner)")
        self._set_hdr()
        return self._refill(memif_load_acquire(ring_tail(self.c.hdr, self.ring.cacheline)))

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
            bound = memif_load_acquire(ring_tail(hdr, self.ring.cacheline)) - self.c.last
            if bound > <uint16_t>(self.head - self.c.last):
                bound = self.head - self.c.last
        else:
            bound = memif_load_acquire(ring_head(hdr)) - self.c.last
            if bound > self.c.size - <uint16_t>(self.c.last - self.released):
                bound = self.c.size - <uint16_t>(self.c.last - self.released)
        self._set_hdr()
        for d in range(bound):  # as _rx_parse splits them
            slot = <uint16_t>(self.c.last + d) & self.c.mask
            memif_desc_snapshot(&self.c.descs[slot], &desc)
            more = (desc.flags & NEXT) != 0
            if more and self.c.short_next and 0 < desc.length < self.c.buffer_size:
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
        return bool(memif_load_relaxed(ring_flags(self.ring._hdr())) & MASK_INT)

    @mask_interrupts.setter
    def mask_interrupts(self, bint value):
        self._check_open()
        cdef uint16_t *flags = ring_flags(self.ring._hdr())
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
