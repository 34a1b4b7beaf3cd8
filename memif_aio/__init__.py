"""memif_aio: the memif shared-memory packet interface, natively on asyncio.

Wire-compatible with libmemif, VPP's memif plugin and DPDK's ``net_memif``::

    async with memif_aio.connect("@/run/app.sock", id=0, secret="s3cr3t") as iface:
        print(iface.details())
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._ring import DEFAULT_MAX_PACKET_SIZE, Burst
from ._version import __version__
from .adapters import (
    MemifTransport,
    PacketReader,
    PacketWriter,
    create_endpoint,
    open_packet_stream,
)
from .errors import (
    ConfigError,
    DisconnectedError,
    FrameError,
    HandshakeError,
    HandshakeTimeout,
    LocalProtocolError,
    MemifError,
    PeerProtocolError,
    RemoteProtocolError,
    SecretMismatch,
)
from .handshake import Role
from .interface import Interface, InterfaceDetails, LinkEvent, LinkState, QueueDetails
from .link import Stats
from .protocol import Mode
from .queues import RxMode, RxQueue, TxQueue
from .socket import Socket, open_interface

__all__ = [
    "__version__",
    "Burst",
    "DEFAULT_MAX_PACKET_SIZE",
    "RxMode",
    "RxQueue",
    "Stats",
    "TxQueue",
    "open_interface",
    "MemifTransport",
    "PacketReader",
    "PacketWriter",
    "create_endpoint",
    "open_packet_stream",
    "run",
    "ConfigError",
    "DisconnectedError",
    "FrameError",
    "HandshakeError",
    "HandshakeTimeout",
    "Interface",
    "InterfaceDetails",
    "LinkEvent",
    "LinkState",
    "LocalProtocolError",
    "MemifError",
    "Mode",
    "PeerProtocolError",
    "QueueDetails",
    "RemoteProtocolError",
    "Role",
    "SecretMismatch",
    "Socket",
    "connect",
    "listen",
]


def connect(
    path: str, id: int = 0, *, timeout: float | None = 10.0, **options: Any
) -> contextlib.AbstractAsyncContextManager[Interface]:
    """Slave: connect to the master at ``path``; yields the connected :class:`Interface`.

    A refusal by the master (wrong secret, unknown id, id in use) raises its
    :class:`HandshakeError` at once; no master within ``timeout`` raises ``HandshakeTimeout``.
    Options are those of :class:`Interface` and :class:`Socket`.

    Example::

        async with memif_aio.connect("@/run/memif.sock", secret="s3cr3t") as iface:
            await iface.tx_queues[0].send(b"hello")
    """
    return open_interface(path, role="slave", id=id, timeout=timeout, fail_fast=True, **options)


def listen(
    path: str, id: int = 0, *, timeout: float | None = None, **options: Any
) -> contextlib.AbstractAsyncContextManager[Interface]:
    """Master: listen at ``path`` and yield the :class:`Interface` once a slave connects."""
    return open_interface(path, role="master", id=id, timeout=timeout, **options)


T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool = True, debug: bool | None = None) -> T:
    """``asyncio.run`` on uvloop (the fast path) or on the default loop.

    memif_aio works on both; uvloop lowers per-wake-up overhead, which shows in latency.
    """
    if use_uvloop:
        import uvloop

        return uvloop.run(main, debug=debug)
    return asyncio.run(main, debug=debug)
