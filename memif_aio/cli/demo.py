"""``memif-aio demo``: a master and a slave in two processes, echo traffic per size and API,
round-trip latency, and a results table.

The master is ``memif-aio echo`` in a child process; the slave runs here on the chosen loop.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
import uuid

from . import perf
from .common import EXIT_OK, CommandError, Progress, run_command, say, stop_process


def _show(progress: Progress, label: str, text: str) -> None:
    progress.update(f"{label} {text}")


def register(command) -> None:
    parser = command(
        "demo",
        "master and slave in two processes: traffic, then a results table",
        "memif-aio demo --seconds 10",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="traffic time (default 10)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(run_sync=run)


def run(args: argparse.Namespace, ctx) -> int:
    path = f"@/tmp/memif-aio-demo-{uuid.uuid4().hex[:8]}.sock"
    master = subprocess.Popen(
        [sys.executable, "-m", "memif_aio", "-q", "echo", path, "--role", "master"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert master.stdout is not None
        if not master.stdout.readline().startswith("ready"):
            raise CommandError("the master process failed to start")
        if not args.json:
            say(
                f"memif-aio demo: master pid {master.pid} (echo) <-> slave pid {os.getpid()}, "
                f"abstract socket {path}"
            )
        return run_command(args, lambda: _traffic(args, path))
    finally:
        stop_process(master)


async def _traffic(args: argparse.Namespace, path: str) -> int:
    from .. import connect

    progress = Progress(quiet=args.json)
    rows: list[tuple[str, perf.Throughput]] = []
    started = time.perf_counter()
    async with connect(path, timeout=10, app_name="memif-aio demo", name="demo-slave") as iface:
        d = iface.details()
        if not args.json:
            say(
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
                progress=functools.partial(_show, progress, label),
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
        say(
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
    say(
        f"\nResults (echo through the master process, loop {loop_name}; a packet counts once it"
        " is back):"
    )
    say(f"  {'path':<10} {'size':>6} {'Mpps':>8} {'Gbps':>8}")
    for api, r in rows:
        say(f"  {api:<10} {r.size:>5}B {r.mpps:>8.2f} {r.gbps:>8.2f}")
    say(
        f"  {'RTT 64B':<10} p50 {perf.percentile(rtts, 50):.1f} us   p99 "
        f"{perf.percentile(rtts, 99):.1f} us   ({len(rtts)} samples, interrupt mode)"
    )
    errors = stats["rx_errors"] + stats["tx_errors"]
    say(
        f"  counters: {stats['tx_packets']} sent, {stats['rx_packets']} received, "
        f"{errors} errors, {stats['tx_drops']} drops"
    )
    return EXIT_OK
