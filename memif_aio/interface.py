"""A memif interface: its lifecycle, state, reconnection and what it tells the user.

A master interface waits on its socket's listener for a slave with its id; a slave interface
connects, and after any disconnect (or refusal) tries again every ``reconnect_interval``
seconds until it is closed, like libmemif and VPP. The data plane (queues over the rings) is
built from the handshake's ``LinkSetup`` when the link comes up and torn down when it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import _ring
from . import handshake as hs
from .dataplane import DataPlane
from .errors import (
    ConfigError,
    DisconnectedError,
    HandshakeError,
    HandshakeTimeout,
    MemifError,
    PeerProtocolError,
)
from .memory import SharedMemory
from .protocol import SECRET_SIZE, Mode, encode_string, printable
from .queues import RxQueue, TxQueue

if TYPE_CHECKING:
    from .socket import Session, Socket

log = logging.getLogger("memif_aio")

DEFAULT_LINGER = 0.5  # seconds close() waits for the peer to take what we sent
DPDK_WORKAROUND_MODES = ("auto", "on", "off")
_DPDK_NAME = re.compile(r"DPDK (\d+)\.(\d+)")  # HELLO's name: rte_version(), "DPDK 22.11.11"
_DPDK_FULL_SLOTS_BEFORE = (23, 3)  # until then DPDK fills every slot it chains from

_COUNTER_NAMES = (
    "rx_packets",
    "rx_bytes",
    "rx_errors",
    "rx_drops",
    "tx_packets",
    "tx_bytes",
    "tx_errors",
    "tx_drops",
)


class LinkState(str, enum.Enum):
    DISCONNECTED = "disconnected"  # master: listening; slave: waiting to retry
    CONNECTING = "connecting"  # handshake under way
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True)
class QueueDetails:
    index: int
    ring_size: int
    buffer_size: int | None  # a master learns it from the slave's descriptors only


@dataclass(frozen=True)
class InterfaceDetails:
    """A snapshot of ``Interface.details()``, like VPP's ``show memif``."""

    name: str
    app_name: str
    remote_name: str
    remote_app_name: str
    id: int
    role: str
    mode: str
    socket: str
    state: str
    link_up: bool
    cacheline: int
    rx_queues: tuple[QueueDetails, ...] = field(default_factory=tuple)
    tx_queues: tuple[QueueDetails, ...] = field(default_factory=tuple)
    last_disconnect_reason: str = ""
    dpdk_workaround: str = "auto"  # configured ("auto", "on", "off"); a slave option
    # In force on the current link: "sentinel" (one empty slot kept at head) and, for DPDK
    # before 23.03, "short-next-ends-packet" (README "Interop notes").
    dpdk_defences: tuple[str, ...] = ()


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


class Interface:
    """One memif interface on a :class:`~memif_aio.Socket`; create it with ``create_interface``.

    Options: ``secret`` (up to 24 bytes), ``mode`` (``"ethernet"``, ``"ip"``,
    ``"punt_inject"``), ``rx_queues``/``tx_queues`` (a slave asks for them; a master accepts at
    most that many), ``ring_size`` (power of two, 2..16384), ``buffer_size`` (slave's packet
    buffers), ``name`` (interface name sent in CONNECT/CONNECTED), ``app_name`` (defaults to the
    socket's), ``cacheline`` (64; 128 for peers built on aarch64), ``max_packet_size`` (the
    longest packet, chained descriptors joined, that the peer may send us or we send; default
    66 048 bytes: an IP packet of 64 KiB with its headers, with room to spare. A longer packet
    from the peer is a protocol violation; raise it for video frames and other jumbo payloads).

    ``allow_unsealed_regions`` (master only, default False): accept shared-memory regions
    (memfd, hugetlbfs, tmpfs) that cannot be sealed against shrinking, as DPDK's zero-copy
    clients send (their memseg memfd or hugetlbfs file). Only for a trusted peer (restrict the
    socket's permissions, use a secret): one that shrinks such a region while we map it
    crashes this process with SIGBUS. By default they are refused with a reason; files on
    other file systems are refused either way.

    ``dpdk_workaround`` (slave only: ``"auto"``, ``"on"``, ``"off"``; default ``"auto"``):
    defend the receive rings against DPDK's ``net_memif`` transmit off-by-one, which can
    write into a buffer we still hold, publish tail past head, or glue two packets together
    (README "Interop notes"). ``"auto"`` turns it on when the master's HELLO names DPDK;
    ``"on"`` for any master (it hands over empty, capacity-0 descriptors, which memif_aio's
    own master refuses); ``"off"`` never. It costs one ring slot. ``details().dpdk_defences``
    shows what is in force.
    """

    def __init__(
        self,
        sock: Socket,
        *,
        id: int = 0,
        role: hs.Role = hs.Role.MASTER,
        secret: str | bytes | None = None,
        mode: Mode | int | str = Mode.ETHERNET,
        rx_queues: int = 1,
        tx_queues: int = 1,
        ring_size: int = 1024,
        buffer_size: int = 2048,
        name: str | None = None,
        app_name: str | None = None,
        cacheline: int = 64,
        allow_unsealed_regions: bool = False,
        max_packet_size: int = _ring.DEFAULT_MAX_PACKET_SIZE,
        dpdk_workaround: str = "auto",
    ) -> None:
        if not 0 <= id < 1 << 32:
            raise ConfigError(f"interface id {id} outside 0..2**32-1")
        if ring_size < 2 or ring_size > 1 << 14 or ring_size & (ring_size - 1):
            raise ConfigError(f"ring_size {ring_size} must be a power of two in 2..16384")
        if not 64 <= buffer_size <= 1 << 16:
            raise ConfigError(f"buffer_size {buffer_size} outside 64..65536")
        for label, count in (("rx_queues", rx_queues), ("tx_queues", tx_queues)):
            if not 1 <= count <= 256:
                raise ConfigError(f"{label}={count} outside 1..256")
        if cacheline not in (64, 128):
            raise ConfigError(f"cacheline must be 64 or 128, not {cacheline}")
        if not 64 <= max_packet_size <= 0xFFFFFFFF:
            raise ConfigError(f"max_packet_size {max_packet_size} outside 64..2**32-1")
        if allow_unsealed_regions and role is not hs.Role.MASTER:
            raise ConfigError("allow_unsealed_regions is for role='master' (it maps the peer's)")
        if dpdk_workaround not in DPDK_WORKAROUND_MODES:
            raise ConfigError(
                f"dpdk_workaround={dpdk_workaround!r}: choose one of {DPDK_WORKAROUND_MODES}"
            )
        if dpdk_workaround == "on" and role is not hs.Role.SLAVE:
            raise ConfigError("dpdk_workaround='on' is for role='slave' (it defends its rx rings)")
        raw_secret = secret.encode() if isinstance(secret, str) else bytes(secret or b"")
        if len(raw_secret) > SECRET_SIZE:
            raise ConfigError(f"secret longer than {SECRET_SIZE} bytes")
        self.name = name or f"memif{id}"
        self.app_name = app_name or sock.app_name
        encode_string(self.name, 32, "name")  # reject now what could not be sent later
        encode_string(self.app_name, 32, "app_name")

        self.socket = sock
        self.id = id
        self.role = role
        self.mode = Mode.parse(mode)
        self.secret = raw_secret
        self.rx_queue_count = rx_queues
        self.tx_queue_count = tx_queues
        self.ring_size = ring_size
        self.buffer_size = buffer_size
        self.cacheline = cacheline
        self.allow_unsealed_regions = allow_unsealed_regions
        self.max_packet_size = max_packet_size
        self.dpdk_workaround = dpdk_workaround
        self._defences: tuple[str, ...] = ()  # in force on the current link

        self.state = LinkState.DISCONNECTED
        self.last_disconnect_reason = ""
        self._session: Session | None = None
        self._setup: hs.LinkSetup | None = None
        self._plane: DataPlane | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._changed = asyncio.Event()  # pulsed on every state change and refusal
        self._refusal: HandshakeError | None = None
        self.rx_queues: list[RxQueue] = []
        self.tx_queues: list[TxQueue] = []
        self._closed_counters: dict[str, int] = {}  # totals of queues of earlier links

    def __repr__(self) -> str:
        return f"<Interface {self.name} id={self.id} {self.role.value} {self.state.value}>"

    @property
    def connected(self) -> bool:
        return self.state is LinkState.CONNECTED

    # -- public API -----------------------------------------------------------------------------

    async def wait_connected(
        self, timeout: float | None = None, *, fail_fast: bool = False
    ) -> None:
        """Wait until the link is up.

        Raises ``HandshakeTimeout`` after ``timeout`` seconds (with the last disconnect reason),
        ``DisconnectedError`` if the interface is closed, and with ``fail_fast`` the
        ``HandshakeError`` of the first refusal (wrong secret, unknown id, id in use...).
        """
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
                raise HandshakeTimeout(f"not connected after {timeout}s ({why})")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_disconnected(self) -> str:
        """Wait until the link goes down; return the reason."""
        while self.connected:
            self._changed.clear()
            await self._changed.wait()
        return self.last_disconnect_reason

    def details(self) -> InterfaceDetails:
        setup = self._setup
        if setup is not None:
            rx_rings = setup.m2s_rings if self.role is hs.Role.SLAVE else setup.s2m_rings
            tx_rings = setup.s2m_rings if self.role is hs.Role.SLAVE else setup.m2s_rings
        else:
            rx_rings = tx_rings = []
        buffer_size = self.buffer_size if self.role is hs.Role.SLAVE else None
        return InterfaceDetails(
            name=self.name,
            app_name=self.app_name,
            remote_name=printable(setup.peer_name) if setup else "",
            remote_app_name=printable(setup.peer_app_name) if setup else "",
            id=self.id,
            role=self.role.value,
            mode=self.mode.name.lower(),
            socket=self.socket.path,
            state=self.state.value,
            link_up=self.connected,
            cacheline=self.cacheline,
            rx_queues=tuple(QueueDetails(r.index, 1 << r.log2_size, buffer_size) for r in rx_rings),
            tx_queues=tuple(QueueDetails(r.index, 1 << r.log2_size, buffer_size) for r in tx_rings),
            last_disconnect_reason=self.last_disconnect_reason,
            dpdk_workaround=self.dpdk_workaround,
            dpdk_defences=self._defences if setup is not None else (),
        )

    async def close(self, *, linger: float = DEFAULT_LINGER) -> None:
        """Disconnect (telling the peer why), release memory and fds, stop reconnecting.

        memif's control channel is not ordered with the rings: a DISCONNECT sent right after a
        burst can overtake it. So a connected interface first waits, up to ``linger`` seconds,
        until the peer has taken everything in our tx rings (0 to skip).
        """
        if self.state is LinkState.CLOSED:
            return
        self._closing = True
        if linger > 0 and self.connected:
            await self._wait_tx_consumed(linger)
        if self._session is not None:
            self._session.close(hs.LOCAL_CLOSE)
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
        self.socket._forget(self)

    async def _wait_tx_consumed(self, timeout: float) -> None:
        # Every slot back in the tx ring (slave: tail caught up with head; master: the slave
        # re-posted all its buffers) means the peer has read all we sent.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        setup = self._setup
        if setup is None:
            return
        tx_rings = setup.s2m_rings if self.role is hs.Role.SLAVE else setup.m2s_rings
        sizes = [1 << ring.log2_size for ring in tx_rings]
        with contextlib.suppress(MemifError):
            while self.connected and loop.time() < deadline:
                queues = self.tx_queues
                if all(q.free_slots >= n for q, n in zip(queues, sizes, strict=False)):
                    return
                await asyncio.sleep(0.001)

    # -- called by the socket and sessions ------------------------------------------------------

    def _master_config(self) -> hs.MasterInterfaceConfig:
        return hs.MasterInterfaceConfig(
            interface_id=self.id,
            mode=self.mode,
            secret=self.secret,
            if_name=self.name,
            rx_queues=self.rx_queue_count,
            tx_queues=self.tx_queue_count,
            cacheline=self.cacheline,
            allow_unsealed_regions=self.allow_unsealed_regions,
        )

    def _slave_config(self) -> hs.SlaveConfig:
        return hs.SlaveConfig(
            interface_id=self.id,
            mode=self.mode,
            secret=self.secret,
            app_name=self.app_name,
            if_name=self.name,
            tx_queues=self.tx_queue_count,
            rx_queues=self.rx_queue_count,
            log2_ring_size=self.ring_size.bit_length() - 1,
            cacheline=self.cacheline,
        )

    def _attach(self, session: Session) -> None:
        self._session = session
        self._set_state(LinkState.CONNECTING)

    def _link_up(self, session: Session, setup: hs.LinkSetup, memory: SharedMemory) -> None:
        slave = self.role is hs.Role.SLAVE
        defences = dpdk_defences(self.dpdk_workaround, setup.peer_app_name) if slave else ()
        try:
            plane = DataPlane(
                setup,
                memory,
                buffer_size=self.buffer_size,
                max_packet_size=self.max_packet_size,
                on_peer_error=self._peer_error,
                on_notice=self._peer_notice,
                sentinel="sentinel" in defences,
                short_next_ends_packet="short-next-ends-packet" in defences,
            )
        except (MemifError, ValueError, OSError) as exc:
            # Nothing of the link is left behind (DataPlane closed what it built and the
            # memory); the peer hears why. The session's close reports the rest.
            reason = f"cannot set up the link: {getattr(exc, 'reason', '') or exc}"
            session.warnings.warning("memif %s: %s", session.peer_label(), printable(reason))
            session.close(reason)
            return
        self._setup = setup
        self._plane = plane
        self._defences = defences
        self.rx_queues, self.tx_queues = plane.rx_queues, plane.tx_queues
        self._set_state(LinkState.CONNECTED)
        log.info(
            "memif %s id %d: connected to %s (%s)%s",
            self.socket.path,
            self.id,
            printable(setup.peer_name),
            printable(setup.peer_app_name),
            f"; rx defences: {', '.join(self._defences)}" if self._defences else "",
        )

    def _session_closed(self, session: Session, closed: hs.Closed) -> None:
        was_up = self.connected
        self._session = None
        self.last_disconnect_reason = closed.reason
        if isinstance(closed.error, HandshakeError):
            self._refusal = closed.error
        self._close_plane(closed.reason)
        self._setup = None
        if was_up:
            log.info(
                "memif %s id %d: disconnected: %s",
                self.socket.path,
                self.id,
                printable(closed.reason),
            )
        if self.state is not LinkState.CLOSED:
            self._set_state(LinkState.DISCONNECTED)

    def _close_plane(self, reason: str) -> None:
        plane, self._plane = self._plane, None
        if plane is None:
            return
        plane.close(reason)
        self._closed_counters = self.stats()
        self.rx_queues, self.tx_queues = [], []

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

    def stats(self) -> dict[str, int]:
        """Counters over the interface's life (all links): ``rx_packets``, ``rx_bytes``,
        ``rx_errors``, ``rx_drops``, ``tx_packets``, ``tx_bytes``, ``tx_errors``, ``tx_drops``.

        Drops are packets lost with a link: published to us but never delivered when it went
        down, whether the peer left or broke the rules (rx), or sent but never taken by the
        peer (tx). Errors count peer violations, each once."""
        totals = dict.fromkeys(_COUNTER_NAMES, 0)
        totals.update(self._closed_counters)
        for prefix, queues in (("rx", self.rx_queues), ("tx", self.tx_queues)):
            for queue in queues:
                for name, value in queue.stats().items():
                    totals[f"{prefix}_{name}"] += value
        return totals

    def _set_state(self, state: LinkState) -> None:
        self.state = state
        self._changed.set()

    # -- slave connection loop --------------------------------------------------------------------

    def _start_slave(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run_slave(), name=f"memif slave {self.socket.path} id {self.id}"
        )

    async def _run_slave(self) -> None:
        from .socket import Session

        while not self._closing:
            self._set_state(LinkState.CONNECTING)
            try:
                sock = await self.socket._connect()
            except OSError as exc:
                self.last_disconnect_reason = f"cannot connect: {exc.strerror or exc}"
                self._set_state(LinkState.DISCONNECTED)
                await asyncio.sleep(self.socket.reconnect_interval)
                continue
            machine = hs.SlaveHandshake(
                self._slave_config(), now=time.monotonic(), timeout=self.socket.handshake_timeout
            )
            session = Session(
                sock,
                machine,
                self._link_up,
                self._session_closed,
                buffer_size=self.buffer_size,
                peer=f"{self.socket.path} id {self.id}",
                warnings=self.socket.warnings,
            )
            self._attach(session)
            session.start()
            try:
                await asyncio.shield(session.done)
            except asyncio.CancelledError:
                session.close(hs.LOCAL_CLOSE)
                raise
            if not self._closing:
                await asyncio.sleep(self.socket.reconnect_interval)
