"""Per-packet API microbenchmark, one process, no peer: ns per packet of each step.

Slave TxRing -> master RxRing over one memfd pair mapped twice (as two processes would), 64-byte
packets by default. Each figure is the best of a few runs of ``--count`` packets:

  rx_burst+tx_burst   the burst floor: tx_burst(list of 256) + rx_burst + release, per packet
  burst[i]            one packet memoryview out of a received burst
  segments(i)         the one-element list of segment views
  alloc(1)+commit     one zero-copy tx buffer, filled and published
  async for (rxq)     one step of ``async for pkt in rxq`` (includes 1/256 of a tx_burst refill)
  await send          ``await txq.send(pkt)`` (includes 1/256 of an rx_burst drain)
  echo (rx+send)      ``async for pkt in rxq: await txq.send(pkt)`` over two ring pairs
  echo burst (views)  ``async for burst in rxq.bursts(): await txq.send_burst([views])``
  echo burst (C)      ``... await txq.send_burst(burst)``: ring to ring in C

    python benchmarks/bench_packet.py [--size 64] [--count 200000] [--loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench_ring import Loopback

from memif_aio import _ring as R
from memif_aio.interrupts import InterruptSet
from memif_aio.queues import RxQueue, TxQueue

BURST = 256


def loopback() -> Loopback:
    """Slave tx -> master rx (S2M) and master tx -> slave rx (M2S) in this process, with
    eventfds (queues wait on them)."""
    return Loopback(R, 10, 2048, BURST, eventfds=True)


def best(fn, runs: int = 5) -> float:
    return min(fn() for _ in range(runs))


def bench_sync(pair: Loopback, packets: list[bytes], count: int) -> dict[str, float]:
    stx, mrx = pair.stx, pair.mrx
    rounds = max(1, count // BURST)
    out = {}

    def floor() -> float:
        t = time.perf_counter_ns()
        for _ in range(rounds):
            stx.tx_burst(packets)
            mrx.rx_burst()
            mrx.release()
        return (time.perf_counter_ns() - t) / (rounds * BURST)

    out["rx_burst+tx_burst"] = best(floor)
    stx.tx_burst(packets)
    burst = mrx.rx_burst()
    n = len(burst)

    def getitem() -> float:
        t = time.perf_counter_ns()
        for _ in range(rounds):
            for i in range(n):
                burst[i]
        return (time.perf_counter_ns() - t) / (rounds * n)

    def segments() -> float:
        t = time.perf_counter_ns()
        for _ in range(rounds):
            for i in range(n):
                burst.segments(i)
        return (time.perf_counter_ns() - t) / (rounds * n)

    out["burst[i]"] = best(getitem)
    out["segments(i)"] = best(segments)
    mrx.release()

    def alloc_commit() -> float:
        t = time.perf_counter_ns()
        for _ in range(rounds):
            for _ in range(BURST):
                (buf,) = stx.alloc(1)
                buf[:4] = b"abcd"
                stx.commit((64,))
            mrx.rx_burst()
            mrx.release()
        return (time.perf_counter_ns() - t) / (rounds * BURST)

    out["alloc(1)+commit"] = best(alloc_commit)
    return out


async def bench_async(pair: Loopback, packets: list[bytes], count: int) -> dict[str, float]:
    out = {}
    interrupts = InterruptSet(asyncio.get_running_loop())
    rxq = RxQueue(0, pair.mrx, pair.efds[0], interrupts, lambda exc: None)
    txq = TxQueue(0, pair.stx, lambda exc: None)
    stx, mrx = pair.stx, pair.mrx

    async def rx_step() -> float:
        stx.tx_burst(packets)
        got = 0
        t = time.perf_counter_ns()
        async for _pkt in rxq:
            got += 1
            if got % BURST == 0:
                if got >= count:
                    break
                stx.tx_burst(packets)
        return (time.perf_counter_ns() - t) / got

    async def send_step() -> float:
        pkt = packets[0]
        t = time.perf_counter_ns()
        for i in range(count):
            await txq.send(pkt)
            if i % BURST == BURST - 1:
                await asyncio.sleep(0)  # let a scheduled flush run
                mrx.rx_burst()
                mrx.release()
        el = time.perf_counter_ns() - t
        await asyncio.sleep(0)
        mrx.rx_burst()
        mrx.release()
        return el / count

    out["await send"] = min([await send_step() for _ in range(3)])
    out["async for (rxq)"] = min([await rx_step() for _ in range(3)])
    rxq._close("bench")
    txq._close("bench")
    interrupts.close()
    return out


async def bench_echo(packets: list[bytes], count: int, mode: str = "packet") -> float:
    """Slave rx -> echo -> slave tx, the master side driven by bursts."""
    pair = loopback()
    try:
        interrupts = InterruptSet(asyncio.get_running_loop())
        rxq = RxQueue(0, pair.srx, pair.efds[1], interrupts, lambda exc: None)
        txq = TxQueue(0, pair.stx, lambda exc: None)
        mtx, mrx = pair.mtx, pair.mrx

        def refill() -> None:
            mrx.rx_burst()
            mrx.release()
            mtx.tx_burst(packets)

        mtx.tx_burst(packets)
        got = 0
        t = time.perf_counter_ns()
        if mode == "packet":
            async for pkt in rxq:
                await txq.send(pkt)
                got += 1
                if got % BURST == 0:
                    if got >= count:
                        break
                    await asyncio.sleep(0)
                    refill()
            del pkt  # a view pins the mapping
        else:
            async for burst in rxq.bursts():
                if mode == "views":
                    await txq.send_burst([burst[i] for i in range(len(burst))])
                else:
                    await txq.send_burst(burst)
                got += len(burst)
                if got >= count:
                    break
                refill()
            del burst
        el = time.perf_counter_ns() - t
        rxq._close("bench")
        txq._close("bench")
        interrupts.close()
        return el / got
    finally:
        pair.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = ap.parse_args()
    packets = [bytes([i & 0xFF]) * args.size for i in range(BURST)]
    pair = loopback()
    try:
        res = bench_sync(pair, packets, args.count)
        if args.loop == "uvloop":
            import uvloop

            runner = uvloop.run
        else:
            runner = asyncio.run
        res.update(runner(bench_async(pair, packets, args.count)))
    finally:
        pair.close()
    # Side by side, interleaved, so the machine's noise hits all three alike.
    echoes = {"echo (rx+send)": "packet", "echo burst (views)": "views", "echo burst (C)": "c"}
    times: dict[str, list[float]] = {name: [] for name in echoes}
    for _ in range(3):
        for name, mode in echoes.items():
            times[name].append(runner(bench_echo(packets, args.count, mode)))
    res.update({name: min(values) for name, values in times.items()})
    print(f"{args.size}-byte packets, loop {args.loop}: ns/packet (Mpps)")
    for name, ns in res.items():
        print(f"  {name:<20}{ns:8.1f} ns  {1e3 / ns:6.2f} Mpps")


if __name__ == "__main__":
    main()
