"""The control channel: one ``SOCK_SEQPACKET`` connection carrying 128-byte frames and fds.

It only moves bytes and descriptors; the meaning of a frame is the handshake's business. Reads
run from ``loop.add_reader`` and never block the loop. Callbacks receive every fd that arrived
(the receiver owns them: the peer's fds are closed with :func:`memif_aio.fds.close_later`), and
a frame of the wrong size is delivered as is so the protocol layer can reject it with a reason.
"""

from __future__ import annotations

import array
import asyncio
import collections
import errno
import logging
import socket
from collections.abc import Callable, Sequence

from . import fds as _fds
from .errors import ConfigError
from .protocol import MESSAGE_SIZE

log = logging.getLogger(__name__)

# The kernel's SCM_MAX_FD. Room for every fd one message can carry: fds that do not fit are
# closed by the kernel inside our recvmsg(), on the loop thread, and such a close can block.
MAX_FDS_PER_FRAME = 253
_ANCILLARY_SPACE = socket.CMSG_SPACE(MAX_FDS_PER_FRAME * array.array("i").itemsize)
_FRAMES_PER_WAKEUP = 64  # fairness: a flooding peer cannot monopolise the loop
_BACKLOG_RETRY = 0.005  # seconds between connect attempts while a listener's backlog is full

FrameHandler = Callable[[bytes, list[int]], None]
CloseHandler = Callable[[Exception | None], None]


def unix_address(path: str) -> str:
    """User spelling to kernel spelling: a leading ``@`` names an abstract socket."""
    address = "\0" + path[1:] if path.startswith("@") else path
    if not path or path == "@":
        raise ConfigError("empty socket path")
    if len(address.encode()) > 107:
        raise ConfigError(f"socket path {path!r} longer than 107 bytes")
    return address


def new_seqpacket_socket() -> socket.socket:
    return socket.socket(
        socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    )


async def connect_seqpacket(address: str, timeout: float) -> socket.socket:
    """A connected control socket. A non-blocking AF_UNIX connect never waits: it fails with
    EAGAIN while the listener's backlog is full (a flood), and becoming writable afterwards
    does not mean connected. So retry it for up to ``timeout`` seconds, as a blocking connect
    would wait. ``OSError`` (ECONNREFUSED, ENOENT...) when nobody listens."""
    sock = new_seqpacket_socket()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            try:
                sock.connect(address)
                return sock
            except (BlockingIOError, InterruptedError):
                if loop.time() > deadline:
                    raise ConnectionRefusedError(
                        errno.EAGAIN, "the listener's connection backlog stays full"
                    ) from None
                await asyncio.sleep(_BACKLOG_RETRY)
    except BaseException:
        sock.close()
        raise


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds_array = array.array("i")
            fds_array.frombytes(data[: len(data) - len(data) % fds_array.itemsize])
            fds.extend(fds_array)
    return fds


class ControlChannel:
    """A connected seqpacket socket driven by the event loop."""

    def __init__(
        self,
        sock: socket.socket,
        on_frame: FrameHandler,
        on_close: CloseHandler,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._sock = sock
        self._loop = loop or asyncio.get_running_loop()
        self._on_frame = on_frame
        self._on_close = on_close
        self._outbox: collections.deque[tuple[bytes, Sequence[int]]] = collections.deque()
        self._writing = False
        self.closed = False
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._read_ready)

    def send(self, frame: bytes, fds: Sequence[int] = ()) -> None:
        """Queue one frame (with fds, which stay owned by the caller) for sending."""
        if self.closed:
            return
        self._outbox.append((frame, tuple(fds)))
        if not self._writing:
            self._flush()

    def close(self) -> None:
        """Stop reading and close the socket; queued frames are flushed first when possible."""
        if self.closed:
            return
        self._flush()
        self.closed = True
        if not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
            if self._writing:
                self._loop.remove_writer(self._sock.fileno())
        self._sock.close()
        self._outbox.clear()

    def _flush(self) -> None:
        while self._outbox:
            frame, fds = self._outbox[0]
            ancillary = (
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            )
            try:
                self._sock.sendmsg([frame], ancillary)
            except (BlockingIOError, InterruptedError):
                if not self._writing:
                    self._writing = True
                    self._loop.add_writer(self._sock.fileno(), self._write_ready)
                return
            except OSError as exc:
                # The peer is gone; the reader will see it too. Drop what we cannot send.
                log.debug("control send failed: %s", exc)
                self._outbox.clear()
                if not self._loop.is_closed():  # closing after the loop died: nothing to tell
                    self._loop.call_soon(self._fail, exc)
                return
            self._outbox.popleft()
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._sock.fileno())

    def _write_ready(self) -> None:
        if not self.closed:
            self._flush()

    def _read_ready(self) -> None:
        for _ in range(_FRAMES_PER_WAKEUP):
            if self.closed:
                return
            try:
                data, ancdata, flags, _ = self._sock.recvmsg(
                    2 * MESSAGE_SIZE, _ANCILLARY_SPACE, socket.MSG_CMSG_CLOEXEC
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fail(exc)
                return
            fds = _fds_from(ancdata)
            if flags & socket.MSG_CTRUNC:
                # Cannot happen with room for SCM_MAX_FD fds; if it does, the frame is unusable.
                _fds.close_later(fds)
                self._fail(ConnectionError("ancillary data truncated"))
                return
            if not data and not fds:
                self._fail(None)
                return
            self._deliver(data, fds)

    def _deliver(self, data: bytes, fds: list[int]) -> None:
        try:
            self._on_frame(data, fds)
        except Exception as exc:  # our bug, not the peer's: surface it, keep the loop alive
            self._loop.call_exception_handler(
                {"message": "memif control frame handler failed", "exception": exc}
            )
            self._fail(exc)

    def _fail(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.close()
        self._on_close(exc)
