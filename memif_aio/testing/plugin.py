"""pytest fixtures for testing your own memif code (a plugin, like pyroute2's).

Installed with the package and loaded automatically (entry point ``pytest11``); with pytest
and pytest-asyncio::

    async def test_my_forwarder(memif_pair):
        master, slave = memif_pair
        await slave.tx_queues[0].send(b"hello")
        assert await master.rx_queues[0].recv() == b"hello"

    def test_against_dpdk(testpmd_peer):
        pmd = testpmd_peer(forward_mode="io")   # skipped when dpdk-testpmd is not installed
        ...connect a slave to pmd.socket...

Fixtures: ``memif_path`` (a fresh abstract socket name), ``memif_pair`` (a connected master
and slave in this process; options via ``@pytest.mark.memif(ring_size=..., ...)``),
``testpmd_peer`` (a factory starting ``dpdk-testpmd`` as a memif server or client; the test
is skipped when dpdk-testpmd is missing, or fails with ``--memif-require-testpmd`` or the ini
option ``memif_require_testpmd = true``, as a CI run should).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

try:
    import pytest_asyncio
except ImportError:  # the plugin loads in every pytest run: never break one without it
    pytest_asyncio = None  # type: ignore[assignment]

from ..interface import Interface
from ..socket import open_interface
from .testpmd import Testpmd, find_testpmd


def pytest_addoption(parser: pytest.Parser) -> None:
    help_text = "fail, not skip, tests using testpmd_peer when dpdk-testpmd is missing"
    parser.addoption("--memif-require-testpmd", action="store_true", help=help_text)
    parser.addini("memif_require_testpmd", help_text, type="bool", default=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "memif(**options): Interface options for the memif_pair fixture"
    )


@pytest.fixture
def memif_path() -> str:
    """A fresh abstract socket name (no file, no cleanup needed)."""
    return f"@/tmp/memif-aio-pytest-{uuid.uuid4().hex[:12]}"


async def memif_pair(
    request: pytest.FixtureRequest, memif_path: str
) -> AsyncIterator[tuple[Interface, Interface]]:
    """``(master, slave)``, connected over ``memif_path``; both closed afterwards."""
    marker = request.node.get_closest_marker("memif")
    options = dict(marker.kwargs) if marker else {}
    # The master listens before the slave first tries (each runs until its first wait).
    master_side = open_interface(memif_path, role="master", timeout=10, **options)
    slave_side = open_interface(memif_path, role="slave", timeout=10, fail_fast=True, **options)
    async with contextlib.AsyncExitStack() as stack:
        opening = [
            asyncio.ensure_future(stack.enter_async_context(side))
            for side in (master_side, slave_side)
        ]
        try:
            master, slave = await asyncio.gather(*opening)
        except BaseException:
            for task in opening:
                task.cancel()
            await asyncio.gather(*opening, return_exceptions=True)
            raise
        yield master, slave


if pytest_asyncio is not None:
    memif_pair = pytest_asyncio.fixture(memif_pair)


@pytest.fixture
def testpmd_peer(
    request: pytest.FixtureRequest, memif_path: str
) -> Iterator[Callable[..., Testpmd]]:
    """A factory: ``testpmd_peer(role="server", forward_mode="io", **kw)`` starts
    ``dpdk-testpmd`` on ``memif_path`` (``.socket`` on the returned object), ready to accept
    and forwarding (server) or started (client). Blocks while it waits: call it through
    ``asyncio.to_thread`` in an async test. Skips the test when dpdk-testpmd is not installed,
    unless it is required (``--memif-require-testpmd``)."""
    if find_testpmd() is None:
        missing = "dpdk-testpmd is not installed (Debian package dpdk-dev)"
        config = request.config
        if config.getoption("memif_require_testpmd") or config.getini("memif_require_testpmd"):
            pytest.fail(missing + ", and this run requires it")
        pytest.skip(missing)
    started: list[Testpmd] = []

    def start(role: str = "server", forward_mode: str = "io", **options) -> Testpmd:
        options.setdefault("socket", memif_path)
        pmd = Testpmd(role=role, forward_mode=forward_mode, **options)
        started.append(pmd)
        if role == "server":
            pmd.wait_listening()
        return pmd

    yield start
    for pmd in started:
        pmd.stop()
