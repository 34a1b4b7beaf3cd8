"""``memif-aio probe``: ask a master who it is and whether it would take us, then leave.

It speaks just the first steps of the handshake (read HELLO, send INIT, read ACK or
DISCONNECT), shares no memory, and says goodbye with a DISCONNECT when the master is still
there. libmemif answers an INIT for an id it does not have with ACK and then closes the
connection without a reason; so after an ACK the probe waits a moment (``settle``) to tell
"accepted" from "acknowledged, then closed".
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import socket as _socket

from .. import protocol as p
from ..control import new_seqpacket_socket, unix_address
from ..errors import ConfigError
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    CommandError,
    add_peer_options,
    say,
    with_hint,
)

ACCEPTED = "accepted"  # ACK, and the master stayed
REFUSED = "refused"  # DISCONNECT with a reason
CLOSED_AFTER_ACK = "closed-after-ack"  # ACK, then EOF without a reason (libmemif, unknown id)
CLOSED = "closed"  # EOF before answering INIT
SETTLE = 0.3  # seconds to watch the connection after an ACK


@dataclasses.dataclass
class ProbeResult:
    hello: dict
    outcome: str
    reason: str = ""  # the master's DISCONNECT reason when refused

    @property
    def accepted(self) -> bool:
        return self.outcome == ACCEPTED


class _Closed(Exception):
    """The master closed the connection (EOF, or a send that found it gone)."""


class ProbeError(Exception):
    """The master was reached but did not speak the protocol's first steps."""


async def _recv_frame(loop: asyncio.AbstractEventLoop, sock: _socket.socket) -> p.Message:
    try:
        data = await loop.sock_recv(sock, 2 * p.MESSAGE_SIZE)
    except ConnectionResetError:
        data = b""
    if not data:
        raise _Closed
    return p.decode(data)


async def _send(loop: asyncio.AbstractEventLoop, sock: _socket.socket, msg: p.Message) -> None:
    try:
        await loop.sock_sendall(sock, p.encode(msg))
    except (BrokenPipeError, ConnectionResetError):
        raise _Closed from None


async def probe(
    path: str,
    interface_id: int = 0,
    secret: str | None = None,
    timeout: float = 5.0,
    settle: float = SETTLE,
) -> ProbeResult:
    """Raises OSError when nothing listens, TimeoutError when the master stays silent, and
    ProbeError when it closes before its HELLO or sends something out of order."""
    raw_secret = (secret or "").encode()
    if len(raw_secret) > p.SECRET_SIZE:
        raise ConfigError(f"secret longer than {p.SECRET_SIZE} bytes")
    loop = asyncio.get_running_loop()
    sock = new_seqpacket_socket()
    try:
        await asyncio.wait_for(loop.sock_connect(sock, unix_address(path)), timeout)

        async def exchange() -> ProbeResult:
            try:
                hello = await _recv_frame(loop, sock)
            except _Closed:
                raise ProbeError("the master closed the connection before its HELLO") from None
            if not isinstance(hello, p.Hello):
                raise ProbeError(f"expected HELLO, got {hello.type.name}")
            fields = dataclasses.asdict(hello)
            init = p.Init(p.VERSION, interface_id, p.Mode.ETHERNET, raw_secret, "memif-aio probe")
            try:
                await _send(loop, sock, init)
                answer = await _recv_frame(loop, sock)
            except _Closed:
                return ProbeResult(fields, CLOSED)
            if isinstance(answer, p.Disconnect):
                return ProbeResult(fields, REFUSED, answer.reason)
            if not isinstance(answer, p.Ack):
                raise ProbeError(f"expected ACK or DISCONNECT, got {answer.type.name}")
            return await _after_ack(fields)

        async def _after_ack(fields: dict) -> ProbeResult:
            try:
                late = await asyncio.wait_for(_recv_frame(loop, sock), settle)
            except _Closed:
                return ProbeResult(fields, CLOSED_AFTER_ACK)
            except asyncio.TimeoutError:
                late = None
            if isinstance(late, p.Disconnect):
                return ProbeResult(fields, REFUSED, late.reason)
            try:
                await _send(loop, sock, p.Disconnect(0, "probe finished"))
            except _Closed:
                return ProbeResult(fields, CLOSED_AFTER_ACK)
            return ProbeResult(fields, ACCEPTED)

        return await asyncio.wait_for(exchange(), timeout + settle)
    finally:
        sock.close()


def register(command) -> None:
    parser = command(
        "probe",
        "connect as slave: show the master's HELLO, try INIT, leave cleanly",
        "memif-aio probe @/run/memif.sock --id 0 --secret s3cr3t",
    )
    add_peer_options(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


async def run(args: argparse.Namespace, ctx) -> int:
    try:
        result = await probe(args.socket, args.id, args.secret, args.timeout)
    except TimeoutError:
        raise CommandError(
            f"{args.socket}: no answer within {args.timeout}s", EXIT_TIMEOUT
        ) from None
    except ProbeError as exc:
        raise CommandError(f"{args.socket}: {exc}") from None
    except OSError as exc:
        raise CommandError(f"{args.socket}: {exc.strerror or exc}", EXIT_UNREACHABLE) from None
    if args.json:
        say(json.dumps({**dataclasses.asdict(result), "accepted": result.accepted}))
        return EXIT_OK if result.accepted else EXIT_FAILED
    h = result.hello
    say(f"master {h['name']!r} at {args.socket}: HELLO received")
    say(
        f"  versions {h['min_version']:#06x}..{h['max_version']:#06x}, limits: regions "
        f"{h['max_region'] + 1}, m2s rings {h['max_m2s_ring'] + 1}, s2m rings "
        f"{h['max_s2m_ring'] + 1}, ring size {1 << h['max_log2_ring_size']}"
    )
    if result.outcome == ACCEPTED:
        say(f"  INIT id {args.id}: accepted (ACK)")
    elif result.outcome == REFUSED:
        say(f"  INIT id {args.id}: refused: {with_hint(result.reason)}")
    elif result.outcome == CLOSED_AFTER_ACK:
        say(f"  INIT id {args.id}: acknowledged (ACK), then the master closed without a reason")
        say(
            f"  libmemif does this when it has no interface with id {args.id}: check --id "
            "against the master's configuration"
        )
    else:
        say(f"  INIT id {args.id}: the master closed the connection without answering")
    return EXIT_OK if result.accepted else EXIT_FAILED
