"""File descriptors a peer hands us: what they are, and how to get rid of them safely.

Every fd that arrives with ``SCM_RIGHTS`` is the peer's choice. Looking at one must not block:
``fstat`` on a FUSE file can wait for the peer's FUSE daemon, so an fd is first classified by
what cannot block (its ``/proc/self/fd`` link, its ``/proc/self/fdinfo`` text, ``F_GET_SEALS``,
which only shmem and hugetlbfs files answer), and only shared memory is ``fstat``-ed.
Closing one must not block either: the last close of a TCP socket with ``SO_LINGER`` waits for
its send buffer, of a FUSE file for the daemon, of a populated memfd for the pages to be
freed. So fds received from a peer are closed by :func:`close_later`, on a small pool of
closer threads, never on the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import queue
import socket
import stat
import struct
import threading
from collections.abc import Iterable

from .handshake import FdInfo

log = logging.getLogger(__name__)

_EVENTFD_LINK = "anon_inode:[eventfd]"
_CLOSER_THREADS = 4  # a peer can stall one closer per fd it lingers; more are started on need


def inspect_fd(fd: int) -> FdInfo:
    """Classify ``fd`` without a syscall that can block; seal shared memory against shrinking.

    The facts the handshake checks: ``kind`` (memfd, file, eventfd, other), and for shared
    memory its size and seals, for an eventfd whether it is blocking, a semaphore, and its
    kernel id (to spot one eventfd handed in twice). Shared memory that allows it is sealed
    with ``F_SEAL_SHRINK`` before its size is read, so the size it reports is one the peer
    can never go below: the region cannot be truncated under a mapping (SIGBUS).
    """
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return FdInfo("other")
    if target == _EVENTFD_LINK:
        return _inspect_eventfd(fd)
    if not target.startswith("/"):
        return FdInfo("other")  # sockets, pipes, other anonymous inodes
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            return FdInfo("other")
        # Not shmem or hugetlbfs: a file on some other file system (maybe FUSE: no fstat).
        return FdInfo("file")
    if not seals & (fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK):
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
            seals |= fcntl.F_SEAL_SHRINK
    st = os.fstat(fd)  # shmem/hugetlbfs: answered from the inode, never waits
    if not stat.S_ISREG(st.st_mode):
        return FdInfo("other")
    return FdInfo("memfd", st.st_size, seals)


def _inspect_eventfd(fd: int) -> FdInfo:
    fields = _fdinfo(fd)
    try:
        flags = int(fields.get("flags", "0"), 8)
    except ValueError:
        flags = 0
    semaphore = fields.get("eventfd-semaphore", "0").strip() == "1"
    try:
        eventfd_id: int | None = int(fields["eventfd-id"])
    except (KeyError, ValueError):
        eventfd_id = None  # kernels before 5.x do not say
    return FdInfo(
        "eventfd",
        blocking=not flags & os.O_NONBLOCK,
        semaphore=semaphore,
        eventfd_id=eventfd_id,
    )


def _fdinfo(fd: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        with open(f"/proc/self/fdinfo/{fd}") as info:
            for line in info:
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


# ------------------------------------------------------------------------------------ closing


class _Closer:
    """Closer threads fed by a queue; a thread stalled by one fd does not hold up the others."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._pending = 0

    def submit(self, fds: Iterable[int]) -> None:
        fds = list(fds)
        if not fds:
            return
        with self._lock:
            self._pending += len(fds)
            start = self._idle == 0 and self._threads < _CLOSER_THREADS
            if start:
                self._threads += 1
        for fd in fds:
            self._queue.put(fd)
        if start:
            threading.Thread(target=self._run, name="memif_aio fd closer", daemon=True).start()

    @property
    def pending(self) -> int:
        """fds handed over and not closed yet (tests wait for 0)."""
        return self._pending

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            fd = self._queue.get()
            with self._lock:
                self._idle -= 1
                if self._idle == 0 and self._threads < _CLOSER_THREADS and self._pending > 1:
                    self._threads += 1
                    threading.Thread(
                        target=self._run, name="memif_aio fd closer", daemon=True
                    ).start()
            _close_unlingered(fd)
            with self._lock:
                self._pending -= 1


def _close_unlingered(fd: int) -> None:
    # A socket's SO_LINGER would make this close wait for its send buffer: reset it instead.
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.fstat(fd).st_mode):
            sock = socket.socket(fileno=fd)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            finally:
                sock.detach()
    with contextlib.suppress(OSError):
        os.close(fd)


_closer = _Closer()


def close_later(fds: Iterable[int]) -> None:
    """Close fds received from a peer off the event loop (they may take long to close)."""
    _closer.submit(fds)


def closing_pending() -> int:
    """How many fds :func:`close_later` has not closed yet."""
    return _closer.pending


# --------------------------------------------------------------- eventfds in use by live links

_eventfd_owners: dict[int, object] = {}


def claim_eventfds(ids: Iterable[int | None], owner: object) -> bool:
    """Record that ``owner`` (a link) uses these eventfds (kernel ids; None is skipped).

    False, and nothing recorded, if another owner already uses one of them: a peer that hands
    one eventfd to two links could otherwise make them wake each other.
    """
    wanted = [i for i in ids if i is not None]
    if any(_eventfd_owners.get(i, owner) is not owner for i in wanted):
        return False
    for i in wanted:
        _eventfd_owners[i] = owner
    return True


def release_eventfds(owner: object) -> None:
    for i in [i for i, o in _eventfd_owners.items() if o is owner]:
        del _eventfd_owners[i]
