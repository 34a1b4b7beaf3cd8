"""The ``memif-aio`` command.

memif-aio demo              master and slave in two processes on an abstract socket
memif-aio probe SOCKET      what the master at SOCKET says (HELLO), and whether it accepts us
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import uuid

from . import __version__
from .errors import MemifError
from .interface import InterfaceDetails

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _format_details(d: InterfaceDetails) -> str:
    queues = ", ".join(f"rx{q.index}:{q.ring_size}" for q in d.rx_queues)
    queues += ", " + ", ".join(f"tx{q.index}:{q.ring_size}" for q in d.tx_queues)
    return (
        f"  {d.role:<6} {d.name!r} id={d.id} mode={d.mode} state={d.state}\n"
        f"         remote {d.remote_name!r} app {d.remote_app_name!r}\n"
        f"         socket {d.socket}  rings {queues}"
    )


async def _serve(args: argparse.Namespace) -> int:
    """Internal: a master that stays up until stdin closes (the demo's second process)."""
    from . import Socket

    async with Socket(args.socket, app_name="memif-aio demo master") as sock:
        iface = await sock.create_interface(id=args.id, role="master", name="demo-master")
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await iface.close()
    return EXIT_OK


async def _demo(args: argparse.Namespace) -> int:
    from . import connect

    path = f"@/run/memif-aio-demo-{uuid.uuid4().hex[:8]}.sock"
    master = subprocess.Popen(
        [sys.executable, "-m", "memif_aio.cli", "_serve", path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert master.stdout is not None
        if master.stdout.readline().strip() != "ready":
            print("memif-aio demo: the master process failed to start", file=sys.stderr)
            return EXIT_FAILED
        print(
            f"master pid {master.pid} listening on {path}; connecting as slave (pid {os.getpid()})"
        )
        started = time.perf_counter()
        async with connect(path, app_name="memif-aio demo slave", name="demo-slave") as iface:
            elapsed = (time.perf_counter() - started) * 1e3
            print(f"handshake complete in {elapsed:.1f} ms\n")
            print(_format_details(iface.details()))
    except MemifError as exc:
        print(f"memif-aio demo: {exc.reason}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if master.stdin:
            master.stdin.close()
        master.wait(10)
    return EXIT_OK


async def _probe(args: argparse.Namespace) -> int:
    from . import connect

    try:
        async with connect(args.socket, id=args.id, secret=args.secret, timeout=args.timeout) as i:
            d = i.details()
            if args.json:
                import dataclasses

                print(json.dumps(dataclasses.asdict(d)))
            else:
                print(f"connected to {d.remote_app_name!r} interface {d.remote_name!r}")
                print(_format_details(d))
    except MemifError as exc:
        print(f"memif-aio probe: {args.socket}: {exc.reason}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memif-aio", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"memif-aio {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="master and slave in two processes on an abstract socket")
    probe = sub.add_parser(
        "probe",
        help="connect as slave and report what the master says",
        epilog="example: memif-aio probe @/run/memif.sock --id 0",
    )
    probe.add_argument("socket", help="socket path; @name for an abstract socket")
    probe.add_argument("--id", type=int, default=0)
    probe.add_argument("--secret")
    probe.add_argument("--timeout", type=float, default=5.0)
    probe.add_argument("--json", action="store_true")
    serve = sub.add_parser("_serve")  # internal: the demo's master process
    serve.add_argument("socket")
    serve.add_argument("--id", type=int, default=0)
    return parser


COMMANDS = {"demo": _demo, "probe": _probe, "_serve": _serve}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    coroutine = COMMANDS[args.command](args)
    if args.uvloop:
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


if __name__ == "__main__":
    sys.exit(main())
