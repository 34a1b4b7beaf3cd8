"""Data path against dpdk-testpmd: every packet comes back byte-identical and in order."""

from __future__ import annotations

import asyncio

import pytest
from traffic import Pattern, echo_integrity, wait_until_echoing

import memif_aio
from helpers import DpdkTestpmd

pytestmark = pytest.mark.dpdk

PACKETS = 200_000


async def test_integrity_through_testpmd_io_as_slave(testpmd_bin, memif_path):
    pmd = await DpdkTestpmd.start(testpmd_bin, role="server", socket=memif_path)
    try:
        await pmd.wait_listening()
        async with memif_aio.connect(memif_path, buffer_size=2048, timeout=20) as iface:
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


async def test_integrity_through_testpmd_io_as_master(testpmd_bin, memif_path):
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        pmd = await DpdkTestpmd.start(testpmd_bin, role="client", socket=memif_path)
        try:
            await iface.wait_connected(timeout=20)
            await wait_until_echoing(iface.tx_queues[0], iface.rx_queues[0])
            got = await asyncio.wait_for(
                echo_integrity(iface.tx_queues[0], iface.rx_queues[0], PACKETS, Pattern(2)), 120
            )
            assert got == PACKETS
        finally:
            await pmd.stop()


async def test_metadata_is_harmless_to_dpdk_and_not_carried(testpmd_bin, memif_path):
    """DPDK's net_memif neither reads nor writes descriptor metadata: packets sent with it come
    back intact, with metadata 0 (what our refilled descriptors hold). README states this."""
    pmd = await DpdkTestpmd.start(testpmd_bin, role="server", socket=memif_path)
    try:
        await pmd.wait_listening()
        async with memif_aio.connect(memif_path, buffer_size=2048, timeout=20) as iface:
            txq, rxq = iface.tx_queues[0], iface.rx_queues[0]
            await wait_until_echoing(txq, rxq)
            pattern = Pattern(3)
            packets = [pattern.packet(i) for i in range(500)]
            received, metadata = [], []

            async def receive():
                while len(received) < len(packets):
                    burst = await rxq.recv_burst()
                    received.extend(bytes(burst[i]) for i in range(len(burst)))
                    metadata.extend(burst.metadata.tolist())

            async def send():
                for start in range(0, len(packets), 50):  # within what testpmd echoes at once
                    chunk = packets[start : start + 50]
                    await txq.send_burst(chunk, metadata=range(start + 1, start + 51))
                    while len(received) < start + 50:
                        await asyncio.sleep(0.001)

            sender = asyncio.ensure_future(send())
            try:
                await asyncio.wait_for(receive(), 30)
                await asyncio.wait_for(sender, 5)
            finally:
                sender.cancel()
            assert received == packets
            assert set(metadata) == {0}
    finally:
        await pmd.stop()
