# The asyncio glue (included by ring.pyx): the C half of the queues. RxQueueCore and
# TxQueueCore hold the ring side and the one gate every call passes (``closed_reason``: None
# while the link is up); memif_aio.queues.RxQueue/TxQueue subclass them in Python for the
# waiting. No coroutine per packet: ``async for`` hands out a reused, already-completed
# awaitable while a burst lasts, and ``send`` returns one while the ring has room.

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

#: ``await DONE`` is ``None`` at once; ``TxQueue.send`` returns it when the packet is staged.
DONE = Completed(None)


@cython.final
cdef class YieldOnce:
    """An awaitable that gives the loop one turn (like ``asyncio.sleep(0)``), reusable: each
    ``await`` suspends exactly once. What a sender that never had to wait returns now and
    then, so the other tasks on its loop run."""

    def __await__(self):
        self.yielded = False
        return self

    def __iter__(self):
        return self

    def __next__(self):
        if not self.yielded:
            self.yielded = True
            return None  # a bare yield: the Task steps again on the next loop iteration
        raise StopIteration

    def send(self, arg):
        return self.__next__()

    def throw(self, typ, val=None, tb=None):
        if val is None:
            raise typ
        raise val

    def close(self):
        pass


cdef class QueueCore:
    """What every queue has in C: its index, its gate (``closed_reason``, None while the
    link is up) and where a peer's violation is reported (``on_peer_error``, once per queue
    closing the link)."""

    def __init__(self, int index, on_peer_error):
        self.index = index
        self.on_peer_error = on_peer_error

    @property
    def closed(self):
        return self.closed_reason is not None

    cdef int _check(self) except -1:
        if self.closed_reason is not None:
            raise DisconnectedError(self.closed_reason)
        return 0

    def _check_open(self):
        """Raise ``DisconnectedError`` (with the reason) once the queue's link is down."""
        self._check()

    def _peer_error(self, exc):
        # The link disconnects with this reason; the caller sees the exception too.
        self.peer_broke_it = True
        self.on_peer_error(exc)

    def _shut(self, str reason):
        """Close the gate: every later call raises ``DisconnectedError(reason)``."""
        if self.closed_reason is None:
            self.closed_reason = reason


cdef class RxQueueCore(QueueCore):
    """The C half of :class:`memif_aio.RxQueue`: taking bursts, and ``async for``."""

    def __init__(self, int index, RxRing ring not None, on_peer_error):
        QueueCore.__init__(self, index, on_peer_error)
        self.ring = ring

    def recv_burst_nowait(self, max_packets=DEFAULT_BURST):
        """Take what is there now (possibly nothing); releases the previous burst."""
        self._check()
        try:
            return self.ring.rx_burst(max_packets)
        except PeerProtocolError as exc:
            self._peer_error(exc)
            raise

    def __aiter__(self):
        return PacketStream(self, DEFAULT_BURST)


@cython.final
cdef class PacketStream:
    """``async for pkt in rxq``: one packet per step, no coroutine per packet.

    While the current burst has packets, ``__anext__`` returns a reused :class:`Completed`.
    When it is empty it takes a new burst at once (releasing the old one); only when that is
    empty too does it return a coroutine that awaits the queue's ``_wait()`` (which raises
    ``DisconnectedError`` once the link is down) and tries again. Packets are single-segment
    memoryviews (valid until the next step) or joined ``bytes`` (chains).
    """

    def __cinit__(self, RxQueueCore queue not None, uint32_t max_packets=0):
        self.queue = queue
        self.rx = queue.ring
        self.maxp = max_packets if 0 < max_packets < self.rx.max_burst else self.rx.max_burst
        self.ready = Completed()

    def __aiter__(self):
        return self

    cdef int _take(self) except -1:
        try:
            self.rx._take(self.maxp)
        except PeerProtocolError as exc:
            self.queue._peer_error(exc)
            raise
        self.i = 0
        return 0

    cdef object _next(self):
        cdef RxRing rx = self.rx
        cdef uint32_t i = self.i
        if i < rx.fwd:
            raise LocalProtocolError(f"packet {i} was forwarded")
        self.i = i + 1
        return _packet(rx, i)

    def __anext__(self):
        cdef RxRing rx = self.rx
        if self.queue.closed_reason is None and not rx.closed and not rx.regions._closed:
            if self.i >= rx.c.n:
                self._take()
            if self.i < rx.c.n:
                self.ready.value = self._next()
                return self.ready
        return self._slow()

    async def _slow(self):
        cdef RxRing rx = self.rx
        while True:
            await self.queue._wait()
            self.queue._check()
            if rx.closed or rx.regions._closed:
                raise LocalProtocolError("rx ring is closed")
            self._take()
            if rx.c.n:
                return self._next()


cdef class TxQueueCore(QueueCore):
    """The C half of :class:`memif_aio.TxQueue`: ``send``, the per-packet path.

    ``send(data)`` copies the packet into the ring at once and returns :data:`DONE` when it
    fits. The first packet staged in a loop iteration schedules one flush with
    ``loop.call_soon``; ``max_burst`` staged packets flush at once, and so does every packet
    when the receiver polls (MASK_INT: a flush is then one store, no syscall, and a polling
    peer sees it at once). Every ``max_burst`` sends it returns a :class:`YieldOnce` instead,
    so a task sending in a loop lets the others on its loop run. When the packet does not fit,
    or the queue is closed, it returns the subclass's ``_send_slow(data, metadata)``.
    """

    def __init__(self, int index, TxRing ring not None, on_peer_error, loop,
                 uint32_t max_burst=DEFAULT_BURST):
        QueueCore.__init__(self, index, on_peer_error)
        self.ring = ring
        self.call_soon = loop.call_soon
        self.max_burst = max_burst if max_burst else 1
        self.turn = YieldOnce()

    def send(self, data, metadata=0):
        """``await txq.send(data, metadata=0)``: copy one packet into the ring (chained when
        larger than a buffer), waiting while the ring is full; published by the end of the
        loop iteration, or now with :meth:`flush`."""
        cdef TxRing tx = self.ring
        cdef int ok
        cdef uint32_t meta = _meta_value(metadata, 0)
        if self.closed_reason is None and not tx.closed and not tx.alloc_n:
            try:
                ok = tx._stage(data, meta)
            except PeerProtocolError as exc:
                self._peer_error(exc)
                raise
            if ok:
                if tx.staged_packets >= self.max_burst or tx._peer_polls():
                    tx._flush()
                elif not self.scheduled:
                    self.scheduled = True
                    self.call_soon(self._scheduled_flush)
                self.since_turn += 1
                if self.since_turn >= self.max_burst:
                    self.since_turn = 0
                    return self.turn
                return DONE
        return self._send_slow(data, meta)

    def flush(self):
        """Publish packets staged by :meth:`send` now; return how many."""
        if self.closed_reason is not None:
            return 0
        return self.ring.flush()

    def _scheduled_flush(self):
        # Loop callback: never raises; publishing reads nothing the peer wrote.
        self.scheduled = False
        if self.closed_reason is None and not self.ring.closed and self.ring.staged_descs:
            try:
                self.ring._flush()
            except Exception:  # pragma: no cover - table closed under us: nothing to publish
                pass
