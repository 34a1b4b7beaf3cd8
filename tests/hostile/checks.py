"""Assertions shared by the hostile-peer tests: one WARNING line, the interface serving again,
the victim idle, and the loop-stall watchdog."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from rawpeer import PeerMemory, RawChannel, RawListener, drive, serve_as_master, slave_steps

import memif_aio


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("memif_aio")
    ]


async def one_warning(caplog, *parts: str, timeout: float = 2.0) -> str:
    """Exactly one WARNING line from memif_aio, containing every ``part``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not warnings(caplog) and loop.time() < end:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # a second line would show up now
    lines = warnings(caplog)
    assert len(lines) == 1, lines
    for part in parts:
        assert part in lines[0], (part, lines[0])
    caplog.clear()
    return lines[0]


async def honest_slave_connects(path: str, iface: memif_aio.Interface) -> None:
    """A well-behaved raw slave gets through: the master is listening again."""
    await wait_state(iface, memif_aio.LinkState.DISCONNECTED)
    mem = PeerMemory()
    chan = await RawChannel.connect(path)
    try:
        assert await drive(chan, slave_steps(mem)) is None
        await iface.wait_connected(timeout=3)
        mem.send_s2m(b"after the storm")
        assert await asyncio.wait_for(iface.rx_queues[0].recv(), 3) == b"after the storm"
    finally:
        chan.close()
        mem.close()
    await wait_state(iface, memif_aio.LinkState.DISCONNECTED)


async def honest_master_serves(listener: RawListener, iface: memif_aio.Interface) -> None:
    """Our slave comes back to a well-behaved raw master and the link works."""
    chan = await listener.accept(timeout=5)
    try:
        view = await serve_as_master(chan)
        await iface.wait_connected(timeout=3)
        await iface.tx_queues[0].send(b"hello again")
        ring = view.s2m[0]
        for _ in range(300):  # sends may be published at the end of the loop iteration
            if ring.head == 1:
                break
            await asyncio.sleep(0.01)
        assert ring.head == 1
        _, region, length, offset = ring.desc(0)
        assert bytes(view.maps[region][offset : offset + length]) == b"hello again"
        view.close()
    finally:
        chan.close()
    await wait_state(iface, memif_aio.LinkState.CONNECTING, memif_aio.LinkState.DISCONNECTED)


async def wait_state(iface: memif_aio.Interface, *states, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while iface.state not in states:
        assert loop.time() < end, f"{iface} never reached {states}"
        await asyncio.sleep(0.01)


async def idle_cpu(seconds: float = 0.5) -> float:
    """Share of a CPU the event loop's thread used while the test slept: the victim at rest
    (the loop-stall watchdog pauses its beats meanwhile, they would count)."""
    dog = LoopWatchdog.current
    if dog is not None:
        dog.paused.set()
    try:
        cpu, wall = time.thread_time(), time.monotonic()
        await asyncio.sleep(seconds)
        return (time.thread_time() - cpu) / (time.monotonic() - wall)
    finally:
        if dog is not None:
            dog.paused.clear()


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# Syscalls in which a loop thread waits for events: sleeping there is idling, not stalling.
_WAITING_FOR_EVENTS = {7, 23, 232, 270, 271, 281, 441}  # poll select epoll_wait pselect6
#                                                         ppoll epoll_pwait epoll_pwait2


class LoopWatchdog:
    """From its own thread, asks the loop to run a callback every ``period`` and measures how
    long each one waited, counting only time the loop's thread was working (CPU time) or
    blocked in a syscall other than waiting for events. Time it was runnable but not given a
    CPU (a busy shared machine) is not the code's fault and is not counted; the wall-clock
    figure is kept in ``longest_wall`` for the message."""

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float = 0.002) -> None:
        self.loop = loop
        self.period = period
        self.longest = 0.0
        self.longest_wall = 0.0
        self.beats = 0
        self._tid = threading.get_native_id()
        self._cpu_clock = time.pthread_getcpuclockid(threading.get_ident())
        self._sent: float | None = None  # when the outstanding beat was scheduled
        self._cost = 0.0  # stall counted for the outstanding beat
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.paused = threading.Event()  # set: no beats (while a test measures idle CPU)
        self._thread = threading.Thread(target=self._run, name="loop watchdog", daemon=True)

    current: LoopWatchdog | None = None  # the running test's, for checks.idle_cpu()

    def start(self) -> LoopWatchdog:
        self._thread.start()
        return self

    def _blocked(self) -> bool:
        try:
            with open(f"/proc/self/task/{self._tid}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/self/task/{self._tid}/syscall") as syscall:
                number = syscall.read().split()[0]
        except (OSError, IndexError):
            return False
        if state not in ("S", "D") or not number.lstrip("-").isdigit():
            return False
        return int(number) not in _WAITING_FOR_EVENTS

    def _run(self) -> None:
        last_cpu = time.clock_gettime(self._cpu_clock)
        last = time.monotonic()
        while not self._stop.wait(self.period):
            now = time.monotonic()
            cpu = time.clock_gettime(self._cpu_clock)
            with self._lock:
                if self.paused.is_set() or not self.loop.is_running():
                    # Between a test's call and its teardown pytest runs on this thread
                    # (reports...): not the loop's time.
                    self._sent, self._cost = None, 0.0
                    last_cpu, last = cpu, now
                    continue
                if self._sent is not None:
                    self._cost += cpu - last_cpu
                    if self._blocked():
                        self._cost += now - last
                    self.longest = max(self.longest, self._cost)
                    self.longest_wall = max(self.longest_wall, now - self._sent)
                    last_cpu, last = cpu, now
                    continue  # still waiting for the last one
                self._sent, self._cost = now, 0.0
            last_cpu, last = cpu, now
            try:
                self.loop.call_soon_threadsafe(self._beat)
            except RuntimeError:  # the loop closed under a test that closes it on purpose
                return

    def _beat(self) -> None:
        with self._lock:
            self._sent = None
            self.beats += 1

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(5)
        return self.longest
