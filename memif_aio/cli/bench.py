"""The benchmark matrix behind ``memif-aio bench`` and ``benchmarks/bench_dpdk.py``.

Packet size x API (burst, per-packet) x loop (asyncio, uvloop) x peer (memif_aio in another
process; ``dpdk-testpmd`` when installed), every throughput next to the C ceiling measured in
the same run: testpmd ``txonly`` -> testpmd ``rxonly``. One CPU per side when there are two.
Results go to JSON, a Markdown table and (with matplotlib) a PNG plot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import DisconnectedError
from ..interface import Interface
from ..testing.testpmd import Testpmd, find_testpmd
from . import perf
from .common import stop_process

PEER_CPU, OUR_CPU = 0, 1
Progress = Callable[[str], None]
T = TypeVar("T")


@dataclass
class BenchConfig:
    sizes: tuple[int, ...] = (64, 512, 1500)
    apis: tuple[str, ...] = ("burst", "packet")
    loops: tuple[str, ...] = ("asyncio", "uvloop")
    duration: float = 2.0
    latency_seconds: float = 1.0
    use_testpmd: bool = True

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(sizes=(64, 1500), duration=0.5, latency_seconds=0.5)


@dataclass
class Row:
    peer: str
    scenario: str
    size: int
    api: str
    loop: str
    mpps: float
    gbps: float
    ceiling_mpps: float | None


@dataclass
class LatencyRow:
    peer: str
    loop: str
    samples: int
    p50_us: float
    p99_us: float
    p999_us: float


@dataclass
class Report:
    ceilings_mpps: dict[int, float] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    latency: list[LatencyRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _run(loop: str, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a fresh session on ``loop``; one retry if the link drops (a peer restarting, a
    machine under load), so one hiccup does not cost the whole matrix."""
    from .. import run

    try:
        return run(make(), use_uvloop=loop == "uvloop")
    except DisconnectedError:
        return run(make(), use_uvloop=loop == "uvloop")


def _pin(cpu: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        if cpu < (os.cpu_count() or 1):
            os.sched_setaffinity(0, {cpu})


def _session(
    path: str, fn: Callable[[Interface], Awaitable[T]]
) -> Callable[[], Coroutine[Any, Any, T]]:
    async def run() -> T:
        from .. import connect

        async with connect(path, timeout=20, app_name="memif-aio bench") as iface:
            await asyncio.sleep(0.2)  # let the peer finish its side of the link-up
            return await fn(iface)

    return run


@contextlib.contextmanager
def memif_aio_echo_peer() -> Iterator[str]:
    """``memif-aio echo`` as master in another process (on the peer CPU)."""
    path = f"@/tmp/memif-aio-bench-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "memif_aio", "-q", "echo", path, "--role", "master"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: _pin(PEER_CPU),
    )
    try:
        assert proc.stdout is not None
        if "ready" not in proc.stdout.readline():
            raise RuntimeError("memif-aio echo did not start")
        yield path
    finally:
        stop_process(proc)


def ceiling(size: int, seconds: float) -> float:
    """testpmd txonly (server) -> testpmd rxonly (client): packets per second."""
    path = f"@/tmp/memif-aio-ceiling-{uuid.uuid4().hex[:8]}"
    with Testpmd(
        role="server", socket=path, forward_mode="txonly", txpkts=size, cpu=PEER_CPU
    ) as tx:
        tx.wait_listening()
        with Testpmd(role="client", socket=path, forward_mode="rxonly", cpu=OUR_CPU) as rx:
            rx.wait_for(r"Rx-pps:\s+[1-9]", 20)
            return rx.rate("Rx-pps", max(seconds, 2.0))


def run(config: BenchConfig, progress: Progress = lambda line: None) -> Report:
    """Run the matrix; this process is pinned to OUR_CPU meanwhile (its affinity restored)."""
    try:
        affinity = os.sched_getaffinity(0)
    except (OSError, AttributeError):
        affinity = None
    _pin(OUR_CPU)
    try:
        return _run_matrix(config, progress)
    finally:
        if affinity is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, affinity)


def _run_matrix(config: BenchConfig, progress: Progress) -> Report:
    report = Report()
    testpmd = config.use_testpmd and find_testpmd() is not None
    if config.use_testpmd and not testpmd:
        report.notes.append("dpdk-testpmd not installed: no C ceiling, no testpmd peer")

    def record(peer: str, scenario: str, size: int, api: str, loop: str, t: perf.Throughput):
        ceiling_mpps = report.ceilings_mpps.get(size)
        report.rows.append(Row(peer, scenario, size, api, loop, t.mpps, t.gbps, ceiling_mpps))
        ratio = f" ({t.mpps / ceiling_mpps:.0%} of C)" if ceiling_mpps else ""
        progress(
            f"{peer:<9} {scenario:<4} {size:>5} B {api:<6} {loop:<7} {t.mpps:6.2f} Mpps{ratio}"
        )

    if testpmd:
        for size in config.sizes:
            report.ceilings_mpps[size] = ceiling(size, config.duration) / 1e6
            progress(f"C ceiling {size:>5} B: {report.ceilings_mpps[size]:.2f} Mpps")

    scenarios: list[tuple[str, str, Callable]] = [("echo", "io", perf.echo_throughput)]
    if testpmd:
        scenarios += [("rx", "txonly", perf.receive_rate), ("tx", "rxonly", perf.send_rate)]

    with memif_aio_echo_peer() as path:
        for size in config.sizes:
            for api in config.apis:
                for loop in config.loops:
                    fn = _measure(perf.echo_throughput, size, api, config.duration)
                    record("memif_aio", "echo", size, api, loop, _run(loop, _session(path, fn)))
        for loop in config.loops:
            report.latency.append(_latency("memif_aio", loop, path, config.latency_seconds))
            progress(_latency_line(report.latency[-1]))

    if testpmd:
        for scenario, mode, measure in scenarios:
            for size in config.sizes:
                path = f"@/tmp/memif-aio-bench-{uuid.uuid4().hex[:8]}"
                with Testpmd(
                    role="server", socket=path, forward_mode=mode, txpkts=size, cpu=PEER_CPU
                ) as pmd:
                    pmd.wait_listening()
                    for api in config.apis:
                        for loop in config.loops:
                            fn = _measure(measure, size, api, config.duration)
                            result = _run(loop, _session(path, fn))
                            record("testpmd", scenario, size, api, loop, result)
                    if scenario == "echo" and size == config.sizes[0]:
                        for loop in config.loops:
                            row = _latency("testpmd", loop, path, config.latency_seconds)
                            report.latency.append(row)
                            progress(_latency_line(row))
    return report


def _measure(
    fn: Callable[..., Awaitable[perf.Throughput]], size: int, api: str, seconds: float
) -> Callable[[Interface], Coroutine[Any, Any, perf.Throughput]]:
    async def measure(iface: Interface) -> perf.Throughput:
        return await fn(iface, size, api, seconds)

    return measure


def _latency(peer: str, loop: str, path: str, seconds: float) -> LatencyRow:
    async def measure(iface: Interface) -> list[float]:
        await perf.ping_pong(iface, 64, 0.1)  # warm-up
        return await perf.ping_pong(iface, 64, seconds)

    rtts = _run(loop, _session(path, measure))
    return LatencyRow(
        peer,
        loop,
        len(rtts),
        perf.percentile(rtts, 50),
        perf.percentile(rtts, 99),
        perf.percentile(rtts, 99.9),
    )


def _latency_line(row: LatencyRow) -> str:
    return (
        f"{row.peer:<9} rtt  {row.loop:<7} p50 {row.p50_us:.1f} us  p99 {row.p99_us:.1f} us"
        f"  p99.9 {row.p999_us:.1f} us"
    )


def to_markdown(report: Report) -> str:
    lines = []
    if report.ceilings_mpps:
        ceilings = ", ".join(f"{s} B: {c:.2f} Mpps" for s, c in report.ceilings_mpps.items())
        lines += [f"C ceiling (testpmd txonly -> testpmd rxonly, same run): {ceilings}", ""]
    lines += [
        "| peer | scenario | size | API | loop | Mpps | Gbps | vs C |",
        "|---|---|---:|---|---|---:|---:|---:|",
    ]
    for r in report.rows:
        ratio = f"{r.mpps / r.ceiling_mpps:.0%}" if r.ceiling_mpps else "-"
        lines.append(
            f"| {r.peer} | {r.scenario} | {r.size} | {r.api} | {r.loop} | {r.mpps:.2f} "
            f"| {r.gbps:.2f} | {ratio} |"
        )
    if report.latency:
        lines += [
            "",
            "| RTT, 64 B ping-pong | loop | samples | p50 us | p99 us | p99.9 us |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for lat in report.latency:
            lines.append(
                f"| {lat.peer} | {lat.loop} | {lat.samples} | {lat.p50_us:.1f} "
                f"| {lat.p99_us:.1f} | {lat.p999_us:.1f} |"
            )
    lines += ["", *(f"Note: {n}" for n in report.notes)] if report.notes else []
    return "\n".join(lines) + "\n"


def write(report: Report, out_dir: Path) -> list[Path]:
    """results.json, results.md and, when matplotlib is available, results.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "results.json", out_dir / "results.md"]
    written[0].write_text(json.dumps(asdict(report), indent=2))
    written[1].write_text(to_markdown(report))
    try:
        written.append(plot(report, out_dir / "results.png"))
    except ImportError:
        report.notes.append("matplotlib not installed: no plot")
    return written


def plot(report: Report, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r.peer, r.scenario, r.size) for r in report.rows})
    series = sorted({(r.api, r.loop) for r in report.rows})
    fig, ax = plt.subplots(figsize=(max(8, len(groups) * 1.1), 4.5))
    width = 0.8 / max(1, len(series))
    for k, (api, loop) in enumerate(series):
        values = [
            next(
                (
                    r.mpps
                    for r in report.rows
                    if (r.peer, r.scenario, r.size, r.api, r.loop) == (*g, api, loop)
                ),
                0.0,
            )
            for g in groups
        ]
        ax.bar([i + k * width for i in range(len(groups))], values, width, label=f"{api}/{loop}")
    for size, value in report.ceilings_mpps.items():
        ax.axhline(value, linestyle="--", linewidth=0.8, color="grey")
        ax.text(
            len(groups) - 0.5, value, f"C ceiling {size} B", fontsize=7, va="bottom", ha="right"
        )
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{p}\n{s} {z} B" for p, s, z in groups], fontsize=7)
    ax.set_ylabel("Mpps")
    ax.set_title("memif_aio throughput (one CPU per side)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the command --------------------------------------------------------------------------------


def register(command) -> None:
    parser = command(
        "bench",
        "throughput/latency matrix against memif_aio and dpdk-testpmd",
        "memif-aio bench --quick --out bench-results",
    )
    parser.add_argument("--quick", action="store_true", help="a ~30-60 s run (64/1500 B, short)")
    parser.add_argument("--sizes", help="comma-separated packet sizes")
    parser.add_argument("--duration", type=float, help="seconds per measurement")
    parser.add_argument("--no-testpmd", action="store_true", help="only memif_aio peers")
    parser.add_argument("--out", default="bench-results", help="directory for json/md/png")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--latency",
        action="store_true",
        help="instead: RTT per rx mode (interrupt, polling, adaptive) on one CPU and on two, "
        "beside the raw eventfd floor of the same run; idle CPU per mode; sender fairness",
    )
    parser.set_defaults(run_sync=run_command)


def run_command(args, ctx) -> int:
    from .common import Progress, say

    if args.latency:
        return _run_latency(args)
    config = BenchConfig.quick() if args.quick else BenchConfig()
    if args.sizes:
        config.sizes = tuple(int(s) for s in args.sizes.split(","))
    if args.duration:
        config.duration = args.duration
    if args.no_testpmd:
        config.use_testpmd = False
    progress = Progress()
    report = run(config, progress.done if not args.json else lambda line: None)
    written = write(report, Path(args.out))
    if args.json:
        say(json.dumps(asdict(report)))
    else:
        say("")
        say(to_markdown(report))
        say("wrote " + ", ".join(str(p) for p in written))
    return 0


def _run_latency(args) -> int:
    from . import rtt
    from .common import Progress, say

    config = rtt.RttConfig.quick() if args.quick else rtt.RttConfig()
    progress = Progress()
    report = rtt.measure(config, progress.done if not args.json else lambda line: None)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = rtt.format_report(report)
    (out_dir / "latency.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    (out_dir / "latency.md").write_text(table + "\n")
    if args.json:
        say(json.dumps(report.to_json()))
    else:
        say("")
        say(table)
        say(f"wrote {out_dir / 'latency.json'}, {out_dir / 'latency.md'}")
    return 0
