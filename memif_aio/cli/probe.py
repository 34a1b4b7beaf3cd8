"""``memif-aio probe``: ask a master who it is and whether it would take us, then leave.

It speaks just the first steps of the handshake (read HELLO, send INIT, read ACK or
DISCONNECT), shares no memory, and always says goodbye with a DISCONNECT.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket as _socket

from .. import protocol as p
from ..control import new_seqpacket_socket, unix_address
from ..errors import ConfigError


@dataclasses.dataclass
class ProbeResult:
    hello: dict
    accepted: bool
    reason: str  # the master's DISCONNECT reason when refused


async def _recv_frame(loop: asyncio.AbstractEventLoop, sock: _socket.socket) -> p.Message:
    data = await loop.sock_recv(sock, 2 * p.MESSAGE_SIZE)
    if not data:
        raise ConnectionResetError("the master closed the connection")
    return p.decode(data)


async def probe(
    path: str, interface_id: int = 0, secret: str | None = None, timeout: float = 5.0
) -> ProbeResult:
    """Raises OSError when nothing listens, TimeoutError when the master stays silent."""
    raw_secret = (secret or "").encode()
    if len(raw_secret) > p.SECRET_SIZE:
        raise ConfigError(f"secret longer than {p.SECRET_SIZE} bytes")
    loop = asyncio.get_running_loop()
    sock = new_seqpacket_socket()

    async def exchange() -> tuple[p.Message, p.Message]:
        await loop.sock_connect(sock, unix_address(path))
        hello = await _recv_frame(loop, sock)
        if not isinstance(hello, p.Hello):
            raise ConnectionError(f"expected HELLO, got {hello.type.name}")
        init = p.Init(p.VERSION, interface_id, p.Mode.ETHERNET, raw_secret, "memif-aio probe")
        await loop.sock_sendall(sock, p.encode(init))
        return hello, await _recv_frame(loop, sock)

    try:
        hello, answer = await asyncio.wait_for(exchange(), timeout)
        accepted = isinstance(answer, p.Ack)
        reason = answer.reason if isinstance(answer, p.Disconnect) else ""
        if accepted:
            await loop.sock_sendall(sock, p.encode(p.Disconnect(0, "probe finished")))
        return ProbeResult(dataclasses.asdict(hello), accepted, reason)
    finally:
        sock.close()
