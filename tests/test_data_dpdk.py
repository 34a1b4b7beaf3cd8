"""Data path against dpdk-testpmd: every packet comes back byte-identical and in order."""

from __future__ import annotations

import asyncio

import pytest
from traffic import Pattern, echo_integrity, wait_until_echoing

import memif_aio
from helpers import DpdkTestpmd

pytestmark = pytest.mark.dpdk

PACKETS = 200_000


async def test_integrity_through_testpmd_io_as_slave(testpmd_bin, abstract_path):
    pmd = await DpdkTestpmd.start(testpmd_bin, role="server", socket=abstract_path)
    try:
        await pmd.wait_for(r"Port 0: [0-9A-F:]{17}")
        await asyncio.sleep(0.3)
        async with memif_aio.connect(abstract_path, buffer_size=2048, timeout=20) as iface:
            await wait_until_echoing(iface.tx_queues[0], iface.rx_queues[0])
            before = iface.stats()
            got = await asyncio.wait_for(
                echo_integrity(iface.tx_queues[0], iface.rx_queues[0], PACKETS, Pattern(1)), 120
            )
            assert got == PACKETS
            stats = iface.stats()
            assert stats["rx_packets"] - before["rx_packets"] == PACKETS
            assert stats["tx_packets"] - before["tx_packets"] == PACKETS
            assert stats["rx_errors"] == stats["tx_errors"] == 0
    finally:
        await pmd.stop()


async def test_integrity_through_testpmd_io_as_master(testpmd_bin, abstract_path):
    async with memif_aio.Socket(abstract_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        pmd = await DpdkTestpmd.start(testpmd_bin, role="client", socket=abstract_path)
        try:
            await iface.wait_connected(timeout=20)
            await wait_until_echoing(iface.tx_queues[0], iface.rx_queues[0])
            got = await asyncio.wait_for(
                echo_integrity(iface.tx_queues[0], iface.rx_queues[0], PACKETS, Pattern(2)), 120
            )
            assert got == PACKETS
        finally:
            await pmd.stop()
