"""Interop with a real DPDK peer: dpdk-testpmd's net_memif in both roles."""

from __future__ import annotations

import asyncio

import pytest
from traffic import Pattern, echo_integrity, wait_until_echoing

import memif_aio
from helpers import DpdkTestpmd
from memif_aio import SecretMismatch

pytestmark = pytest.mark.dpdk

LINK_UP = r"memif_connect\(\): Connected"  # the PMD's own word that its link is up


@pytest.fixture(params=["abstract", "filesystem"])
def any_path(request, memif_path, fs_path):
    return memif_path if request.param == "abstract" else fs_path


async def test_our_slave_with_testpmd_server(testpmd_bin, any_path):
    pmd = await DpdkTestpmd.start(testpmd_bin, role="server", socket=any_path, secret="pw")
    try:
        await pmd.wait_listening()
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


async def test_wrong_secret_refused_by_testpmd_server(testpmd_bin, memif_path):
    pmd = await DpdkTestpmd.start(testpmd_bin, role="server", socket=memif_path, secret="right")
    try:
        await pmd.wait_listening()
        with pytest.raises(SecretMismatch) as refused:
            async with memif_aio.connect(memif_path, secret="wrong", timeout=20):
                pass
        assert "secret" in refused.value.reason.lower()
    finally:
        await pmd.stop()
    assert LINK_UP not in pmd.output()


async def test_wrong_secret_refused_by_our_master(testpmd_bin, memif_path):
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master", secret="right")
        pmd = await DpdkTestpmd.start(testpmd_bin, role="client", socket=memif_path, secret="wrong")
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


async def test_zero_copy_client_needs_allow_unsealed_regions(testpmd_bin, memif_path):
    """DPDK's zero-copy client shares its mbuf memory: a memfd created without sealing. Refused
    by default with a reason; accepted with allow_unsealed_regions, and packets echo intact."""
    async with memif_aio.Socket(memif_path) as sock:
        strict = await sock.create_interface(id=0, role="master")
        trusting = await sock.create_interface(id=1, role="master", allow_unsealed_regions=True)
        pmds = [
            await DpdkTestpmd.start(
                testpmd_bin, role="client", socket=memif_path, id=i, zero_copy=True
            )
            for i in (0, 1)
        ]
        try:
            await trusting.wait_connected(timeout=20)
            await pmds[1].wait_for(LINK_UP)
            for _ in range(200):
                if strict.details().last_disconnect_reason:
                    break
                await asyncio.sleep(0.1)
            assert "cannot be sealed" in strict.details().last_disconnect_reason
            assert not strict.connected
            txq, rxq = trusting.tx_queues[0], trusting.rx_queues[0]
            await wait_until_echoing(txq, rxq)
            got = await asyncio.wait_for(echo_integrity(txq, rxq, 20_000, Pattern(5)), 60)
            assert got == 20_000
        finally:
            for pmd in pmds:
                await pmd.stop()
        assert LINK_UP not in pmds[0].output()
