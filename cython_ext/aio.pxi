# The asyncio glue: awaitables that are already done, per-packet `async for`, the per-packet
# send (included by ring.pyx).

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

    cdef object _next(self):
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
                if tx.staged_packets >= self.max_burst or (
                        tx.staged_packets % _POLLED_FLUSH == 0 and tx._peer_polls()):
                    tx._flush()
                elif not self.scheduled:
                    self.scheduled = True
                    self.call_soon(self._scheduled_flush)
                return DONE
        return self.slow(data, meta)

    def _scheduled_flush(self):
        # Loop callback: never raises; publishing reads nothing the peer wrote.
        self.scheduled = False
        if not self.tx.closed and self.tx.staged_descs:
            try:
                self.tx._flush()
            except Exception:  # pragma: no cover - table closed under us: nothing to publish
                pass
