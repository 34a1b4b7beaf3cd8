"""Interop with a real DPDK peer: dpdk-testpmd's net_memif in both roles."""

from __future__ import annotations

import asyncio

import pytest

import memif_aio
from helpers import DpdkTestpmd
from memif_aio import SecretMismatch

pytestmark = pytest.mark.dpdk

LINK_UP = r"memif_connect\(\): Connected"  # the PMD's own word that its link is up


@pytest.fixture(params=["abstract", "filesystem"])
def any_path(request, abstract_path, fs_path):
    return abstract_path if request.param == "abstract" else fs_path


async def test_our_slave_with_testpmd_server(testpmd_bin, any_path):
    pmd = await DpdkTestpmd.start(testpmd_bin, role="server", socket=any_path, secret="pw")
    try:
        await pmd.wait_for(r"Port 0: [0-9A-F:]{17}")
        await asyncio.sleep(0.3)  # the listener is set up right after port configuration
        async with memif_aio.connect(any_path, id=0, secret="pw", timeout=20) as iface:
            details = iface.details()
            assert details.link_up and details.role == "slave"
            assert details.remote_app_name.startswith("DPDK")
            assert [q.ring_size for q in details.rx_queues] == [1024]
            await pmd.wait_for(LINK_UP)
    finally:
        await pmd.stop()


async def test_our_master_with_testpmd_client(testpmd_bin, any_path):
    async with memif_aio.Socket(any_path) as sock:
        iface = await sock.create_interface(id=0, role="master", secret="pw")
        pmd = await DpdkTestpmd.start(testpmd_bin, role="client", socket=any_path, secret="pw")
        try:
            await iface.wait_connected(timeout=20)
            details = iface.details()
            assert details.remote_app_name.startswith("DPDK")
            assert len(details.rx_queues) == len(details.tx_queues) == 1
            await pmd.wait_for(LINK_UP)
        finally:
            await pmd.stop()
        reason = await asyncio.wait_for(iface.wait_disconnected(), 10)
        assert reason


async def test_wrong_secret_refused_by_testpmd_server(testpmd_bin, abstract_path):
    pmd = await DpdkTestpmd.start(testpmd_bin, role="server", socket=abstract_path, secret="right")
    try:
        await pmd.wait_for(r"Port 0: [0-9A-F:]{17}")
        await asyncio.sleep(0.3)
        with pytest.raises(SecretMismatch) as refused:
            async with memif_aio.connect(abstract_path, secret="wrong", timeout=20):
                pass
        assert "secret" in refused.value.reason.lower()
    finally:
        await pmd.stop()
    assert LINK_UP not in pmd.output()


async def test_wrong_secret_refused_by_our_master(testpmd_bin, abstract_path):
    async with memif_aio.Socket(abstract_path) as sock:
        iface = await sock.create_interface(id=0, role="master", secret="right")
        pmd = await DpdkTestpmd.start(
            testpmd_bin, role="client", socket=abstract_path, secret="wrong"
        )
        try:
            for _ in range(200):
                if iface.details().last_disconnect_reason:
                    break
                await asyncio.sleep(0.1)
            assert iface.details().last_disconnect_reason == "secret mismatch"
            assert not iface.connected
        finally:
            await pmd.stop()
        assert LINK_UP not in pmd.output()
