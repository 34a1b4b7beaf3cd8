"""A hostile memif peer for tests: raw 128-byte frames and SCM_RIGHTS over a seqpacket socket.

Nothing here checks anything: the test decides every byte, every fd and every step. It plays a
fake *slave* against our master (``RawChannel.connect`` + ``PeerMemory`` + ``slave_steps`` +
``drive``) and a fake *master* against our slave (``RawListener`` + ``accept`` +
``serve_as_master``), with real memfds, mappings and eventfds so our side maps and signals
real memory. ``Resources`` snapshots fds, memfd mappings and tasks to prove nothing leaked.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import mmap
import os
import socket
import struct
from dataclasses import dataclass, field

from helpers import open_fds
from memif_aio import protocol as p

COOKIE = 0x3E31F20
NEXT = 1
MSG = 128


def address(path: str) -> str:
    return "\0" + path[1:] if path.startswith("@") else path


def frame(message: p.Message) -> bytes:
    return p.encode(message)


def raw_frame(kind: int, body: bytes = b"", size: int = MSG) -> bytes:
    """A frame of ``size`` bytes: u16 type, body, zero padding (or cut)."""
    return (struct.pack("<H", kind) + body).ljust(size, b"\0")[:size]


class RawChannel:
    """One seqpacket connection; non-blocking, driven by the running loop."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.received_fds: list[int] = []  # every fd our peer sent us; closed in close()

    @classmethod
    async def connect(cls, path: str, timeout: float = 5.0) -> RawChannel:
        """Connect like a blocking client: wait while the listener's backlog is full."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        try:
            while True:
                try:
                    sock.connect(address(path))
                    return cls(sock)
                except BlockingIOError:
                    if loop.time() > end:
                        raise
                    await asyncio.sleep(0.005)
        except BaseException:
            sock.close()
            raise

    def send(self, data: bytes | p.Message, fds: tuple[int, ...] | list[int] = ()) -> None:
        raw = data if isinstance(data, bytes | bytearray) else p.encode(data)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([raw], anc)

    async def _readable(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        fd = self.sock.fileno()
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, timeout)
        finally:
            loop.remove_reader(fd)

    async def recv(self, timeout: float = 3.0) -> tuple[bytes, list[int]] | None:
        """Next frame and its fds, or None at EOF. Raises TimeoutError if nothing comes."""
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(1024, socket.CMSG_SPACE(64))
            except BlockingIOError:
                await self._readable(timeout)
                continue
            except ConnectionResetError:
                return None
            fds: list[int] = []
            for level, kind, blob in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(blob[: len(blob) - len(blob) % 4])
                    fds += list(a)
            self.received_fds += fds
            if not data and not fds:
                return None
            return data, fds

    async def expect(self, kind: type, timeout: float = 3.0):
        got = await self.recv(timeout)
        assert got is not None, f"EOF while waiting for {kind.__name__}"
        message = p.decode(got[0])
        assert isinstance(message, kind), f"expected {kind.__name__}, got {message!r}"
        return message, got[1]

    async def expect_disconnect(self, timeout: float = 3.0) -> str:
        """The DISCONNECT reason; EOF must follow (the peer closed the channel)."""
        while True:
            got = await self.recv(timeout)
            assert got is not None, "EOF without DISCONNECT"
            message = p.decode(got[0])
            if isinstance(message, p.Disconnect):
                break
        await self.expect_eof(timeout)
        return message.reason

    async def expect_eof(self, timeout: float = 3.0) -> None:
        got = await self.recv(timeout)
        assert got is None, f"expected EOF, got {got!r}"

    def close(self) -> None:
        self.sock.close()
        for fd in self.received_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.received_fds = []


class RawListener:
    """A fake master's listening socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(address(path))
        self.sock.listen(64)
        self.sock.setblocking(False)

    async def accept(self, timeout: float = 5.0) -> RawChannel:
        conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(self.sock), timeout)
        return RawChannel(conn)

    def close(self) -> None:
        self.sock.close()
        if not self.path.startswith("@"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


# ------------------------------------------------------------------------------ shared memory


def memfd(name: str, size: int, seal: bool = True, sealing: bool = True) -> int:
    flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealing else 0)
    fd = os.memfd_create(name, flags)
    os.ftruncate(fd, size)
    if seal:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    return fd


def ring_bytes(log2: int, cl: int = 64) -> int:
    return 2 * cl + (16 << log2)


@dataclass
class RawRing:
    mem: mmap.mmap
    offset: int
    log2: int
    eventfd: int
    cl: int = 64

    @property
    def size(self) -> int:
        return 1 << self.log2

    @property
    def head(self) -> int:
        return struct.unpack_from("<H", self.mem, self.offset + 6)[0]

    @head.setter
    def head(self, value: int) -> None:
        struct.pack_into("<H", self.mem, self.offset + 6, value & 0xFFFF)

    @property
    def tail(self) -> int:
        return struct.unpack_from("<H", self.mem, self.offset + self.cl)[0]

    @tail.setter
    def tail(self, value: int) -> None:
        struct.pack_into("<H", self.mem, self.offset + self.cl, value & 0xFFFF)

    @property
    def flags(self) -> int:
        return struct.unpack_from("<H", self.mem, self.offset + 4)[0]

    def desc(self, slot: int) -> tuple[int, int, int, int]:
        """(flags, region, length, offset)"""
        return struct.unpack_from("<HHII", self.mem, self._slot(slot))

    def set_desc(self, slot: int, flags: int, region: int, length: int, offset: int) -> None:
        struct.pack_into("<HHIII", self.mem, self._slot(slot), flags, region, length, offset, 0)

    def _slot(self, slot: int) -> int:
        return self.offset + 2 * self.cl + 16 * (slot & (self.size - 1))

    def signal(self) -> None:
        os.write(self.eventfd, (1).to_bytes(8, "little"))


class PeerMemory:
    """What a fake slave creates: region 0 = rings (S2M first), region 1 = buffers."""

    def __init__(
        self,
        s2m: int = 1,
        m2s: int = 1,
        log2: int = 4,
        buffer_size: int = 2048,
        cl: int = 64,
        seal: bool = True,
        sealing: bool = True,
    ) -> None:
        self.log2, self.buffer_size, self.cl = log2, buffer_size, cl
        nrings = s2m + m2s
        self.sizes = [ring_bytes(log2, cl) * nrings, nrings * (buffer_size << log2)]
        self.region_fds = [
            memfd(f"rawpeer region {i}", s, seal, sealing) for i, s in enumerate(self.sizes)
        ]
        self.maps = [mmap.mmap(fd, s) for fd, s in zip(self.region_fds, self.sizes, strict=True)]
        self.s2m: list[RawRing] = []
        self.m2s: list[RawRing] = []
        for position in range(nrings):
            is_s2m = position < s2m
            efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            ring = RawRing(self.maps[0], position * ring_bytes(log2, cl), log2, efd, cl)
            struct.pack_into("<I", self.maps[0], ring.offset, COOKIE)
            (self.s2m if is_s2m else self.m2s).append(ring)

    def buffer_offset(self, ring_position: int, slot: int) -> int:
        return (ring_position * self.ring_slots + slot) * self.buffer_size

    @property
    def ring_slots(self) -> int:
        return 1 << self.log2

    def refill_m2s(self, index: int = 0) -> None:
        """Publish every M2S slot as an empty buffer, like a slave after CONNECT."""
        ring = self.m2s[index]
        position = len(self.s2m) + index
        for slot in range(ring.size):
            ring.set_desc(slot, 0, 1, self.buffer_size, self.buffer_offset(position, slot))
        ring.head = ring.size

    def send_s2m(self, packet: bytes, index: int = 0) -> None:
        """Put one packet on S2M ring ``index`` (our master receives it) and signal."""
        ring = self.s2m[index]
        slot = ring.head
        off = self.buffer_offset(index, slot % ring.size)
        self.maps[1][off : off + len(packet)] = packet
        ring.set_desc(slot, 0, 1, len(packet), off)
        ring.head = slot + 1
        ring.signal()

    def close(self) -> None:
        for m in self.maps:
            m.close()
        for fd in self.region_fds + [r.eventfd for r in self.s2m + self.m2s]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.maps = []


@dataclass
class Step:
    data: bytes
    fds: tuple[int, ...] = ()
    label: str = ""


def slave_steps(
    mem: PeerMemory, *, id: int = 0, secret: bytes = b"", name: str = "rawpeer"
) -> list[Step]:
    """The honest slave's messages, in order; tests edit the list to misbehave."""
    steps = [Step(frame(p.Init(p.VERSION, id, p.Mode.ETHERNET, secret, "rawpeer-app")), (), "init")]
    for i, size in enumerate(mem.sizes):
        steps.append(Step(frame(p.AddRegion(i, size)), (mem.region_fds[i],), f"region{i}"))
    for rings, s2m in ((mem.s2m, True), (mem.m2s, False)):
        for i, ring in enumerate(rings):
            msg = p.AddRing(int(s2m), i, 0, ring.offset, ring.log2)
            steps.append(Step(frame(msg), (ring.eventfd,), f"{'s2m' if s2m else 'm2s'}{i}"))
    steps.append(Step(frame(p.Connect(name)), (), "connect"))
    return steps


async def drive(chan: RawChannel, steps: list[Step], timeout: float = 3.0) -> str | None:
    """Lock-step: HELLO first, then each step and its reply. Returns the DISCONNECT reason we
    got (the channel then must hit EOF), or None when the last step was answered by CONNECTED.
    """
    await chan.expect(p.Hello, timeout)
    for step in steps:
        try:
            chan.send(step.data, step.fds)
        except (BrokenPipeError, ConnectionResetError):
            return "<channel closed>"
        got = await chan.recv(timeout)
        assert got is not None, f"EOF after {step.label or step.data[:2]!r} without DISCONNECT"
        reply = p.decode(got[0])
        if isinstance(reply, p.Disconnect):
            await chan.expect_eof(timeout)
            return reply.reason
        assert isinstance(reply, p.Ack | p.Connected), reply
        if isinstance(reply, p.Connected):
            return None
    return None


@dataclass
class MasterView:
    """What a fake master received from our slave: mapped regions and rings."""

    regions: list[tuple[int, int]] = field(default_factory=list)  # (fd, size)
    maps: list[mmap.mmap] = field(default_factory=list)
    s2m: list[RawRing] = field(default_factory=list)
    m2s: list[RawRing] = field(default_factory=list)
    init: p.Init | None = None

    def close(self) -> None:
        for m in self.maps:
            with contextlib.suppress(BufferError):
                m.close()
        self.maps = []


async def serve_as_master(
    chan: RawChannel, hello: p.Hello | bytes | None = None, timeout: float = 3.0
) -> MasterView:
    """Run an honest master's side up to CONNECTED and map what the slave sent."""
    view = MasterView()
    chan.send(hello or p.Hello("rawmaster"))
    view.init, _ = await chan.expect(p.Init, timeout)
    chan.send(p.Ack())
    while True:
        got = await chan.recv(timeout)
        assert got is not None
        message = p.decode(got[0])
        if isinstance(message, p.AddRegion):
            view.regions.append((got[1][0], message.size))
            view.maps.append(mmap.mmap(got[1][0], message.size))
        elif isinstance(message, p.AddRing):
            mem = view.maps[message.region]
            ring = RawRing(mem, message.offset, message.log2_ring_size, got[1][0])
            (view.s2m if message.s2m else view.m2s).append(ring)
        elif isinstance(message, p.Connect):
            chan.send(p.Connected("rawmaster-if"))
            return view
        else:
            raise AssertionError(f"unexpected {message!r}")
        chan.send(p.Ack())


# ------------------------------------------------------------------------------------- leaks


def memfd_mappings() -> list[str]:
    with open("/proc/self/maps") as maps:
        return [line.split(None, 5)[-1].strip() for line in maps if "/memfd:" in line]


class Resources:
    """Snapshot of fds, memfd mappings and tasks; ``assert_released()`` compares."""

    def __init__(self, kinds: tuple[str, ...] | None = None) -> None:
        self.kinds = kinds  # only fds whose /proc link starts with one of these (None: all)
        self.fds = self._fds()
        self.maps = sorted(memfd_mappings())
        self.tasks = len(asyncio.all_tasks())

    def _fds(self) -> set[int]:
        fds = open_fds()
        if self.kinds is None:
            return fds
        return {fd for fd in fds if _describe(fd).startswith(self.kinds)}

    async def assert_released(self, timeout: float = 3.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            fds, maps = self._fds(), sorted(memfd_mappings())
            tasks = len(asyncio.all_tasks())
            if fds <= self.fds and maps == self.maps and tasks <= self.tasks:
                return
            if loop.time() > end:
                extra = {fd: _describe(fd) for fd in fds - self.fds}
                raise AssertionError(
                    f"leaked fds {extra}, lost fds {self.fds - fds}, "
                    f"maps {maps} vs {self.maps}, tasks {tasks} vs {self.tasks}"
                )
            await asyncio.sleep(0.02)


def _describe(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"
