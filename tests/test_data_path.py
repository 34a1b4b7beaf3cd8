"""Data path between memif_aio processes, hostile descriptors, interrupts, allocations."""

from __future__ import annotations

import asyncio
import os
import random
import time
import tracemalloc

import numpy as np
import pytest
from traffic import Pattern, echo_integrity

import memif_aio
from helpers import PeerProcess
from memif_aio import DisconnectedError, LocalProtocolError, PeerProtocolError


@pytest.mark.parametrize("local_role", ["master", "slave"])
async def test_four_queues_both_directions_between_processes(memif_path, local_role):
    remote_role = "slave" if local_role == "master" else "master"
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(
            id=0, role=local_role, rx_queues=4, tx_queues=4, buffer_size=2048
        )
        peer = await PeerProcess.start(
            "--role", remote_role, "--socket", memif_path, "--queues", "4", "--echo"
        )
        try:
            await iface.wait_connected(timeout=15)
            assert len(iface.rx_queues) == len(iface.tx_queues) == 4
            counts = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        echo_integrity(
                            iface.tx_queues[q],
                            iface.rx_queues[q],
                            50_000,
                            Pattern(100 + q),
                            window=128,
                        )
                        for q in range(4)
                    )
                ),
                180,
            )
            assert counts == [50_000] * 4
            stats = iface.stats()
            assert stats["rx_packets"] == stats["tx_packets"] == 200_000
            assert stats["rx_errors"] == stats["tx_errors"] == 0
        finally:
            assert await peer.stop() == 0


async def test_interrupts_lose_no_wakeup(memif_path):
    """10 000 single packets with random gaps: each echo must wake us (no polling here)."""
    rng = random.Random(7)
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        peer = await PeerProcess.start("--role", "slave", "--socket", memif_path, "--echo")
        try:
            await iface.wait_connected(timeout=15)
            rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
            assert not rxq.polling
            for i in range(10_000):
                packet = i.to_bytes(4, "little") * 16
                await txq.send(packet)
                # A gap (blocking the loop) lets the echo's signal land before we wait; no gap
                # makes us wait first. Both orders must wake us.
                gap = rng.choice((0, 0, 5e-6, 30e-6, 150e-6))
                if gap:
                    time.sleep(gap)
                assert await asyncio.wait_for(rxq.recv(), 2) == packet
        finally:
            assert await peer.stop() == 0


async def test_descriptor_outside_region_disconnects_peer_and_we_survive(memif_path):
    async with memif_aio.Socket(memif_path) as sock:
        master = await sock.create_interface(id=0, role="master")
        async with memif_aio.Socket(memif_path, reconnect_interval=60) as bad_sock:
            bad = await bad_sock.create_interface(id=0, role="slave")
            await master.wait_connected(timeout=10)
            await bad.wait_connected(timeout=10)
            # The "peer" publishes a descriptor pointing past the end of its buffer region.
            ring = bad.link.plane.memory.s2m[0].ring
            region_size = bad.link.plane.memory.region_sizes[1]
            ring.set_descriptor(0, 0, 1, 64, region_size - 10)
            ring.head = 1
            with pytest.raises(PeerProtocolError, match="beyond region 1"):
                await asyncio.wait_for(master.rx_queues[0].recv(), 5)
            reason = await asyncio.wait_for(bad.wait_disconnected(), 5)
            assert "beyond region 1" in reason
            assert not master.connected
            assert "beyond region 1" in master.details().last_disconnect_reason
            assert master.stats()["rx_errors"] >= 1
        # A well-behaved peer is served afterwards.
        async with memif_aio.connect(memif_path, timeout=10) as good:
            await master.wait_connected(timeout=10)
            await good.tx_queues[0].send(b"fine")
            assert await asyncio.wait_for(master.rx_queues[0].recv(), 5) == b"fine"


async def test_queue_waiters_get_disconnected_error(memif_pair):
    master, slave = memif_pair
    waiter = asyncio.ensure_future(master.rx_queues[0].recv())
    await asyncio.sleep(0.05)  # asleep on its interrupt, not merely created
    await slave.close()
    with pytest.raises(DisconnectedError):
        await asyncio.wait_for(waiter, 5)


@pytest.mark.memif(buffer_size=1024)
async def test_chained_packets_and_segments(memif_pair):
    master, slave = memif_pair
    data = bytes(range(256)) * 20  # 5120 bytes: 5 buffers of 1024
    await slave.tx_queues[0].send(data)
    burst = await master.rx_queues[0].recv_burst()
    assert list(burst.nsegments) == [5] and list(burst.lengths) == [5120]
    assert b"".join(bytes(s) for s in burst.segments(0)) == data
    assert burst[0] == data
    burst.release()
    # master -> slave honours the slave's 1024-byte buffers
    await master.tx_queues[0].send(data)
    assert await slave.rx_queues[0].recv() == data


async def test_alloc_commit_and_polling_mode(memif_pair):
    master, slave = memif_pair
    rxq = master.rx_queues[0]
    rxq.polling = True
    bufs = await slave.tx_queues[0].alloc(3)
    assert len(bufs) == 3
    for i, buf in enumerate(bufs):
        buf[:5] = b"pkt-%d" % i
    assert slave.tx_queues[0].commit([5, 5]) == 2
    burst = await asyncio.wait_for(rxq.recv_burst(), 5)
    assert [bytes(burst[i]) for i in range(len(burst))] == [b"pkt-0", b"pkt-1"]


def test_burst_path_does_not_allocate_per_packet():
    """tracemalloc over 1 000 000 packets through the queue burst API: bounded, not growing."""

    async def run() -> tuple[int, int]:
        path = f"@/tmp/memif_aio-alloc-{random.getrandbits(32):x}"
        async with memif_aio.Socket(path) as sock:
            master = await sock.create_interface(id=0, role="master")
            async with memif_aio.connect(path, timeout=10) as slave:
                await master.wait_connected(timeout=10)
                txq, rxq = slave.tx_queues[0], master.rx_queues[0]
                batch = [b"x" * 64] * 256

                def move(packets: int) -> None:
                    moved = 0
                    while moved < packets:
                        txq.send_burst_nowait(batch)
                        moved += len(rxq.recv_burst_nowait(256))

                move(100_000)  # warm up: caches, lazily built views
                tracemalloc.start()
                try:
                    before = tracemalloc.get_traced_memory()[0]
                    move(1_000_000)
                    after, peak = tracemalloc.get_traced_memory()
                finally:
                    tracemalloc.stop()
                return after - before, peak - before

    growth, peak = asyncio.run(run())
    assert growth < 16 * 1024, f"grew by {growth} bytes over 1M packets"
    assert peak < 64 * 1024, f"peak {peak} bytes above baseline"


# ------------------------------------------- per-packet queue API over an in-process link


@pytest.fixture
def qlink():
    from test_ring import Link

    from memif_aio import _ring

    link = Link(_ring, log2=5, buffer_size=256, eventfds=True)
    yield link
    link.close()


@pytest.fixture
async def queues(qlink):
    """(rxq, txq, errors): queues over ``qlink`` (master rx, slave tx), closed at teardown."""
    errors: list = []
    from memif_aio.interrupts import InterruptSet

    interrupts = InterruptSet(asyncio.get_running_loop())
    rxq, txq = _queues(qlink, errors, interrupts)
    yield rxq, txq, errors
    rxq._close("test over")  # idempotent: a test may have closed them already
    txq._close("test over")
    interrupts.close()


def _queues(link, errors: list, interrupts):
    from memif_aio.queues import RxQueue, TxQueue

    rxq = RxQueue(0, link.mrx, link.efds[0], interrupts, errors.append)
    txq = TxQueue(0, link.stx, errors.append)
    return rxq, txq


async def test_packet_stream_chain_in_the_middle_and_wakeups(qlink, queues):
    rxq, txq, errors = queues
    big = bytes(range(256)) * 2 + b"tail"  # 3 buffers of 256
    await txq.send(b"first")
    await txq.send(big)
    await txq.send(b"third")
    got = []
    stream = aiter(rxq)
    for _ in range(3):
        pkt = await anext(stream)
        got.append((type(pkt), bytes(pkt)))
    assert got == [(memoryview, b"first"), (bytes, big), (memoryview, b"third")]

    async def later():
        await asyncio.sleep(0.01)
        await txq.send(b"woken")

    task = asyncio.ensure_future(later())
    pkt = await asyncio.wait_for(anext(stream), 2)  # empty: waits on the eventfd
    assert bytes(pkt) == b"woken"
    await task
    del pkt
    assert not errors


async def test_packet_stream_link_down_mid_burst_and_while_waiting(qlink, queues):
    rxq, txq, errors = queues
    qlink.stx.tx_burst([b"a", b"b", b"c"])
    seen = []
    with pytest.raises(DisconnectedError, match="gone"):
        async for pkt in rxq:
            seen.append(bytes(pkt))
            if len(seen) == 2:
                rxq._close("gone")  # the link goes down in the middle of a burst
    assert seen == [b"a", b"b"]
    txq._close("gone")
    assert not errors


async def test_packet_stream_disconnect_wakes_a_waiting_iterator(qlink, queues):
    rxq, txq, errors = queues

    async def consume():
        async for _ in rxq:
            pass

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.01)
    rxq._close("peer left")
    with pytest.raises(DisconnectedError, match="peer left"):
        await asyncio.wait_for(task, 2)
    txq._close("peer left")


async def test_packet_stream_peer_error_calls_the_hook(qlink, queues):
    rxq, txq, errors = queues
    qlink.s_s2m.set_descriptor(0, 0, 9, 10, 0)  # region 9 does not exist
    qlink.s_s2m.head = 1
    with pytest.raises(PeerProtocolError, match="region 9"):
        async for _ in rxq:
            pass
    assert len(errors) == 1 and isinstance(errors[0], PeerProtocolError)


async def test_send_stages_and_flushes_once_per_iteration(qlink, queues):
    rxq, txq, errors = queues
    efd = qlink.efds[0]
    for i in range(5):
        await txq.send(b"p%d" % i)  # completes at once: staged, not yet published
    assert qlink.stx.staged == 5 and qlink.mrx.pending() == 0
    await asyncio.sleep(0)  # the scheduled flush runs
    assert qlink.stx.staged == 0 and qlink.mrx.pending() == 5
    assert qlink.signals(qlink.mrx) == 1  # one signal for the five
    # Ordering with the burst API: staged packets go first.
    await txq.send(b"p5")
    await txq.send_burst([b"p6", b"p7"])
    burst = qlink.mrx.rx_burst()
    assert [bytes(burst[i]) for i in range(len(burst))] == [b"p%d" % i for i in range(8)]
    burst.release()
    os.read(efd, 8)
    assert not errors


async def test_send_backpressure_on_full_ring_and_drops_on_close(qlink, queues):
    rxq, txq, errors = queues
    size = qlink.size
    for i in range(size):
        await txq.send(i.to_bytes(2, "little"))
    assert qlink.stx.staged == size
    blocked = asyncio.ensure_future(txq.send(b"more"))  # full: flushes, then waits for room
    await asyncio.sleep(0.005)
    assert not blocked.done() and qlink.mrx.pending() == size
    burst = qlink.mrx.rx_burst()
    assert [int.from_bytes(burst[i], "little") for i in range(len(burst))] == list(range(size))
    burst.release()
    await asyncio.wait_for(blocked, 2)
    assert bytes(qlink.mrx.rx_burst()[0]) == b"more"
    qlink.mrx.release()
    # Staged but unpublished at close: counted as drops, never published.
    await txq.send(b"x")
    await txq.send(b"y")
    txq._close("down")
    assert txq.drops == 2 and qlink.mrx.pending() == 0
    with pytest.raises(DisconnectedError):
        await txq.send(b"z")
    await asyncio.sleep(0)  # the scheduled flush finds the queue closed
    assert qlink.mrx.pending() == 0
    rxq._close("down")


async def test_send_to_a_polling_peer_publishes_every_32_packets_without_a_signal(qlink, queues):
    """A receiver that polls (MASK_INT) is never signalled, so publishing costs one store: the
    sender publishes the first packet of a loop iteration at once (a lone request is not
    delayed) and then every 32 staged packets (the poller gets work early, and the ring's
    cache line does not cross CPUs once per packet), the rest at the end of the iteration."""
    rxq, txq, errors = queues
    rxq.polling = True
    await txq.send(b"first")
    assert qlink.mrx.pending() == 1 and qlink.stx.staged == 0
    assert len(qlink.mrx.rx_burst()) == 1
    qlink.mrx.release()
    for i in range(31):
        await txq.send(b"%d" % i)
    assert qlink.mrx.pending() == 0 and qlink.stx.staged == 31
    await txq.send(b"31")
    assert qlink.mrx.pending() == 32 and qlink.stx.staged == 0
    assert len(qlink.mrx.rx_burst()) == 32
    qlink.mrx.release()
    await txq.send(b"32")
    assert qlink.mrx.pending() == 0 and qlink.stx.staged == 1
    await asyncio.sleep(0)
    assert qlink.mrx.pending() == 1 and qlink.signals(qlink.mrx) == 0
    rxq.polling = False  # interrupts again: staged, published once per loop iteration
    await txq.send(b"33")
    await txq.send(b"34")
    assert qlink.mrx.pending() == 1 and qlink.stx.staged == 2
    await asyncio.sleep(0)
    assert qlink.mrx.pending() == 3 and qlink.signals(qlink.mrx) == 1
    assert not errors


async def test_a_task_cancelled_in_its_fairness_turn_has_sent_or_taken_nothing(qlink, queues):
    """The turns come before the work: a send_burst or recv_burst cancelled in its turn (a
    wait_for around it, say) has sent nothing and taken nothing, so a retry neither
    duplicates nor loses packets."""
    rxq, txq, errors = queues
    txq.turn_interval = rxq.turn_interval = 0  # a turn at every call

    async def cancelled_in_its_turn(coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        await asyncio.sleep(0)  # the task is in its turn now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    await cancelled_in_its_turn(txq.send_burst([b"a", b"b"]))
    assert qlink.stx.staged == 0 and qlink.mrx.pending() == 0 and txq.stats()["packets"] == 0
    assert await txq.send_burst([b"a", b"b"]) == 2
    await cancelled_in_its_turn(rxq.recv_burst())
    burst = rxq.recv_burst_nowait()
    assert [bytes(burst[i]) for i in range(len(burst))] == [b"a", b"b"]
    assert not errors


async def test_packets_left_in_the_ring_at_disconnect_are_counted_as_drops(memif_path):
    async with memif_aio.Socket(memif_path) as sock:
        master = await sock.create_interface(id=0, role="master")
        async with memif_aio.connect(memif_path, timeout=10) as slave:
            await master.wait_connected(timeout=10)
            await master.tx_queues[0].send_burst([b"unread"] * 5 + [bytes(5000)])
            await asyncio.sleep(0.05)
            await master.close(linger=0)  # the slave never reads them
            await asyncio.wait_for(slave.wait_disconnected(), 5)
            assert slave.stats()["rx_drops"] == 6  # packets, not descriptors (5000 B: 3)
            assert slave.stats()["rx_packets"] == 0


async def test_every_queue_transmit_call_carries_metadata(qlink, queues):
    rxq, txq, errors = queues
    size = qlink.size
    received: list[tuple[bytes, int]] = []

    async def drain(count):
        while len(received) < count:
            burst = await asyncio.wait_for(rxq.recv_burst(), 2)
            meta = burst.metadata.tolist()
            received.extend((bytes(burst[i]), meta[i]) for i in range(len(burst)))

    # send(): staged, then on a full ring the slow path keeps the metadata too.
    for i in range(size + 3):
        if i == size:
            reader = asyncio.ensure_future(drain(size + 3))
        await txq.send(b"s%d" % i, metadata=1000 + i)
    await reader
    assert received == [(b"s%d" % i, 1000 + i) for i in range(size + 3)]
    # send_burst() over more packets than the ring holds: metadata follows each chunk.
    received.clear()
    reader = asyncio.ensure_future(drain(3 * size))
    packets = [b"b%d" % i for i in range(3 * size)]
    assert await txq.send_burst(packets, metadata=list(range(3 * size))) == 3 * size
    await reader
    assert received == list(zip(packets, range(3 * size), strict=True))
    # The array form, send_nowait() and alloc()/commit().
    received.clear()
    rows = np.zeros((2, 4), np.uint8)
    await txq.send_burst(rows, np.array([4, 1], np.uint32), metadata=np.array([7, 8], np.uint32))
    assert txq.send_nowait(b"n", metadata=9)
    buffers = await txq.alloc(1)
    buffers[0][:1] = b"c"
    del buffers
    assert txq.commit([1], metadata=[10])
    await drain(4)
    assert [meta for _, meta in received] == [7, 8, 9, 10]
    with pytest.raises(ValueError, match="metadata"):
        await txq.send(b"x", metadata=-1)
    assert not errors


async def test_send_burst_of_a_received_burst_waits_for_room_and_keeps_metadata(qlink, queues):
    rxq, txq, errors = queues  # txq: slave -> master; rxq reads the master's side
    size = qlink.size
    packets = [bytes([i]) * (300 if i % 7 == 0 else 40) for i in range(size - 8)]  # some chained
    assert qlink.mtx.tx_burst(packets, metadata=range(100, 100 + len(packets))) == len(packets)
    burst = qlink.srx.rx_burst()
    assert len(burst) == len(packets)
    assert qlink.stx.tx_burst([b"x"] * (size - 4)) == size - 4  # leave only 4 slots: must wait
    received: list[tuple[bytes, int]] = []

    async def drain():
        while len(received) < size - 4 + len(packets):
            got = await asyncio.wait_for(rxq.recv_burst(), 2)
            meta = got.metadata.tolist()
            received.extend((bytes(got[i]), meta[i]) for i in range(len(got)))

    reader = asyncio.ensure_future(drain())
    assert await txq.send_burst(burst) == len(packets)
    await reader
    assert received[size - 4 :] == list(zip(packets, range(100, 100 + len(packets)), strict=True))
    with pytest.raises(ValueError, match="carries its own"):
        await txq.send_burst(burst, metadata=[1])
    assert not errors


async def test_send_burst_of_a_burst_released_while_waiting_stops_with_an_error(qlink, queues):
    rxq, txq, errors = queues
    size = qlink.size
    qlink.mtx.tx_burst([b"p%d" % i for i in range(8)])
    burst = qlink.srx.rx_burst()
    assert qlink.stx.tx_burst([b"x"] * (size - 3)) == size - 3  # 3 slots left: 5 must wait
    sending = asyncio.ensure_future(txq.send_burst(burst))
    await asyncio.sleep(0.005)
    assert not sending.done()
    # Another task took the next burst: the same Burst object now holds other packets.
    qlink.mtx.tx_burst([b"new%d" % i for i in range(8)])
    assert len(qlink.srx.rx_burst()) == 8
    qlink.mrx.rx_burst()
    qlink.mrx.release()  # room again: the sender must notice, not send the new packets
    with pytest.raises(LocalProtocolError, match="3 of 8 packets sent"):
        await asyncio.wait_for(sending, 2)
    got = qlink.mrx.rx_burst()
    assert [bytes(got[i]) for i in range(len(got))] == []
    qlink.srx.release()
    # After forward() took the leading packets, send_burst(burst) copies the rest.
    qlink.mtx.tx_burst([b"a", b"b", b"c" * 300, b"d"], metadata=[1, 2, 3, 4])
    burst = qlink.srx.rx_burst()
    assert qlink.stx.forward(burst) == 2
    assert await asyncio.wait_for(txq.send_burst(burst), 2) == 2
    got = qlink.mrx.rx_burst()
    assert [bytes(got[i]) for i in range(len(got))][-4:] == [b"a", b"b", b"c" * 300, b"d"]
    assert got.metadata.tolist()[-4:] == [1, 2, 3, 4]
    # Metadata is checked in full before the first packet goes.
    before = qlink.mrx.pending()
    with pytest.raises(ValueError, match=r"metadata\[40\] = 4294967296"):
        await txq.send_burst([b"m"] * 41, metadata=[0] * 40 + [2**32])
    assert qlink.mrx.pending() == before
    assert not errors
