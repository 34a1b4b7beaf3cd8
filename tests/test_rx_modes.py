"""Receive modes between real processes: interrupt, polling and adaptive each deliver every
packet whatever the timing (no lost wake-up), switching modes under traffic loses nothing, an
adaptive queue goes back to sleeping on interrupts when the link is idle, a sender in a loop
leaves its loop's other tasks their turns, and ``details()`` shows each queue's mode.

Figures (latency per mode, idle CPU, the timer's longest gap) belong to
``benchmarks/bench_latency.py``; the bounds here are generous on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator

import pytest

import memif_aio
from helpers import PeerProcess
from memif_aio import ConfigError
from memif_aio.cli.rtt import GapWatch
from memif_aio.queues import RxMode


@contextlib.asynccontextmanager
async def echo_link(
    path: str, mode: str, peer_mode: str | None = None
) -> AsyncIterator[memif_aio.Interface]:
    """Our master interface (rx queues in ``mode``) and an echo peer in another process (a
    slave whose rx queue waits in ``peer_mode``, ``mode`` by default)."""
    async with memif_aio.Socket(path) as sock:
        iface = await sock.create_interface(id=0, role="master", rx_mode=mode)
        peer = await PeerProcess.start(
            "--role", "slave", "--socket", path, "--echo", "--rx-mode", peer_mode or mode
        )
        try:
            await iface.wait_connected(timeout=15)
            yield iface
        finally:
            assert await peer.stop() == 0


@pytest.mark.parametrize(
    "mode, hold_gil",
    [("interrupt", False), ("polling", False), ("polling", True), ("adaptive", False)],
    ids=["interrupt", "polling", "polling-gil-held", "adaptive"],
)
async def test_each_mode_delivers_single_packets_with_random_gaps(memif_path, mode, hold_gil):
    """10 000 packets, one in flight. The gaps put the echo's arrival everywhere: before we
    look, after we looked but before we wait (its signal handled while nobody waits), while the
    loop is busy, while we spin, while we sleep, and (adaptive, with a short window) around the
    moment the queue stops polling and asks for interrupts again. A lost wake-up hangs: the
    timeout fails."""
    rng = random.Random(15)
    async with echo_link(memif_path, mode) as iface:
        rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
        assert rxq.mode is RxMode(mode)
        rxq.spin_releases_gil = not hold_gil
        if mode == "adaptive":
            rxq.adaptive_window = 100e-6
            rxq.spin = 10e-6
        stream = aiter(rxq)
        async with asyncio.timeout(60):
            for i in range(10_000):
                packet = i.to_bytes(4, "little") * 16
                await txq.send(packet)
                draw = rng.random()
                if draw < 0.05:
                    await asyncio.sleep(rng.uniform(0, 0.002))
                elif draw < 0.25:
                    txq.flush()
                    time.sleep(rng.uniform(0, 300e-6))  # the loop is busy when it lands
                elif draw < 0.35:
                    # We looked (empty) and wait only later: the echo's signal may be handled
                    # in between, while nobody waits.
                    later = anext(stream)
                    await asyncio.sleep(rng.uniform(0, 0.001))
                    assert bytes(await later) == packet
                    continue
                assert bytes(await anext(stream)) == packet
        stats = rxq.stats()
        assert stats["packets"] == 10_000 and stats["errors"] == 0


async def test_mode_switches_while_traffic_flows_lose_nothing(memif_path):
    """Windows of packets in flight while the receive queue changes mode every few hundred
    packets (from the consumer) and at random moments (from another task, while the consumer
    may be asleep or spinning): every packet arrives once, in order."""
    rng = random.Random(3)
    total = 6000
    modes = itertools.cycle(["polling", "adaptive", "interrupt"])
    async with echo_link(memif_path, "interrupt", peer_mode="adaptive") as iface:
        rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
        received: list[int] = []
        switches = 0

        async def sender() -> None:
            for i in range(total):
                await txq.send(i.to_bytes(4, "little") * 16)
                if i % 32 == 31:
                    await asyncio.sleep(rng.uniform(0, 0.0005))

        async def switcher() -> None:
            nonlocal switches
            while len(received) < total:
                await asyncio.sleep(rng.uniform(0, 0.002))
                rxq.mode = next(modes)
                switches += 1

        async def receiver() -> None:
            nonlocal switches
            async for packet in rxq:
                received.append(int.from_bytes(packet[:4], "little"))
                if len(received) % 250 == 0:
                    rxq.mode = next(modes)
                    switches += 1
                if len(received) == total:
                    return

        async with asyncio.timeout(60):
            await asyncio.gather(sender(), switcher(), receiver())
        assert received == list(range(total))
        assert switches >= 30
        assert rxq.stats()["errors"] == 0


@pytest.mark.parametrize("asleep_in", ["interrupt", "adaptive"])
async def test_a_sleeping_consumer_follows_a_switch_to_polling(memif_path, asleep_in):
    """Polling masks the peer's signals: a consumer asleep waiting for one must be woken by
    the switch itself, or it would sleep through every later packet."""
    async with echo_link(memif_path, asleep_in, peer_mode="interrupt") as iface:
        rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
        stream = aiter(rxq)
        for i in range(3):
            waiting = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0.05)
            assert rxq._waiter.pending  # asleep on the interrupt
            rxq.mode = "polling"
            await asyncio.sleep(0.01)
            await txq.send(b"%d" % i * 64)
            assert bytes(await asyncio.wait_for(waiting, 5)) == b"%d" % i * 64
            rxq.mode = asleep_in


async def test_adaptive_polls_after_traffic_and_sleeps_on_interrupts_when_idle(memif_path):
    async with echo_link(memif_path, "adaptive", peer_mode="interrupt") as iface:
        rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
        assert not rxq.ring.mask_interrupts  # an adaptive queue starts idle: interrupts
        stream = aiter(rxq)
        for i in range(200):
            waiting = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0)  # the consumer starts waiting
            # after traffic it polls, and asks the peer not to signal (MASK_INT in the ring
            # header); before the first packet it sleeps on the interrupt
            assert rxq.ring.mask_interrupts == (i > 0)
            await txq.send(i.to_bytes(4, "little") * 16)
            assert int.from_bytes((await asyncio.wait_for(waiting, 5))[:4], "little") == i
        # Idle with a consumer waiting: after the window it asks for signals again and sleeps.
        waiting = asyncio.ensure_future(anext(stream))
        try:
            cpu = time.process_time()
            await asyncio.sleep(0.5)  # the window is 300 us
            idle_cpu = time.process_time() - cpu
            assert not rxq.ring.mask_interrupts
            assert rxq._waiter.pending and not waiting.done()  # asleep on the interrupt
            assert idle_cpu < 0.25  # a consumer still spinning would take ~0.5 s of CPU
            # The next packet comes through the interrupt, and the queue polls again.
            await txq.send(b"wake" * 16)
            assert bytes(await asyncio.wait_for(waiting, 5)) == b"wake" * 16
            waiting = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0)  # the next wait sees the packet taken: traffic
            assert rxq.ring.mask_interrupts
        finally:
            waiting.cancel()


@pytest.mark.parametrize("api", ["send", "send_burst"])
async def test_a_sender_in_a_loop_leaves_its_loop_to_the_other_tasks(memif_path, api):
    """100 000 packets by ``await txq.send()`` (or 64-packet ``send_burst``) toward a peer that
    drains as fast as it can (a 16384-slot ring, so the sender seldom waits for room, which
    would yield anyway): a 100 us timer on the sender's loop keeps running, because the sender
    gives its loop a turn every 200 us of sending."""
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        peer = await PeerProcess.start(
            "--role", "slave", "--socket", memif_path, "--drain", "--rx-mode", "polling",
            "--ring-size", "16384", "--buffer-size", "128",
        )  # fmt: skip
        try:
            await iface.wait_connected(timeout=15)
            txq = iface.tx_queues[0]
            assert iface.details().tx_queues[0].ring_size == 16384
            payload = bytes(64)
            watch = GapWatch(100e-6)
            watch.start()
            start = time.perf_counter()
            if api == "send":
                for _ in range(100_000):
                    await txq.send(payload)
            else:
                burst = [payload] * 64
                for _ in range(100_000 // 64):
                    await txq.send_burst(burst)
                await txq.send_burst(burst[: 100_000 % 64])
            seconds = time.perf_counter() - start
            longest = watch.stop()
            txq.flush()  # toward a poller, the last few are staged until the iteration ends
            assert txq.stats()["packets"] == 100_000
            # Without the yields the timer waits about as long as the whole run.
            assert longest < min(0.020, seconds / 4), (
                f"a timer on the sender's loop waited {longest * 1e3:.1f} ms "
                f"of {seconds * 1e3:.1f} ms ({watch.ticks} runs)"
            )
        finally:
            assert await peer.stop() == 0


@pytest.mark.parametrize("api", ["async for", "bursts"])
async def test_a_consumer_that_never_waits_leaves_its_loop_to_the_other_tasks(
    memif_path, api, caplog
):
    """A peer sends as fast as the ring takes packets, so the ring always has some and the
    consumer never waits (which would yield anyway): a 100 us timer on the consumer's loop
    keeps running, because the consumer gives its loop a turn every 200 us."""
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        peer = await PeerProcess.start("--role", "slave", "--socket", memif_path, "--blast")
        try:
            await iface.wait_connected(timeout=15)
            rxq = iface.rx_queues[0]
            received = 0
            watch = GapWatch(100e-6)
            watch.start()
            start = time.perf_counter()
            # Each packet is copied out (some work per packet, as an application does): the
            # consumer is slower than the sender, so the ring never runs dry.
            if api == "async for":
                async for packet in rxq:
                    received += len(bytes(packet)) // 64
                    if received == 400_000:
                        break
            else:
                async for burst in rxq.bursts():
                    received += sum(len(bytes(packet)) for packet in burst) // 64
                    if received >= 400_000:
                        break
            seconds = time.perf_counter() - start
            longest = watch.stop()
            # Without the turns the timer waits about as long as the whole run.
            assert longest < min(0.020, seconds / 4), (
                f"a timer on the consumer's loop waited {longest * 1e3:.1f} ms "
                f"of {seconds * 1e3:.1f} ms ({watch.ticks} runs)"
            )
            # Signals for packets already taken are no interrupt storm.
            assert "signals without sending" not in caplog.text
        finally:
            assert await peer.stop() == 0


async def test_details_show_each_queues_mode_the_interface_default_and_overrides(memif_path):
    async with memif_aio.Socket(memif_path) as sock:
        master = await sock.create_interface(
            id=0, role="master", rx_queues=2, tx_queues=2, rx_mode="adaptive"
        )
        async with memif_aio.connect(memif_path, rx_queues=2, tx_queues=2) as slave:
            await master.wait_connected(timeout=10)
            assert [q.mode for q in master.details().rx_queues] == ["adaptive", "adaptive"]
            assert [q.mode for q in master.details().tx_queues] == [None, None]
            # The queues of a link share one turn clock (and its interval).
            master.tx_queues[1].turn_interval = 123e-6
            assert {q._turn_ns for q in [*master.rx_queues, *master.tx_queues]} == {123_000}
            assert master.rx_queues[0].turn_interval == 123e-6
            assert slave.rx_queues[0]._turn_ns == memif_aio._ring.TURN_INTERVAL_NS
            with pytest.raises(ConfigError, match="turn_interval 1 s outside 0..0.1"):
                master.rx_queues[0].turn_interval = 1
            assert [q.mode for q in slave.details().rx_queues] == ["interrupt", "interrupt"]
            # a queue overrides the interface's default
            master.rx_queues[1].mode = "polling"
            assert [q.mode for q in master.details().rx_queues] == ["adaptive", "polling"]
            assert master.rx_queues[1].polling and master.rx_queues[1].ring.mask_interrupts
            master.rx_queues[1].polling = False
            assert [q.mode for q in master.details().rx_queues] == ["adaptive", "interrupt"]
            slave.rx_queues[0].mode = RxMode.POLLING
            assert [q.mode for q in slave.details().rx_queues] == ["polling", "interrupt"]
            for q in range(2):  # each queue receives in its own mode
                await slave.tx_queues[q].send(b"to master %d" % q)
                assert await asyncio.wait_for(master.rx_queues[q].recv(), 5) == b"to master %d" % q
                await master.tx_queues[q].send(b"to slave %d" % q)
                assert await asyncio.wait_for(slave.rx_queues[q].recv(), 5) == b"to slave %d" % q
            with pytest.raises(ConfigError, match="interrupt, polling or adaptive"):
                master.rx_queues[0].mode = "busy"
        # Queues live as long as their link: the next link's start from the default again.
        async with memif_aio.connect(memif_path, rx_queues=2, tx_queues=2):
            await master.wait_connected(timeout=10)
            assert [q.mode for q in master.details().rx_queues] == ["adaptive", "adaptive"]
    with pytest.raises(ConfigError):
        await memif_aio.Socket(memif_path).create_interface(id=0, rx_mode="busy")
