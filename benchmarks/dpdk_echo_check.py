#!/usr/bin/env python3
"""Windowed echo through ``dpdk-testpmd --forward-mode=io`` (memif server) with every packet
checked: numbered packets of random sizes, a window of packets in flight; prints what came
back, what was lost, anything corrupt, glued, duplicated or reordered, and testpmd's own
TX-dropped count. The scenario of DPDK's transmit off-by-one (README, "Interop notes").

    python benchmarks/dpdk_echo_check.py [--seeds 1,2,3] [--count 20000] [--window 400]
        [--buffer-size 2048] [--dpdk-workaround auto|on|off] [--sizes 60-9000]
        [--with-one-buffer]

Sizes of exactly one buffer are left out unless ``--with-one-buffer`` (the one length the
stale-NEXT rule for DPDK < 23.03 cannot tell from the start of a chain).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid

import memif_aio
from memif_aio.cli.perf import Numbered, windowed_echo
from memif_aio.testing.testpmd import Testpmd, find_testpmd


async def check(args: argparse.Namespace, seed: int) -> str:
    low, high = (int(v) for v in args.sizes.split("-"))
    exclude = () if args.with_one_buffer else (args.buffer_size,)
    packets = Numbered(seed, args.count, low, high, exclude=exclude)
    path = f"@/tmp/memif-aio-echo-check-{uuid.uuid4().hex[:8]}"
    pmd = await asyncio.to_thread(Testpmd, role="server", socket=path, forward_mode="io", cpu=0)
    try:
        await asyncio.to_thread(pmd.wait_listening)
        async with memif_aio.connect(
            path, timeout=20, buffer_size=args.buffer_size, dpdk_workaround=args.dpdk_workaround
        ) as iface:
            defences = ", ".join(iface.details().dpdk_defences) or "none"
            txq, rxq = iface.tx_queues[0], iface.rx_queues[0]
            try:
                result = await windowed_echo(txq, rxq, packets, args.window)
                outcome = "link up" if iface.connected else "link down"
            except memif_aio.MemifError as exc:
                result, outcome = None, f"link down: {exc.reason}"
            stats = iface.stats()
            await asyncio.to_thread(pmd.stop)  # while the link is up: its counters are there
    finally:
        await asyncio.to_thread(pmd.stop)
    dropped = pmd.forward_stats()["tx_dropped"]
    head = f"seed {seed} (defences: {defences}): "
    counters = f"rx_errors {stats['rx_errors']}, rx_drops {stats['rx_drops']}"
    if result is None:
        return f"{head}{outcome}; testpmd TX-dropped {dropped}; {counters}"
    return (
        f"{head}{result.delivered}/{len(packets)} back exact and in order, {result.lost} lost, "
        f"{len(result.bad)} bad{': ' + result.bad[0] if result.bad else ''}; testpmd "
        f"TX-dropped {dropped}; {outcome}; {counters}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=400, help="packets in flight")
    parser.add_argument("--buffer-size", type=int, default=2048)
    parser.add_argument("--dpdk-workaround", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--sizes", default="60-9000", help="packet sizes, MIN-MAX bytes")
    parser.add_argument("--with-one-buffer", action="store_true")
    args = parser.parse_args()
    if find_testpmd() is None:
        print("dpdk-testpmd not found (apt-get install dpdk-dev)", file=sys.stderr)
        return 1
    for seed in (int(s) for s in args.seeds.split(",")):
        print(memif_aio.run(check(args, seed), use_uvloop=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
