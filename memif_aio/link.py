"""The link of one interface: its control sessions, from connect or accept to close, both roles.

A :class:`Session` runs one control connection: the handshake machine wired to a
:class:`~memif_aio.control.ControlChannel`, a timer, and the shared memory the machine asks for
(created by a slave, mapped by a master). It reports to its *owner*: the socket while a master
session has not said which interface it wants, the :class:`Link` afterwards.

A :class:`Link` owns everything one interface does with peers: the state the user sees, the
slave's reconnect loop (every ``reconnect_interval`` until closed, like libmemif and VPP), the
data plane built from the handshake's ``LinkUp`` (:class:`~memif_aio.dataplane.DataPlane`,
all or nothing) and torn down with the session, the counters of earlier links, and the one
warning line for a peer that broke the rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, TypedDict, cast

from . import _ring
from . import fds as _fds
from . import handshake as hs
from .control import ControlChannel, connect_seqpacket
from .dataplane import DataPlane
from .errors import (
    DisconnectedError,
    HandshakeError,
    HandshakeTimeout,
    MemifError,
    PeerProtocolError,
)
from .memory import SharedMemory, create_slave_memory, map_master_memory
from .protocol import Mode, encode, printable
from .queues import RxQueue, TxQueue
from .ratelimit import WarningLimiter

log = logging.getLogger("memif_aio")

DEFAULT_LINGER = 0.5  # seconds close() waits for the peer to take what we sent
COUNTER_NAMES = (
    "rx_packets",
    "rx_bytes",
    "rx_errors",
    "rx_drops",
    "tx_packets",
    "tx_bytes",
    "tx_errors",
    "tx_drops",
)
_DPDK_NAME = re.compile(r"DPDK (\d+)\.(\d+)")  # HELLO's name: rte_version(), "DPDK 22.11.11"
_DPDK_FULL_SLOTS_BEFORE = (23, 3)  # until then DPDK fills every slot it chains from


class Stats(TypedDict):
    """``Interface.stats()``: counters over the interface's life, all links together."""

    rx_packets: int
    rx_bytes: int
    rx_errors: int
    rx_drops: int
    tx_packets: int
    tx_bytes: int
    tx_errors: int
    tx_drops: int


LinkEventKind = Literal["up", "down", "refused"]


class LinkState(str, enum.Enum):
    DISCONNECTED = "disconnected"  # master: listening; slave: waiting to retry
    CONNECTING = "connecting"  # handshake under way
    CONNECTED = "connected"
    CLOSED = "closed"


def dpdk_version(app_name: str) -> tuple[int, int] | None:
    """(year, month) of a DPDK peer from the name in its HELLO (``"DPDK 22.11.11"``)."""
    match = _DPDK_NAME.match(app_name)
    return (int(match[1]), int(match[2])) if match else None


def dpdk_defences(mode: str, peer_app_name: str) -> tuple[str, ...]:
    """The receive defences a slave uses against a master named ``peer_app_name``.

    DPDK's transmit (every version so far) may step one descriptor past our head: "sentinel"
    keeps that descriptor empty. Before 23.03 its real chains fill every slot they continue
    from, so NEXT on a partly filled slot can only be the stale flag a dropped chain left:
    "short-next-ends-packet". Later versions write short chained slots themselves (and since
    26.03 clear stale flags), so there the sentinel alone applies. ``mode`` "auto" defends
    against DPDK only, "on" against any master, "off" never.
    """
    version = dpdk_version(peer_app_name)
    if mode == "off" or (mode == "auto" and version is None):
        return ()
    if version is not None and version < _DPDK_FULL_SLOTS_BEFORE:
        return ("sentinel", "short-next-ends-packet")
    return ("sentinel",)


@dataclass(frozen=True)
class LinkOptions:
    """What an interface configures about its links (validated by :class:`Interface`)."""

    id: int
    role: hs.Role
    name: str
    app_name: str
    mode: Mode = Mode.ETHERNET
    secret: bytes = b""
    rx_queues: int = 1
    tx_queues: int = 1
    ring_size: int = 1024
    buffer_size: int = 2048
    cacheline: int = 64
    allow_unsealed_regions: bool = False
    max_packet_size: int = _ring.DEFAULT_MAX_PACKET_SIZE
    dpdk_workaround: str = "auto"
    rx_mode: str = "interrupt"

    def master_config(self) -> hs.MasterInterfaceConfig:
        return hs.MasterInterfaceConfig(
            interface_id=self.id,
            mode=self.mode,
            secret=self.secret,
            if_name=self.name,
            rx_queues=self.rx_queues,
            tx_queues=self.tx_queues,
            cacheline=self.cacheline,
            allow_unsealed_regions=self.allow_unsealed_regions,
        )

    def slave_config(self) -> hs.SlaveConfig:
        return hs.SlaveConfig(
            interface_id=self.id,
            mode=self.mode,
            secret=self.secret,
            app_name=self.app_name,
            if_name=self.name,
            tx_queues=self.tx_queues,
            rx_queues=self.rx_queues,
            log2_ring_size=self.ring_size.bit_length() - 1,
            cacheline=self.cacheline,
        )


@dataclass(frozen=True)
class SocketContext:
    """What a link needs of the socket it lives on."""

    path: str  # as the user spelled it, for messages
    address: str  # kernel spelling (abstract: leading NUL)
    app_name: str
    reconnect_interval: float
    handshake_timeout: float | None
    warnings: WarningLimiter
    # (link or None, kind, peer label, reason, error): the socket turns it into a LinkEvent.
    on_event: Callable[[Link | None, LinkEventKind, str, str, MemifError | None], None] | None = (
        None
    )

    def emit(
        self,
        link: Link | None,
        kind: LinkEventKind,
        peer: str,
        reason: str,
        error: MemifError | None,
    ) -> None:
        if self.on_event is not None:
            self.on_event(link, kind, peer, reason, error)


# ------------------------------------------------------------------------------------ sessions


class SessionOwner(Protocol):
    """Who hears what a session does: the socket until a master session is claimed, then the
    link of the interface it claimed."""

    def link_up(self, session: Session, setup: hs.LinkSetup, memory: SharedMemory) -> None: ...
    def session_closed(self, session: Session, closed: hs.Closed) -> None: ...


class Session:
    """One control connection from accept/connect to close; executes the machine's actions.

    ``on_claim(session, id)`` (master) hears the INIT that names the interface it wants.
    """

    def __init__(
        self,
        channel_socket: socket.socket,
        machine: hs.SlaveHandshake | hs.MasterHandshake,
        owner: SessionOwner,
        *,
        peer: str,
        warnings: WarningLimiter,
        buffer_size: int = 2048,
        on_claim: Callable[[Session, int], None] | None = None,
    ) -> None:
        self.machine = machine
        self.owner = owner
        self.peer = peer
        self.warnings = warnings
        self._loop = asyncio.get_running_loop()
        self._on_claim = on_claim
        self._buffer_size = buffer_size
        self._memory: SharedMemory | None = None  # ours until LinkUp hands it over
        self._timer: asyncio.TimerHandle | None = None
        self.closed: hs.Closed | None = None
        self._was_up = False
        self.done: asyncio.Future[hs.Closed] = self._loop.create_future()
        self.channel = ControlChannel(
            channel_socket, self._on_frame, self._on_channel_closed, self._loop
        )

    def start(self) -> None:
        if isinstance(self.machine, hs.MasterHandshake):
            self._apply(self.machine.start())
        self._arm_timer()

    def close(self, reason: str = hs.LOCAL_CLOSE) -> None:
        """Local teardown: DISCONNECT with ``reason``, then close everything."""
        self._apply(self.machine.close(reason))

    def reject(self, reason: str) -> None:
        """Refuse the peer for a reason found outside the machine (logged like any refusal)."""
        self._apply(self.machine.fail(reason))

    def peer_label(self) -> str:
        machine = self.machine
        if isinstance(machine, hs.MasterHandshake) and machine.requested_id is not None:
            return f"{self.peer} id {machine.requested_id}"
        return self.peer

    # -- inputs ---------------------------------------------------------------------------------

    def _on_frame(self, frame: bytes, fds: list[int]) -> None:
        # The facts the rules need, gathered here so the machine stays free of I/O. A slave
        # is never sent fds (it refuses them unseen); a master's are sealed as they arrive.
        if isinstance(self.machine, hs.MasterHandshake):
            received = [hs.ReceivedFd(fd, _fds.inspect_fd(fd)) for fd in fds]
        else:
            received = [hs.ReceivedFd(fd, hs.FdInfo("other")) for fd in fds]
        self._apply(self.machine.receive_frame(frame, received))

    def _on_channel_closed(self, exc: Exception | None) -> None:
        self._apply(self.machine.peer_closed())

    def _on_timer(self) -> None:
        self._timer = None
        self._apply(self.machine.handle_timer(time.monotonic()))

    def _arm_timer(self) -> None:
        deadline = self.machine.deadline
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None and not self.machine.connected and self.closed is None:
            self._timer = self._loop.call_at(
                self._loop.time() + max(0.0, deadline - time.monotonic()), self._on_timer
            )

    # -- outputs --------------------------------------------------------------------------------

    def _apply(self, actions: list[hs.Action]) -> None:
        for action in actions:
            if isinstance(action, hs.Send):
                self.channel.send(encode(action.message), action.fds)
            elif isinstance(action, hs.CloseFds):
                _fds.close_later(action.fds)
            elif isinstance(action, hs.ClaimInterface):
                assert self._on_claim is not None
                self._on_claim(self, action.interface_id)
            elif isinstance(action, hs.CreateMemory):
                self._create_memory(action.negotiated)
            elif isinstance(action, hs.MapMemory):
                self._map_memory(action.setup)
            elif isinstance(action, hs.LinkUp):
                memory, self._memory = self._memory, None
                assert memory is not None
                self._was_up = True
                self.owner.link_up(self, action.setup, memory)
            elif isinstance(action, hs.Closed):
                self._finish(action)
        self._arm_timer()

    def _create_memory(self, negotiated: hs.Negotiated) -> None:
        machine = self.machine
        assert isinstance(machine, hs.SlaveHandshake)
        try:
            memory, regions, rings = create_slave_memory(
                negotiated, self._buffer_size, machine.config.cacheline
            )
        except OSError as exc:
            self._apply(machine.close(f"cannot create shared memory: {exc.strerror}"))
            return
        self._memory = memory
        self._apply(machine.memory_created(regions, rings))

    def _map_memory(self, setup: hs.LinkSetup) -> None:
        machine = self.machine
        assert isinstance(machine, hs.MasterHandshake)
        try:
            self._memory = map_master_memory(setup)
        except MemifError as exc:
            self._apply(machine.fail(exc.reason))
            return
        if not _fds.claim_eventfds(
            (ring.eventfd_id for ring in setup.s2m_rings + setup.m2s_rings), owner=self
        ):
            self._apply(machine.fail(hs.EVENTFD_IN_USE))
            return
        self._apply(machine.memory_mapped())

    def _finish(self, closed: hs.Closed) -> None:
        self.closed = closed
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.channel.close()
        if self._memory is not None:
            self._memory.close()
            self._memory = None
        _fds.release_eventfds(self)
        if closed.error is not None and not isinstance(closed.error, DisconnectedError):
            # A refusal (ours or the peer's) is worth a warning; a peer that just left is not.
            what = "link closed" if self._was_up else "handshake failed"
            args = (self.peer_label(), what, printable(closed.reason))
            if closed.reason == hs.PEER_CLOSED:
                log.info("memif %s: %s: %s", *args)
            else:
                self.warnings.warning("memif %s: %s: %s", *args)
        self.owner.session_closed(self, closed)
        if not self.done.done() and not self._loop.is_closed():
            self.done.set_result(closed)


# --------------------------------------------------------------------------------------- links


class Link:
    """Everything one interface does with peers; the interface is its façade.

    A master link is handed sessions by its socket (``attach``); a slave link runs its own
    reconnect loop (``start``). Either way it builds the data plane when a session says the
    link is up and tears it down when the session ends.
    """

    def __init__(self, options: LinkOptions, context: SocketContext) -> None:
        self.options = options
        self.context = context
        self.state = LinkState.DISCONNECTED
        self.last_disconnect_reason = ""
        self.setup: hs.LinkSetup | None = None
        self.defences: tuple[str, ...] = ()  # in force on the current link
        self._session: Session | None = None
        self._plane: DataPlane | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._changed = asyncio.Event()  # pulsed on every state change and refusal
        self._refusal: MemifError | None = None
        self._closed_counters: dict[str, int] = {}  # totals of queues of earlier links
        self.unreachable = False  # slave: the last attempt found nobody listening

    @property
    def connected(self) -> bool:
        return self.state is LinkState.CONNECTED

    @property
    def plane(self) -> DataPlane | None:
        """The data plane of the current link (None while it is down)."""
        return self._plane

    @property
    def rx_queues(self) -> list[RxQueue]:
        return self._plane.rx_queues if self._plane is not None else []

    @property
    def tx_queues(self) -> list[TxQueue]:
        return self._plane.tx_queues if self._plane is not None else []

    # -- what the socket asks of a master link ---------------------------------------------------

    def master_config(self) -> hs.MasterInterfaceConfig:
        return self.options.master_config()

    @property
    def busy(self) -> bool:
        """A session holds this link (handshake under way or link up)."""
        return self._session is not None

    def attach(self, session: Session) -> None:
        """A master session claimed this link's interface id: it reports to us from now on."""
        session.owner = self
        self._session = session
        self._set_state(LinkState.CONNECTING)

    def refused(self, reason: str) -> None:
        """A slave asking for this interface was refused (wrong secret, mode...): say why."""
        if self._session is None:
            self.last_disconnect_reason = reason
            self._changed.set()

    # -- the slave's reconnect loop ----------------------------------------------------------------

    def start(self) -> None:
        """Slave: connect, and again after every disconnect or refusal, until closed."""
        self._task = asyncio.get_running_loop().create_task(
            self._run_slave(), name=f"memif slave {self.context.path} id {self.options.id}"
        )

    async def _run_slave(self) -> None:
        context, options = self.context, self.options
        while not self._closing:
            self._set_state(LinkState.CONNECTING)
            try:
                sock = await connect_seqpacket(
                    context.address, context.handshake_timeout or hs.DEFAULT_HANDSHAKE_TIMEOUT
                )
            except OSError as exc:
                self.last_disconnect_reason = f"cannot connect: {exc.strerror or exc}"
                self.unreachable = True
                self._set_state(LinkState.DISCONNECTED)
                await asyncio.sleep(context.reconnect_interval)
                continue
            self.unreachable = False
            machine = hs.SlaveHandshake(
                options.slave_config(), now=time.monotonic(), timeout=context.handshake_timeout
            )
            session = Session(
                sock,
                machine,
                self,
                peer=f"{context.path} id {options.id}",
                warnings=context.warnings,
                buffer_size=options.buffer_size,
            )
            self._session = session
            session.start()
            try:
                await asyncio.shield(session.done)
            except asyncio.CancelledError:
                session.close(hs.LOCAL_CLOSE)
                raise
            if not self._closing:
                await asyncio.sleep(context.reconnect_interval)

    # -- what sessions report ----------------------------------------------------------------------

    def link_up(self, session: Session, setup: hs.LinkSetup, memory: SharedMemory) -> None:
        options = self.options
        slave = options.role is hs.Role.SLAVE
        defences = dpdk_defences(options.dpdk_workaround, setup.peer_app_name) if slave else ()
        try:
            plane = DataPlane(
                setup,
                memory,
                buffer_size=options.buffer_size,
                max_packet_size=options.max_packet_size,
                on_peer_error=self._peer_error,
                on_notice=self._peer_notice,
                sentinel="sentinel" in defences,
                short_next_ends_packet="short-next-ends-packet" in defences,
                rx_mode=options.rx_mode,
            )
        except (MemifError, ValueError, OSError) as exc:
            # Nothing of the link is left behind (DataPlane closed what it built and the
            # memory); the peer hears why.
            reason = f"cannot set up the link: {getattr(exc, 'reason', '') or exc}"
            session.warnings.warning("memif %s: %s", session.peer_label(), printable(reason))
            session.close(reason)
            return
        self.setup = setup
        self._plane = plane
        self.defences = defences
        self._set_state(LinkState.CONNECTED)
        self.context.emit(self, "up", session.peer_label(), "", None)
        log.info(
            "memif %s id %d: connected to %s (%s)%s",
            self.context.path,
            options.id,
            printable(setup.peer_name),
            printable(setup.peer_app_name),
            f"; rx defences: {', '.join(defences)}" if defences else "",
        )

    def session_closed(self, session: Session, closed: hs.Closed) -> None:
        was_up = self.connected
        self._session = None
        self.last_disconnect_reason = closed.reason
        if isinstance(closed.error, HandshakeError):
            self._refusal = closed.error
        plane, self._plane = self._plane, None
        if plane is not None:
            plane.close(closed.reason)
            self._closed_counters = self._totals(plane.rx_queues, plane.tx_queues)
        self.setup = None
        if was_up:
            log.info(
                "memif %s id %d: disconnected: %s",
                self.context.path,
                self.options.id,
                printable(closed.reason),
            )
        if self.state is not LinkState.CLOSED:
            self._set_state(LinkState.DISCONNECTED)
        if was_up:
            self.context.emit(self, "down", session.peer_label(), closed.reason, closed.error)
        elif closed.error is not None and not isinstance(closed.error, DisconnectedError):
            self.context.emit(self, "refused", session.peer_label(), closed.reason, closed.error)

    def _peer_notice(self, text: str) -> None:
        session = self._session
        if session is not None:
            session.warnings.warning("memif %s: %s", session.peer_label(), text)

    def _peer_error(self, exc: PeerProtocolError) -> None:
        session = self._session
        if session is None:
            return  # the link is already down: reported once, when it broke
        session.warnings.warning(
            "memif %s: data path: %s", session.peer_label(), printable(exc.reason)
        )
        session.close(exc.reason)

    # -- for the interface -------------------------------------------------------------------------

    async def wait_connected(self, timeout: float | None = None, *, fail_fast: bool) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._refusal = None
        while not self.connected:
            if self.state is LinkState.CLOSED:
                raise DisconnectedError("interface closed")
            if fail_fast and self._refusal is not None:
                raise self._refusal
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                why = self.last_disconnect_reason or "no peer"
                raise HandshakeTimeout(
                    f"not connected after {timeout}s ({why})", unreachable=self.unreachable
                )
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_disconnected(self) -> str:
        while self.connected:
            self._changed.clear()
            await self._changed.wait()
        return self.last_disconnect_reason

    def stats(self) -> Stats:
        totals = self._totals(self.rx_queues, self.tx_queues)
        for name, value in self._closed_counters.items():
            totals[name] += value
        return cast(Stats, totals)  # totals has exactly the COUNTER_NAMES keys

    @staticmethod
    def _totals(rx_queues: list[RxQueue], tx_queues: list[TxQueue]) -> dict[str, int]:
        totals = dict.fromkeys(COUNTER_NAMES, 0)
        for prefix, queues in (("rx", rx_queues), ("tx", tx_queues)):
            for queue in queues:
                for name, value in queue.stats().items():
                    totals[f"{prefix}_{name}"] += value
        return totals

    async def close(self, linger: float, reason: str = hs.LOCAL_CLOSE) -> None:
        """Disconnect (telling the peer ``reason``), release everything, stop reconnecting."""
        if self.state is LinkState.CLOSED:
            return
        self._closing = True
        if linger > 0 and self.connected:
            await self._wait_tx_consumed(linger)
        if self._session is not None:
            self._session.close(reason)
        task, self._task = self._task, None
        if task is not None and not task.get_loop().is_closed():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif task is not None:
            # Its loop was closed under us: it can never run again, and everything it held is
            # released here, so "destroyed but pending" would be a false alarm.
            with contextlib.suppress(AttributeError):
                task._log_destroy_pending = False  # type: ignore[attr-defined]
        self._set_state(LinkState.CLOSED)

    async def _wait_tx_consumed(self, timeout: float) -> None:
        # Every slot back in the tx ring (slave: tail caught up with head; master: the slave
        # re-posted all its buffers) means the peer has read all we sent.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        setup = self.setup
        if setup is None:
            return
        slave = self.options.role is hs.Role.SLAVE
        sizes = [1 << ring.log2_size for ring in (setup.s2m_rings if slave else setup.m2s_rings)]
        with contextlib.suppress(MemifError):
            while self.connected and loop.time() < deadline:
                queues = self.tx_queues
                if all(q.free_slots >= n for q, n in zip(queues, sizes, strict=False)):
                    return
                await asyncio.sleep(0.001)

    def _set_state(self, state: LinkState) -> None:
        self.state = state
        self._changed.set()
