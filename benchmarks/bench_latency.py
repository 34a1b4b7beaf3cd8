"""Receive modes and latency: RTT per mode beside the raw eventfd floor, idle CPU, fairness.

    .venv/bin/python benchmarks/bench_latency.py [--quick] [--json] [--loop asyncio]

Two memif_aio processes (public API), 64-byte ping-pong with one packet in flight, both sides
in the same rx mode (interrupt, polling, adaptive; polling and adaptive also with the GIL held
while spinning), both pinned to one CPU ("same") and to two ("split"), each next to the raw
eventfd ping-pong floor measured in the same run and placement. Then each mode on an idle
connected link (CPU % of each process), and a sender's fairness: the longest gap of a 100 µs
timer on the sender's loop during 100 000 ``await txq.send()``, with the periodic yield and
without it. The measuring lives in ``memif_aio.cli.rtt``; this prints the tables.
"""

from __future__ import annotations

import argparse
import json
import sys

from memif_aio.cli.rtt import RttConfig, format_report, measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds, not a minute)")
    parser.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--count", type=int, help="round trips per mode and placement")
    parser.add_argument("--spin", type=float, help="rxq.spin in seconds (library default)")
    parser.add_argument("--modes", help="comma-separated subset of interrupt,polling,adaptive")
    parser.add_argument("--placements", help="same, split or same,split")
    parser.add_argument("--no-idle", action="store_true")
    parser.add_argument("--no-fairness", action="store_true")
    args = parser.parse_args()
    config = RttConfig.quick() if args.quick else RttConfig()
    config.loop = args.loop
    config.spin = args.spin
    if args.count:
        config.count = config.floor_count = args.count
    if args.modes:
        config.modes = tuple(args.modes.split(","))
    if args.placements:
        config.placements = tuple(args.placements.split(","))
    if args.no_idle:
        config.idle_seconds = 0
    if args.no_fairness:
        config.fair_packets = 0

    def progress(text: str) -> None:
        print(f"  {text}", file=sys.stderr, flush=True)

    report = measure(config, progress)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_report(report))


if __name__ == "__main__":
    main()
