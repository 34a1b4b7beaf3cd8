"""The queues' C half (RxQueueCore/PacketStream, TxQueueCore.send) against the pure-Python
oracle: the same script of sends, flushes, loop turns and reads, run on both, must deliver the
same packets, publish at the same moments, go slow on the same sends and yield on the same
ones."""

from __future__ import annotations

import asyncio
import functools
import importlib
import os
import random
import select
import time

import pytest
from test_ring import Link

from memif_aio.errors import DisconnectedError, PeerProtocolError

IMPLS = {"cython": "memif_aio._ring", "python": "memif_aio._ring_py"}


def queue_classes(R):
    class Rx(R.RxQueueCore):
        def __init__(self, *args):
            super().__init__(*args)
            self.waits = 0
            self.empty_wakeups = 0
            self.ready = asyncio.Event()

        def _empty_wakeup(self):
            self.empty_wakeups += 1

        async def _wait(self):
            self.waits += 1
            self._check_open()
            await self.ready.wait()
            self.ready.clear()
            self._check_open()

    class Tx(R.TxQueueCore):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.slow: list[tuple[bytes, int]] = []

        async def _send_slow(self, data, metadata):
            self.slow.append((bytes(data), metadata))  # a real queue waits for room here

    return Rx, Tx


async def run_script(R, seed: int, *, polling_peer: bool, fast: bool = False) -> list:
    """Record everything observable of one random script on implementation R.

    ``fast``: the receive queue waits in interrupt mode the C way (``_wait_mode``: a reused
    waiter, no ``_wait()`` call), and the test's interrupts go through ``_interrupt()``."""
    rng = random.Random(seed)
    link = Link(R, log2=5, buffer_size=256, eventfds=True)
    errors: list = []
    Rx, Tx = queue_classes(R)
    loop = asyncio.get_running_loop()
    rxq = Rx(0, link.mrx, errors.append, loop) if fast else Rx(0, link.mrx, errors.append)
    txq = Tx(0, link.stx, errors.append, loop, max_burst=8)
    txq._turn_ns = 0  # a turn at every look (every max_burst sends), not by the clock
    rxq._turn_ns = 2**62  # never: a consumer's turns by the clock are tested on their own
    if fast:
        rxq._wait_mode = "interrupt"
        rxq._set_flush_queues([txq])
    if polling_peer:
        link.mrx.mask_interrupts = True
    trace: list = []
    stream = aiter(rxq)
    try:
        for step in range(200):
            op = rng.random()
            if op < 0.55:
                packet = rng.randbytes(rng.choice((0, 1, 60, 255, 256, 257, 700)))
                meta = rng.choice((0, 0, 7, 2**32 - 1))
                awaitable = txq.send(packet, meta)
                kind = type(awaitable).__name__
                if kind not in ("Completed", "YieldOnce"):
                    awaitable.close()  # the subclass's coroutine: not run here
                    kind = "slow"
                else:
                    await awaitable
                trace.append(("send", step, kind, link.stx.staged, link.mrx.pending()))
            elif op < 0.7:
                await asyncio.sleep(0)  # the scheduled flush runs
                trace.append(("turn", step, link.stx.staged, link.mrx.pending()))
            elif op < 0.8:
                trace.append(("flush", step, txq.flush()))
            else:
                got = []
                for _ in range(rng.randint(1, 6)):
                    if fast:
                        # the test's interrupt, from a loop callback (resumes the reader
                        # there) or, now and then, from this task (delivered next iteration)
                        if rng.random() < 0.3:
                            rxq._interrupt()
                        else:
                            loop.call_soon(rxq._interrupt)
                    elif link.mrx.pending() == 0 and link.mrx.burst is not None:
                        rxq.ready.set()  # the test's interrupt: wake a waiting stream
                    try:
                        packet = await asyncio.wait_for(anext(stream), 0.005)
                    except TimeoutError:
                        break
                    got.append(bytes(packet))
                    del packet  # a view into shared memory: valid until the next step only
                trace.append(
                    ("read", step, got, rxq.waits, rxq.empty_wakeups, link.signals(link.mrx))
                )
        trace.append(("slow", txq.slow))
        trace.append(("errors", [str(e) for e in errors]))
    finally:
        rxq._shut("done")
        txq._shut("done")
        link.mrx.release()
        link.close()
    return trace


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("polling_peer", [False, True], ids=["interrupts", "polling-peer"])
@pytest.mark.parametrize("fast", [False, True], ids=["wait", "fast-wait"])
async def test_queue_cores_behave_like_the_oracle(seed, polling_peer, fast):
    cython, python = (importlib.import_module(IMPLS[k]) for k in ("cython", "python"))
    mine = await run_script(cython, seed, polling_peer=polling_peer, fast=fast)
    assert mine == await run_script(python, seed, polling_peer=polling_peer, fast=fast)
    if fast:
        assert all(entry[3] == 0 for entry in mine if entry[0] == "read")  # never _wait()


@pytest.fixture(params=sorted(IMPLS))
def R(request):
    return importlib.import_module(IMPLS[request.param])


async def test_the_gate_stops_every_path(R):
    link = Link(R, log2=4, buffer_size=256, eventfds=True)
    Rx, Tx = queue_classes(R)
    errors: list = []
    rxq = Rx(0, link.mrx, errors.append)
    txq = Tx(0, link.stx, errors.append, asyncio.get_running_loop())
    try:
        assert not rxq.closed and not txq.closed
        rxq._shut("link down")
        txq._shut("link down")
        rxq._shut("again")  # the first reason stays
        assert rxq.closed_reason == "link down"
        with pytest.raises(DisconnectedError, match="link down"):
            rxq.recv_burst_nowait()
        with pytest.raises(DisconnectedError, match="link down"):
            await anext(aiter(rxq))
        slow = txq.send(b"x")
        assert type(slow).__name__ not in ("Completed", "YieldOnce")  # the subclass's path
        slow.close()
        assert txq.flush() == 0 and link.stx.staged == 0
    finally:
        link.close()


async def test_a_peer_error_is_reported_once_and_raised(R):
    link = Link(R, log2=4, buffer_size=256, eventfds=True)
    Rx, _ = queue_classes(R)
    errors: list = []
    rxq = Rx(0, link.mrx, errors.append)
    try:
        link.s_s2m.head = 3000
        with pytest.raises(PeerProtocolError, match="head moved by"):
            await anext(aiter(rxq))
        assert len(errors) == 1 and rxq.peer_broke_it
    finally:
        link.close()


async def test_a_sender_that_never_waits_yields_by_the_clock(R):
    """Every max_burst sends the sender looks at the clock; it gives the loop a turn once it
    has sent for _turn_ns since its last one (0: at every look; _yield_every 0: never)."""
    link = Link(R, log2=6, buffer_size=256, eventfds=True)
    _, Tx = queue_classes(R)
    txq = Tx(0, link.stx, [].append, asyncio.get_running_loop(), max_burst=16)
    assert txq._turn_ns == R.TURN_INTERVAL_NS == 200_000 and txq._yield_every == 16

    async def kinds(count: int, pause: float = 0.0) -> list[int]:
        yields = []
        for i in range(count):
            if i % 16 == 0:
                time.sleep(pause)
            awaitable = txq.send(b"%d" % i)
            if type(awaitable).__name__ == "YieldOnce":
                yields.append(i)
            await awaitable
            if i % 16 == 15:
                link.mrx.rx_burst()
                link.mrx.release()
        return yields

    try:
        txq._turn_ns = 0
        assert await kinds(48) == [15, 31, 47]
        txq._turn_ns = 10**9
        assert await kinds(48) == []  # sent for less than a second since the last turn
        txq._turn_ns = 1_000_000
        assert await kinds(48, pause=0.002) == [15, 31, 47]  # 2 ms between looks
        txq._yield_every = 0
        assert await kinds(48, pause=0.002) == []
    finally:
        link.close()


async def test_a_consumer_that_never_waits_yields_by_the_clock(R):
    """``async for`` is about to take a new burst without waiting: once the consumer has kept
    its loop for _turn_ns since its last turn, that step gives the loop one turn first, then
    takes and gives the packet (0: at every take; a wait in between counts as a turn)."""
    link = Link(R, log2=6, buffer_size=256, eventfds=True)
    Rx, _ = queue_classes(R)
    rxq = Rx(0, link.mrx, [].append)
    assert rxq._turn_ns == R.TURN_INTERVAL_NS
    stream = R.PacketStream(rxq, 4)

    async def kinds(packets: int, pause: float = 0.0) -> list[str]:
        link.stx.tx_burst([b"%d" % i for i in range(packets)])
        seen, got = [], []
        for _ in range(packets):
            time.sleep(pause)
            awaitable = stream.__anext__()
            seen.append(type(awaitable).__name__)
            got.append(bytes(await awaitable))
        assert got == [b"%d" % i for i in range(packets)]  # a turn loses nothing
        return seen

    try:
        rxq._turn_ns = 0
        assert await kinds(8) == ["PacketResume", "Completed", "Completed", "Completed"] * 2
        rxq._turn_ns = 10**9
        assert await kinds(8) == ["Completed"] * 8  # kept for less than a second
        rxq._turn_ns = 1_000_000
        assert (
            await kinds(8, pause=0.001)
            == ["PacketResume"] + ["Completed"] * 3 + ["PacketResume"] + ["Completed"] * 3
        )
    finally:
        link.close()


async def test_a_task_cancelled_in_its_turn_has_taken_nothing(R):
    """The turn comes before the take: a task cancelled during it (``wait_for`` around an
    ``async for`` step, say) loses no packet, and the next step gives it."""
    link = Link(R, log2=6, buffer_size=256, eventfds=True)
    Rx, _ = queue_classes(R)
    rxq = Rx(0, link.mrx, [].append)
    rxq._turn_ns = 0  # a turn at every take
    stream = R.PacketStream(rxq, 4)
    try:
        link.stx.tx_burst([b"a", b"b"])

        async def step():
            return bytes(await stream.__anext__())

        task = asyncio.ensure_future(step())
        await asyncio.sleep(0)  # the task is in its turn now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        del task
        rxq._turn_ns = 10**9
        assert [await step(), await step()] == [b"a", b"b"]
    finally:
        link.close()


async def test_queues_that_share_turns_count_one_clock(R):
    """A turn given through one queue (or a wait) is the loop's turn for every queue sharing
    its clock: a task that receives and sends yields once per interval, not once per queue."""
    link = Link(R, log2=6, buffer_size=256, eventfds=True)
    Rx, Tx = queue_classes(R)
    rxq = Rx(0, link.mrx, [].append)
    txq = Tx(0, link.mtx, [].append, asyncio.get_running_loop())
    lone = Tx(1, link.stx, [].append, asyncio.get_running_loop())
    try:
        txq._share_turns_with(rxq)
        rxq._turn_ns = 10**9
        assert txq._turn_ns == 10**9 and lone._turn_ns == R.TURN_INTERVAL_NS
        assert rxq._turn_now()  # the first look: no turn yet
        assert not txq._turn_now() and not rxq._turn_now()
        assert lone._turn_now()  # its own clock
        rxq._turn_ns = 0
        assert txq._turn_now()
        txq._turned()
        rxq._turn_ns = 10**9
        assert not rxq._turn_now()  # the wait on txq was the loop's turn
    finally:
        link.close()


async def test_a_signal_for_packets_already_taken_is_not_an_empty_wakeup(R):
    """A busy consumer takes packets before their signal is handled: that signal finds nothing
    new, but the peer did publish since its previous one, so it is not counted toward an
    interrupt storm. A signal with nothing published since the previous one is."""
    link = Link(R, log2=6, buffer_size=256, eventfds=True)
    Rx, _ = queue_classes(R)
    rxq = Rx(0, link.mrx, [].append)
    try:
        rxq._interrupt()  # nothing was ever published
        assert rxq.empty_wakeups == 1
        for _ in range(3):
            link.stx.tx_burst([b"a", b"b"])
            assert len(rxq.recv_burst_nowait(8)) == 2  # taken before the signal is handled
            rxq._interrupt()
            assert rxq.empty_wakeups == 1
            rxq._interrupt()  # again, with nothing published since
            assert rxq.empty_wakeups == 2
            rxq.empty_wakeups = 1
        link.stx.tx_burst([b"c"])
        rxq._interrupt()  # news: a wake-up, not empty
        rxq._interrupt()  # the same news, still unread: not empty either
        assert rxq.empty_wakeups == 1
    finally:
        link.close()


async def test_waiter_resumes_the_task_inside_a_loop_callback(R):
    """wake(True) from a loop callback runs the waiting task before the callback returns;
    from inside a task it is delivered on the next iteration instead."""
    loop = asyncio.get_running_loop()
    waiter = R.Waiter(loop)
    order: list[str] = []

    async def consumer():
        await waiter.arm()
        order.append("resumed")
        await waiter.arm()
        order.append("resumed again")

    task = asyncio.ensure_future(consumer())
    await asyncio.sleep(0)
    assert waiter.pending

    def callback():
        waiter.wake(True)
        order.append("callback returns")

    loop.call_soon(callback)
    await asyncio.sleep(0)
    assert order == ["resumed", "callback returns"]
    waiter.wake(True)  # from this task: no nested step, delivered on the next iteration
    order.append("woken from a task")
    await asyncio.wait_for(task, 1)
    assert order == ["resumed", "callback returns", "woken from a task", "resumed again"]


async def test_waiter_cancel_fail_and_one_task_at_a_time(R):
    loop = asyncio.get_running_loop()
    waiter = R.Waiter(loop)

    async def wait():
        await waiter.arm()

    task = asyncio.ensure_future(wait())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="already waiting"):
        waiter.arm()
    task.cancel("stop")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not waiter.pending and waiter.cancelled()
    # re-armed at once after a cancel: the late delivery went to the old task, not to us
    task = asyncio.ensure_future(wait())
    await asyncio.sleep(0)
    waiter.fail(DisconnectedError("gone"))
    with pytest.raises(DisconnectedError, match="gone"):
        await task
    # armed but not awaited yet: a wake-up in between is not lost
    waiter.arm()
    waiter.wake(True)
    await asyncio.wait_for(waiter, 1)


def test_interrupt_core_dispatches_each_edge_once_and_never_reads_the_eventfd(R):
    efds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(3)]
    epoll = select.epoll()
    calls: list[int] = []
    callbacks = {fd: functools.partial(calls.append, i) for i, fd in enumerate(efds)}
    for fd in efds:
        epoll.register(fd, select.EPOLLIN | select.EPOLLET)
    core = R.InterruptCore(epoll.fileno(), callbacks)
    try:
        core.ready()
        assert calls == []
        os.eventfd_write(efds[0], 1)
        os.eventfd_write(efds[2], 5)
        core.ready()
        assert sorted(calls) == [0, 2]
        core.ready()  # edges consumed: no second call for the same signals
        assert sorted(calls) == [0, 2]
        del callbacks[efds[2]]  # unwatched: its signals go nowhere
        os.eventfd_write(efds[2], 1)
        os.eventfd_write(efds[0], 1)
        core.ready()
        assert sorted(calls) == [0, 0, 2]
        # the counters were never read (a peer's eventfd is never touched)
        assert os.eventfd_read(efds[0]) == 2 and os.eventfd_read(efds[2]) == 6
        with pytest.raises(BlockingIOError):
            os.eventfd_read(efds[1])
    finally:
        core.close()
        core.ready()  # closed: nothing, no error
        epoll.close()
        for fd in efds:
            os.close(fd)
