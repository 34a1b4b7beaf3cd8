"""Every async hostile test runs under a loop-stall watchdog: a test in which the event loop
went more than STALL_LIMIT without running its callbacks fails, whatever else it asserts."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time

import pytest_asyncio

STALL_LIMIT = 0.050  # seconds


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
        self._thread = threading.Thread(target=self._run, name="loop watchdog", daemon=True)

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
                if not self.loop.is_running():
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


@pytest_asyncio.fixture
async def loop_watchdog():
    """The running loop's watchdog; the test fails if the loop stalled > STALL_LIMIT."""
    dog = LoopWatchdog(asyncio.get_running_loop()).start()
    yield dog
    longest = dog.stop()
    assert longest <= STALL_LIMIT, (
        f"event loop stalled for {longest * 1000:.1f} ms "
        f"(a callback waited {dog.longest_wall * 1000:.1f} ms)"
    )


def pytest_collection_modifyitems(items):
    for item in items:
        function = getattr(item, "function", None)
        if function is not None and inspect.iscoroutinefunction(function):
            if "tests/hostile/" in str(item.fspath) and "loop_watchdog" not in item.fixturenames:
                item.fixturenames.append("loop_watchdog")
