"""One exception hierarchy, sorted by whose fault it is.

- ``LocalProtocolError``: we (the application) misused the API or the protocol.
- ``RemoteProtocolError``: the peer broke the protocol; ``reason`` is what we told it (or it told
  us) in DISCONNECT.
- ``ConfigError``: a bad option; also a ``ValueError`` so plain validation code catches it.
- Plain ``OSError`` is left alone for syscalls.
"""

from __future__ import annotations


class MemifError(Exception):
    """Root of every memif_aio error. ``reason`` is the human-readable cause."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigError(MemifError, ValueError):
    """An option is out of range or inconsistent."""


class LocalProtocolError(MemifError):
    """The application did something the protocol or the API does not allow."""


class RemoteProtocolError(MemifError):
    """The peer sent something the protocol does not allow."""


class FrameError(RemoteProtocolError):
    """A control frame could not be decoded (wrong length, unknown type, bad field)."""


class HandshakeError(RemoteProtocolError):
    """The handshake failed; ``reason`` is the DISCONNECT reason sent or received."""


class SecretMismatch(HandshakeError):
    """The interface secret did not match."""


class PeerProtocolError(RemoteProtocolError):
    """The peer corrupted the data path (descriptor outside a region, head/tail jumps...)."""


class DisconnectedError(MemifError):
    """The link went down; ``reason`` says why (peer's DISCONNECT string or ours)."""


class HandshakeTimeout(MemifError, TimeoutError):
    """The peer did not complete the handshake in time. ``unreachable``: a slave found
    nobody listening at the socket (rather than a master that did not finish)."""

    def __init__(self, reason: str = "", *, unreachable: bool = False) -> None:
        super().__init__(reason)
        self.unreachable = unreachable


class CaptureFormatError(MemifError, ValueError):
    """A pcap/pcapng file is malformed, truncated or beyond the reader's limits."""
