"""A memif control socket: a listener for master interfaces, or the address slaves connect to.

One listening socket serves many master interfaces, told apart by the id in INIT. Each
accepted connection runs a :class:`~memif_aio.link.Session`; until its INIT names an interface
the socket owns it (at most ``max_pending`` such, ``max_pending_per_peer`` per process), then
the link of that interface does. Slave interfaces connect to the socket's address themselves.

:func:`open_interface` is the one way the library's helpers (``connect``, ``listen``,
``create_endpoint``, the pytest plugin, the CLI) open a socket with one interface and wait for
its link.
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
from collections.abc import AsyncIterator, Callable
from typing import Any

from . import handshake as hs
from .control import new_seqpacket_socket, unix_address
from .errors import ConfigError, DisconnectedError, MemifError
from .interface import Interface, LinkEvent
from .link import Link, LinkEventKind, Session, SocketContext
from .memory import SharedMemory
from .protocol import Disconnect, encode
from .ratelimit import WarningLimiter

log = logging.getLogger("memif_aio")

SOCKET_OPTIONS = frozenset(
    {
        "app_name",
        "socket_mode",
        "socket_group",
        "reconnect_interval",
        "handshake_timeout",
        "max_pending",
        "max_pending_per_peer",
        "on_link_event",
    }
)


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
    ``file_check_interval`` seconds (a class attribute, 1 s); a file put there by someone else
    is left alone.

    ``on_link_event(event)`` (a :class:`~memif_aio.LinkEvent`) hears every link up, link
    down and refused handshake of this socket's interfaces (libmemif's on_connect and
    on_disconnect, DPDK's link-state callback), on the loop thread; what it raises is logged,
    never propagated.

    Example::

        async with memif_aio.Socket("/run/app/memif.sock") as sock:
            iface = await sock.create_interface(id=0, role="master")
            await iface.wait_connected()
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
        on_link_event: Callable[[LinkEvent], object] | None = None,
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
        self.on_link_event = on_link_event
        self._context = SocketContext(
            path,
            self.address,
            app_name,
            reconnect_interval,
            handshake_timeout,
            self.warnings,
            on_event=self._link_event,
        )
        self._masters: dict[int, Interface] = {}  # by interface id
        self._slaves: list[Interface] = []
        self._listener: _socket.socket | None = None
        self._listener_loop: asyncio.AbstractEventLoop | None = None
        # Accepted, INIT not yet routed, oldest first; each with its peer's (pid, uid).
        self._pending: dict[Session, tuple[int, int] | None] = {}
        self._pending_by_peer: collections.Counter[tuple[int, int] | None] = collections.Counter()
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we made
        self._file_check: asyncio.TimerHandle | None = None
        self.closed = False

    @property
    def abstract(self) -> bool:
        return self.path.startswith("@")

    @property
    def interfaces(self) -> list[Interface]:
        """The interfaces on this socket (masters by id, then slaves)."""
        return [*self._masters.values(), *self._slaves]

    async def __aenter__(self) -> Socket:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def create_interface(
        self, *, id: int = 0, role: str = "master", **options: Any
    ) -> Interface:
        """Create and start an interface on this socket; see :class:`Interface` for options.

        A master starts listening (once per socket); a slave starts connecting, and keeps
        reconnecting every ``reconnect_interval`` until closed.
        """
        if self.closed:
            raise ConfigError("socket is closed")
        parsed = hs.Role.parse(role)
        if self.role is not None and self.role is not parsed:
            raise ConfigError(f"socket {self.path} already hosts {self.role.value} interfaces")
        if parsed is hs.Role.MASTER and id in self._masters:
            raise ConfigError(f"interface id {id} already exists on {self.path}")
        interface = Interface(self._context, id=id, role=parsed, on_close=self._forget, **options)
        if parsed is hs.Role.MASTER:
            if self._listener is None:
                self._listen()
            self._masters[id] = interface
        else:
            self._slaves.append(interface)
            interface.link.start()
        self.role = parsed
        return interface

    async def close(self, *, reason: str = hs.LOCAL_CLOSE) -> None:
        """Close every interface (their peers get DISCONNECT with ``reason``), the listener, and
        remove the socket file we created."""
        if self.closed:
            return
        self.closed = True
        # Together: each may linger (up to 0.5 s) for its peer to take what it sent.
        await asyncio.gather(*(interface.close(reason=reason) for interface in self.interfaces))
        for session in list(self._pending):
            session.close(reason)
        self.warnings.close()
        if self._file_check is not None:
            self._file_check.cancel()
            self._file_check = None
        self._close_listener()
        if self._owns_file():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self._file_id = None

    def _forget(self, interface: Interface) -> None:
        if self._masters.get(interface.id) is interface:
            del self._masters[interface.id]
        if interface in self._slaves:
            self._slaves.remove(interface)

    def _close_listener(self) -> None:
        if self._listener is None:
            return
        if self._listener_loop is not None:
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
        assert self._listener_loop is not None  # set together with self._listener
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
                self.warnings.warning("memif socket %s: accept failed: %s", self.path, exc)
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
                self.app_name, self, now=time.monotonic(), timeout=self.handshake_timeout
            )
            session = Session(
                conn, machine, self, peer=label, warnings=self.warnings, on_claim=self._claim
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

    # The master machine's InterfaceDirectory.
    def config(self, interface_id: int) -> hs.MasterInterfaceConfig | None:
        interface = self._masters.get(interface_id)
        return interface.link.master_config() if interface is not None else None

    def is_taken(self, interface_id: int) -> bool:
        interface = self._masters.get(interface_id)
        return interface is not None and interface.link.busy

    def _claim(self, session: Session, interface_id: int) -> None:
        self._forget_pending(session)
        self._masters[interface_id].link.attach(session)

    # A pending session's SessionOwner (a claimed one reports to its link).
    def link_up(self, session: Session, setup: hs.LinkSetup, memory: SharedMemory) -> None:
        raise AssertionError("a session comes up only after it was claimed")  # pragma: no cover

    def session_closed(self, session: Session, closed: hs.Closed) -> None:
        self._forget_pending(session)
        requested = getattr(session.machine, "requested_id", None)
        interface = self._masters.get(requested) if requested is not None else None
        if interface is not None:
            # A refused slave (wrong secret, mode...): the owner of the id should hear why.
            interface.link.refused(closed.reason)
        if closed.error is not None and not isinstance(closed.error, DisconnectedError):
            self._report(
                LinkEvent("refused", interface, session.peer_label(), closed.reason, closed.error)
            )

    def _link_event(
        self,
        link: Link | None,
        kind: LinkEventKind,
        peer: str,
        reason: str,
        error: MemifError | None,
    ) -> None:
        interface = next((i for i in self.interfaces if i.link is link), None)
        self._report(LinkEvent(kind, interface, peer, reason, error))

    def _report(self, event: LinkEvent) -> None:
        if self.on_link_event is None:
            return
        try:
            self.on_link_event(event)
        except Exception:
            log.exception("memif %s: on_link_event(%s) raised", self.path, event.kind)


@contextlib.asynccontextmanager
async def open_interface(
    path: str,
    *,
    role: str,
    id: int = 0,
    timeout: float | None = None,
    fail_fast: bool = False,
    **options: Any,
) -> AsyncIterator[Interface]:
    """A socket at ``path`` with one interface of ``role``, connected; both closed on exit.

    ``options`` are those of :class:`Socket` and :class:`Interface` together. Waits for the
    link like :meth:`Interface.wait_connected` (``timeout``, ``fail_fast``).
    """
    socket_options = {k: v for k, v in options.items() if k in SOCKET_OPTIONS}
    interface_options = {k: v for k, v in options.items() if k not in SOCKET_OPTIONS}
    async with Socket(path, **socket_options) as sock:
        interface = await sock.create_interface(id=id, role=role, **interface_options)
        await interface.wait_connected(timeout, fail_fast=fail_fast)
        yield interface


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
