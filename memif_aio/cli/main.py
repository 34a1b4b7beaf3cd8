"""memif-aio: try, measure and debug memif interfaces from the shell.

  memif-aio demo                         master + slave in two processes, traffic, a table
  memif-aio bench [--quick]              throughput/latency matrix vs. the C ceiling
  memif-aio probe SOCKET [--id N]        what a master says, and whether it accepts us
  memif-aio echo SOCKET [--role R]       send every packet back (like testpmd io)
  memif-aio responder SOCKET --ip A      answer ARP and ICMP echo (like icmp_responder)
  memif-aio ping SOCKET --ip A TARGET    ICMP echo over memif with per-reply RTT

SOCKET is a filesystem path or @name for an abstract socket (DPDK's default).
Exit codes: 0 ok, 1 failed/refused, 2 usage, 3 no master/peer, 4 timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from .. import __version__
from ..errors import ConfigError, HandshakeError, HandshakeTimeout, MemifError
from . import packets, perf

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TIMEOUT = 0, 1, 2, 3, 4


class CommandError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _say(text: str = "") -> None:
    print(text, flush=True)


class _Progress:
    """One live line on a terminal; plain lines otherwise (logs, CI)."""

    def __init__(self, quiet: bool = False) -> None:
        self.tty = sys.stdout.isatty()
        self.quiet = quiet
        self._last = 0.0

    def update(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stdout.write("\r\033[K" + text)
            sys.stdout.flush()
        elif time.monotonic() - self._last > 2:
            self._last = time.monotonic()
            _say("  " + text)

    def done(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stdout.write("\r\033[K")
        _say(text)


def _interface_options(args: argparse.Namespace) -> dict:
    options = {
        "id": args.id,
        "secret": args.secret,
        "dpdk_workaround": getattr(args, "dpdk_workaround", None),
    }
    if getattr(args, "allow_unsealed_regions", False):
        options["allow_unsealed_regions"] = True
    return {k: v for k, v in options.items() if v is not None}


async def _connected(args: argparse.Namespace, role: str, **extra):
    """An interface of ``role`` on args.socket, connected; errors become CommandError."""
    from .. import Socket

    sock = Socket(args.socket, app_name=f"memif-aio {args.command}")
    try:
        iface = await sock.create_interface(role=role, **_interface_options(args), **extra)
        await iface.wait_connected(args.timeout, fail_fast=role == "slave")
    except HandshakeError as exc:
        await sock.close()
        raise CommandError(f"{args.socket}: refused: {exc.reason}") from None
    except HandshakeTimeout as exc:
        await sock.close()
        code = EXIT_UNREACHABLE if "cannot connect" in exc.reason else EXIT_TIMEOUT
        raise CommandError(f"{args.socket}: {exc.reason}", code) from None
    except OSError as exc:
        await sock.close()
        raise CommandError(f"{args.socket}: {exc.strerror or exc}", EXIT_UNREACHABLE) from None
    return sock, iface


# -- probe ---------------------------------------------------------------------------------------


async def _probe(args: argparse.Namespace) -> int:
    from .probe import probe

    try:
        result = await probe(args.socket, args.id, args.secret, args.timeout)
    except OSError as exc:
        raise CommandError(f"{args.socket}: {exc.strerror or exc}", EXIT_UNREACHABLE) from None
    except TimeoutError:
        raise CommandError(
            f"{args.socket}: no answer within {args.timeout}s", EXIT_TIMEOUT
        ) from None
    if args.json:
        _say(json.dumps(dataclasses.asdict(result)))
    else:
        h = result.hello
        _say(f"master {h['name']!r} at {args.socket}")
        _say(
            f"  versions {h['min_version']:#06x}..{h['max_version']:#06x}, limits: regions "
            f"{h['max_region'] + 1}, m2s rings {h['max_m2s_ring'] + 1}, s2m rings "
            f"{h['max_s2m_ring'] + 1}, ring size {1 << h['max_log2_ring_size']}"
        )
        if result.accepted:
            _say(f"  INIT id {args.id}: accepted (ACK)")
        else:
            _say(f"  INIT id {args.id}: refused: {result.reason}")
    return EXIT_OK if result.accepted else EXIT_FAILED


# -- echo / responder ----------------------------------------------------------------------------


async def _wait_stdin_closed_or_forever(args: argparse.Namespace) -> None:
    if args.until_stdin_closes:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    else:
        await asyncio.Event().wait()


async def _serve(args: argparse.Namespace, service: Callable[..., Awaitable[None]]) -> int:
    from .. import Socket

    async with Socket(args.socket, app_name=f"memif-aio {args.command}") as sock:
        iface = await sock.create_interface(
            role=args.role,
            rx_queues=args.queues,
            tx_queues=args.queues,
            **_interface_options(args),
        )
        _say(f"ready: {args.command} on {args.socket} id {args.id} as {args.role}")
        task = asyncio.ensure_future(service(iface))
        stop = asyncio.ensure_future(_wait_stdin_closed_or_forever(args))
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (task, stop):
                pending.cancel()
            results = await asyncio.gather(task, stop, return_exceptions=True)
    if isinstance(results[0], Exception):
        raise CommandError(f"{args.command} stopped: {results[0]!r}")
    return EXIT_OK


async def _echo(args: argparse.Namespace) -> int:
    return await _serve(args, perf.echo_service)


async def _responder(args: argparse.Namespace) -> int:
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

    return await _serve(args, respond)


# -- ping ----------------------------------------------------------------------------------------


async def _ping(args: argparse.Namespace) -> int:
    if args.count < 1 or args.size < 0:
        raise CommandError("--count must be at least 1 and --size not negative", EXIT_USAGE)
    mac, ip = packets.parse_mac(args.mac), packets.parse_ip(args.ip)
    target = packets.parse_ip(args.target)
    sock, iface = await _connected(args, args.role)
    try:
        rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
        target_mac = await _resolve(rxq, txq, mac, ip, target, args.timeout)
        ident = os.getpid() & 0xFFFF
        payload = bytes(i & 0xFF for i in range(args.size))
        if not args.json:
            _say(
                f"PING {args.target} ({packets.format_mac(target_mac)}) over memif "
                f"{args.socket}: {args.size} data bytes"
            )
        rtts: list[float] = []
        for seq in range(1, args.count + 1):
            request = packets.icmp_echo(
                packets.ICMP_ECHO_REQUEST, mac, target_mac, ip, target, ident, seq, payload
            )
            sent = time.perf_counter_ns()
            await txq.send(request)
            reply = await _await_reply(rxq, ident, seq, min(args.timeout, 2.0))
            if reply is not None:
                rtt = (time.perf_counter_ns() - sent) / 1e6
                rtts.append(rtt)
                if not args.json:
                    _say(
                        f"{len(reply.payload) + 8} bytes from {args.target}: icmp_seq={seq} "
                        f"ttl={reply.ttl} time={rtt:.3f} ms"
                    )
            elif not args.json:
                _say(f"no reply for icmp_seq={seq}")
            if seq < args.count:
                await asyncio.sleep(args.interval)
    finally:
        await sock.close()
    lost = args.count - len(rtts)
    have = bool(rtts)
    summary = {
        "target": args.target,
        "transmitted": args.count,
        "received": len(rtts),
        "loss_percent": 100.0 * lost / args.count,
        "rtt_ms": {
            "min": min(rtts) if have else None,
            "avg": sum(rtts) / len(rtts) if have else None,
            "max": max(rtts) if have else None,
            "p50": perf.percentile(rtts, 50) if have else None,
            "p99": perf.percentile(rtts, 99) if have else None,
        },
    }
    if args.json:
        _say(json.dumps(summary))
    else:
        _say(f"--- {args.target} ping statistics ---")
        _say(
            f"{args.count} packets transmitted, {len(rtts)} received, "
            f"{summary['loss_percent']:.0f}% packet loss"
        )
        if rtts:
            r = summary["rtt_ms"]
            _say(
                f"rtt min/avg/max/p99 = {r['min']:.3f}/{r['avg']:.3f}/{r['max']:.3f}/"
                f"{r['p99']:.3f} ms"
            )
    return EXIT_OK if rtts else EXIT_FAILED


async def _resolve(rxq, txq, mac: bytes, ip: bytes, target: bytes, timeout: float) -> bytes:
    """ARP for ``target``; answer the peer's own ARP requests meanwhile."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        await txq.send(packets.arp(1, mac, ip, bytes(6), target))
        try:
            while True:
                frame = await asyncio.wait_for(rxq.recv(), 0.2)
                parsed = packets.parse(frame)
                if isinstance(parsed, packets.Arp) and parsed.op == 2 and parsed.src_ip == target:
                    return parsed.src_mac
                reply = packets.answer(frame, mac, ip)
                if reply is not None:
                    await txq.send(reply)
        except asyncio.TimeoutError:
            continue
    raise CommandError(f"no ARP reply from {packets.format_mac(target)}", EXIT_TIMEOUT)


async def _await_reply(rxq, ident: int, seq: int, timeout: float) -> packets.IcmpEcho | None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while (remaining := end - loop.time()) > 0:
        try:
            frame = await asyncio.wait_for(rxq.recv(), remaining)
        except asyncio.TimeoutError:
            return None
        parsed = packets.parse(frame)
        if (
            isinstance(parsed, packets.IcmpEcho)
            and parsed.kind == packets.ICMP_ECHO_REPLY
            and (parsed.ident, parsed.seq) == (ident, seq)
        ):
            return parsed
    return None


# -- demo ----------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    """Sync driver: the master is a child process, the slave runs here on the chosen loop."""
    path = f"@/tmp/memif-aio-demo-{uuid.uuid4().hex[:8]}.sock"
    master = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memif_aio",
            "echo",
            path,
            "--role",
            "master",
            "--until-stdin-closes",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert master.stdout is not None
        if not master.stdout.readline().startswith("ready"):
            raise CommandError("the master process failed to start")
        if not args.json:
            _say(
                f"memif-aio demo: master pid {master.pid} (echo) <-> slave pid {os.getpid()}, "
                f"abstract socket {path}"
            )
        return _run_loop(args, _demo_traffic(args, path))
    finally:
        if master.stdin:
            master.stdin.close()
        try:
            master.wait(10)
        except subprocess.TimeoutExpired:
            master.kill()


async def _demo_traffic(args: argparse.Namespace, path: str) -> int:
    from .. import connect

    progress = _Progress(quiet=args.json)
    rows: list[tuple[str, perf.Throughput]] = []
    started = time.perf_counter()
    async with connect(path, timeout=10, app_name="memif-aio demo", name="demo-slave") as iface:
        d = iface.details()
        if not args.json:
            _say(
                f"connected in {(time.perf_counter() - started) * 1e3:.1f} ms to "
                f"{d.remote_app_name!r}: {len(d.rx_queues)}+{len(d.tx_queues)} queues, ring "
                f"{d.rx_queues[0].ring_size}, buffers {d.rx_queues[0].buffer_size} B\n"
            )
        plan = [(size, "burst", args.seconds * 0.2) for size in (64, 512, 1500)]
        plan += [(64, "packet", args.seconds * 0.15), (1500, "packet", args.seconds * 0.1)]
        for size, api, seconds in plan:
            label = f"echo {size:>4} B  {api:<6}"
            result = await perf.echo_throughput(
                iface,
                size,
                api,
                seconds,
                progress=lambda t, label=label: progress.update(f"{label} {t}"),
            )
            rows.append((api, result))
            progress.done(f"{label} {result.mpps:6.2f} Mpps  {result.gbps:6.2f} Gbps")
        rtts = await perf.ping_pong(
            iface, 64, args.seconds * 0.15, progress=lambda t: progress.update(f"rtt 64 B  {t}")
        )
        progress.done(f"rtt   64 B  ping-pong: {len(rtts)} round trips")
        stats = iface.stats()
    loop_name = "uvloop" if args.uvloop else "asyncio"
    if args.json:
        _say(
            json.dumps(
                {
                    "loop": loop_name,
                    "throughput": [
                        {"api": api, "size": r.size, "mpps": r.mpps, "gbps": r.gbps}
                        for api, r in rows
                    ],
                    "rtt_us": {
                        "p50": perf.percentile(rtts, 50),
                        "p99": perf.percentile(rtts, 99),
                        "samples": len(rtts),
                    },
                    "counters": stats,
                }
            )
        )
        return EXIT_OK
    _say(
        f"\nResults (echo through the master process, loop {loop_name}; a packet counts once it"
        " is back):"
    )
    _say(f"  {'path':<10} {'size':>6} {'Mpps':>8} {'Gbps':>8}")
    for api, r in rows:
        _say(f"  {api:<10} {r.size:>5}B {r.mpps:>8.2f} {r.gbps:>8.2f}")
    _say(
        f"  {'RTT 64B':<10} p50 {perf.percentile(rtts, 50):.1f} us   p99 "
        f"{perf.percentile(rtts, 99):.1f} us   ({len(rtts)} samples, interrupt mode)"
    )
    errors = stats["rx_errors"] + stats["tx_errors"]
    _say(
        f"  counters: {stats['tx_packets']} sent, {stats['rx_packets']} received, "
        f"{errors} errors, {stats['tx_drops']} drops"
    )
    return EXIT_OK


# -- bench ---------------------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    from . import bench

    config = bench.BenchConfig.quick() if args.quick else bench.BenchConfig()
    if args.sizes:
        config.sizes = tuple(int(s) for s in args.sizes.split(","))
    if args.duration:
        config.duration = args.duration
    if args.no_testpmd:
        config.use_testpmd = False
    progress = _Progress()
    report = bench.run(config, progress.done if not args.json else lambda line: None)
    written = bench.write(report, Path(args.out))
    if args.json:
        _say(json.dumps(dataclasses.asdict(report)))
    else:
        _say("")
        _say(bench.to_markdown(report))
        _say("wrote " + ", ".join(str(p) for p in written))
    return EXIT_OK


# -- plumbing ------------------------------------------------------------------------------------


def _run_loop(args: argparse.Namespace, coroutine: Awaitable[int]) -> int:
    from .. import run

    return run(coroutine, use_uvloop=args.uvloop)


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="memif-aio", description=__doc__, formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"memif-aio {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help, description=help, epilog=f"example:\n  {example}", formatter_class=raw
        )

    def peer_options(p: argparse.ArgumentParser, role: str | None = None) -> None:
        p.add_argument("socket", help="socket path, or @name for an abstract socket")
        p.add_argument("--id", type=int, default=0, help="interface id (default 0)")
        p.add_argument("--secret", help="interface secret (up to 24 bytes)")
        p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
        if role is not None:
            p.add_argument(
                "--role",
                choices=("master", "slave"),
                default=role,
                help=f"our role (default {role})",
            )
            p.add_argument(
                "--dpdk-workaround",
                choices=("auto", "on", "off"),
                help="slave: defend the rx rings against DPDK's transmit off-by-one (default "
                "auto: when the master is DPDK; see README, Interop notes)",
            )

    demo = command(
        "demo",
        "master and slave in two processes: traffic, then a results table",
        "memif-aio demo --seconds 10",
    )
    demo.add_argument("--seconds", type=float, default=10.0, help="traffic time (default 10)")
    demo.add_argument("--json", action="store_true", help="print the results as JSON")

    b = command(
        "bench",
        "throughput/latency matrix against memif_aio and dpdk-testpmd",
        "memif-aio bench --quick --out bench-results",
    )
    b.add_argument("--quick", action="store_true", help="a ~30-60 s run (64/1500 B, short)")
    b.add_argument("--sizes", help="comma-separated packet sizes")
    b.add_argument("--duration", type=float, help="seconds per measurement")
    b.add_argument("--no-testpmd", action="store_true", help="only memif_aio peers")
    b.add_argument("--out", default="bench-results", help="directory for json/md/png")
    b.add_argument("--json", action="store_true", help="print the report as JSON")

    p = command(
        "probe",
        "connect as slave: show the master's HELLO, try INIT, leave cleanly",
        "memif-aio probe @/run/memif.sock --id 0 --secret s3cr3t",
    )
    peer_options(p)
    p.add_argument("--json", action="store_true")

    for name, help, example in (
        ("echo", "send every received packet back on its queue", "memif-aio echo @/tmp/e.sock"),
        (
            "responder",
            "answer ARP and ICMP echo requests for --ip",
            "memif-aio responder /run/vpp/memif.sock --role slave --ip 192.168.1.2",
        ),
    ):
        s = command(name, help, example)
        peer_options(s, "master")
        s.add_argument("--queues", type=int, default=1, help="queue pairs (default 1)")
        s.add_argument("--until-stdin-closes", action="store_true", help=argparse.SUPPRESS)
        s.add_argument(
            "--allow-unsealed-regions",
            action="store_true",
            help="master: accept peer memory that cannot be sealed (DPDK zero-copy clients); "
            "only for a trusted peer",
        )
        if name == "responder":
            s.add_argument("--ip", required=True, help="our IPv4 address")
            s.add_argument("--mac", default="02:fe:00:00:00:01", help="our MAC address")

    g = command(
        "ping",
        "ICMP echo over memif; ARP-resolves the target first",
        "memif-aio ping @/tmp/r.sock --ip 192.168.1.1 192.168.1.2 -c 5",
    )
    peer_options(g, "slave")
    g.add_argument("target", help="IPv4 address to ping")
    g.add_argument("--ip", required=True, help="our IPv4 address")
    g.add_argument("--mac", default="02:fe:00:00:00:02", help="our MAC address")
    g.add_argument("-c", "--count", type=int, default=5)
    g.add_argument("-i", "--interval", type=float, default=0.2)
    g.add_argument("-s", "--size", type=int, default=56, help="ICMP payload bytes")
    g.add_argument("--json", action="store_true")
    return parser


ASYNC_COMMANDS = {"probe": _probe, "echo": _echo, "responder": _responder, "ping": _ping}
SYNC_COMMANDS = {"demo": _demo, "bench": _bench}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.ERROR - 10 * args.verbose, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command in SYNC_COMMANDS:
            return SYNC_COMMANDS[args.command](args)
        return _run_loop(args, ASYNC_COMMANDS[args.command](args))
    except CommandError as exc:
        print(f"memif-aio {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except ConfigError as exc:
        print(f"memif-aio {args.command}: {exc.reason}", file=sys.stderr)
        return EXIT_USAGE
    except MemifError as exc:
        print(f"memif-aio {args.command}: {exc.reason}", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, OSError) as exc:
        print(f"memif-aio {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
