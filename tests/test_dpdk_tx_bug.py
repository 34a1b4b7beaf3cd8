"""DPDK's ``net_memif`` transmit off-by-one (README "Interop notes"), against dpdk-testpmd.

DPDK's copy-mode transmit (the server filling our slave's rx ring) may step one descriptor
past our head when a packet needs more slots than are free: at one free slot a chained packet
takes a slot it was never given (a buffer we hold), and either ends there (tail published
past head) or is dropped, leaving a stale NEXT that glues the next two packets. memif_aio's
slave defends itself against a DPDK master by default (``dpdk_workaround="auto"``).
"""

from __future__ import annotations

import asyncio
import random

import pytest

import memif_aio
from helpers import DpdkTestpmd
from memif_aio.cli.perf import Numbered, windowed_echo
from memif_aio.link import dpdk_defences

RING = 64
BUFFER = 2048
# A packet exactly one buffer long is the one case the stale-NEXT rule cannot tell from the
# start of a chain (README): left out of the windowed echoes.
NOT_ONE_BUFFER = (BUFFER,)


def _numbered(i: int, size: int) -> bytes:
    return (i.to_bytes(4, "little") + random.Random(i).randbytes(size))[:size]


async def _until(predicate, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.001)


async def _start_server(testpmd_bin: str, path: str) -> DpdkTestpmd:
    pmd = await DpdkTestpmd.start(testpmd_bin, role="server", socket=path, forward_mode="io")
    await pmd.wait_listening()
    return pmd


async def _send_alone(txq, packet: bytes) -> None:
    """Send ``packet`` and wait until testpmd took it: what we send next reaches testpmd's
    transmit in a later burst (a dropped packet takes the rest of its burst with it)."""
    await txq.send(packet)
    txq.flush()
    await _until(lambda: txq.free_slots == RING, "testpmd took the packet")


async def _fill_to_one_free_slot(iface, publishable: int) -> tuple[list[bytes], list]:
    """testpmd echoes ``publishable - 1`` small packets into our rx ring; we take them and hold
    their views: DPDK then has exactly one free slot."""
    rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
    ring = rxq.ring
    assert ring.ring.head == publishable  # fresh link: every slot we give is free
    held = [_numbered(i, 100) for i in range(publishable - 1)]
    await txq.send_burst(held)
    await _until(lambda: ring.pending() == len(held), "testpmd echoed the small packets")
    burst = rxq.recv_burst_nowait()
    views = [burst[i] for i in range(len(burst))]
    assert [bytes(v) for v in views] == held
    assert (ring.ring.head - ring.ring.tail) & 0xFFFF == 1
    return held, views


@pytest.mark.dpdk
@pytest.mark.parametrize("chained", [2098, 5000], ids=["ends-in-extra-slot", "dropped"])
async def test_one_free_slot_and_a_chained_packet(testpmd_bin, memif_path, chained):
    """2098 B would end in the slot past head (DPDK takes that slot's length, 100, as its
    capacity), 5000 B would be dropped after writing there: with the sentinel DPDK drops
    both, cleanly."""
    pmd = await _start_server(testpmd_bin, memif_path)
    try:
        async with memif_aio.connect(
            memif_path, ring_size=RING, buffer_size=BUFFER, timeout=20
        ) as iface:
            assert iface.details().dpdk_defences == ("sentinel", "short-next-ends-packet")
            rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
            held, views = await _fill_to_one_free_slot(iface, RING - 1)
            await _send_alone(txq, _numbered(1000, chained))
            late = _numbered(1001, 60)
            await _send_alone(txq, late)
            await _until(lambda: rxq.ring.pending() == 1, "the small packet came back")
            assert [bytes(v) for v in views] == held  # nothing written under a held view
            del views
            burst = rxq.recv_burst_nowait()
            assert [bytes(burst[i]) for i in range(len(burst))] == [late]  # not glued
            burst.release()
            after = [_numbered(2000 + i, n) for i, n in enumerate((60, 3000, 9000, 1500, 61))]
            await txq.send_burst(after)
            got: list[bytes] = []
            while len(got) < len(after):
                burst = await asyncio.wait_for(rxq.recv_burst(), 10)
                got.extend(bytes(burst[i]) for i in range(len(burst)))
            assert got == after
            assert iface.connected
            stats = iface.stats()
            assert stats["rx_errors"] == stats["rx_drops"] == 0
            await pmd.stop()  # while the link is up: its packet counters are still there
    finally:
        await pmd.stop()
    assert pmd.forward_stats()["tx_dropped"] == 1  # the chained packet, by DPDK itself


@pytest.mark.dpdk
@pytest.mark.parametrize("chained", [2098, 5000], ids=["ends-in-extra-slot", "dropped"])
async def test_one_free_slot_without_the_defence_shows_the_bug(testpmd_bin, memif_path, chained):
    """The same scenario with ``dpdk_workaround="off"``: what the defence is for. (This pins
    DPDK's behaviour, from 19.08 to at least 25.11; a DPDK that fixes it fails here.)"""
    pmd = await _start_server(testpmd_bin, memif_path)
    try:
        async with memif_aio.connect(
            memif_path, ring_size=RING, buffer_size=BUFFER, timeout=20, dpdk_workaround="off"
        ) as iface:
            assert iface.details().dpdk_defences == ()
            rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
            held, views = await _fill_to_one_free_slot(iface, RING)
            await _send_alone(txq, _numbered(1000, chained))
            if chained == 2098:
                # It ended in the slot past head: the oldest slot we hold; tail moved past head.
                await _until(lambda: rxq.ring.ring.tail == RING + 1, "DPDK overran head")
                assert bytes(views[0]) != held[0]
                with pytest.raises(memif_aio.PeerProtocolError, match="tail 65 is 1 slots past"):
                    rxq.recv_burst_nowait()
                reason = await asyncio.wait_for(iface.wait_disconnected(), 5)
                assert reason == f"tail 65 is 1 slots past head {RING} (ring size {RING})"
                stats = iface.stats()
                assert stats["rx_errors"] == 1  # one error, counted once
                assert stats["rx_drops"] == 1  # the packet that overran: lost with the link
            else:
                # Dropped, after writing into the buffer of a view we hold; the next packet
                # lands on a slot left with NEXT and is glued to the one after.
                late = _numbered(1001, 60)
                await _send_alone(txq, late)
                await _until(lambda: rxq.ring.pending() == 1, "the small packet came back")
                assert bytes(views[0]) != held[0]
                del views
                assert len(rxq.recv_burst_nowait()) == 0
                await txq.send(_numbered(1002, 70))
                burst = await asyncio.wait_for(rxq.recv_burst(), 10)
                assert bytes(burst[0]) == late + _numbered(1002, 70)
    finally:
        await pmd.stop()


@pytest.mark.dpdk
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_windowed_echo_through_testpmd(testpmd_bin, memif_path, seed):
    """20 000 packets of 60-9000 B, 2048-byte buffers (most chained), 400 in flight: the rx
    ring fills and DPDK drops; whatever comes back is exact and in order, and every loss is
    one testpmd counted as TX-dropped."""
    packets = Numbered(seed, 20_000, 60, 9000, exclude=NOT_ONE_BUFFER)
    pmd = await _start_server(testpmd_bin, memif_path)
    try:
        async with memif_aio.connect(memif_path, buffer_size=BUFFER, timeout=20) as iface:
            assert iface.details().dpdk_defences == ("sentinel", "short-next-ends-packet")
            txq, rxq = iface.tx_queues[0], iface.rx_queues[0]
            result = await asyncio.wait_for(windowed_echo(txq, rxq, packets, window=400), 120)
            assert result.bad == []
            assert result.delivered + result.lost == len(packets)
            assert iface.connected
            stats = iface.stats()
            assert stats["rx_errors"] == stats["rx_drops"] == 0
            assert stats["rx_packets"] == result.delivered
            await pmd.stop()  # with the link up
    finally:
        await pmd.stop()
    forwarded = pmd.forward_stats()
    assert forwarded["rx_packets"] == len(packets)
    assert forwarded["tx_dropped"] == result.lost
    assert forwarded["tx_packets"] == result.delivered


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_windowed_echo_through_a_memif_aio_master(memif_path, seed):
    """The same traffic against our own master: the defence stays off, nothing is lost."""
    packets = Numbered(seed, 20_000, 60, 9000, exclude=NOT_ONE_BUFFER)
    async with memif_aio.Socket(memif_path) as sock:
        master = await sock.create_interface(id=0, role="master")

        async def echo() -> None:
            await master.wait_connected()
            async for burst in master.rx_queues[0].bursts():
                await master.tx_queues[0].send_burst(burst)

        echoing = asyncio.ensure_future(echo())
        try:
            async with memif_aio.connect(memif_path, buffer_size=BUFFER, timeout=10) as iface:
                assert iface.details().dpdk_defences == ()
                txq, rxq = iface.tx_queues[0], iface.rx_queues[0]
                result = await asyncio.wait_for(windowed_echo(txq, rxq, packets, 400), 120)
                assert result.bad == [] and result.lost == 0
                assert result.delivered == len(packets)
                assert iface.connected and iface.stats()["rx_errors"] == 0
        finally:
            echoing.cancel()
            await asyncio.gather(echoing, return_exceptions=True)


async def test_forced_defence_is_refused_by_a_memif_aio_master(memif_path):
    """``dpdk_workaround="on"`` hands over empty (capacity-0) descriptors, which our master
    refuses from any peer: "on" is for DPDK masters whose name does not say so."""
    async with memif_aio.Socket(memif_path) as sock:
        master = await sock.create_interface(id=0, role="master")
        async with memif_aio.connect(
            memif_path, ring_size=RING, timeout=10, dpdk_workaround="on"
        ) as iface:
            assert iface.details().dpdk_defences == ("sentinel",)
            await master.wait_connected(timeout=10)
            rxq, mtx = iface.rx_queues[0], master.tx_queues[0]
            await mtx.send_burst([b"y" * 60] * 10)
            burst = await asyncio.wait_for(rxq.recv_burst(), 5)
            assert len(burst) == 10
            burst.release()  # tail short of head: the sentinel (slot 63) is handed over empty
            with pytest.raises(memif_aio.PeerProtocolError, match="capacity 0"):
                await mtx.send_burst([b"z" * 60] * 60)
            reason = await asyncio.wait_for(master.wait_disconnected(), 5)
            assert reason == f"descriptor {RING - 1}: tx descriptor capacity 0"


def test_defences_by_the_name_in_hello():
    both = ("sentinel", "short-next-ends-packet")
    assert dpdk_defences("auto", "DPDK 22.11.11") == both
    assert dpdk_defences("auto", "DPDK 19.08.0") == both
    assert dpdk_defences("auto", "DPDK 23.03.0") == ("sentinel",)
    assert dpdk_defences("auto", "DPDK 25.11.0-rc1") == ("sentinel",)
    for name in ("memif_aio", "memif-aio echo", "libmemif", "VPP 24.02", "", "dpdk 22.11"):
        assert dpdk_defences("auto", name) == ()
        assert dpdk_defences("on", name) == ("sentinel",)
    assert dpdk_defences("on", "DPDK 22.11.1") == both
    assert dpdk_defences("off", "DPDK 22.11.1") == ()


async def test_dpdk_workaround_option(memif_path):
    async with memif_aio.Socket(memif_path) as sock:
        with pytest.raises(memif_aio.ConfigError, match="choose one of"):
            await sock.create_interface(id=0, role="master", dpdk_workaround="yes")
        with pytest.raises(memif_aio.ConfigError, match="is for role='slave'"):
            await sock.create_interface(id=0, role="master", dpdk_workaround="on")
        master = await sock.create_interface(id=0, role="master", dpdk_workaround="off")
        assert master.details().dpdk_workaround == "off"
        async with memif_aio.connect(memif_path, timeout=10) as slave:
            details = slave.details()
            assert details.dpdk_workaround == "auto" and details.dpdk_defences == ()
            assert slave.rx_queues[0].ring.ring.head == 1024  # every slot: no sentinel
