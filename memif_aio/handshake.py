"""The memif handshake as sans-IO state machines, one per role, driven by one table.

Rules (MEMIF-PROTOCOL.md, "Handshake"):

- The master speaks first (HELLO); then the slave drives in lock-step: INIT, ADD_REGION x n,
  ADD_RING x m (S2M rings, then M2S rings), CONNECT, each sent only after the master's ACK
  (CONNECTED for the last). A message the table below does not list for the current state is
  "message out of order".
- Only ADD_REGION and ADD_RING carry an fd (exactly one). Masters never send fds.
- A rejection is a DISCONNECT carrying a reason, then the channel closes. Every reason we send
  is one of the constants below, so tests, logs and users see the same words, and each maps to
  one exception class (``error_for``).
- Either side may DISCONNECT at any time; after the link is up that is the only legal message.

The machines never touch sockets, memory, fds or clocks. They consume ``receive(message,
fds)`` / ``receive_frame(frame, fds)``, where each received fd comes with the facts the I/O
layer gathered about it (:class:`ReceivedFd`), ``handle_timer(now)`` and the answers to their
own requests (``memory_created``, ``memory_mapped``), and return a list of actions for the I/O
layer to carry out in order. Received fds are owned by the machine from the moment they are
passed in: it either hands them over in ``LinkUp`` or asks for them to be closed (``CloseFds``).
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from . import protocol as p
from .errors import (
    ConfigError,
    DisconnectedError,
    HandshakeError,
    HandshakeTimeout,
    MemifError,
    SecretMismatch,
)
from .protocol import MessageType as M


class Role(str, enum.Enum):
    MASTER = "master"
    SLAVE = "slave"

    @classmethod
    def parse(cls, value: Role | str) -> Role:
        aliases = {"server": cls.MASTER, "client": cls.SLAVE}
        if isinstance(value, str) and value.lower() in aliases:
            return aliases[value.lower()]
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"role must be master/server or slave/client: {value!r}") from None


class State(enum.Enum):
    WAIT_HELLO = "wait-hello"  # slave
    WAIT_MEMORY = "wait-memory"  # slave, our CreateMemory is outstanding
    WAIT_ACK = "wait-ack"  # slave, one message in flight
    WAIT_CONNECTED = "wait-connected"  # slave
    WAIT_INIT = "wait-init"  # master
    WAIT_SETUP = "wait-setup"  # master: regions, rings, CONNECT
    WAIT_MAPPING = "wait-mapping"  # master, our MapMemory is outstanding
    CONNECTED = "connected"
    CLOSED = "closed"


# The whole protocol, both roles: (role, state, message received) -> handler. DISCONNECT is
# accepted in every state but CLOSED; everything else is out of order.
TRANSITIONS: dict[tuple[Role, State, M], str] = {
    (Role.SLAVE, State.WAIT_HELLO, M.HELLO): "_on_hello",
    (Role.SLAVE, State.WAIT_ACK, M.ACK): "_on_ack",
    (Role.SLAVE, State.WAIT_CONNECTED, M.CONNECTED): "_on_connected",
    (Role.MASTER, State.WAIT_INIT, M.INIT): "_on_init",
    (Role.MASTER, State.WAIT_SETUP, M.ADD_REGION): "_on_add_region",
    (Role.MASTER, State.WAIT_SETUP, M.ADD_RING): "_on_add_ring",
    (Role.MASTER, State.WAIT_SETUP, M.CONNECT): "_on_connect",
}
FDS_CARRIED = {M.ADD_REGION: 1, M.ADD_RING: 1}  # every other message carries none
_TAKES_FDS = {
    role: any(FDS_CARRIED.get(m) for r, _, m in TRANSITIONS if r is role) for role in Role
}

# Reasons sent in DISCONNECT. Keep them short: the field holds 96 bytes.
UNKNOWN_ID = "unknown interface id"
ALREADY_CONNECTED = "interface already connected"
VERSION_MISMATCH = "incompatible version"
SECRET_MISMATCH = "secret mismatch"
MODE_MISMATCH = "mode mismatch"
OUT_OF_ORDER = "message out of order"
MISSING_FD = "missing file descriptor"
EXTRA_FDS = "unexpected file descriptors"
PRIVATE_HDR = "private header size not supported"
REGION_NOT_SEQUENTIAL = "region index not sequential"
REGION_LIMIT = "region index beyond limit"
REGION_TOO_SMALL = "region fd smaller than declared size"
REGION_NOT_FILE = "region fd is not a regular file"
REGION_NOT_MEMFD = "region fd is not a memfd"
REGION_NOT_SEALABLE = "region fd cannot be sealed against shrinking"
RING_NOT_EVENTFD = "ring fd is not a non-blocking eventfd"
RING_SEMAPHORE = "ring eventfd is a semaphore"
RING_EVENTFD_SHARED = "ring eventfd already used by another ring"
EVENTFD_IN_USE = "ring eventfd already used by another link"
REGION_SIZE = "bad region size"
RING_LIMIT = "ring index beyond limit"
RING_DUPLICATE = "ring index repeated"
RING_NOT_SEQUENTIAL = "ring indices not sequential"
RING_REGION = "ring in unknown region"
RING_OUTSIDE = "ring outside its region"
RING_SIZE = "bad log2 ring size"
NO_RINGS = "no rings in both directions"
NO_REGIONS = "no regions"
BAD_FRAME = "malformed message"
TIMEOUT = "handshake timeout"
PEER_UNSUPPORTED = "peer limits unusable"
TOO_MANY_PENDING = "too many pending connections"
TOO_MANY_PENDING_FROM_PEER = "too many pending connections from this process"
PEER_CLOSED = "peer closed the control channel"  # EOF without DISCONNECT: not a refusal
LOCAL_CLOSE = "interface closed"

# The exception class of a refusal, by the reason's code (the text before any ": detail").
# Peers' own words for the same refusal count too: libmemif and DPDK say "Incorrect secret".
_ERRORS: dict[str, type[MemifError]] = {
    SECRET_MISMATCH: SecretMismatch,
    "Incorrect secret": SecretMismatch,
    TIMEOUT: HandshakeTimeout,
}

DEFAULT_HANDSHAKE_TIMEOUT = 5.0
SEAL_SEAL = 0x1  # F_SEAL_SEAL: no more seals can be added
SEAL_SHRINK = 0x2  # F_SEAL_SHRINK
MAX_REGION_SIZE = 1 << 40  # what we are willing to map from a peer


def error_for(reason: str) -> MemifError:
    """The exception for a refusal with ``reason`` (ours or the peer's)."""
    return _ERRORS.get(reason.split(":", 1)[0], HandshakeError)(reason)


# ---------------------------------------------------------------------------------------------
# What the handshake agrees on, and what it hands to the data plane.


@dataclass(frozen=True)
class FdInfo:
    """What a received fd is, as far as the rules care (gathered by the I/O layer).

    ``kind``: ``"memfd"`` (shared memory that supports seals: memfd, or a hugetlbfs/tmpfs
    file), ``"file"`` (another regular file: on disk, it can be truncated under our mapping),
    ``"eventfd"``, or ``"other"``. ``seals`` are the F_GET_SEALS bits of a memfd, after the
    I/O layer added ``SEAL_SHRINK`` where it could. For an eventfd: ``blocking`` (opened
    without O_NONBLOCK), ``semaphore`` (EFD_SEMAPHORE) and the kernel's ``eventfd_id`` (None
    where the kernel does not tell), which tells one eventfd handed in twice apart from two.
    """

    kind: str
    size: int = 0
    seals: int = 0
    blocking: bool = False
    semaphore: bool = False
    eventfd_id: int | None = None


@dataclass(frozen=True)
class ReceivedFd:
    """An fd that arrived with a frame, and the facts about it."""

    fd: int
    info: FdInfo


@dataclass(frozen=True)
class RegionSpec:
    index: int
    size: int
    fd: int
    sealed: bool = True  # cannot shrink below ``size`` (always true for our own memory)


@dataclass(frozen=True)
class RingSpec:
    s2m: bool
    index: int
    region: int
    offset: int
    log2_size: int
    eventfd: int
    eventfd_id: int | None = None  # the kernel's id of a peer's eventfd (master), if known


@dataclass(frozen=True)
class Negotiated:
    """What a slave learned from HELLO: the counts and sizes it must build memory for."""

    s2m_rings: int
    m2s_rings: int
    log2_ring_size: int
    max_regions: int


@dataclass
class LinkSetup:
    """Everything the data plane is built from once the link is up (wsproto's ``Connected``)."""

    role: Role
    interface_id: int
    mode: p.Mode
    cacheline: int
    regions: list[RegionSpec]
    s2m_rings: list[RingSpec]
    m2s_rings: list[RingSpec]
    peer_name: str = ""  # the peer's interface name (CONNECT / CONNECTED)
    peer_app_name: str = ""  # the peer's application name (HELLO / INIT)

    def fds(self) -> list[int]:
        return [r.fd for r in self.regions] + [r.eventfd for r in self.s2m_rings + self.m2s_rings]


# ---------------------------------------------------------------------------------------------
# Actions returned to the I/O layer.


@dataclass(frozen=True)
class Send:
    message: p.Message
    fds: tuple[int, ...] = ()


@dataclass(frozen=True)
class CloseFds:
    fds: tuple[int, ...]


@dataclass(frozen=True)
class ClaimInterface:
    """Master: the interface ``interface_id`` is now taken by this channel."""

    interface_id: int


@dataclass(frozen=True)
class CreateMemory:
    """Slave: build regions, rings and eventfds for these limits, then call ``memory_created``."""

    negotiated: Negotiated


@dataclass(frozen=True)
class MapMemory:
    """Master: map and verify ``setup`` (cookies), then call ``memory_mapped`` or ``fail``."""

    setup: LinkSetup


@dataclass(frozen=True)
class LinkUp:
    setup: LinkSetup


@dataclass(frozen=True)
class Closed:
    """The channel is finished: close it. ``error`` says why (None after a clean local close)."""

    reason: str
    error: MemifError | None
    by_peer: bool


Action = Send | CloseFds | ClaimInterface | CreateMemory | MapMemory | LinkUp | Closed


# ---------------------------------------------------------------------------------------------


class _Handshake:
    role: Role

    def __init__(self, now: float, timeout: float | None) -> None:
        self.state = State.CLOSED
        self.deadline = None if timeout is None else now + timeout
        self._owned_fds: list[int] = []

    @property
    def connected(self) -> bool:
        return self.state is State.CONNECTED

    def receive_frame(self, frame: bytes, fds: Sequence[ReceivedFd] = ()) -> list[Action]:
        """Decode and handle one frame; a malformed frame is rejected like any other breach."""
        if self.state is State.CLOSED:
            return self._close_fds(fds)  # whatever the frame is, its fds are ours to close
        self._owned_fds.extend(r.fd for r in fds)
        try:
            message = p.decode(frame)
        except MemifError as exc:
            return self._reject(f"{BAD_FRAME}: {exc.reason}")
        return self._dispatch(message, fds)

    def receive(self, message: p.Message, fds: Sequence[ReceivedFd] = ()) -> list[Action]:
        """Handle one decoded message and the fds that came with it."""
        if self.state is State.CLOSED:
            return self._close_fds(fds)
        self._owned_fds.extend(r.fd for r in fds)
        return self._dispatch(message, fds)

    def _dispatch(self, message: p.Message, fds: Sequence[ReceivedFd]) -> list[Action]:
        if isinstance(message, p.Disconnect):
            # The peer's words reach logs, exceptions and details(): escaped once, here.
            return self._peer_disconnected(p.printable(message.reason) or "peer disconnected")
        if fds and not _TAKES_FDS[self.role]:
            return self._reject(EXTRA_FDS)
        handler = TRANSITIONS.get((self.role, self.state, message.type))
        if handler is None:
            return self._reject(f"{OUT_OF_ORDER}: {message.type.name} in {self.state.value}")
        expected = FDS_CARRIED.get(message.type, 0)
        if len(fds) < expected:
            return self._reject(f"{MISSING_FD} with {message.type.name}")
        if len(fds) > expected:
            return self._reject(f"{EXTRA_FDS} with {message.type.name}")
        result: list[Action] = getattr(self, handler)(message, *fds)
        return result

    def handle_timer(self, now: float) -> list[Action]:
        """Call when ``deadline`` passes; the handshake fails if it is still incomplete."""
        if self.state in (State.CONNECTED, State.CLOSED) or self.deadline is None:
            return []
        if now < self.deadline:
            return []
        return self._reject(TIMEOUT)

    def peer_closed(self) -> list[Action]:
        """The channel hit EOF or an error without a DISCONNECT."""
        if self.state is State.CLOSED:
            return []
        if self.state is State.WAIT_HELLO:
            # The master never spoke: not a refusal but a lost connection (DPDK's server can
            # close a fresh connection while it tears down the previous one). Retry it.
            error = DisconnectedError(f"{PEER_CLOSED} before HELLO")
            return self._finish(error.reason, error, by_peer=True, send=False)
        return self._peer_disconnected(PEER_CLOSED)

    def close(self, reason: str = LOCAL_CLOSE) -> list[Action]:
        """Local teardown: tell the peer why, then close."""
        if self.state is State.CLOSED:
            return []
        return self._finish(reason, None, by_peer=False, send=True)

    def fail(self, reason: str) -> list[Action]:
        """Reject with ``reason`` found outside the machine (e.g. a bad ring cookie)."""
        return self._reject(reason)

    def _reject(self, reason: str) -> list[Action]:
        if self.state is State.CLOSED:
            return []
        return self._finish(reason, error_for(reason), by_peer=False, send=True)

    def _peer_disconnected(self, reason: str) -> list[Action]:
        error = error_for(reason) if self.state is not State.CONNECTED else None
        return self._finish(reason, error or DisconnectedError(reason), by_peer=True, send=False)

    def _finish(
        self, reason: str, error: MemifError | None, by_peer: bool, send: bool
    ) -> list[Action]:
        actions: list[Action] = []
        if send:
            actions.append(Send(p.Disconnect(0, reason)))
        if self._owned_fds:
            actions.append(CloseFds(tuple(self._owned_fds)))
        self._owned_fds = []
        self.state = State.CLOSED
        actions.append(Closed(reason, error, by_peer))
        return actions

    def _close_fds(self, fds: Sequence[ReceivedFd]) -> list[Action]:
        return [CloseFds(tuple(r.fd for r in fds))] if fds else []


# --------------------------------------------------------------------------------------- slave


@dataclass
class SlaveConfig:
    interface_id: int = 0
    mode: p.Mode = p.Mode.ETHERNET
    secret: bytes = b""
    app_name: str = "memif_aio"
    if_name: str = "memif0"
    tx_queues: int = 1  # S2M rings
    rx_queues: int = 1  # M2S rings
    log2_ring_size: int = 10
    cacheline: int = 64


class SlaveHandshake(_Handshake):
    """The connecting side. Call ``receive*`` with each frame from the master."""

    role = Role.SLAVE

    def __init__(
        self,
        config: SlaveConfig,
        now: float = 0.0,
        timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        super().__init__(now, timeout)
        self.config = config
        self.state = State.WAIT_HELLO
        self.negotiated: Negotiated | None = None
        self.peer_app_name = ""
        self._queue: list[Send] = []  # messages still to send, one per ACK
        self._regions: list[RegionSpec] = []
        self._rings: list[RingSpec] = []

    def _on_hello(self, hello: p.Hello) -> list[Action]:
        if not hello.min_version <= p.VERSION <= hello.max_version:
            return self._reject(
                f"{VERSION_MISMATCH}: peer {hello.min_version:#06x}-{hello.max_version:#06x}"
            )
        cfg = self.config
        if hello.max_log2_ring_size == 0:
            return self._reject(f"{PEER_UNSUPPORTED}: max log2 ring size 0")
        self.peer_app_name = hello.name
        self.negotiated = Negotiated(
            s2m_rings=min(hello.max_s2m_ring + 1, cfg.tx_queues),
            m2s_rings=min(hello.max_m2s_ring + 1, cfg.rx_queues),
            log2_ring_size=min(hello.max_log2_ring_size, cfg.log2_ring_size, p.MAX_LOG2_RING_SIZE),
            max_regions=hello.max_region + 1,
        )
        self.state = State.WAIT_MEMORY
        return [CreateMemory(self.negotiated)]

    def memory_created(
        self, regions: Sequence[RegionSpec], rings: Sequence[RingSpec]
    ) -> list[Action]:
        """The I/O layer built what ``CreateMemory`` asked for (and keeps owning its fds)."""
        if self.state is not State.WAIT_MEMORY:
            return []
        assert self.negotiated is not None
        if len(regions) > self.negotiated.max_regions:
            return self._reject(f"{PEER_UNSUPPORTED}: {len(regions)} regions needed")
        self._regions = list(regions)
        # S2M rings first, then M2S: the order every peer expects.
        self._rings = sorted(rings, key=lambda r: (not r.s2m, r.index))
        cfg = self.config
        self._queue = [
            Send(p.Init(p.VERSION, cfg.interface_id, cfg.mode, cfg.secret, cfg.app_name)),
            *(Send(p.AddRegion(r.index, r.size), (r.fd,)) for r in self._regions),
            *(Send(_add_ring_message(r), (r.eventfd,)) for r in self._rings),
            Send(p.Connect(cfg.if_name)),
        ]
        return self._on_ack(p.Ack())

    def _on_ack(self, _ack: p.Ack) -> list[Action]:
        # Lock-step: one message per reply from the master.
        send = self._queue.pop(0)
        self.state = State.WAIT_ACK if self._queue else State.WAIT_CONNECTED
        return [send]

    def _on_connected(self, connected: p.Connected) -> list[Action]:
        self.state = State.CONNECTED
        self._owned_fds = []
        setup = LinkSetup(
            role=Role.SLAVE,
            interface_id=self.config.interface_id,
            mode=self.config.mode,
            cacheline=self.config.cacheline,
            regions=self._regions,
            s2m_rings=[r for r in self._rings if r.s2m],
            m2s_rings=[r for r in self._rings if not r.s2m],
            peer_name=connected.if_name,
            peer_app_name=self.peer_app_name,
        )
        return [LinkUp(setup)]


def _add_ring_message(ring: RingSpec) -> p.AddRing:
    flags = p.ADD_RING_FLAG_S2M if ring.s2m else 0
    return p.AddRing(flags, ring.index, ring.region, ring.offset, ring.log2_size)


# -------------------------------------------------------------------------------------- master


@dataclass
class MasterInterfaceConfig:
    """What a master checks an INIT against."""

    interface_id: int = 0
    mode: p.Mode = p.Mode.ETHERNET
    secret: bytes = b""
    if_name: str = "memif0"
    rx_queues: int = 1  # most S2M rings we accept
    tx_queues: int = 1  # most M2S rings we accept
    cacheline: int = 64
    # Accept shared memory (memfd, hugetlbfs, tmpfs) that can no longer be sealed against
    # shrinking: DPDK zero-copy clients pass their memseg fds, a memfd created without sealing
    # or a hugetlbfs file. Such a peer can shrink the region under our mapping and kill us with
    # SIGBUS: only for a trusted peer. Files on other file systems stay refused.
    allow_unsealed_regions: bool = False


class InterfaceDirectory(Protocol):
    """What a master's machine asks about the interfaces on its socket (queries only: the
    claim itself is the ``ClaimInterface`` action)."""

    def config(self, interface_id: int) -> MasterInterfaceConfig | None: ...
    def is_taken(self, interface_id: int) -> bool: ...


@dataclass
class _PendingSetup:
    config: MasterInterfaceConfig
    slave_app_name: str
    regions: list[RegionSpec] = field(default_factory=list)
    rings: dict[tuple[bool, int], RingSpec] = field(default_factory=dict)
    eventfd_ids: set[int] = field(default_factory=set)


class MasterHandshake(_Handshake):
    """The listening side of one accepted channel; ``interfaces`` answers which interface ids
    exist on the socket and which are taken."""

    role = Role.MASTER

    def __init__(
        self,
        app_name: str,
        interfaces: InterfaceDirectory,
        now: float = 0.0,
        timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        hello: p.Hello | None = None,
    ) -> None:
        super().__init__(now, timeout)
        self.hello = hello or p.Hello(name=app_name)
        self._interfaces = interfaces
        self._pending: _PendingSetup | None = None
        self._setup: LinkSetup | None = None
        self.requested_id: int | None = None  # from INIT, even when refused
        self.state = State.WAIT_INIT

    @property
    def interface_id(self) -> int | None:
        return self._pending.config.interface_id if self._pending else None

    def start(self) -> list[Action]:
        """The master speaks first, before it knows which interface is wanted."""
        return [Send(self.hello)]

    def _on_init(self, init: p.Init) -> list[Action]:
        self.requested_id = init.id
        if init.version != p.VERSION:
            return self._reject(f"{VERSION_MISMATCH}: {init.version:#06x}, ours {p.VERSION:#06x}")
        config = self._interfaces.config(init.id)
        if config is None:
            return self._reject(f"{UNKNOWN_ID} {init.id}")
        if self._interfaces.is_taken(init.id):
            return self._reject(f"{ALREADY_CONNECTED}: id {init.id}")
        if config.secret and not hmac.compare_digest(
            init.secret.ljust(p.SECRET_SIZE, b"\0"), config.secret.ljust(p.SECRET_SIZE, b"\0")
        ):
            return self._reject(SECRET_MISMATCH)
        if init.mode != config.mode:
            return self._reject(f"{MODE_MISMATCH}: peer {init.mode.name.lower()}")
        self._pending = _PendingSetup(config, init.name)
        self.state = State.WAIT_SETUP
        return [ClaimInterface(init.id), Send(p.Ack())]

    def _on_add_region(self, msg: p.AddRegion, received: ReceivedFd) -> list[Action]:
        pending = self._pending
        assert pending is not None
        if pending.rings:
            return self._reject(f"{OUT_OF_ORDER}: ADD_REGION after ADD_RING")
        if msg.index > self.hello.max_region:
            return self._reject(f"{REGION_LIMIT}: {msg.index}")
        if msg.index != len(pending.regions):
            return self._reject(f"{REGION_NOT_SEQUENTIAL}: {msg.index}")
        if not 0 < msg.size <= MAX_REGION_SIZE:
            return self._reject(f"{REGION_SIZE}: {msg.size}")
        # A region must be shared memory sealed against shrinking: a peer that truncates a
        # file under our mapping would kill us with SIGBUS on the next access.
        info = received.info
        if info.kind == "file":
            return self._reject(REGION_NOT_MEMFD)
        if info.kind != "memfd":
            return self._reject(REGION_NOT_FILE)
        sealed = bool(info.seals & SEAL_SHRINK)
        if not sealed and not pending.config.allow_unsealed_regions:
            return self._reject(REGION_NOT_SEALABLE)
        if info.size < msg.size:
            return self._reject(f"{REGION_TOO_SMALL}: {info.size} < {msg.size}")
        pending.regions.append(RegionSpec(msg.index, msg.size, received.fd, sealed))
        return [Send(p.Ack())]

    def _on_add_ring(self, msg: p.AddRing, received: ReceivedFd) -> list[Action]:
        pending = self._pending
        assert pending is not None
        cfg = pending.config
        limit = cfg.rx_queues if msg.s2m else cfg.tx_queues
        hello_limit = self.hello.max_s2m_ring if msg.s2m else self.hello.max_m2s_ring
        direction = "s2m" if msg.s2m else "m2s"
        if msg.index >= limit or msg.index > hello_limit:
            return self._reject(f"{RING_LIMIT}: {direction} {msg.index}")
        if (msg.s2m, msg.index) in pending.rings:
            return self._reject(f"{RING_DUPLICATE}: {direction} {msg.index}")
        if msg.private_hdr_size != 0:
            return self._reject(PRIVATE_HDR)
        if not 0 < msg.log2_ring_size <= self.hello.max_log2_ring_size:
            return self._reject(f"{RING_SIZE}: {msg.log2_ring_size}")
        if msg.region >= len(pending.regions):
            return self._reject(f"{RING_REGION}: {msg.region}")
        info = received.info
        if info.kind != "eventfd" or info.blocking:
            return self._reject(f"{RING_NOT_EVENTFD}: {direction} {msg.index}")
        if info.semaphore:
            return self._reject(f"{RING_SEMAPHORE}: {direction} {msg.index}")
        if info.eventfd_id is not None:
            if info.eventfd_id in pending.eventfd_ids:
                return self._reject(f"{RING_EVENTFD_SHARED}: {direction} {msg.index}")
            pending.eventfd_ids.add(info.eventfd_id)
        end = msg.offset + p.ring_bytes(msg.log2_ring_size, cfg.cacheline)
        if end > pending.regions[msg.region].size:
            return self._reject(f"{RING_OUTSIDE}: {direction} {msg.index}")
        pending.rings[(msg.s2m, msg.index)] = RingSpec(
            msg.s2m,
            msg.index,
            msg.region,
            msg.offset,
            msg.log2_ring_size,
            received.fd,
            info.eventfd_id,
        )
        return [Send(p.Ack())]

    def _on_connect(self, msg: p.Connect) -> list[Action]:
        pending = self._pending
        assert pending is not None
        if not pending.regions:
            return self._reject(NO_REGIONS)
        s2m = sorted((r for r in pending.rings.values() if r.s2m), key=lambda r: r.index)
        m2s = sorted((r for r in pending.rings.values() if not r.s2m), key=lambda r: r.index)
        if not s2m or not m2s:
            return self._reject(NO_RINGS)
        for rings in (s2m, m2s):
            if [r.index for r in rings] != list(range(len(rings))):
                return self._reject(RING_NOT_SEQUENTIAL)
        self._setup = LinkSetup(
            role=Role.MASTER,
            interface_id=pending.config.interface_id,
            mode=pending.config.mode,
            cacheline=pending.config.cacheline,
            regions=pending.regions,
            s2m_rings=s2m,
            m2s_rings=m2s,
            peer_name=msg.if_name,
            peer_app_name=pending.slave_app_name,
        )
        self.state = State.WAIT_MAPPING
        self._owned_fds = []  # they travel with MapMemory: the mapper closes them on failure
        return [MapMemory(self._setup)]

    def memory_mapped(self) -> list[Action]:
        """The I/O layer mapped and verified the setup: the link is up."""
        if self.state is not State.WAIT_MAPPING:
            return []
        assert self._setup is not None and self._pending is not None
        self.state = State.CONNECTED
        self._owned_fds = []
        return [Send(p.Connected(self._pending.config.if_name)), LinkUp(self._setup)]
