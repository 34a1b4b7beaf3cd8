#!/usr/bin/env python3
"""memif_aio against dpdk-testpmd: Mpps/Gbps per direction, API and loop, side by side with
testpmd<->testpmd measured in the same run (the C ceiling on this machine).

    python benchmarks/bench_dpdk.py [--duration 2] [--sizes 64,512,1500] [--json out.json]

One CPU per side: testpmd (both of its lcores) on CPU 0, this process on CPU 1.
  rx   testpmd --forward-mode=txonly (server)  ->  memif_aio slave receives
  tx   memif_aio slave sends                  ->  testpmd --forward-mode=rxonly (server)
  echo memif_aio slave sends 256 in flight    ->  testpmd --forward-mode=io -> back
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid

import uvloop

import memif_aio

PMD_CPU, OUR_CPU = 0, 1


class Testpmd:
    def __init__(self, role: str, socket: str, mode: str, size: int, cpu: int) -> None:
        self.lines: list[str] = []
        vdev = f"net_memif0,role={role},id=0,socket={socket.lstrip('@')},socket-abstract=yes"
        args = [
            shutil.which("dpdk-testpmd") or "dpdk-testpmd",
            f"--lcores=0@{cpu},1@{cpu}",
            "--no-huge",
            "-m",
            "1024",
            "--no-pci",
            f"--file-prefix=bench{uuid.uuid4().hex[:8]}",
            f"--vdev={vdev}",
            "--",
            "--no-mlockall",
            "--total-num-mbufs=16384",
            f"--forward-mode={mode}",
            f"--txpkts={size}",
            "--stats-period",
            "1",
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_listening(self, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(re.search(r"Port 0: [0-9A-F:]{17}", line) for line in self.lines):
                time.sleep(0.3)
                return
            time.sleep(0.05)
        raise RuntimeError("testpmd did not start:\n" + "".join(self.lines[-20:]))

    def rate(self, key: str, seconds: float) -> float:
        """Median of testpmd's per-second ``key`` (Rx-pps/Tx-pps) over the next ``seconds``."""
        start = len(self.lines)
        time.sleep(seconds)
        values = [
            int(m.group(1))
            for line in self.lines[start:]
            if (m := re.search(rf"{key}:\s+(\d+)", line))
        ]
        return statistics.median(values) if values else 0.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def ceiling(size: int, seconds: float) -> float:
    """testpmd txonly (server, CPU 0) -> testpmd rxonly (client, CPU 1), in pps."""
    path = f"@/tmp/bench-c-{uuid.uuid4().hex[:8]}"
    server = Testpmd("server", path, "txonly", size, PMD_CPU)
    try:
        server.wait_listening()
        client = Testpmd("client", path, "rxonly", size, OUR_CPU)
        try:
            client.rate("Rx-pps", 2)  # link up, warm up
            return client.rate("Rx-pps", seconds)
        finally:
            client.stop()
    finally:
        server.stop()


# -- our side: each returns packets per second ---------------------------------------------


async def rx(iface: memif_aio.Interface, api: str, size: int, seconds: float) -> float:
    rxq = iface.rx_queues[0]
    count = 0
    stop = time.perf_counter() + 0.5  # warm-up
    if api == "burst":
        async for _ in rxq.bursts():
            if time.perf_counter() > stop:
                break
        start = time.perf_counter()
        stop = start + seconds
        async for burst in rxq.bursts():
            count += len(burst)
            if time.perf_counter() > stop:
                break
    else:
        async for _ in rxq:
            if time.perf_counter() > stop:
                break
        start = time.perf_counter()
        stop = start + seconds
        async for _ in rxq:
            count += 1
            if count & 1023 == 0 and time.perf_counter() > stop:
                break
    return count / (time.perf_counter() - start)


async def tx(iface: memif_aio.Interface, api: str, size: int, seconds: float) -> float:
    txq = iface.tx_queues[0]
    packet = bytes(size)
    batch = [packet] * 256
    count = 0
    start = time.perf_counter()
    stop = start + seconds
    if api == "burst":
        while time.perf_counter() < stop:
            count += await txq.send_burst(batch)
    else:
        send = txq.send
        while True:
            for _ in range(1024):
                await send(packet)
            count += 1024
            if time.perf_counter() > stop:
                break
    return count / (time.perf_counter() - start)


async def echo(iface: memif_aio.Interface, api: str, size: int, seconds: float) -> float:
    rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
    packet = bytes(size)
    count = 0
    start = time.perf_counter() + 0.5
    stop = start + seconds
    await txq.send_burst([packet] * 256)  # the packets in flight
    if api == "burst":
        async for burst in rxq.bursts():
            n = len(burst)
            if time.perf_counter() >= start:
                count += n
            await txq.send_burst([packet] * n)
            if time.perf_counter() > stop:
                break
    else:
        send = txq.send
        async for _ in rxq:
            await send(packet)
            count += 1
            if count & 1023 == 0 and time.perf_counter() > stop:
                break
        seconds = time.perf_counter() - start  # per-packet count includes the warm-up
        return count / (seconds + 0.5)
    return count / (time.perf_counter() - start)


SCENARIOS = {"rx": ("txonly", rx), "tx": ("rxonly", tx), "echo": ("io", echo)}


def measure(scenario: str, size: int, api: str, loop: str, seconds: float) -> float:
    mode, fn = SCENARIOS[scenario]
    path = f"@/tmp/bench-{uuid.uuid4().hex[:8]}"
    pmd = Testpmd("server", path, mode, size, PMD_CPU)
    try:
        pmd.wait_listening()

        async def run() -> float:
            async with memif_aio.connect(path, timeout=20) as iface:
                if scenario == "echo":  # let the peer finish its side of the handshake
                    await asyncio.sleep(0.3)
                return await fn(iface, api, size, seconds)

        return uvloop.run(run()) if loop == "uvloop" else asyncio.run(run())
    finally:
        pmd.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--sizes", default="64,512,1500")
    parser.add_argument("--scenarios", default="rx,tx,echo")
    parser.add_argument("--apis", default="burst,packet")
    parser.add_argument("--loops", default="uvloop,asyncio")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if shutil.which("dpdk-testpmd") is None:
        print("dpdk-testpmd not found (apt-get install dpdk-dev)", file=sys.stderr)
        return 1
    os.sched_setaffinity(0, {OUR_CPU})
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    ceilings = {}
    for size in sizes:
        ceilings[size] = ceiling(size, args.duration)
        print(f"ceiling testpmd->testpmd {size:>5} B: {ceilings[size] / 1e6:6.2f} Mpps", flush=True)
    print()
    header = (
        f"{'scenario':<6} {'size':>5} {'api':<7} {'loop':<8} {'Mpps':>7} {'Gbps':>7} {'vs C':>6}"
    )
    print(header)
    print("-" * len(header))
    for scenario in args.scenarios.split(","):
        for size in sizes:
            for api in args.apis.split(","):
                for loop in args.loops.split(","):
                    pps = measure(scenario, size, api, loop, args.duration)
                    ratio = pps / ceilings[size] if ceilings[size] else 0.0
                    results.append(
                        {
                            "scenario": scenario,
                            "size": size,
                            "api": api,
                            "loop": loop,
                            "mpps": pps / 1e6,
                            "gbps": pps * size * 8 / 1e9,
                            "ceiling_mpps": ceilings[size] / 1e6,
                            "ratio": ratio,
                        }
                    )
                    print(
                        f"{scenario:<6} {size:>5} {api:<7} {loop:<8} {pps / 1e6:7.2f} "
                        f"{pps * size * 8 / 1e9:7.2f} {ratio:6.1%}",
                        flush=True,
                    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {"ceilings_mpps": {s: c / 1e6 for s, c in ceilings.items()}, "results": results},
                out,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
