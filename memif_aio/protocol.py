"""memif 2.0 control messages: exact 128-byte frames, encoded and decoded without I/O.

Every frame is a little-endian ``u16`` type followed by a packed body, zero padded to 128 bytes.
File descriptors travel beside frames (``SCM_RIGHTS``); this module never sees them.

Decoding is strict: a frame of any other length, an unknown type or a field out of range raises
``FrameError`` and nothing else, whatever the input (the property tests hold us to that).
Semantic rules (ordering, limits, secrets) belong to :mod:`memif_aio.handshake`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import ConfigError, FrameError

MESSAGE_SIZE = 128
VERSION = 0x0200
NAME_SIZE = 32
SECRET_SIZE = 24
REASON_SIZE = 96
MAX_LOG2_RING_SIZE = 14
RING_COOKIE = 0x3E31F20
ADD_RING_FLAG_S2M = 0x1
DESC_SIZE = 16


def ring_bytes(log2_ring_size: int, cacheline: int = 64) -> int:
    """Bytes of one ring: a two-cache-line header, then ``2**log2`` 16-byte descriptors."""
    return 2 * cacheline + (DESC_SIZE << log2_ring_size)


_TYPE = struct.Struct("<H")


class MessageType(enum.IntEnum):
    ACK = 1
    HELLO = 2
    INIT = 3
    ADD_REGION = 4
    ADD_RING = 5
    CONNECT = 6
    CONNECTED = 7
    DISCONNECT = 8


class Mode(enum.IntEnum):
    """Interface mode carried in INIT; both ends must agree."""

    ETHERNET = 0
    IP = 1
    PUNT_INJECT = 2

    @classmethod
    def parse(cls, value: Mode | int | str) -> Mode:
        if isinstance(value, str):
            try:
                return cls[value.upper().replace("-", "_")]
            except KeyError:
                raise ConfigError(f"unknown mode {value!r} (ethernet, ip, punt_inject)") from None
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"unknown mode {value!r}") from None


def encode_string(text: str | bytes, size: int, field: str) -> bytes:
    """NUL-pad ``text`` to ``size`` bytes; a full field needs no terminator (peers accept it)."""
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)
    if len(raw) > size:
        raise ConfigError(f"{field} is {len(raw)} bytes, at most {size} fit")
    if b"\0" in raw:
        raise ConfigError(f"{field} contains a NUL byte")
    return raw.ljust(size, b"\0")


def decode_string(raw: bytes) -> str:
    """Text up to the first NUL (or the whole field when full).

    Undecodable bytes become surrogates, so a name re-encodes to the very bytes the peer sent.
    """
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def printable(text: str) -> str:
    """``text`` from a peer, safe to log or show: one line, no terminal escapes.

    Control characters (newline, ESC...), backslashes and undecodable bytes (the surrogates
    :func:`decode_string` keeps) are written as escapes, so a peer cannot forge log lines,
    move a terminal's cursor, or make a UTF-8 log handler drop the line.
    """
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\\" or not ch.isprintable():
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class Ack:
    type: ClassVar[MessageType] = MessageType.ACK
    _body: ClassVar[struct.Struct] = struct.Struct("<")

    def _fields(self) -> tuple[Any, ...]:
        return ()


@dataclass(frozen=True)
class Hello:
    """master -> slave, first message. ``max_*`` are highest indices (count - 1)."""

    name: str = ""
    min_version: int = VERSION
    max_version: int = VERSION
    max_region: int = 255
    max_m2s_ring: int = 255
    max_s2m_ring: int = 255
    max_log2_ring_size: int = MAX_LOG2_RING_SIZE
    type: ClassVar[MessageType] = MessageType.HELLO
    _body: ClassVar[struct.Struct] = struct.Struct("<32sHHHHHB")

    def _fields(self) -> tuple[Any, ...]:
        return (
            encode_string(self.name, NAME_SIZE, "HELLO name"),
            self.min_version,
            self.max_version,
            self.max_region,
            self.max_m2s_ring,
            self.max_s2m_ring,
            self.max_log2_ring_size,
        )


@dataclass(frozen=True)
class Init:
    """slave -> master: which interface, and proof of the right to it."""

    version: int = VERSION
    id: int = 0
    mode: Mode = Mode.ETHERNET
    secret: bytes = b""
    name: str = ""
    type: ClassVar[MessageType] = MessageType.INIT
    _body: ClassVar[struct.Struct] = struct.Struct("<HIB24s32s")

    def _fields(self) -> tuple[Any, ...]:
        return (
            self.version,
            self.id,
            self.mode,
            self.secret.ljust(SECRET_SIZE, b"\0")[:SECRET_SIZE],
            encode_string(self.name, NAME_SIZE, "INIT name"),
        )


@dataclass(frozen=True)
class AddRegion:
    index: int
    size: int
    type: ClassVar[MessageType] = MessageType.ADD_REGION
    _body: ClassVar[struct.Struct] = struct.Struct("<HQ")

    def _fields(self) -> tuple[Any, ...]:
        return (self.index, self.size)


@dataclass(frozen=True)
class AddRing:
    flags: int
    index: int
    region: int
    offset: int
    log2_ring_size: int
    private_hdr_size: int = 0
    type: ClassVar[MessageType] = MessageType.ADD_RING
    _body: ClassVar[struct.Struct] = struct.Struct("<HHHIBH")

    @property
    def s2m(self) -> bool:
        return bool(self.flags & ADD_RING_FLAG_S2M)

    def _fields(self) -> tuple[Any, ...]:
        return (
            self.flags,
            self.index,
            self.region,
            self.offset,
            self.log2_ring_size,
            self.private_hdr_size,
        )


@dataclass(frozen=True)
class Connect:
    if_name: str = ""
    type: ClassVar[MessageType] = MessageType.CONNECT
    _body: ClassVar[struct.Struct] = struct.Struct("<32s")

    def _fields(self) -> tuple[Any, ...]:
        return (encode_string(self.if_name, NAME_SIZE, "interface name"),)


@dataclass(frozen=True)
class Connected:
    if_name: str = ""
    type: ClassVar[MessageType] = MessageType.CONNECTED
    _body: ClassVar[struct.Struct] = struct.Struct("<32s")

    def _fields(self) -> tuple[Any, ...]:
        return (encode_string(self.if_name, NAME_SIZE, "interface name"),)


@dataclass(frozen=True)
class Disconnect:
    code: int = 0
    reason: str = ""
    type: ClassVar[MessageType] = MessageType.DISCONNECT
    _body: ClassVar[struct.Struct] = struct.Struct("<I96s")

    def _fields(self) -> tuple[Any, ...]:
        # A reason is informative only: cut it to fit rather than fail a teardown.
        raw = self.reason.encode("utf-8", "surrogateescape").replace(b"\0", b" ")[:REASON_SIZE]
        return (self.code, raw)


Message = Ack | Hello | Init | AddRegion | AddRing | Connect | Connected | Disconnect

_CLASSES: dict[int, type[Message]] = {
    cls.type: cls for cls in (Ack, Hello, Init, AddRegion, AddRing, Connect, Connected, Disconnect)
}


def encode(message: Message) -> bytes:
    """The 128-byte frame of ``message``. Out-of-range fields raise ``ConfigError``."""
    try:
        body = message._body.pack(*message._fields())
    except struct.error as exc:
        raise ConfigError(f"cannot encode {message!r}: {exc}") from None
    return (_TYPE.pack(message.type) + body).ljust(MESSAGE_SIZE, b"\0")


def decode(frame: bytes | bytearray | memoryview) -> Message:
    """Parse one frame; raise ``FrameError`` on anything but a well-formed 128-byte message."""
    if len(frame) != MESSAGE_SIZE:
        raise FrameError(f"frame of {len(frame)} bytes, expected {MESSAGE_SIZE}")
    frame = bytes(frame)
    (kind,) = _TYPE.unpack_from(frame)
    cls = _CLASSES.get(kind)
    if cls is None:
        raise FrameError(f"unknown message type {kind}")
    values = cls._body.unpack_from(frame, _TYPE.size)
    if cls is Hello:
        name, *limits = values
        return Hello(decode_string(name), *limits)
    if cls is Init:
        version, id_, mode, secret, name = values
        try:
            mode = Mode(mode)
        except ValueError:
            raise FrameError(f"INIT with unknown mode {mode}") from None
        return Init(version, id_, mode, secret.rstrip(b"\0"), decode_string(name))
    if cls in (Connect, Connected):
        return cls(decode_string(values[0]))
    if cls is Disconnect:
        return Disconnect(values[0], decode_string(values[1]))
    return cls(*values)
