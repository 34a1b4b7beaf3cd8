"""Test harness: every async test runs on the default loop and on uvloop, and fails if the
loop's exception handler was called (an fd callback raised, a task died unobserved...)."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest
import uvloop

_loop_errors: list[dict] = []


def _recording(new_loop):
    def factory() -> asyncio.AbstractEventLoop:
        loop = new_loop()
        loop.set_exception_handler(lambda _loop, context: _loop_errors.append(context))
        return loop

    return factory


def pytest_configure(config):
    # Under CI the interop peer must run: the plugin's testpmd_peer fails instead of skipping.
    if os.environ.get("CI") == "true":
        config.option.memif_require_testpmd = True


def pytest_asyncio_loop_factories(config, item):
    return {
        "asyncio": _recording(asyncio.new_event_loop),
        "uvloop": _recording(uvloop.new_event_loop),
    }


@pytest.fixture(autouse=True)
def _fail_on_loop_errors():
    _loop_errors.clear()
    yield
    errors, _loop_errors[:] = list(_loop_errors), []
    assert not errors, f"event loop exception handler called: {errors}"


@pytest.fixture
def fs_path(tmp_path) -> str:
    return str(tmp_path / "memif.sock")


@pytest.fixture
def testpmd_bin() -> str:
    """Path of dpdk-testpmd; a missing peer is a failure under CI, a skip elsewhere."""
    path = shutil.which("dpdk-testpmd")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dpdk-testpmd is missing under CI (make test installs dpdk-dev)")
        pytest.skip("dpdk-testpmd not installed (run `make test`, which installs dpdk-dev)")
    return path


@pytest.fixture
def tshark_bin() -> str:
    """Path of tshark (Debian package tshark, which brings editcap, text2pcap, capinfos and
    dumpcap with it); missing is a failure under CI, a skip elsewhere."""
    path = shutil.which("tshark")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("tshark is missing under CI (make test installs it)")
        pytest.skip("tshark not installed (run `make test`, which installs it)")
    return path
