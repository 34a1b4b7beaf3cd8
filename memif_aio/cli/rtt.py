"""Latency of the receive modes, what an idle link costs in each, and how fair a sender is.

Three measurements between memif_aio processes (public API only), 64-byte packets:

- **RTT**: ping-pong with one packet in flight, both sides in the same rx mode (interrupt,
  polling, adaptive), both processes pinned to one CPU ("same") or to two ("split"); p50,
  p99 and p99.9 next to the raw eventfd floor measured in the same run and placement: two
  processes ping-ponging with ``write()``/``read()`` on eventfds, blocked in ``epoll_wait``
  (no memif, no event loop). An interrupt-mode round trip cannot beat that floor; the ratio
  says what memif_aio adds to it. Beside it the event-loop floor: the same ping-pong with
  each side woken through its event loop (a reader callback completing a Future a task
  awaits), the least any asyncio program pays. Both floors are measured again right before
  each row, so a disturbance of the machine hits a row and its floors alike.
- **Idle CPU**: a connected link with a consumer waiting on each side and no traffic, for a few
  seconds; the CPU time of each process as a percentage of one CPU.
- **Fairness**: a task doing ``await txq.send()`` in a loop toward a peer that drains (on the
  other CPU, in interrupt mode: it takes 256-packet bursts and keeps up, and the ring has
  16384 slots, so the sender does not wait for room, which would give the loop turns anyway)
  while a 100 µs repeating timer on the same loop records its longest gap; the send throughput
  with the library's yields (a turn every ``TURN_INTERVAL_NS`` of sending), with a turn every
  256 sends, and with none (``txq._yield_every = 0``); the drop is against "none".

The child processes are this module run as ``python -m memif_aio.cli.rtt --serve ROLE ...``;
each prints one JSON line (its results) on stdout. :func:`measure` runs the whole set and
returns a :class:`LatencyReport`; :func:`format_report` renders it as Markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .. import _ring

MODES = ("interrupt", "polling", "adaptive")
PLACEMENTS = ("same", "split")
PAYLOAD = 64
CHILD_TIMEOUT = 120.0  # seconds: a child that takes longer is killed
Progress = Callable[[str], None]

_ONE = (1).to_bytes(8, "little")
_IDLE_START, _IDLE_END = b"I", b"E"  # 1-byte control packets: never echoed


# ---------------------------------------------------------------------------------------------
# the floor: eventfd ping-pong between two processes (also benchmarks/bench_wakeup.py's engine)


class _RawWaker:
    """``write()``/``read()`` on level-triggered eventfds: the floor."""

    def __init__(self, mine: int, theirs: int) -> None:
        self.mine, self.theirs = mine, theirs
        self.ep = select.epoll()
        self.ep.register(mine, select.EPOLLIN)

    def signal(self) -> None:
        os.write(self.theirs, _ONE)

    def wait(self) -> None:
        self.ep.poll()
        os.read(self.mine, 8)


class _SignallerWaker:
    """What memif_aio does, minus the event loop: :class:`~memif_aio._ring.Signaller` writes,
    an edge-triggered private epoll set, and no read of the peer's eventfd."""

    def __init__(self, mine: int, theirs: int, backend: Literal["io_uring", "thread"]) -> None:
        self.signaller = _ring.Signaller(backend=backend)
        self.slot = self.signaller.add(theirs)
        self.ep = select.epoll()
        self.ep.register(mine, select.EPOLLIN | select.EPOLLET)

    def signal(self) -> None:
        self.signaller.signal(self.slot)

    def wait(self) -> None:
        self.ep.poll()


def _waker(kind: str, mine: int, theirs: int) -> _RawWaker | _SignallerWaker:
    if kind == "raw":
        return _RawWaker(mine, theirs)
    if kind not in ("io_uring", "thread"):
        raise ValueError(f"unknown kind {kind!r}")
    return _SignallerWaker(mine, theirs, "io_uring" if kind == "io_uring" else "thread")


def eventfd_pingpong(
    kind: str, count: int, cpus: tuple[int, int], warmup: int = 100
) -> list[float]:
    """Round-trip times (µs) of ``count`` eventfd ping-pongs between this process (pinned to
    ``cpus[0]`` meanwhile) and a forked child (on ``cpus[1]``).

    ``kind``: ``"raw"`` (the floor), ``"io_uring"`` or ``"thread"`` (a
    :class:`~memif_aio._ring.Signaller` backend with an edge-triggered epoll set).
    """
    a2b = os.eventfd(0, os.EFD_NONBLOCK)
    b2a = os.eventfd(0, os.EFD_NONBLOCK)
    ready_r, ready_w = os.pipe()
    before = os.sched_getaffinity(0)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.sched_setaffinity(0, {cpus[1]})
            side = _waker(kind, a2b, b2a)
            os.write(ready_w, b"x")
            for _ in range(count + warmup):
                side.wait()
                side.signal()
            time.sleep(0.2)  # the thread backend writes after signal() returns: let it
        finally:
            os._exit(0)
    rtts: list[float] = []
    try:
        os.sched_setaffinity(0, {cpus[0]})
        side = _waker(kind, b2a, a2b)
        os.read(ready_r, 1)
        for i in range(count + warmup):
            start = time.perf_counter_ns()
            side.signal()
            side.wait()
            if i >= warmup:
                rtts.append((time.perf_counter_ns() - start) / 1000)
    finally:
        _reap(pid, done=len(rtts) == count)
        os.sched_setaffinity(0, before)
        for fd in (a2b, b2a, ready_r, ready_w):
            os.close(fd)
    return rtts


def _reap(pid: int, *, done: bool) -> None:
    """Wait for a forked ping-pong child; kill it first if we stopped before the end (it
    would wait for our next signal forever)."""
    if not done:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


class _LoopWaker:
    """The cheapest wake-up an asyncio program gets: a reader callback on the loop reads its
    eventfd and completes a Future a task awaits (no memif, no rings)."""

    def __init__(self, mine: int, theirs: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.mine, self.theirs = mine, theirs
        self.signalled = False
        self.waiter: asyncio.Future[None] | None = None
        self.loop.add_reader(mine, self._ready)

    def _ready(self) -> None:
        os.read(self.mine, 8)
        self.signalled = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def signal(self) -> None:
        os.write(self.theirs, _ONE)

    async def wait(self) -> None:
        while not self.signalled:
            self.waiter = self.loop.create_future()
            await self.waiter
        self.signalled = False

    def close(self) -> None:
        self.loop.remove_reader(self.mine)


def loop_pingpong(
    count: int, cpus: tuple[int, int], warmup: int = 100, use_uvloop: bool = True
) -> list[float]:
    """Like :func:`eventfd_pingpong`, but each side waits in an event loop (a reader callback
    and a task, :class:`_LoopWaker`): what any asyncio program pays per wake-up."""
    from .. import run

    a2b = os.eventfd(0, os.EFD_NONBLOCK)
    b2a = os.eventfd(0, os.EFD_NONBLOCK)
    ready_r, ready_w = os.pipe()
    before = os.sched_getaffinity(0)

    async def echo() -> None:
        side = _LoopWaker(a2b, b2a)
        os.write(ready_w, b"x")
        for _ in range(count + warmup):
            await side.wait()
            side.signal()
        side.close()

    async def ping() -> list[float]:
        side = _LoopWaker(b2a, a2b)
        rtts: list[float] = []
        for i in range(count + warmup):
            start = time.perf_counter_ns()
            side.signal()
            await side.wait()
            if i >= warmup:
                rtts.append((time.perf_counter_ns() - start) / 1000)
        side.close()
        return rtts

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.sched_setaffinity(0, {cpus[1]})
            run(echo(), use_uvloop=use_uvloop)
        finally:
            os._exit(0)
    rtts: list[float] = []
    try:
        os.sched_setaffinity(0, {cpus[0]})
        os.read(ready_r, 1)
        rtts = run(ping(), use_uvloop=use_uvloop)
        return rtts
    finally:
        _reap(pid, done=len(rtts) == count)
        os.sched_setaffinity(0, before)
        for fd in (a2b, b2a, ready_r, ready_w):
            os.close(fd)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in 0..100; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# ---------------------------------------------------------------------------------------------
# the children (each one process, pinned, on uvloop unless told otherwise)


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _configure(iface: Any, args: argparse.Namespace) -> None:
    for rxq in iface.rx_queues:
        if args.spin is not None:
            rxq.spin = args.spin
        if args.hold_gil:
            rxq.spin_releases_gil = False


def _emit(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def _ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


@contextlib.asynccontextmanager
async def _serving_master(args: argparse.Namespace) -> AsyncIterator[Any]:
    """The master side of a measurement: listening (said on stdout), connected, configured."""
    from .. import Socket

    async with Socket(args.path) as sock:
        iface = await sock.create_interface(id=0, role="master", rx_mode=args.mode)
        _ready()
        await iface.wait_connected(timeout=30)
        _configure(iface, args)
        yield iface


async def _serve_echo(args: argparse.Namespace) -> None:
    """Master: echo every 64-byte packet; time the idle window the pinger marks out."""
    from .. import DisconnectedError

    async with _serving_master(args) as iface:
        rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
        result: dict[str, Any] = {"echoed": 0}
        echoed, first_cpu, last_cpu = 0, 0.0, 0.0
        idle: tuple[float, float] | None = None
        try:
            async for packet in rxq:
                if len(packet) != 1:
                    await txq.send(packet)
                    echoed += 1
                    if echoed == 1:
                        first_cpu = time.process_time()
                    elif echoed % 64 == 0:
                        last_cpu = time.process_time()
                elif packet == _IDLE_START:
                    idle = (time.process_time(), time.perf_counter())
                elif packet == _IDLE_END and idle is not None:
                    cpu, wall = time.process_time() - idle[0], time.perf_counter() - idle[1]
                    result.update(idle_cpu=cpu, idle_wall=wall)
                    idle = None
        except DisconnectedError:
            pass
        result.update(echoed=echoed, cpu_per_echo=(last_cpu - first_cpu) / max(1, echoed - 64))
        _emit(result)


async def _serve_ping(args: argparse.Namespace) -> None:
    """Slave: ``count`` round trips (at most ``seconds``), then an idle window."""
    from .. import connect

    async with connect(args.path, timeout=30, rx_mode=args.mode) as iface:
        _configure(iface, args)
        rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
        stream = aiter(rxq)
        payload = bytes(PAYLOAD)
        rtts: list[float] = []
        for _ in range(args.warmup):
            await txq.send(payload)
            await anext(stream)
        stop = time.perf_counter() + args.seconds
        cpu = time.process_time()
        for _ in range(args.count):
            start = time.perf_counter_ns()
            await txq.send(payload)
            await anext(stream)
            rtts.append((time.perf_counter_ns() - start) / 1000)
            if time.perf_counter() > stop:
                break
        cpu_per_rtt = (time.process_time() - cpu) / len(rtts)
        result: dict[str, Any] = {"rtts": rtts, "cpu_per_rtt": cpu_per_rtt}
        if args.idle > 0:
            await txq.send(_IDLE_START)
            cpu, wall = time.process_time(), time.perf_counter()
            with contextlib.suppress(asyncio.TimeoutError):
                # our consumer waits in its mode meanwhile; nothing comes
                await asyncio.wait_for(anext(stream), args.idle)
            result.update(idle_cpu=time.process_time() - cpu, idle_wall=time.perf_counter() - wall)
            await txq.send(_IDLE_END)
            txq.flush()
            await asyncio.sleep(0.05)  # the echo side reports before we hang up
        _emit(result)


async def _serve_drain(args: argparse.Namespace) -> None:
    """Master: take every burst as it comes (polling: the sender never waits for us)."""
    from .. import DisconnectedError

    async with _serving_master(args) as iface:
        packets = 0
        try:
            async for burst in iface.rx_queues[0].bursts():
                packets += len(burst)
        except DisconnectedError:
            pass
        _emit({"packets": packets})


def _preemptions() -> int:
    """Times this thread was preempted (involuntary context switches) so far."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw


class GapWatch:
    """A timer that re-arms itself every ``interval`` seconds on the running loop and keeps
    the longest gap between two of its runs: how long other tasks on that loop had to wait.

    With ``count_preemptions`` it also counts how often the thread was preempted between
    ``start()``/``reset()`` and ``stop()`` (two getrusage calls, none per run): on a shared
    machine another process can take the CPU for a scheduler tick (4 ms here), which no event
    loop can prevent, so a gap from a round without preemption says more."""

    def __init__(self, interval: float = 100e-6, *, count_preemptions: bool = False) -> None:
        self.interval = interval
        self.loop = asyncio.get_running_loop()
        self.count_preemptions = count_preemptions
        self.longest = 0.0
        self.ticks = 0
        self.preemptions = 0
        self.last = time.perf_counter()
        self.handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.reset()
        self.handle = self.loop.call_later(self.interval, self._tick)

    def reset(self) -> None:
        self.longest = 0.0
        self.ticks = 0
        self.last = time.perf_counter()
        if self.count_preemptions:
            self.preemptions = -_preemptions()

    def _tick(self) -> None:
        self._gap_ends()
        self.ticks += 1
        self.handle = self.loop.call_later(self.interval, self._tick)

    def _gap_ends(self) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self.last)
        self.last = now

    def stop(self) -> float:
        """Stop; the longest gap in seconds (the one still open counts too)."""
        self._gap_ends()
        if self.handle is not None:
            self.handle.cancel()
        if self.count_preemptions:
            self.preemptions += _preemptions()
        return self.longest


def _fairness_setting(setting: str, defaults: tuple[int, int]) -> tuple[int, int]:
    """``(_yield_every, _turn_ns)`` of a setting: "library" (the defaults), "every-N" (a turn
    every N sends), "turn-N" (a turn every N µs of sending), "never"."""
    if setting == "library":
        return defaults
    if setting == "never":
        return 0, 0
    if setting.startswith("every-"):
        return int(setting.removeprefix("every-")), 0
    if setting.startswith("turn-"):  # a turn every N µs of sending
        return defaults[0], int(setting.removeprefix("turn-")) * 1000
    raise ValueError(f"fairness setting {setting!r}: library, every-N, turn-N or never")


async def _serve_send(args: argparse.Namespace) -> None:
    """Slave: ``await txq.send()`` ``count`` times per round, a 100 µs timer watching the loop;
    rounds alternate the yield settings so both see the same machine."""
    from .. import connect

    async with connect(
        args.path, timeout=30, ring_size=args.ring_size, buffer_size=args.buffer_size
    ) as iface:
        txq = iface.tx_queues[0]
        payload = bytes(PAYLOAD)
        settings = args.fairness.split(",")
        defaults = txq._yield_every, txq._turn_ns
        rounds: list[dict[str, Any]] = []
        for _ in range(args.rounds):
            for setting in settings:
                txq._yield_every, txq._turn_ns = _fairness_setting(setting, defaults)
                await asyncio.sleep(0.02)  # the peer has drained the previous round
                watch = GapWatch(100e-6, count_preemptions=True)
                watch.start()
                await asyncio.sleep(0.002)
                watch.reset()
                start = time.perf_counter()
                for _ in range(args.count):
                    await txq.send(payload)
                seconds = time.perf_counter() - start
                longest = watch.stop()
                txq.flush()
                rounds.append(
                    {"setting": setting, "seconds": seconds, "longest_gap": longest,
                     "preemptions": watch.preemptions, "ticks": watch.ticks}
                )  # fmt: skip
        txq._yield_every, txq._turn_ns = defaults
        await asyncio.sleep(0.05)
        _emit({"rounds": rounds})


_SERVERS = {"echo": _serve_echo, "ping": _serve_ping, "drain": _serve_drain, "send": _serve_send}


def child_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a child process (``--serve ROLE``)."""
    parser = argparse.ArgumentParser(prog="python -m memif_aio.cli.rtt")
    parser.add_argument("--serve", choices=sorted(_SERVERS), required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--mode", default="interrupt")
    parser.add_argument("--cpu", type=int)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--spin", type=float)
    parser.add_argument("--hold-gil", action="store_true")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--idle", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fairness", default="library,never")
    parser.add_argument("--ring-size", type=int, default=1024)
    parser.add_argument("--buffer-size", type=int, default=2048)
    args = parser.parse_args(argv)
    _pin(args.cpu)
    from .. import run

    run(_SERVERS[args.serve](args), use_uvloop=args.loop == "uvloop")
    return 0


# ---------------------------------------------------------------------------------------------
# the coordinator


@dataclass
class RttConfig:
    count: int = 20_000
    warmup: int = 500
    seconds: float = 8.0  # per mode and placement, at most (a polling pair on one CPU is slow)
    floor_count: int = 20_000
    modes: tuple[str, ...] = MODES
    placements: tuple[str, ...] = PLACEMENTS
    gil_variants: bool = True  # polling and adaptive also with the GIL held while spinning
    idle_seconds: float = 5.0
    fair_packets: int = 100_000
    fair_rounds: int = 9
    fair_settings: tuple[str, ...] = ("library", "every-256", "never")
    fair_peer_mode: str = "interrupt"
    # A deep ring, so that the drainer's wake-up delays (an idle vCPU wakes slowly here) do not
    # make the sender wait for room, which would hide what the yields cost.
    fair_ring_size: int = 16384
    loop: str = "uvloop"
    spin: float | None = None

    @classmethod
    def quick(cls) -> RttConfig:
        return cls(
            count=2000,
            warmup=200,
            seconds=2.0,
            floor_count=2000,
            idle_seconds=1.0,
            fair_packets=20_000,
            fair_rounds=1,
        )


@dataclass
class RttRow:
    placement: str
    mode: str
    gil: str  # "released" or "held" while spinning (interrupt: n/a)
    samples: int
    p50_us: float
    p99_us: float
    p999_us: float
    floor_p50_us: float
    floor_p99_us: float
    floor_p999_us: float
    loop_floor_p50_us: float  # the same ping-pong with each side waiting in an event loop

    @property
    def ratio(self) -> float:
        return self.p50_us / self.floor_p50_us if self.floor_p50_us else math.nan


@dataclass
class IdleRow:
    mode: str
    seconds: float
    master_cpu_percent: float
    slave_cpu_percent: float


@dataclass
class FairRow:
    setting: str  # "library" (TURN_INTERVAL_NS), "every-N" sends, "never" (while room)
    packets: int
    rounds: int
    mpps: float  # median over rounds
    best_mpps: float
    longest_gap_us: float  # worst over rounds
    longest_gap_clean_us: float  # worst over the rounds in which the sender was not preempted
    clean_rounds: int
    drop_percent: float  # median throughput lost against "never"
    best_drop_percent: float  # best round against best round


@dataclass
class LatencyReport:
    cpus: tuple[int, int]
    loop: str
    rtt: list[RttRow] = field(default_factory=list)
    idle: list[IdleRow] = field(default_factory=list)
    fairness: list[FairRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for row, raw in zip(self.rtt, data["rtt"], strict=True):
            raw["ratio"] = row.ratio
        return data


def pick_cpus() -> tuple[int, int]:
    """Two CPUs this process may use (the same one twice on a single-CPU machine)."""
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[0], allowed[1]) if len(allowed) > 1 else (allowed[0], allowed[0])


def _child_command(role: str, path: str, cpu: int, config: RttConfig, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "memif_aio.cli.rtt", "--serve", role, "--path", path]
    cmd += ["--cpu", str(cpu), "--loop", config.loop]
    if config.spin is not None:
        cmd += ["--spin", repr(config.spin)]
    return cmd + list(extra)


@contextlib.contextmanager
def _children(*commands: list[str]) -> Iterator[list[subprocess.Popen[str]]]:
    """Start ``commands`` in order (waiting for "ready" from each but the last); killed on
    the way out, whatever happened."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for i, cmd in enumerate(commands):
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            if i < len(commands) - 1:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if line.strip() != "ready":
                    raise RuntimeError(f"{cmd[4]} child did not start: {line!r}")
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def _result(proc: subprocess.Popen[str], timeout: float = CHILD_TIMEOUT) -> dict[str, Any]:
    """The child's last JSON line; RuntimeError if it failed."""
    out, _ = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {proc.args!r} exited {proc.returncode}: {out[-500:]!r}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _ping_pong(
    config: RttConfig, mode: str, cpus: tuple[int, int], hold_gil: bool, idle: float
) -> tuple[list[float], dict[str, Any], dict[str, Any]]:
    path = f"@/tmp/memif-aio-rtt-{uuid.uuid4().hex[:12]}"
    gil = ["--hold-gil"] if hold_gil else []
    echo = _child_command("echo", path, cpus[0], config, "--mode", mode, *gil)
    ping = _child_command(
        "ping", path, cpus[1], config, "--mode", mode, *gil,
        "--count", str(config.count), "--warmup", str(config.warmup),
        "--seconds", str(config.seconds), "--idle", str(idle),
    )  # fmt: skip
    with _children(echo, ping) as (echo_proc, ping_proc):
        pinger = _result(ping_proc)
        echoer = _result(echo_proc, timeout=30) if idle > 0 else {}
    return pinger["rtts"], pinger, echoer


def measure_rtt(config: RttConfig, cpus: tuple[int, int], progress: Progress) -> list[RttRow]:
    """Each mode right after the two floors, measured again for it (same placement, same
    minute): a disturbance of this shared machine hits a row and its floors alike."""
    rows: list[RttRow] = []
    for placement in config.placements:
        pair = (cpus[0], cpus[0]) if placement == "same" else cpus
        variants = [(mode, False) for mode in config.modes]
        if config.gil_variants:
            variants += [(mode, True) for mode in config.modes if mode != "interrupt"]
        for mode, hold_gil in variants:
            gil = "n/a" if mode == "interrupt" else "held" if hold_gil else "released"
            progress(f"{placement}: {mode} (GIL {gil} while spinning), and the floors")
            floor = eventfd_pingpong("raw", config.floor_count, pair)
            loop_floor = loop_pingpong(config.floor_count, pair, use_uvloop=config.loop == "uvloop")
            rtts, _, _ = _ping_pong(config, mode, pair, hold_gil, idle=0)
            rows.append(
                RttRow(
                    placement,
                    mode,
                    gil,
                    len(rtts),
                    percentile(rtts, 50),
                    percentile(rtts, 99),
                    percentile(rtts, 99.9),
                    percentile(floor, 50),
                    percentile(floor, 99),
                    percentile(floor, 99.9),
                    percentile(loop_floor, 50),
                )  # fmt: skip
            )
    return rows


def measure_idle(config: RttConfig, cpus: tuple[int, int], progress: Progress) -> list[IdleRow]:
    rows: list[IdleRow] = []
    for mode in config.modes:
        progress(f"idle link, {mode}: {config.idle_seconds:.0f} s")
        small = RttConfig(**{**asdict(config), "count": 200, "warmup": 0})
        _, pinger, echoer = _ping_pong(small, mode, cpus, False, idle=config.idle_seconds)
        rows.append(
            IdleRow(
                mode,
                pinger["idle_wall"],
                100 * echoer["idle_cpu"] / echoer["idle_wall"],
                100 * pinger["idle_cpu"] / pinger["idle_wall"],
            )
        )
    return rows


def measure_fairness(config: RttConfig, cpus: tuple[int, int], progress: Progress) -> list[FairRow]:
    settings = config.fair_settings
    progress(f"fairness: {config.fair_packets} sends x {len(settings)} settings")
    path = f"@/tmp/memif-aio-rtt-{uuid.uuid4().hex[:12]}"
    drain = _child_command("drain", path, cpus[0], config, "--mode", config.fair_peer_mode)
    send = _child_command(
        "send", path, cpus[1], config, "--count", str(config.fair_packets),
        "--rounds", str(config.fair_rounds), "--fairness", ",".join(settings),
        "--ring-size", str(config.fair_ring_size), "--buffer-size", "128",
    )  # fmt: skip
    with _children(drain, send) as (drain_proc, send_proc):
        rounds = _result(send_proc)["rounds"]
        _result(drain_proc, timeout=30)
    rows: list[FairRow] = []
    for setting in settings:
        mine = [r for r in rounds if r["setting"] == setting]
        rates = [config.fair_packets / r["seconds"] / 1e6 for r in mine]
        clean = [r["longest_gap"] for r in mine if r["preemptions"] == 0]
        rows.append(
            FairRow(
                setting,
                config.fair_packets,
                len(mine),
                percentile(rates, 50),
                max(rates),
                max(r["longest_gap"] for r in mine) * 1e6,
                max(clean) * 1e6 if clean else math.nan,
                len(clean),
                math.nan,
                math.nan,
            )  # fmt: skip
        )
    never = next((r for r in rows if r.setting == "never"), None)
    for row in rows:
        if never is not None:
            row.drop_percent = 100 * (1 - row.mpps / never.mpps)
            row.best_drop_percent = 100 * (1 - row.best_mpps / never.best_mpps)
    return rows


def measure(config: RttConfig, progress: Progress | None = None) -> LatencyReport:
    """Every measurement of this module, in one run."""
    say = progress or (lambda _text: None)
    cpus = pick_cpus()
    report = LatencyReport(cpus=cpus, loop=config.loop)
    if cpus[0] == cpus[1]:
        report.notes.append("one CPU only: 'split' runs on the same CPU")
    report.rtt = measure_rtt(config, cpus, say)
    if config.idle_seconds > 0:
        report.idle = measure_idle(config, cpus, say)
    if config.fair_packets > 0:
        report.fairness = measure_fairness(config, cpus, say)
    return report


def format_report(report: LatencyReport) -> str:
    """Markdown tables: RTT per mode and placement beside the floor, idle CPU, fairness."""
    out = [
        f"64-byte ping-pong, one packet in flight, {report.loop}; "
        f"same = both on CPU {report.cpus[0]}, split = CPUs {report.cpus[0]} and {report.cpus[1]}",
        "",
        "| CPUs | mode | GIL while spinning | samples | p50 µs | p99 µs | p99.9 µs "
        "| raw floor p50 | p99 | p99.9 | p50 / raw floor | loop floor p50 | p50 / loop floor |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.rtt:
        out.append(
            f"| {r.placement} | {r.mode} | {r.gil} | {r.samples} | {r.p50_us:.1f} "
            f"| {r.p99_us:.1f} | {r.p999_us:.1f} | {r.floor_p50_us:.1f} | {r.floor_p99_us:.1f} "
            f"| {r.floor_p999_us:.1f} | {r.ratio:.2f}x | {r.loop_floor_p50_us:.1f} "
            f"| {r.p50_us / r.loop_floor_p50_us:.2f}x |"
        )
    if report.idle:
        out += ["", "| idle link, mode | seconds | master CPU % | slave CPU % |"]
        out += ["|---|---:|---:|---:|"]
        for i in report.idle:
            out.append(
                f"| {i.mode} | {i.seconds:.1f} | {i.master_cpu_percent:.2f} "
                f"| {i.slave_cpu_percent:.2f} |"
            )
    if report.fairness:
        out += [
            "",
            "| sender yields | rounds | send Mpps (median / best) | drop (median / best) "
            "| longest 100 µs-timer gap µs | in rounds not preempted |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        labels = {"library": "every 200 µs of sending (library)", "never": "never"}
        for f in report.fairness:
            label = labels.get(f.setting, f.setting.replace("every-", "every ") + " sends")
            if f.setting.startswith("turn-"):
                label = f"every {f.setting.removeprefix('turn-')} µs of sending"
            clean = f"{f.longest_gap_clean_us:.0f} ({f.clean_rounds})" if f.clean_rounds else "-"
            out.append(
                f"| {label} | {f.rounds} | {f.mpps:.2f} / {f.best_mpps:.2f} "
                f"| {f.drop_percent:.1f} % / {f.best_drop_percent:.1f} % "
                f"| {f.longest_gap_us:.0f} | {clean} |"
            )
    out += [f"note: {n}" for n in report.notes]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(child_main())
