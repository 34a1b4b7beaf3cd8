"""``memif-aio tap`` forwarding rate, with and without recording to a pcapng file.

One ``dpdk-testpmd`` with two memif ports (servers) in ``flowgen`` mode: each port transmits
generated packets and drains what it receives. The tap sits between the two ports (a slave
toward each), forwards both directions, and with ``-w`` records both. testpmd runs on CPU 0,
the tap on CPU 1. The tap's own counters give the rates; its CPU time (from /proc) gives
the cost per packet, which tells whether the tap or testpmd was the limit (a tap using less
than a whole CPU was waiting for packets).

    python benchmarks/bench_tap.py [--seconds 8] [--sizes 64,1500] [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid

TICKS = os.sysconf("SC_CLK_TCK")


def testpmd(a: str, b: str, size: int) -> subprocess.Popen:
    binary = shutil.which("dpdk-testpmd")
    if binary is None:
        raise SystemExit("dpdk-testpmd not found (Debian package dpdk-dev)")
    return subprocess.Popen(
        [binary, "--lcores=0@0,1@0", "--no-huge", "-m", "1024", "--no-pci",
         f"--file-prefix=benchtap{uuid.uuid4().hex[:8]}",
         f"--vdev=net_memif0,role=server,id=0,socket={a[1:]}",
         f"--vdev=net_memif1,role=server,id=0,socket={b[1:]}",
         "--", "--no-mlockall", "--total-num-mbufs=32768", "--forward-mode=flowgen",
         f"--txpkts={size}", "--stats-period", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def run(size: int, loop: str, write: str | None, seconds: float) -> dict:
    a, b = (f"@/tmp/bench-tap-{side}-{uuid.uuid4().hex[:8]}" for side in "ab")
    pmd = testpmd(a, b, size)
    try:
        time.sleep(2)  # its listeners
        cmd = ["taskset", "-c", "1", sys.executable, "-m", "memif_aio"]
        cmd += ["--uvloop"] if loop == "uvloop" else []
        cmd += ["tap", a, b, "--role-b", "slave"] + (["-w", write] if write else [])
        tap = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(tap.stderr), daemon=True)
        reader.start()
        end = time.monotonic() + 20
        while sum("link up" in line for line in lines) < 2 and time.monotonic() < end:
            time.sleep(0.01)
        start_cpu, start = cpu_seconds(tap.pid), time.monotonic()
        time.sleep(seconds)
        cpu = cpu_seconds(tap.pid) - start_cpu
        elapsed = time.monotonic() - start
        tap.terminate()
        tap.wait(30)
        reader.join(5)
    finally:
        pmd.terminate()
        pmd.wait(30)
    summary = next(line for line in reversed(lines) if "forwarded" in line)
    counts = [int(n) for n in re.findall(r"(?:A->B|B->A) (\d+) packets", summary)]
    size_on_disk = os.path.getsize(write) if write else 0
    if write:
        os.unlink(write)
    return {
        "mpps": [n / elapsed / 1e6 for n in counts],
        "cpu": cpu / elapsed,
        "ns_per_packet": cpu / sum(counts) * 1e9 if sum(counts) else float("nan"),
        "file_gb": size_on_disk / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--sizes", default="64,1500")
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--dir", default="/dev/shm", help="where -w writes (default /dev/shm)")
    args = parser.parse_args()
    print("| size | loop | recording | A->B Mpps | B->A Mpps | tap CPU | ns/packet |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for size in map(int, args.sizes.split(",")):
        for loop in args.loops.split(","):
            for write in (None, os.path.join(args.dir, f"bench-tap-{os.getpid()}.pcapng")):
                r = run(size, loop, write, args.seconds)
                label = f"-w {args.dir}" if write else "none"
                print(
                    f"| {size} | {loop} | {label} | {r['mpps'][0]:.2f} | {r['mpps'][1]:.2f} | "
                    f"{r['cpu'] * 100:.0f}% | {r['ns_per_packet']:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
