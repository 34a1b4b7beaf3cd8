"""``memif-aio echo`` and ``memif-aio responder``: long-running services, either role.

The socket stays open across links: a master keeps listening, a slave keeps reconnecting,
and each link event is one line on stderr. ``ready:`` on stdout says the service is up.
SIGTERM or SIGINT closes the interface (DISCONNECT with a reason, socket file removed) and
exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
from collections.abc import Awaitable, Callable

from ..errors import MemifError
from . import packets, perf
from .common import (
    EXIT_OK,
    CommandError,
    add_peer_options,
    closes_on_signal,
    interface_options,
    say,
    watching,
)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def register(command) -> None:
    for name, help, example in (
        ("echo", "send every received packet back on its queue", "memif-aio echo @/tmp/e.sock"),
        (
            "responder",
            "answer ARP and ICMP echo requests for --ip",
            "memif-aio responder /run/vpp/memif.sock --role slave --ip 192.168.1.2",
        ),
    ):
        parser = command(name, help, example)
        add_peer_options(parser, "master", queues=True, timeout=None)
        parser.add_argument("--until-stdin-closes", action="store_true", help=argparse.SUPPRESS)
        parser.add_argument(
            "--allow-unsealed-regions",
            action="store_true",
            help="master: accept peer memory that cannot be sealed (DPDK zero-copy clients); "
            "only for a trusted peer",
        )
        if name == "responder":
            parser.add_argument("--ip", required=True, help="our IPv4 address")
            parser.add_argument("--mac", default="02:fe:00:00:00:01", help="our MAC address")
            parser.set_defaults(run=run_responder)
        else:
            parser.set_defaults(run=run_echo)


async def _stdin_closed_or_forever(args: argparse.Namespace) -> None:
    if not args.until_stdin_closes:
        await asyncio.Event().wait()
    # A daemon thread, not the loop's executor: a signal must not wait for stdin to close.
    loop = asyncio.get_running_loop()
    closed = loop.create_future()

    def read() -> None:
        sys.stdin.read()
        with contextlib.suppress(RuntimeError):  # the loop is gone already
            loop.call_soon_threadsafe(_settle, closed)

    threading.Thread(target=read, name="stdin", daemon=True).start()
    await closed


async def serve(args: argparse.Namespace, ctx, service: Callable[..., Awaitable[None]]) -> int:
    from .. import Socket

    app_name = f"memif-aio {args.command}"
    async with closes_on_signal(Socket(args.socket, app_name=app_name)) as sock:
        iface = await sock.create_interface(role=args.role, **interface_options(args))
        say(f"ready: {args.command} on {args.socket} id {args.id} as {args.role}")
        async with watching(iface, ctx.console):
            task = asyncio.ensure_future(service(iface))
            stop = asyncio.ensure_future(_stdin_closed_or_forever(args))
            try:
                await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pending in (task, stop):
                    pending.cancel()
                results = await asyncio.gather(task, stop, return_exceptions=True)
    if isinstance(results[0], Exception):
        raise CommandError(f"{args.command} stopped: {results[0]!r}")
    return EXIT_OK


async def run_echo(args: argparse.Namespace, ctx) -> int:
    return await serve(args, ctx, perf.echo_service)


async def run_responder(args: argparse.Namespace, ctx) -> int:
    mac, ip = packets.parse_mac(args.mac), packets.parse_ip(args.ip)

    async def respond(iface) -> None:
        while True:
            await iface.wait_connected()
            rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
            try:
                async for frame in rxq:
                    reply = packets.answer(frame, mac, ip)
                    if reply is not None:
                        await txq.send(reply)
            except MemifError:  # link down, or a peer that broke it (already disconnected)
                continue

    return await serve(args, ctx, respond)
