# Signalling the peer: eventfd writes that cannot block the loop thread (included by ring.pyx).
#
# The peer holds the same open file description as we do for every ring's eventfd, so it can
# clear O_NONBLOCK and fill the counter at any instant; a plain write() could then sleep
# forever. memif_signal.h says how each backend avoids that. Receiving needs no syscall on the
# peer's fd at all (memif_aio.interrupts watches them through a private edge-triggered epoll).

cdef extern from "<errno.h>":
    enum:
        EINPROGRESS

cdef int _uring_usable = -1  # probed once per process

#: Slots one Signaller serves: memif allows at most 256 rings per direction.
MAX_SIGNAL_SLOTS = 256
#: How long Signaller.close() tries to free a helper thread that a peer stalled.
HELPER_STOP_TIMEOUT_MS = 50


def signal_backend():
    """How this process signals peer eventfds: ``"io_uring"`` (a write with RWF_NOWAIT: inline
    and never sleeping) or ``"thread"`` (a helper thread per link does the writes).

    ``MEMIF_AIO_SIGNAL_BACKEND=thread`` in the environment forces the helper thread (what a
    container whose seccomp profile forbids io_uring gets anyway); ``io_uring`` is honoured
    only where it works."""
    global _uring_usable
    forced = os.environ.get("MEMIF_AIO_SIGNAL_BACKEND", "")
    if forced == "thread":
        return "thread"
    if forced not in ("", "io_uring"):
        raise ValueError(f"MEMIF_AIO_SIGNAL_BACKEND={forced!r}: use io_uring or thread")
    if _uring_usable < 0:
        _uring_usable = memif_uring_probe()
    return "io_uring" if _uring_usable else "thread"


@cython.final
cdef class Signaller:
    """Writes ``1`` to the peer's eventfds of one link; no call ever blocks the caller.

    ``add(fd)`` gives each eventfd a slot; a :class:`TxRing` built with ``signaller=`` signals
    its slot after publishing. With io_uring the write happens inline or is refused at once;
    a refusal because the peer made the file blocking is a peer fault: ``fault`` holds the
    reason and ``on_fault(reason)`` is called once (it must not raise). A full counter means
    the peer is already woken. Without io_uring a helper thread does the writes, at the cost of
    one thread wake-up per signal. ``close()`` before closing the fds.
    """


    def __cinit__(self, *args, **kwargs):
        self.uring.fd = -1

    def __init__(self, on_fault=None, *, backend=None):
        if self.fds != NULL:
            raise LocalProtocolError("Signaller is already initialised")
        if backend is None:
            backend = signal_backend()
        if backend not in ("io_uring", "thread"):
            raise ValueError(f"backend must be 'io_uring' or 'thread', not {backend!r}")
        self.fds = <int *>_xmalloc(MAX_SIGNAL_SLOTS * sizeof(int))
        self.on_fault = on_fault
        self.backend = backend
        cdef int rc
        if backend == "io_uring":
            rc = memif_uring_open(&self.uring, 8)
            if rc < 0:
                raise OSError(-rc, f"io_uring_setup: {os.strerror(-rc)}")
            self.use_uring = True
        else:
            self.helper = memif_signal_thread_new(MAX_SIGNAL_SLOTS)
            if self.helper == NULL:
                raise OSError(errno, f"signal helper thread: {os.strerror(errno)}")

    def __dealloc__(self):
        self._release()
        PyMem_Free(self.fds)

    def add(self, int fd):
        """Give ``fd`` (an eventfd shared with the peer) a slot; return the slot."""
        if self.closed:
            raise LocalProtocolError("signaller is closed")
        if fd < 0:
            raise ValueError(f"bad fd {fd}")
        if self.nslots >= MAX_SIGNAL_SLOTS:
            raise ValueError(f"more than {MAX_SIGNAL_SLOTS} eventfds in one signaller")
        self.fds[self.nslots] = fd
        if self.helper != NULL:
            memif_signal_thread_set(self.helper, self.nslots, fd)
        self.nslots += 1
        return self.nslots - 1

    cdef void _signal(self, int slot) noexcept:
        cdef int fd, res
        if self.closed or not 0 <= slot < self.nslots:
            return
        self.signals += 1
        if self.helper != NULL:
            memif_signal_thread_post(self.helper, slot)
            return
        fd = self.fds[slot]
        res = memif_uring_signal(&self.uring, fd)
        if res == 8 or res == -EINPROGRESS:
            return
        if res == -EAGAIN and fcntl(fd, F_GETFL) & O_NONBLOCK:
            return  # counter full: the peer has a wake-up pending anyway
        self.failures += 1
        if res == -EAGAIN:
            self._set_fault("the peer made its ring eventfd blocking")
        else:
            self._set_fault(f"cannot signal the ring eventfd: {os.strerror(-res)}")

    cdef void _set_fault(self, str reason) noexcept:
        if self.fault is not None:
            return
        self.fault = reason
        if self.on_fault is not None:
            try:
                self.on_fault(reason)
            except BaseException:  # pragma: no cover - the callback is ours and only schedules
                pass

    def signal(self, int slot):
        """Wake the peer through slot ``slot`` (what TxRing does after publishing)."""
        if self.closed:
            raise LocalProtocolError("signaller is closed")
        if not 0 <= slot < self.nslots:
            raise IndexError(f"slot {slot} not in 0..{self.nslots - 1}")
        self._signal(slot)

    cdef void _release(self) noexcept:
        if self.use_uring:
            memif_uring_close(&self.uring)
            self.use_uring = False
        if self.helper != NULL:
            memif_signal_thread_free(self.helper, HELPER_STOP_TIMEOUT_MS)
            self.helper = NULL

    def close(self):
        """Stop signalling (idempotent). The fds are the caller's: close them afterwards."""
        self.closed = True
        self._release()

    def __repr__(self):
        return f"<Signaller {self.backend} slots={self.nslots} signals={self.signals}>"
