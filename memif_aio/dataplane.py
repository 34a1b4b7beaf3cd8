"""The data plane of one link: shared memory, queues over its rings, interrupts and signalling.

Built from the handshake's :class:`~memif_aio.handshake.LinkSetup` and the memory it produced,
all or nothing: if any part cannot be built, what was built is closed again and the error is
raised, so a failed link-up leaves no reader registered and no fd or mapping behind. Closed
once, in the order that keeps every fd valid while anything may still use it: queues (no more
ring access), signalling and interrupts (no more syscalls on the eventfds), then the memory
and its fds.

Both sides start from head == tail == 0 when the link comes up (MEMIF-PROTOCOL.md, step 6):
the slave writes its rings' counters back to 0 here, whatever the master did to them during
the handshake, and neither side ever takes a counter from shared memory as its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from . import _ring
from .errors import PeerProtocolError
from .handshake import LinkSetup, Role
from .interrupts import InterruptSet
from .memory import RingMemory, SharedMemory
from .queues import RxQueue, TxQueue

ErrorHandler = Callable[[PeerProtocolError], None]


class DataPlane:
    """Queues, interrupts and signalling over ``memory`` for the link ``setup`` describes.

    ``on_peer_error(exc)`` hears of every peer violation found on the data path (a bad
    descriptor, a counter jump, an eventfd made blocking); the owner disconnects.
    ``on_notice(text)`` hears of peer misbehaviour we only contain (an interrupt storm).
    ``sentinel`` and ``short_next_ends_packet``: a slave's defences against DPDK's transmit
    off-by-one (see :class:`~memif_aio._ring.RxRing`). ``rx_mode``: how the rx queues wait
    (:class:`~memif_aio.queues.RxMode`).
    """

    def __init__(
        self,
        setup: LinkSetup,
        memory: SharedMemory,
        *,
        buffer_size: int,
        max_packet_size: int,
        on_peer_error: ErrorHandler,
        on_notice: Callable[[str], None] | None = None,
        sentinel: bool = False,
        short_next_ends_packet: bool = False,
        rx_mode: str = "interrupt",
    ) -> None:
        self.setup = setup
        self.memory = memory
        self.rx_queues: list[RxQueue] = []
        self.tx_queues: list[TxQueue] = []
        self._on_peer_error = on_peer_error
        self._on_notice = on_notice
        self._interrupts: InterruptSet | None = None
        self._signaller: _ring.Signaller | None = None
        self.closed = False
        self._rx_mode = rx_mode
        self._rx_defences: dict[str, Any] = {
            "sentinel": sentinel,
            "short_next_ends_packet": short_next_ends_packet,
        }
        try:
            self._build(buffer_size, max_packet_size)
        except BaseException:
            self.close("link setup failed")
            raise

    def _build(self, buffer_size: int, max_packet_size: int) -> None:
        loop = asyncio.get_running_loop()
        memory = self.memory
        slave = self.setup.role is Role.SLAVE
        rx_rings, tx_rings = (memory.m2s, memory.s2m) if slave else (memory.s2m, memory.m2s)
        if slave:
            for ring in (*rx_rings, *tx_rings):
                ring.ring.reset()
        self._interrupts = InterruptSet(loop)
        self._signaller = _ring.Signaller(self._signal_fault)

        def options(ring: RingMemory) -> dict[str, Any]:
            common: dict[str, Any] = {
                "role": self.setup.role.value,
                "max_packet_size": max_packet_size,
                "start": 0,
            }
            if slave:
                common.update(
                    buffer_size=buffer_size,
                    buffer_region=ring.buffer_region,
                    buffer_offsets=ring.buffer_offsets,
                )
            return common

        for ring in rx_rings:
            rx = _ring.RxRing(ring.ring, **options(ring), **(self._rx_defences if slave else {}))
            self.rx_queues.append(
                RxQueue(
                    ring.spec.index,
                    rx,
                    ring.spec.eventfd,
                    self._interrupts,
                    self._peer_error,
                    self._on_notice,
                    mode=self._rx_mode,
                )
            )
        for ring in tx_rings:
            tx = _ring.TxRing(
                ring.ring, signaller=self._signaller, eventfd=ring.spec.eventfd, **options(ring)
            )
            self.tx_queues.append(TxQueue(ring.spec.index, tx, self._peer_error))
        for rx_queue in self.rx_queues:
            # Before a consumer waits, what this link staged goes out (a reply, say).
            rx_queue._set_flush_queues(self.tx_queues)
        queues = [*self.rx_queues, *self.tx_queues]
        for queue in queues[1:]:
            # A task that receives and sends on this link gives its loop one turn per
            # interval, not one per queue (a turn costs a loop iteration: ~30 % of the burst
            # echo rate on the asyncio loop with a clock per queue).
            queue._share_turns_with(queues[0])

    def _peer_error(self, exc: PeerProtocolError) -> None:
        if not self.closed:
            self._on_peer_error(exc)

    def _signal_fault(self, reason: str) -> None:
        # Called from inside a transmit call: report from the loop, never from here.
        with contextlib.suppress(RuntimeError):  # the loop is closing: nothing to report to
            asyncio.get_running_loop().call_soon(self._peer_error, PeerProtocolError(reason))

    def close(self, reason: str) -> None:
        """Close queues (waiters get ``DisconnectedError(reason)``), then the eventfd users,
        then the memory. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for rx in self.rx_queues:
            rx._close(reason)
        for tx in self.tx_queues:
            tx._close(reason)
        if self._signaller is not None:
            self._signaller.close()
        if self._interrupts is not None:
            self._interrupts.close()
        self.memory.close()
