#!/usr/bin/env python3
"""memif_aio against dpdk-testpmd: Mpps/Gbps per direction, packet size, API and loop, next to
testpmd<->testpmd measured in the same run (the C ceiling on this machine), plus 64-byte
ping-pong latency. The longer sibling of `memif-aio bench --quick`.

    python benchmarks/bench_dpdk.py [--duration 2] [--sizes 64,512,1500] [--out DIR]

One CPU per side: the peer on CPU 0, this process on CPU 1.
  rx   testpmd --forward-mode=txonly  ->  memif_aio slave receives
  tx   memif_aio slave sends          ->  testpmd --forward-mode=rxonly
  echo memif_aio slave sends, 768 packets in flight -> testpmd --forward-mode=io -> back
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memif_aio.cli import bench
from memif_aio.testing.testpmd import find_testpmd


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per figure")
    parser.add_argument("--sizes", default="64,512,1500")
    parser.add_argument("--out", default="bench-results/dpdk", help="json/md/png go here")
    args = parser.parse_args()
    if find_testpmd() is None:
        print("dpdk-testpmd not found (apt-get install dpdk-dev)", file=sys.stderr)
        return 1
    config = bench.BenchConfig(
        sizes=tuple(int(s) for s in args.sizes.split(",")), duration=args.duration
    )
    report = bench.run(config, progress=lambda line: print(line, flush=True))
    written = bench.write(report, Path(args.out))
    print()
    print(bench.to_markdown(report))
    print("wrote", ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
