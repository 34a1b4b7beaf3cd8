"""A memif control socket: a listener for master interfaces, or the address slaves connect to.

One listening socket serves many master interfaces, told apart by the id in INIT. Each accepted
connection runs a :class:`Session`: a handshake state machine wired to a control channel, a
timer and the shared-memory factory. The interface gets the link when the session says LinkUp
and hears about its end through ``Closed``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import socket as _socket
import stat
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import fds as _fds
from . import handshake as hs
from .control import ControlChannel, new_seqpacket_socket, unix_address
from .errors import ConfigError, DisconnectedError, MemifError
from .memory import SharedMemory, create_slave_memory, map_master_memory
from .protocol import Disconnect, encode, printable
from .ratelimit import WarningLimiter

if TYPE_CHECKING:
    from .interface import Interface

log = logging.getLogger("memif_aio")

_BACKLOG_RETRY = 0.005  # seconds between connect attempts while the master's backlog is full

LinkUpHandler = Callable[["Session", hs.LinkSetup, SharedMemory], None]
ClosedHandler = Callable[["Session", hs.Closed], None]


class Session:
    """One control connection from accept/connect to close; executes the machine's actions."""

    def __init__(
        self,
        sock: _socket.socket,
        machine: hs.SlaveHandshake | hs.MasterHandshake,
        on_link_up: LinkUpHandler,
        on_closed: ClosedHandler,
        *,
        buffer_size: int = 2048,
        on_claim: Callable[[Session, int], None] | None = None,
        peer: str = "",
        warnings: WarningLimiter | None = None,
    ) -> None:
        self.machine = machine
        self.peer = peer
        self.warnings = warnings or WarningLimiter(log)
        self._loop = asyncio.get_running_loop()
        self._on_link_up = on_link_up
        self._on_closed = on_closed
        self._on_claim = on_claim
        self._buffer_size = buffer_size
        self._memory: SharedMemory | None = None  # ours until LinkUp hands it over
        self._timer: asyncio.TimerHandle | None = None
        self.closed: hs.Closed | None = None
        self._was_up = False
        self.done = self._loop.create_future()
        self.channel = ControlChannel(sock, self._on_frame, self._on_channel_closed, self._loop)

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

    # -- inputs ---------------------------------------------------------------------------------

    def _on_frame(self, frame: bytes, fds: list[int]) -> None:
        self._apply(self.machine.receive_frame(frame, fds))

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
                self._on_link_up(self, action.setup, memory)
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

    def peer_label(self) -> str:
        machine = self.machine
        if isinstance(machine, hs.MasterHandshake) and machine.requested_id is not None:
            return f"{self.peer} id {machine.requested_id}"
        return self.peer

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
        self._on_closed(self, closed)
        if not self.done.done() and not self._loop.is_closed():
            self.done.set_result(closed)


def split_socket_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keyword options into (Socket options, Interface options)."""
    socket_keys = {
        "app_name",
        "socket_mode",
        "socket_group",
        "reconnect_interval",
        "handshake_timeout",
        "max_pending",
        "max_pending_per_peer",
    }
    ours = {k: v for k, v in options.items() if k in socket_keys}
    return ours, {k: v for k, v in options.items() if k not in socket_keys}


class Socket:
    """A memif control socket at ``path`` (``@name`` for an abstract socket).

    Use ``create_interface`` to add master interfaces (served by one listener on this path) or
    slave interfaces (each connects to the master listening on this path). A socket hosts one
    role: that is how libmemif, VPP and DPDK use them.

    Filesystem sockets are created with ``socket_mode`` (0600: whoever can connect can exchange
    packets) and optionally ``socket_group``; abstract sockets have no permissions at all:
    anyone in the network namespace can connect, so use a secret or a filesystem socket.

    A master keeps at most ``max_pending`` connections that have not yet said which interface
    they want (INIT), and at most ``max_pending_per_peer`` of them from one process (told by
    its pid and uid, from ``SO_PEERCRED``): a further connection from that process is refused
    at once, and when all ``max_pending`` are taken the oldest of the process holding most is
    refused. So one flooding process cannot starve the others: an honest slave, which sends
    INIT at once, still gets through. Warnings about refused peers are rate-limited (10 per
    10 s per socket, then one line saying how many were suppressed).
    If the socket file is deleted under a running master, it is created again within
    ``file_check_interval`` seconds; a file put there by someone else is left alone.
    """

    file_check_interval = 1.0

    def __init__(
        self,
        path: str,
        *,
        app_name: str = "memif_aio",
        socket_mode: int = 0o600,
        socket_group: int | str | None = None,
        reconnect_interval: float = 2.0,
        handshake_timeout: float | None = hs.DEFAULT_HANDSHAKE_TIMEOUT,
        max_pending: int = 64,
        max_pending_per_peer: int = 8,
    ) -> None:
        if max_pending < 1:
            raise ConfigError(f"max_pending={max_pending} must be at least 1")
        if max_pending_per_peer < 1:
            raise ConfigError(f"max_pending_per_peer={max_pending_per_peer} must be at least 1")
        self.path = path
        self.address = unix_address(path)
        self.app_name = app_name
        self.socket_mode = socket_mode
        self.socket_group = socket_group
        self.reconnect_interval = reconnect_interval
        self.handshake_timeout = handshake_timeout
        self.max_pending = max_pending
        self.max_pending_per_peer = max_pending_per_peer
        self.warnings = WarningLimiter(log)
        self.role: hs.Role | None = None
        self._interfaces: dict[int, Interface] = {}
        self._slave_interfaces: list[Interface] = []
        self._listener: _socket.socket | None = None
        # Accepted, INIT not yet routed, oldest first; each with its peer's (pid, uid).
        self._pending: dict[Session, tuple[int, int] | None] = {}
        self._pending_by_peer: collections.Counter[tuple[int, int] | None] = collections.Counter()
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we made
        self._file_check: asyncio.TimerHandle | None = None
        self.closed = False

    @property
    def abstract(self) -> bool:
        return self.path.startswith("@")

    async def __aenter__(self) -> Socket:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def create_interface(
        self, *, id: int = 0, role: str = "master", **options: Any
    ) -> Interface:
        """Create and start an interface on this socket; see :class:`Interface` for options."""
        from .interface import Interface

        if self.closed:
            raise ConfigError("socket is closed")
        parsed = hs.Role.parse(role)
        if self.role is not None and self.role is not parsed:
            raise ConfigError(f"socket {self.path} already hosts {self.role.value} interfaces")
        if parsed is hs.Role.MASTER and id in self._interfaces:
            raise ConfigError(f"interface id {id} already exists on {self.path}")
        interface = Interface(self, id=id, role=parsed, **options)
        if parsed is hs.Role.MASTER:
            if self._listener is None:
                self._listen()
            self._interfaces[id] = interface
        else:
            self._slave_interfaces.append(interface)
            interface._start_slave()
        self.role = parsed
        return interface

    async def close(self) -> None:
        """Close every interface, the listener, and remove the socket file we created."""
        if self.closed:
            return
        self.closed = True
        # Together: each may linger (up to 0.5 s) for its peer to take what it sent.
        interfaces = list(self._interfaces.values()) + self._slave_interfaces
        await asyncio.gather(*(interface.close() for interface in interfaces))
        for session in list(self._pending):
            session.close()
        self.warnings.close()
        if self._file_check is not None:
            self._file_check.cancel()
            self._file_check = None
        self._close_listener()
        if self._owns_file():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self._file_id = None

    def _close_listener(self) -> None:
        if self._listener is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop may be closed already
            self._listener_loop.remove_reader(self._listener.fileno())
        self._listener.close()
        self._listener = None

    def _owns_file(self) -> bool:
        """The socket file at ``path`` is still the one we created (not deleted, not replaced)."""
        if self._file_id is None:
            return False
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._file_id

    def _forget(self, interface: Interface) -> None:
        if self._interfaces.get(interface.id) is interface:
            del self._interfaces[interface.id]
        if interface in self._slave_interfaces:
            self._slave_interfaces.remove(interface)

    # -- master side ----------------------------------------------------------------------------

    def _listen(self) -> None:
        sock = new_seqpacket_socket()
        try:
            self._bind(sock)
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        self._listener_loop = asyncio.get_running_loop()
        self._listener_loop.add_reader(sock.fileno(), self._accept_ready)
        log.info("memif socket %s listening", self.path)
        if not self.abstract and self._file_check is None:
            self._file_check = self._listener_loop.call_later(
                self.file_check_interval, self._check_file
            )

    def _check_file(self) -> None:
        """Timer: a deleted socket file is created again; a replaced one is left to its owner."""
        self._file_check = None
        if self.closed or self._listener is None or self._file_id is None:
            return
        if not self._owns_file():
            if os.path.lexists(self.path):
                log.warning(
                    "memif socket %s was replaced by another file; no longer serving it",
                    self.path,
                )
                self._file_id = None
                return
            log.warning("memif socket file %s was deleted; listening again", self.path)
            self._accept_ready()  # whatever is still in the old backlog
            self._close_listener()
            try:
                self._listen()
            except OSError as exc:
                log.warning("memif socket %s: cannot listen again: %s", self.path, exc)
                self._file_id = None
            return
        self._file_check = self._listener_loop.call_later(
            self.file_check_interval, self._check_file
        )

    def _bind(self, sock: _socket.socket) -> None:
        try:
            sock.bind(self.address)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or self.abstract or not self._is_stale():
                raise OSError(exc.errno, f"memif socket {self.path}: address in use") from exc
            log.info("replacing stale memif socket file %s", self.path)
            os.unlink(self.path)
            sock.bind(self.address)
        if not self.abstract:
            st = os.stat(self.path)
            self._file_id = (st.st_dev, st.st_ino)
            os.chmod(self.path, self.socket_mode)
            if self.socket_group is not None:
                os.chown(self.path, -1, _group_id(self.socket_group))

    def _is_stale(self) -> bool:
        """A socket file nobody listens on is left over from a dead process."""
        try:
            if not stat.S_ISSOCK(os.stat(self.path).st_mode):
                return False
        except FileNotFoundError:
            return True
        probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        probe.settimeout(0.5)
        try:
            probe.connect(self.address)
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
        finally:
            probe.close()
        return False

    def _accept_ready(self) -> None:
        assert self._listener is not None
        for _ in range(64):
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: keep listening, say why once
                log.warning("memif socket %s: accept failed: %s", self.path, exc)
                return
            conn.setblocking(False)
            creds = _peer_credentials(conn)
            label = f"{self.path} {_describe_credentials(creds)}"
            if self._pending_by_peer[creds] >= self.max_pending_per_peer:
                self._refuse_at_once(conn, label)
                continue
            if len(self._pending) >= self.max_pending:
                self._evict_one()
            machine = hs.MasterHandshake(
                self.app_name,
                self._lookup,
                self._is_taken,
                _fds.inspect_fd,
                now=time.monotonic(),
                timeout=self.handshake_timeout,
            )
            session = Session(
                conn,
                machine,
                self._master_link_up,
                self._master_closed,
                on_claim=self._claim,
                peer=label,
                warnings=self.warnings,
            )
            self._pending[session] = creds
            self._pending_by_peer[creds] += 1
            session.start()

    def _refuse_at_once(self, conn: _socket.socket, label: str) -> None:
        """A peer over its share of pending handshakes: DISCONNECT, close, no session."""
        reason = hs.TOO_MANY_PENDING_FROM_PEER
        with contextlib.suppress(OSError):  # a fresh socket's empty buffer: never blocks
            conn.send(encode(Disconnect(0, reason)))
        conn.close()
        self.warnings.warning("memif %s: handshake failed: %s", label, reason)

    def _evict_one(self) -> None:
        """All pending places taken: refuse the oldest of the peer holding most of them."""
        greediest = max(self._pending_by_peer, key=lambda peer: self._pending_by_peer[peer])
        victim = next(s for s, peer in self._pending.items() if peer == greediest)
        self._forget_pending(victim)
        victim.reject(hs.TOO_MANY_PENDING)

    def _forget_pending(self, session: Session) -> None:
        if session in self._pending:
            creds = self._pending.pop(session)
            self._pending_by_peer[creds] -= 1
            if not self._pending_by_peer[creds]:
                del self._pending_by_peer[creds]

    def _lookup(self, interface_id: int) -> hs.MasterInterfaceConfig | None:
        interface = self._interfaces.get(interface_id)
        return interface._master_config() if interface is not None else None

    def _is_taken(self, interface_id: int) -> bool:
        interface = self._interfaces.get(interface_id)
        return interface is not None and interface._session is not None

    def _claim(self, session: Session, interface_id: int) -> None:
        self._forget_pending(session)
        self._interfaces[interface_id]._attach(session)

    def _master_link_up(self, session: Session, setup: hs.LinkSetup, memory: SharedMemory) -> None:
        self._interfaces[setup.interface_id]._link_up(session, setup, memory)

    def _master_closed(self, session: Session, closed: hs.Closed) -> None:
        self._forget_pending(session)
        machine = session.machine
        assert isinstance(machine, hs.MasterHandshake)
        interface_id = machine.requested_id
        interface = self._interfaces.get(interface_id) if interface_id is not None else None
        if interface is None:
            return
        if interface._session is session:
            interface._session_closed(session, closed)
        elif interface._session is None:
            # A refused slave (wrong secret, mode...): the owner of the id should hear why.
            interface.last_disconnect_reason = closed.reason

    # -- slave side -----------------------------------------------------------------------------

    async def _connect(self) -> _socket.socket:
        """A connected socket. A non-blocking AF_UNIX connect never waits: it fails with
        EAGAIN while the master's backlog is full (a flood), and becoming writable afterwards
        does not mean connected. So retry it for a while, as a blocking connect would wait."""
        sock = new_seqpacket_socket()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.handshake_timeout or hs.DEFAULT_HANDSHAKE_TIMEOUT)
        try:
            while True:
                try:
                    sock.connect(self.address)
                    return sock
                except (BlockingIOError, InterruptedError):
                    if loop.time() > deadline:
                        raise ConnectionRefusedError(
                            errno.EAGAIN, "master's connection backlog stays full"
                        ) from None
                    await asyncio.sleep(_BACKLOG_RETRY)
        except BaseException:
            sock.close()
            raise


def _peer_credentials(conn: _socket.socket) -> tuple[int, int] | None:
    """``(pid, uid)`` of the connecting process (as it was at connect time)."""
    try:
        creds = conn.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, _ = struct.unpack("3i", creds)
    return pid, uid


def _describe_credentials(creds: tuple[int, int] | None) -> str:
    """``pid N uid U``, for the log lines about a peer."""
    return "pid ?" if creds is None else f"pid {creds[0]} uid {creds[1]}"


def _group_id(group: int | str) -> int:
    if isinstance(group, int):
        return group
    import grp

    return grp.getgrnam(group).gr_gid
