"""Every async hostile test runs under a loop-stall watchdog: a test in which the event loop
went more than STALL_LIMIT without running its callbacks fails, whatever else it asserts."""

from __future__ import annotations

import asyncio
import inspect

import pytest_asyncio
from checks import LoopWatchdog

STALL_LIMIT = 0.050  # seconds


@pytest_asyncio.fixture
async def loop_watchdog():
    """The running loop's watchdog; the test fails if the loop stalled > STALL_LIMIT."""
    dog = LoopWatchdog(asyncio.get_running_loop()).start()
    LoopWatchdog.current = dog
    yield dog
    LoopWatchdog.current = None
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
