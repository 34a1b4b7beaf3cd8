"""A memif interface: the user's handle on one end of a memif link.

It checks the options, shows state, queues, counters and details (like VPP's ``show memif``),
and closes. Everything it does with peers (handshakes, reconnecting, the data plane) is its
:class:`~memif_aio.link.Link`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import _ring
from . import handshake as hs
from .errors import ConfigError, MemifError
from .link import (
    DEFAULT_LINGER,
    Link,
    LinkEventKind,
    LinkOptions,
    LinkState,
    SocketContext,
    Stats,
)
from .protocol import SECRET_SIZE, Mode, encode_string, printable
from .queues import RxMode, RxQueue, TxQueue

DPDK_WORKAROUND_MODES = ("auto", "on", "off")
__all__ = ["Interface", "InterfaceDetails", "LinkState", "QueueDetails"]


@dataclass(frozen=True)
class QueueDetails:
    index: int
    ring_size: int
    buffer_size: int | None  # a master learns it from the slave's descriptors only
    mode: str | None = None  # rx queues: "interrupt", "polling" or "adaptive"


@dataclass(frozen=True)
class InterfaceDetails:
    """A snapshot of ``Interface.details()``, like VPP's ``show memif``. Peer names and the
    last reason are escaped (newlines, escapes, non-UTF-8 bytes) for display."""

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
    max_packet_size: int = _ring.DEFAULT_MAX_PACKET_SIZE


@dataclass(frozen=True)
class LinkEvent:
    """What a :class:`~memif_aio.Socket`'s ``on_link_event`` callback hears, on the loop thread.

    ``kind``: ``"up"`` (link connected), ``"down"`` (a connected link ended; ``reason`` says
    why, ``error`` is None after a clean local close) or ``"refused"`` (a handshake did not
    complete: refused by either side or timed out; ``error`` is the exception, e.g.
    :class:`~memif_aio.SecretMismatch`). ``interface`` is None when a master refused a peer
    before it named one of its interfaces (an unknown id, a malformed first message).
    ``peer`` labels the other side as the logs do (its pid and uid on a master).
    """

    kind: LinkEventKind
    interface: Interface | None
    peer: str
    reason: str = ""
    error: MemifError | None = None


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

    ``rx_mode`` (``"interrupt"``, ``"polling"``, ``"adaptive"``; default ``"interrupt"``): how
    the receive queues of each link wait; each queue can change it (``rxq.mode``). See
    :class:`~memif_aio.queues.RxQueue` for what each costs and gives.
    """

    def __init__(
        self,
        context: SocketContext,
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
        rx_mode: str = "interrupt",
        on_close: Callable[[Interface], None] | None = None,
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
        name = name or f"memif{id}"
        app_name = app_name or context.app_name
        encode_string(name, 32, "name")  # reject now what could not be sent later
        encode_string(app_name, 32, "app_name")
        self.options = LinkOptions(
            id=id,
            role=role,
            name=name,
            app_name=app_name,
            mode=Mode.parse(mode),
            secret=raw_secret,
            rx_queues=rx_queues,
            tx_queues=tx_queues,
            ring_size=ring_size,
            buffer_size=buffer_size,
            cacheline=cacheline,
            allow_unsealed_regions=allow_unsealed_regions,
            max_packet_size=max_packet_size,
            dpdk_workaround=dpdk_workaround,
            rx_mode=RxMode.parse(rx_mode).value,
        )
        self.socket_path = context.path
        self.link = Link(self.options, context)
        self._on_close = on_close

    # The options, read-only.
    id = property(lambda self: self.options.id)
    role = property(lambda self: self.options.role)
    name = property(lambda self: self.options.name)
    app_name = property(lambda self: self.options.app_name)
    mode = property(lambda self: self.options.mode)
    ring_size = property(lambda self: self.options.ring_size)
    buffer_size = property(lambda self: self.options.buffer_size)
    cacheline = property(lambda self: self.options.cacheline)
    max_packet_size = property(lambda self: self.options.max_packet_size)

    def __repr__(self) -> str:
        return f"<Interface {self.name} id={self.id} {self.role.value} {self.state.value}>"

    @property
    def state(self) -> LinkState:
        return self.link.state

    @property
    def connected(self) -> bool:
        return self.link.connected

    @property
    def last_disconnect_reason(self) -> str:
        """Why the last link ended or the last attempt was refused (escaped for display)."""
        return printable(self.link.last_disconnect_reason)

    @property
    def rx_queues(self) -> list[RxQueue]:
        """The receive queues of the current link (``[]`` while it is down)."""
        return self.link.rx_queues

    @property
    def tx_queues(self) -> list[TxQueue]:
        """The transmit queues of the current link (``[]`` while it is down)."""
        return self.link.tx_queues

    async def wait_connected(
        self, timeout: float | None = None, *, fail_fast: bool = False
    ) -> None:
        """Wait until the link is up.

        Raises ``HandshakeTimeout`` after ``timeout`` seconds (with the last disconnect reason;
        ``.unreachable`` when a slave found nobody listening), ``DisconnectedError`` if the
        interface is closed, and with ``fail_fast`` the ``HandshakeError`` of the first
        refusal (wrong secret, unknown id, id in use...).
        """
        await self.link.wait_connected(timeout, fail_fast=fail_fast)

    async def wait_disconnected(self) -> str:
        """Wait until the link goes down; return the reason."""
        return printable(await self.link.wait_disconnected())

    def details(self) -> InterfaceDetails:
        """What this interface is and how its link stands, like VPP's ``show memif``."""
        setup = self.link.setup
        slave = self.role is hs.Role.SLAVE
        if setup is not None:
            rx_rings = setup.m2s_rings if slave else setup.s2m_rings
            tx_rings = setup.s2m_rings if slave else setup.m2s_rings
        else:
            rx_rings = tx_rings = []
        buffer_size = self.buffer_size if slave else None
        return InterfaceDetails(
            name=self.name,
            app_name=self.app_name,
            remote_name=printable(setup.peer_name) if setup else "",
            remote_app_name=printable(setup.peer_app_name) if setup else "",
            id=self.id,
            role=self.role.value,
            mode=self.mode.name.lower(),
            socket=self.socket_path,
            state=self.state.value,
            link_up=self.connected,
            cacheline=self.cacheline,
            rx_queues=tuple(
                QueueDetails(r.index, 1 << r.log2_size, buffer_size, mode.value)
                for r, mode in zip(rx_rings, self._rx_modes(len(rx_rings)), strict=True)
            ),
            tx_queues=tuple(QueueDetails(r.index, 1 << r.log2_size, buffer_size) for r in tx_rings),
            last_disconnect_reason=self.last_disconnect_reason,
            dpdk_workaround=self.options.dpdk_workaround,
            dpdk_defences=self.link.defences if setup is not None else (),
            max_packet_size=self.max_packet_size,
        )

    def _rx_modes(self, count: int) -> list[RxMode]:
        queues = self.rx_queues
        if len(queues) == count:
            return [queue.mode for queue in queues]
        return [RxMode(self.options.rx_mode)] * count

    def stats(self) -> Stats:
        """Counters over the interface's life (all links): ``rx_packets``, ``rx_bytes``,
        ``rx_errors``, ``rx_drops``, ``tx_packets``, ``tx_bytes``, ``tx_errors``, ``tx_drops``.

        Drops are packets lost with a link: published to us but never delivered when it went
        down, whether the peer left or broke the rules (rx), or sent but never taken by the
        peer (tx). Errors count peer violations, each once."""
        return self.link.stats()

    async def close(self, *, linger: float = DEFAULT_LINGER, reason: str = hs.LOCAL_CLOSE) -> None:
        """Disconnect (the peer's DISCONNECT carries ``reason``, cut to 96 bytes), release
        memory and fds, stop reconnecting.

        memif's control channel is not ordered with the rings: a DISCONNECT sent right after a
        burst can overtake it. So a connected interface first waits, up to ``linger`` seconds,
        until the peer has taken everything in our tx rings (0 to skip).
        """
        await self.link.close(linger, reason)
        if self._on_close is not None:
            self._on_close(self)
