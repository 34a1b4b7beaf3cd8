# The asyncio glue (included by ring.pyx): the C half of the queues. RxQueueCore and
# TxQueueCore hold the ring side and the one gate every call passes (``closed_reason``: None
# while the link is up); memif_aio.queues.RxQueue/TxQueue subclass them in Python for the
# waiting. No coroutine per packet: ``async for`` hands out a reused, already-completed
# awaitable while a burst lasts, and ``send`` returns one while the ring has room.

from cpython.ref cimport Py_DECREF

from asyncio import CancelledError as _CancelledError
from asyncio import InvalidStateError as _InvalidStateError
from asyncio import current_task as _current_task

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

#: (ns) a task that sends without ever waiting gives its loop a turn at least this often
TURN_INTERVAL_NS = 200_000
# A sender toward a polling receiver (MASK_INT) publishes every this many staged packets: a
# flush is then one store, and publishing early keeps the peer busy; publishing every packet
# moves the ring's cache line between the CPUs once per packet.
POLLED_FLUSH = 32


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


cdef enum:
    WAITER_IDLE = 0  # not armed: nobody waits
    WAITER_PENDING = 1
    WAITER_DONE = 2  # woken, or failed/cancelled (``outcome`` says which)


@cython.final
cdef class Waiter:
    """A reusable future for the one task that waits on a queue: no allocation per wait, and
    a wake-up from an fd callback can resume that task on the spot.

    ``await waiter.arm()`` suspends the task like a Future would (a Task accepts any object
    with ``_asyncio_future_blocking``, ``get_loop()``, ``add_done_callback()`` and
    ``result()``). ``wake(direct)``: with ``direct`` (only from a loop callback, no task
    running) the waiting task's wake-up runs now, inside this call, instead of on the next
    loop iteration, which saves one iteration per interrupt; otherwise, like
    ``fail(exc)`` and a task's ``cancel()``, the outcome is delivered through ``call_soon``
    with a finished asyncio Future of its own, so re-arming never races a late delivery.
    One waiting task at a time: ``arm()`` raises ``RuntimeError`` while one is pending.
    """

    def __cinit__(self, loop):
        self.loop = loop
        self._asyncio_future_blocking = False

    def get_loop(self):
        return self.loop

    @property
    def pending(self):
        """True from ``arm()`` until woken, failed or cancelled."""
        return self.state == WAITER_PENDING

    def arm(self):
        """Make ready for one wait; returns self (to be awaited at once)."""
        if self.state == WAITER_PENDING:
            raise RuntimeError("another task is already waiting here")
        self.state = WAITER_PENDING
        self.outcome = None
        return self

    def done(self):
        return self.state != WAITER_PENDING

    cdef void _disarm(self) noexcept:
        # The awaiting coroutine went away without a wake-up (an exception thrown in).
        if self.state == WAITER_PENDING:
            self.state = WAITER_IDLE
            self.callback = self.context = None

    def cancelled(self):
        return self.state == WAITER_DONE and isinstance(self.outcome, _CancelledError)

    def result(self):
        if self.state == WAITER_PENDING:
            raise _InvalidStateError("result is not set")
        if self.outcome is not None:
            raise self.outcome
        return None

    def exception(self):
        if self.state == WAITER_PENDING:
            raise _InvalidStateError("exception is not set")
        if isinstance(self.outcome, _CancelledError):
            raise self.outcome
        return self.outcome

    def add_done_callback(self, fn, *, context=None):
        if self.state != WAITER_PENDING:
            self._deliver(fn, context)
            return
        if self.callback is not None:
            raise RuntimeError("another task is already waiting here")
        self.callback = fn
        self.context = context

    def remove_done_callback(self, fn):
        if self.callback is not None and self.callback == fn:
            self.callback = self.context = None
            return 1
        return 0

    cdef int _deliver(self, fn, context) except -1:
        # A finished Future of its own: the receiver reads the outcome from it, not from us.
        future = self.loop.create_future()
        if self.outcome is None:
            future.set_result(None)
        elif isinstance(self.outcome, _CancelledError):
            future.cancel(*self.outcome.args)
        else:
            future.set_exception(self.outcome)
        self.loop.call_soon(fn, future, context=context)
        return 0

    cdef object _finish(self, outcome):
        """Done with ``outcome`` (None: woken); the callback to run, taken off, or None."""
        fn = self.callback
        if self.state != WAITER_PENDING:
            return None
        self.state = WAITER_DONE
        self.outcome = outcome
        self.callback = None
        return fn

    def wake(self, bint direct=False):
        """Resume the waiting task (if any): now when ``direct`` and no task is running on
        the loop, else on the next iteration. Never raises for the woken task's errors."""
        context = self.context
        fn = self._finish(None)
        if fn is None:
            return
        self.context = None
        if direct and _current_task(self.loop) is None:
            if context is None:
                fn(self)
            else:
                context.run(fn, self)
        else:
            self._deliver(fn, context)

    def fail(self, exc):
        """The waiting task (if any) gets ``exc`` raised, on the next iteration."""
        context = self.context
        fn = self._finish(exc)
        self.context = None
        if fn is not None:
            self._deliver(fn, context)

    def cancel(self, msg=None):
        if self.state != WAITER_PENDING:
            return False
        context = self.context
        fn = self._finish(_CancelledError() if msg is None else _CancelledError(msg))
        self.context = None
        if fn is not None:
            self._deliver(fn, context)
        return True

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        if self.state == WAITER_PENDING:
            self._asyncio_future_blocking = True
            return self  # the Task registers its wake-up with add_done_callback
        if self.outcome is not None:
            raise self.outcome
        raise StopIteration

    def send(self, arg):
        return self.__next__()

    def throw(self, typ, val=None, tb=None):
        if val is None:
            raise typ
        raise val

    def close(self):
        pass


cdef extern from "<sys/epoll.h>" nogil:
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)


@cython.final
cdef class InterruptCore:
    """The loop's reader of :class:`memif_aio.interrupts.InterruptSet`: drains the private
    edge-triggered epoll set (``epoll_wait`` with timeout 0, on our own fd: it never blocks,
    so the GIL stays held) and calls ``callbacks[fd]()`` for each signalled eventfd.
    ``callbacks`` is the InterruptSet's own dict (fd -> callable that never raises); the
    peer's eventfds themselves are never read."""

    def __cinit__(self, int epoll_fd, dict callbacks not None):
        self.epoll_fd = epoll_fd
        self.callbacks = callbacks

    def ready(self):
        """The reader callback: never raises."""
        cdef int n, i
        if self.epoll_fd < 0:
            return
        n = epoll_wait(self.epoll_fd, self.events, MAX_INTERRUPT_EVENTS, 0)
        for i in range(n):  # n < 0 (EINTR-like): nothing now, the edge is still queued
            callback = self.callbacks.get(self.events[i].data.fd)
            if callback is not None:
                callback()

    def close(self):
        """Stop (before the epoll fd is closed)."""
        self.epoll_fd = -1


@cython.final
cdef class TurnClock:
    """When the loop last had a turn from a set of queues (those of one link), and how often
    a task that never suspends on them gives it one."""


cdef class QueueCore:
    """What every queue has in C: its index, its gate (``closed_reason``, None while the
    link is up) and where a peer's violation is reported (``on_peer_error``, once per queue
    closing the link)."""

    def __init__(self, int index, on_peer_error):
        self.index = index
        self.on_peer_error = on_peer_error
        self.clock = TurnClock.__new__(TurnClock)
        self.clock.interval_ns = TURN_INTERVAL_NS
        self.turn = YieldOnce()

    @property
    def _turn_ns(self):
        """How long a task that never suspends on this queue (the ring always has packets,
        or room) keeps its loop before it gives it a turn (ns); 0: at every look. Shared by
        the queues that share turns."""
        return self.clock.interval_ns

    @_turn_ns.setter
    def _turn_ns(self, uint64_t value):
        self.clock.interval_ns = value

    def _share_turns_with(self, QueueCore other not None):
        """Count turns on ``other``'s clock: a turn any of them gives (or a wait) is the
        loop's turn for all, so a task that receives and sends on one link yields once per
        interval, not once per queue."""
        self.clock = other.clock

    cdef bint _turn_due(self) noexcept:
        cdef uint64_t now = memif_now_ns()
        if now - self.clock.last >= self.clock.interval_ns:
            self.clock.last = now
            return True
        return False

    def _turn_now(self):
        """True when the caller, which has not suspended since the queue's last turn, has
        kept its loop for ``_turn_ns``: it should yield once now (the turn is counted)."""
        return self._turn_due()

    def _turned(self):
        """The caller's task just suspended (a wait): its loop had a turn."""
        self.clock.last = memif_now_ns()

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


_WAIT_MODES = {"python": WAIT_PYTHON, "interrupt": WAIT_INTERRUPT, "polling": WAIT_POLLING,
               "adaptive": WAIT_ADAPTIVE}
_WAIT_NAMES = {v: k for k, v in _WAIT_MODES.items()}


cdef class RxQueueCore(QueueCore):
    """The C half of :class:`memif_aio.RxQueue`: taking bursts, ``async for``, and waiting.

    With ``loop`` the queue has a :class:`Waiter` (``_waiter``) for its consumer, and it
    waits in C in the mode the subclass sets with ``_wait_mode``:

    - ``"interrupt"``: publish staged transmit packets, look once more, sleep on the Waiter
      until :meth:`_interrupt` (the interrupt callback) wakes it.
    - ``"polling"``: spin on the ring's counter for up to ``_spin_ns`` (no loop iteration per
      look; ``spin_releases_gil``), giving the loop one turn (a bare yield, like
      ``asyncio.sleep(0)``) at least every ``_spin_ns``.
    - ``"adaptive"``: polling while there was traffic in the last ``_window_ns`` (MASK_INT
      set), else: clear MASK_INT, look once more, then sleep as in interrupt mode.
    - ``"python"`` (the default): ``async for`` awaits the subclass's ``_wait()``.

    ``_wait_c()`` is one such wait as a reused awaitable (it returns when there may be
    packets). ``_set_flush_queues(txqs)``: the transmit queues whose staged packets go out
    before the consumer sleeps or spins (a reply sent just before waiting for the next one).
    """

    def __init__(self, int index, RxRing ring not None, on_peer_error, loop=None):
        QueueCore.__init__(self, index, on_peer_error)
        self.ring = ring
        self.tx_queues = ()
        self.spin_releases_gil = True
        self.packets_at_signal = ring.packets
        if loop is not None:
            self._waiter = Waiter(loop)

    @property
    def _wait_mode(self):
        """How waits happen: "python" (``_wait()``), "interrupt", "polling", "adaptive"."""
        return _WAIT_NAMES[self.wait_mode]

    @_wait_mode.setter
    def _wait_mode(self, str value):
        mode = _WAIT_MODES[value]
        if mode != WAIT_PYTHON and self._waiter is None:
            raise LocalProtocolError("waiting in C needs the queue's loop")
        self.wait_mode = mode

    def _set_flush_queues(self, queues):
        cdef tuple checked = tuple(queues)
        for queue in checked:
            if not isinstance(queue, TxQueueCore):
                raise TypeError(f"{queue!r} is not a TxQueueCore")
        self.tx_queues = checked

    cdef int _flush_tx(self) except -1:
        cdef TxQueueCore queue
        for queue in self.tx_queues:
            if queue.closed_reason is None and not queue.ring.closed and queue.ring.staged_descs:
                queue.ring._flush()
        return 0

    def flush_tx(self):
        """Publish what the transmit queues of ``_set_flush_queues`` have staged."""
        self._flush_tx()

    def _interrupt(self):
        """The interrupt callback (from the loop, never raising): wake the consumer and run it
        right here, one loop iteration sooner. A signal that finds nothing new goes to
        ``_empty_wakeup()`` (interrupt-storm accounting) unless whole packets were delivered
        since the previous signal: a busy consumer often takes packets before their signal is
        handled, and that signal is not the peer's fault. (Packets delivered, not the peer's
        counter: a peer can move its counter back and forth over a chain it never finishes.)"""
        cdef uint64_t packets = self.ring.packets
        cdef bint delivered = packets != self.packets_at_signal
        self.packets_at_signal = packets
        if self.closed_reason is None and not self.ring._has_news():
            if not delivered:
                self._empty_wakeup()
            return
        if self._waiter is not None:
            self._waiter.wake(True)

    def _empty_wakeup(self):
        """A signal that brought nothing (subclasses count them: interrupt storms)."""

    def _wait_c(self):
        """One wait in the queue's mode, as an awaitable: it returns when there may be
        packets; ``DisconnectedError`` once the link is down."""
        cdef QueueWait wait = QueueWait.__new__(QueueWait)
        wait.queue = self
        return wait

    cdef int _heat(self, uint64_t now) except -1:
        # Adaptive: traffic. Poll (and ask the peer not to signal) for a window.
        self._last_traffic = now
        memif_flags_or(ring_flags(self.ring.ring._hdr()), MASK_INT)
        return 0

    cdef int _wait_step(self, PyObject **result) except -1:
        """One step of a wait: 1 = suspend the task on result[0] (the Waiter, or None for one
        loop turn), 0 = there may be packets: look. ``phase`` is where the last step left."""
        cdef Waiter waiter = self._waiter
        cdef RxRing rx = self.ring
        cdef uint64_t now = 0
        cdef int mode
        cdef bint turned
        cdef uint16_t *flags
        if self.phase == PHASE_SLEEP:
            if waiter.state == WAITER_PENDING:  # stepped without a wake-up: sleep on
                waiter._asyncio_future_blocking = True
                Py_INCREF(waiter)
                result[0] = <PyObject *>waiter
                return 1
            self.phase = PHASE_START
            self.clock.last = memif_now_ns()  # the task slept: its loop had its turn
            if waiter.outcome is not None:
                raise waiter.outcome
            self._check()
            return 0
        turned = self.phase == PHASE_TURN
        self.phase = PHASE_START
        self._check()
        mode = self.wait_mode
        if mode == WAIT_PYTHON or rx.closed or rx.regions._closed:
            return 0  # the caller looks, and waits the subclass's way (or raises)
        # Every look at the ring below comes before our staged packets are published: a reply
        # they bring (on one CPU the peer may answer before this step ends) must wake us
        # through its signal, not be taken by a look, which would leave that signal to arrive
        # with nothing new (an empty wake-up, what an interrupt storm is made of).
        if mode != WAIT_INTERRUPT:
            now = memif_now_ns()
            if mode == WAIT_ADAPTIVE and rx.packets != self.packets_seen:
                self.packets_seen = rx.packets  # traffic since the last wait
                self._heat(now)
            if mode == WAIT_POLLING or now - self._last_traffic < self._window_ns:
                self._flush_tx()
                if not turned and now - self.clock.last >= self._spin_ns:
                    # However busy the link, the loop gets a turn at least every spin.
                    self.clock.last = now
                    self.phase = PHASE_TURN
                    Py_INCREF(None)
                    result[0] = <PyObject *>None
                    return 1
                if rx._spin(self._spin_ns, self.spin_releases_gil):
                    return 0  # only packets taken heat an adaptive queue (the next wait)
                self.clock.last = memif_now_ns()
                self.phase = PHASE_TURN
                Py_INCREF(None)
                result[0] = <PyObject *>None
                return 1
            flags = ring_flags(rx.ring._hdr())
            if memif_load_relaxed(flags) & MASK_INT:
                # Idle for a window: ask for signals again, then look once more before
                # sleeping (the flag's update is a full barrier: a packet published before it
                # is seen now, one published after it is signalled).
                memif_flags_and(flags, <uint16_t>~MASK_INT)
                if rx._moved():
                    return 0
        # No lost wake-up: the peer publishes before it signals. A signal handled before the
        # waiter is armed (the caller's look may be a loop iteration old) found no waiter, but
        # its packets are seen here; one that comes later finds the waiter.
        if rx._moved():
            return 0
        self._flush_tx()
        if waiter.state == WAITER_PENDING:
            raise LocalProtocolError(f"rx queue {self.index}: another task is already waiting")
        waiter.arm()
        self.phase = PHASE_SLEEP
        waiter._asyncio_future_blocking = True
        Py_INCREF(waiter)
        result[0] = <PyObject *>waiter
        return 1

    cdef void _abandon_wait(self) noexcept:
        # The waiting coroutine went away (an exception thrown in): no wait is in progress.
        if self.phase == PHASE_SLEEP:
            self._waiter._disarm()
        self.phase = PHASE_START

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


cdef int _queue_wait_send(PyObject *self, PyObject *arg, PyObject **result) except -1:
    return (<QueueWait>self)._step(result)


@cython.final
@cython.freelist(8)
cdef class QueueWait:
    """``await queue._wait_c()``: one wait in the queue's mode (see RxQueueCore)."""

    cdef int _step(self, PyObject **result) except -1:
        cdef RxQueueCore queue = self.queue
        if not self.started:
            self.started = True
            queue.phase = PHASE_START
        cdef int rc = queue._wait_step(result)
        if rc == 0:
            self.started = False
            Py_INCREF(None)
            result[0] = <PyObject *>None
        return rc

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        cdef PyObject *raw = NULL
        cdef int rc = self._step(&raw)
        value = <object>raw
        Py_DECREF(value)
        if rc == 1:
            return value
        raise StopIteration

    def send(self, arg):
        return self.__next__()

    def throw(self, typ, val=None, tb=None):
        if val is None:
            val = typ() if isinstance(typ, type) else typ
        self.started = False
        self.queue._abandon_wait()
        raise val

    def close(self):
        if self.started:
            self.started = False
            self.queue._abandon_wait()


AM_SEND_WAIT = bool(memif_set_am_send(<PyTypeObject *>QueueWait, <void *>_queue_wait_send))


cdef int _resume_send(PyObject *self, PyObject *arg, PyObject **result) except -1:
    # am_send: PYGEN_RETURN (0) with the packet, PYGEN_NEXT (1) with what to suspend on,
    # PYGEN_ERROR (-1) with the exception set.
    return (<PacketResume>self).stream._step(result)


@cython.final
@cython.freelist(8)
cdef class PacketResume:
    """What :class:`PacketStream` hands out when it must wait (from a free list: the stream
    keeps no reference to it, so nothing here needs the cycle collector).

    Awaited, it looks at the ring once more (a signal handled before the await began found
    no waiter), then waits in the queue's mode (``RxQueueCore._wait_step``) and takes the
    burst; woken for nothing (a mode switch, a signal without news) it counts an empty
    wake-up, gives the loop a turn and waits on, or hands
    over to the subclass's ``_wait()`` when the mode is "python". No coroutine, no Future,
    no StopIteration per wait.
    """

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        cdef PyObject *raw = NULL
        cdef int rc = self.stream._step(&raw)
        value = <object>raw
        Py_DECREF(value)  # _step's reference; `value` holds its own
        if rc == 1:
            return value
        raise StopIteration(value)

    def send(self, arg):
        return self.__next__()

    def throw(self, typ, val=None, tb=None):
        cdef PacketStream stream = self.stream
        cdef PyObject *raw = NULL
        if val is None:
            val = typ() if isinstance(typ, type) else typ
        stream.turn_pending = 0
        if stream.inner is not None:
            rc = stream._delegate(&raw, val)
            value = <object>raw
            Py_DECREF(value)
            if rc == 1:
                return value
            raise StopIteration(value)
        if stream.waiting:
            stream.waiting = False
            stream.queue._abandon_wait()
        raise val

    def close(self):
        cdef PacketStream stream = self.stream
        inner, stream.inner = stream.inner, None
        stream.turn_pending = 0
        if stream.waiting:
            stream.waiting = False
            stream.queue._abandon_wait()
        if inner is not None:
            inner.close()


AM_SEND_RESUME = bool(memif_set_am_send(<PyTypeObject *>PacketResume, <void *>_resume_send))


@cython.final
cdef class PacketStream:
    """``async for pkt in rxq``: one packet per step, no coroutine per packet.

    While the current burst has packets, ``__anext__`` returns a reused :class:`Completed`.
    When it is empty it takes a new burst at once (releasing the old one); only when that is
    empty too does it wait: through the reused :class:`PacketResume` when the queue waits in
    C, otherwise through a coroutine that awaits the queue's ``_wait()`` (which raises
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

    cdef int _check_live(self) except -1:
        self.queue._check()
        if self.rx.closed or self.rx.regions._closed:
            raise LocalProtocolError("rx ring is closed")
        return 0

    cdef bint _take_checked(self) except -1:
        """Take a burst if the link and ring are still up; whether it has a packet."""
        self._check_live()
        self._take()
        return self.i < self.rx.c.n

    cdef object _next(self):
        cdef RxRing rx = self.rx
        cdef uint32_t i = self.i
        if i < rx.fwd:
            raise LocalProtocolError(f"packet {i} was forwarded")
        self.i = i + 1
        return _packet(rx, i)

    def __anext__(self):
        cdef RxRing rx = self.rx
        cdef PacketResume resume
        if self.queue.closed_reason is None and not rx.closed and not rx.regions._closed:
            if self.i >= rx.c.n:
                if self.inner is None and rx._has_news() and self.queue._turn_due():
                    # Packets keep coming without a wait: the loop gets its turn now and then,
                    # before the take (a task cancelled in its turn has taken nothing).
                    self.turn_pending = 1
                    self.waiting = False
                    resume = PacketResume.__new__(PacketResume)
                    resume.stream = self
                    return resume
                self._take()
            if self.i < rx.c.n:
                self.ready.value = self._next()
                return self.ready
            if self.queue.wait_mode != WAIT_PYTHON and self.inner is None:
                self.waiting = False
                resume = PacketResume.__new__(PacketResume)
                resume.stream = self
                return resume
        return self._slow()

    cdef int _step(self, PyObject **result) except -1:
        """One step of PacketResume: 1 = suspend on result[0], 0 = result[0] is the packet."""
        cdef RxQueueCore queue = self.queue
        cdef RxRing rx = self.rx
        if self.inner is not None:
            return self._delegate(result, None)
        if self.turn_pending == 1:
            self.turn_pending = 2
            Py_INCREF(None)
            result[0] = <PyObject *>None  # a bare yield: one loop turn
            return 1
        if self.turn_pending == 2:  # back from the turn: take what was there (and more)
            self.turn_pending = 0
            if self._take_checked():
                return self._give(result)
        while True:
            if not self.waiting:
                self._check_live()
                if rx._moved():  # news since the caller looked: no wait
                    self._take()
                    if self.i < rx.c.n:
                        return self._give(result)
                if queue.wait_mode == WAIT_PYTHON:
                    self.inner = self._slow()
                    return self._delegate(result, None)
                queue.phase = PHASE_START
                self.waiting = True
            if queue._wait_step(result):
                return 1
            self.waiting = False
            if self._take_checked():
                return self._give(result)
            # Nothing after all (a mode switch, a chain published in part, or a peer moving
            # its counter to wake us): counted like a signal without news, and the loop gets
            # a turn before the next look, so no peer can keep this step from returning.
            queue._empty_wakeup()
            Py_INCREF(None)
            result[0] = <PyObject *>None
            return 1

    cdef int _give(self, PyObject **result) except -1:
        value = self._next()
        Py_INCREF(value)
        result[0] = <PyObject *>value
        return 0

    cdef int _delegate(self, PyObject **result, object exc) except -1:
        """Drive the _slow() coroutine a wait handed over to."""
        try:
            if exc is None:
                value = self.inner.send(None)
            else:
                value = self.inner.throw(exc)
        except StopIteration as stop:
            self.inner = None
            value = stop.value
            Py_INCREF(value)
            result[0] = <PyObject *>value
            return 0
        except BaseException:
            self.inner = None
            raise
        Py_INCREF(value)
        result[0] = <PyObject *>value
        return 1

    async def _slow(self):
        while True:
            await self.queue._wait()
            if self._take_checked():
                return self._next()


cdef class TxQueueCore(QueueCore):
    """The C half of :class:`memif_aio.TxQueue`: ``send``, the per-packet path.

    ``send(data)`` copies the packet into the ring at once and returns :data:`DONE` when it
    fits. The first packet staged in a loop iteration schedules one flush with
    ``loop.call_soon``; ``max_burst`` staged packets flush at once, and so do the first of a
    loop iteration and every ``POLLED_FLUSH`` (32) when the receiver polls (MASK_INT: a flush is then one store, no
    syscall, and publishing early keeps the peer busy; every packet would move the ring's
    cache line between the CPUs per packet: half the send rate toward dpdk-testpmd). A
    consumer's wait publishes what its link staged first, so a reply goes out at once. A task sending in a loop lets the others on its loop run: every
    ``max_burst`` sends it looks at the clock, and once it has been sending for
    ``TURN_INTERVAL_NS`` since its last turn it returns a :class:`YieldOnce` instead (a loop
    iteration costs a few microseconds: one per ~200 us keeps the sender's loss small and
    the others' wait short, whatever the packet size). When the packet does not fit, or the
    queue is closed, it returns the subclass's ``_send_slow(data, metadata)``.
    """

    def __init__(self, int index, TxRing ring not None, on_peer_error, loop,
                 uint32_t max_burst=DEFAULT_BURST):
        QueueCore.__init__(self, index, on_peer_error)
        self.ring = ring
        self.call_soon = loop.call_soon
        self.max_burst = max_burst if max_burst else 1
        self.yield_every = self.max_burst

    @property
    def _yield_every(self):
        """Sends between two looks at the clock (``max_burst``); 0 never yields (for
        measuring what the fairness costs, not for use)."""
        return self.yield_every

    @_yield_every.setter
    def _yield_every(self, uint32_t value):
        self.yield_every = value
        self.since_turn = 0

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
                if tx.staged_packets >= self.max_burst or (
                        (not self.scheduled or tx.staged_packets % POLLED_FLUSH == 0)
                        and tx._peer_polls()):
                    tx._flush()
                if not self.scheduled:
                    self.scheduled = True
                    self.call_soon(self._scheduled_flush)
                self.since_turn += 1
                if self.since_turn >= self.yield_every and self.yield_every:
                    self.since_turn = 0
                    if self._turn_due():
                        return self.turn
                return DONE
        self.since_turn = 0
        self.clock.last = memif_now_ns()  # the slow path waits: the loop gets its turn
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
