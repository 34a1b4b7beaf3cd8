"""Interrupts from the peer, without ever touching the peer's eventfds with a syscall that could
block or spin.

A ring's eventfd is shared with the peer: it can clear ``O_NONBLOCK``, fill the counter, or
hand in an ``EFD_SEMAPHORE`` eventfd that stays readable forever. So we never ``read()`` it.
Each link's rx eventfds are registered *edge-triggered* in a private epoll set, and only that
epoll fd (ours alone) is registered with the event loop. Every write by the peer queues one
edge; ``epoll_wait(0)`` on our own set consumes it and tells which ring was signalled. The
counter is left as it is: nothing a peer does to it can make us block, or wake us without a
write.

No lost wake-up: the peer publishes its counter before it signals, and a consumer always looks
at the ring before it waits; an edge that arrives while nobody waits finds the packets there
on the next look.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
from collections.abc import Callable

from . import _ring

log = logging.getLogger(__name__)

_EDGE = select.EPOLLIN | select.EPOLLET


class InterruptSet:
    """The rx eventfds of one link, watched on ``loop`` through one private epoll fd.

    ``watch(fd, callback)``: ``callback()`` runs (from the loop, never raising) after each
    signal on ``fd``. ``close()`` before the eventfds themselves are closed.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._epoll = select.epoll()  # close-on-exec
        self._callbacks: dict[int, Callable[[], None]] = {}
        self.closed = False
        # The reader is C (epoll_wait(0) into a fixed array, no list or tuple per signal):
        # it runs once per wake-up of every interrupt-mode consumer.
        self._core = _ring.InterruptCore(self._epoll.fileno(), self._callbacks)
        try:
            loop.add_reader(self._epoll.fileno(), self._core.ready)
        except BaseException:
            self._epoll.close()
            raise

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` on each signal of ``fd`` (an eventfd) until ``unwatch``
        (watching a watched fd only changes its callback)."""
        if fd not in self._callbacks:
            self._epoll.register(fd, _EDGE)
        self._callbacks[fd] = callback

    def unwatch(self, fd: int) -> None:
        if self._callbacks.pop(fd, None) is not None and not self.closed:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    def _ready(self) -> None:
        """What the loop calls when a watched eventfd was signalled (the C reader)."""
        self._core.ready()

    def close(self) -> None:
        """Stop watching (idempotent); the eventfds stay open for their owner to close."""
        if self.closed:
            return
        self.closed = True
        self._callbacks.clear()
        if not self._loop.is_closed():
            self._loop.remove_reader(self._epoll.fileno())
        self._core.close()
        self._epoll.close()
