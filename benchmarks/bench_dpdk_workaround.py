#!/usr/bin/env python3
"""What the DPDK defence costs on the burst path: ``dpdk_workaround="on"`` against ``"off"``,
alternating in one run against the same dpdk-testpmd server (this process on CPU 1, testpmd
on CPU 0). Medians of ``--rounds`` measurements of ``--seconds`` each.

    python benchmarks/bench_dpdk_workaround.py [--rounds 5] [--seconds 1] [--sizes 64,1500]

  rx    testpmd --forward-mode=txonly -> memif_aio slave, ``async for burst in rxq.bursts()``
  echo  memif_aio slave -> testpmd --forward-mode=io -> back: bursts, 768 packets in flight

Packets fit one buffer (2048 B), so DPDK never chains them and "off" is safe here: the figures
compare only our receive path's extra work (one slot kept back, empty slots stepped over).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import uuid

import memif_aio
from memif_aio.cli import bench, perf
from memif_aio.testing.testpmd import Testpmd, find_testpmd

MODES = ("off", "on")


def measure(path: str, mode: str, scenario: str, size: int, seconds: float) -> float:
    async def session() -> float:
        async with memif_aio.connect(
            path, timeout=20, dpdk_workaround=mode, reconnect_interval=0.2
        ) as iface:
            assert bool(iface.details().dpdk_defences) == (mode == "on")
            await asyncio.sleep(0.2)  # let testpmd finish its side of the link-up
            if scenario == "rx":
                result = await perf.receive_rate(iface, size, "burst", seconds)
            else:
                result = await perf.echo_throughput(iface, size, "burst", seconds)
            stats = iface.stats()
            assert stats["rx_errors"] == 0, stats
            return result.mpps

    return memif_aio.run(session())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--sizes", default="64,1500")
    args = parser.parse_args()
    if find_testpmd() is None:
        print("dpdk-testpmd not found (apt-get install dpdk-dev)", file=sys.stderr)
        return 1
    bench._pin(bench.OUR_CPU)
    print("| scenario | size | off Mpps | on Mpps | on/off | off runs | on runs |")
    print("|---|---:|---:|---:|---:|---|---|")
    for scenario, forward in (("rx", "txonly"), ("echo", "io")):
        for size in (int(s) for s in args.sizes.split(",")):
            path = f"@/tmp/memif-aio-bench-dpdk-{uuid.uuid4().hex[:8]}"
            runs: dict[str, list[float]] = {mode: [] for mode in MODES}
            with Testpmd(
                role="server", socket=path, forward_mode=forward, txpkts=size, cpu=bench.PEER_CPU
            ) as pmd:
                pmd.wait_listening()
                for r in range(args.rounds):
                    for mode in MODES if r % 2 == 0 else MODES[::-1]:
                        runs[mode].append(measure(path, mode, scenario, size, args.seconds))
            off, on = (statistics.median(runs[mode]) for mode in MODES)
            print(
                f"| {scenario} | {size} | {off:.2f} | {on:.2f} | {on / off:.3f} | "
                f"{' '.join(f'{v:.2f}' for v in runs['off'])} | "
                f"{' '.join(f'{v:.2f}' for v in runs['on'])} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
