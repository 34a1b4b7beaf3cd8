"""pcap/pcapng throughput: memif_aio.pcap against dpkt and scapy (when installed).

Writer: ``PcapngWriter.write_burst`` with bursts of 256 packets, from a list of ``bytes`` and
from a received memif ``Burst`` (the capture path: headers by numpy, packet bytes gathered in
C by ``Burst.gather_into``), into a file in a temporary directory (``--dir``, default the
system's; /dev/shm keeps the disk out of it). Reader: a file of ``--count`` packets read back
packet by packet and by batches. dpkt and scapy are optional: their rows are skipped when they
are not importable. Each figure is the best of ``--runs`` runs.

    python benchmarks/bench_pcap.py [--count 200000] [--runs 3] [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import os
import struct
import tempfile
import time
from collections.abc import Callable

import numpy as np
from bench_ring import Loopback

from memif_aio import _ring as R
from memif_aio.pcap import FLAG_INBOUND, PcapngWriter, open_capture

BURST = 256
STAMP = 1_700_000_000_000_000_000


def best(fn: Callable[[], int], runs: int) -> float:
    """Packets per second of the fastest run (fn returns how many packets it handled)."""
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        packets = fn()
        rates.append(packets / (time.perf_counter() - start))
    return max(rates)


def payloads(size: int) -> list[bytes]:
    rng = np.random.default_rng(size)
    return [rng.bytes(size) for _ in range(BURST)]


def write_file(path: str, packets: list[bytes], count: int, **burst_options) -> int:
    with PcapngWriter(path) as writer:
        iface = writer.add_interface(name="bench")
        for i in range(count // BURST):
            writer.write_burst(iface, packets, STAMP + i * 1000, **burst_options)
    return count // BURST * BURST


def write_classic_pcap(path: str, packets: list[bytes], count: int) -> None:
    """A nanosecond classic pcap (the reader's other format)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1))
        for i in range(count):
            data = packets[i % len(packets)]
            f.write(struct.pack("<IIII", 1_700_000_000 + i // 1000, i, len(data), len(data)))
            f.write(data)


def bench_writer(size: int, count: int, runs: int, folder: str) -> dict[str, float]:
    packets = payloads(size)
    path = os.path.join(folder, f"bench-write-{size}.pcapng")
    out = {}
    out["list of bytes"] = best(lambda: write_file(path, packets, count), runs)
    out["list, epb_flags"] = best(
        lambda: write_file(path, packets, count, flags=FLAG_INBOUND), runs
    )
    loop = Loopback(R, 10, 2048, BURST)
    try:
        loop.stx.tx_burst(packets)
        burst = loop.mrx.rx_burst()
        assert len(burst) == BURST
        out["memif Burst"] = best(lambda: write_file(path, burst, count), runs)
        out["memif Burst, epb_flags"] = best(
            lambda: write_file(path, burst, count, flags=FLAG_INBOUND), runs
        )
        burst.release()
    finally:
        loop.close()
    try:
        import dpkt
    except ImportError:
        pass
    else:

        def dpkt_write() -> int:
            with open(path, "wb") as f:
                writer = dpkt.pcapng.Writer(f, snaplen=262144)
                n = count // BURST * BURST
                writer.writepkts((1.7e9 + i * 1e-6, packets[i % BURST]) for i in range(n))
            return n

        out["dpkt pcapng.Writer.writepkts"] = best(dpkt_write, runs)
    os.unlink(path)
    return out


def bench_reader(size: int, count: int, runs: int, folder: str) -> dict[str, float]:
    packets = payloads(size)
    ng = os.path.join(folder, f"bench-read-{size}.pcapng")
    classic = os.path.join(folder, f"bench-read-{size}.pcap")
    n = write_file(ng, packets, count)
    write_classic_pcap(classic, packets, n)
    out = {}

    def ours(path: str) -> Callable[[], int]:
        def read() -> int:
            with open_capture(path) as reader:
                return sum(1 for _ in reader)

        return read

    def ours_batches() -> int:
        with open_capture(ng) as reader:
            return sum(len(batch) for batch in reader.batches(BURST))

    out["pcapng, per packet"] = best(ours(ng), runs)
    out["pcapng, batches of 256"] = best(ours_batches, runs)
    out["pcap (ns), per packet"] = best(ours(classic), runs)
    try:
        import dpkt
    except ImportError:
        pass
    else:

        def dpkt_read(reader_class, path: str) -> Callable[[], int]:
            def read() -> int:
                with open(path, "rb") as f:
                    return sum(1 for _ in reader_class(f))

            return read

        out["dpkt pcapng.Reader"] = best(dpkt_read(dpkt.pcapng.Reader, ng), runs)
        out["dpkt pcap.Reader"] = best(dpkt_read(dpkt.pcap.Reader, classic), runs)
    try:
        from scapy.utils import RawPcapNgReader, RawPcapReader
    except ImportError:
        pass
    else:

        def scapy_read(reader_class, path: str) -> Callable[[], int]:
            def read() -> int:
                with reader_class(path) as reader:
                    return sum(1 for _ in reader)

            return read

        out["scapy RawPcapNgReader"] = best(scapy_read(RawPcapNgReader, ng), runs)
        out["scapy RawPcapReader"] = best(scapy_read(RawPcapReader, classic), runs)
    os.unlink(ng)
    os.unlink(classic)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000, help="packets per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the files go (default: tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for title, bench in (("write", bench_writer), ("read", bench_reader)):
            for size in (64, 1500):
                for name, pps in bench(size, args.count, args.runs, folder).items():
                    gbps = pps * size * 8 / 1e9
                    print(f"{title:5} {size:5} B  {name:30} {pps / 1e6:6.2f} Mpps {gbps:7.2f} Gbps")


if __name__ == "__main__":
    main()
