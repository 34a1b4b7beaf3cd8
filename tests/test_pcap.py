"""memif_aio.pcap: what we write, the real tshark reads; what Wireshark's tools write, we read.

tshark (Debian package, installed by ``make test``) is the oracle: every file written here is
read back by it (count, lengths, nanosecond timestamps, bytes, interface ids and names,
direction flags, comments), and files made by text2pcap, editcap and dumpcap, or synthesised
here in both byte orders with every timestamp resolution, are read by our reader and compared
with tshark's reading of the same file. Malformed and truncated input must raise
``CaptureFormatError`` (a ``ValueError``), never anything else and never allocate much.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memif_aio import pcap
from memif_aio.errors import CaptureFormatError, MemifError
from memif_aio.pcap import (
    DEFAULT_SNAPLEN,
    FLAG_INBOUND,
    FLAG_OUTBOUND,
    CaptureReader,
    PcapngWriter,
    open_capture,
    read_all,
)

T0 = 1_700_000_000_123_456_789  # ns since the epoch


# ------------------------------------------------------------------------------- tshark


def wireshark_tool(tshark_bin: str, name: str) -> str:
    """editcap, text2pcap, capinfos, dumpcap: installed with tshark (wireshark-common)."""
    path = shutil.which(name) or str(Path(tshark_bin).with_name(name))
    assert os.access(path, os.X_OK), f"{name} missing next to {tshark_bin}"
    return path


def run_tool(*args: str, stdin: bytes | None = None, timeout: float = 120) -> bytes:
    proc = subprocess.run(args, input=stdin, capture_output=True, timeout=timeout)
    errors = [
        line
        for line in proc.stderr.decode(errors="replace").splitlines()
        if line.strip("- ") and "Running as user" not in line  # text2pcap -q prints "-----"
    ]
    assert proc.returncode == 0 and not errors, f"{args[0]} failed ({proc.returncode}): {errors}"
    return proc.stdout


def ns_of(epoch: str) -> int:
    seconds, _, fraction = epoch.partition(".")
    return int(seconds) * 1_000_000_000 + int(fraction.ljust(9, "0")[:9])


def tshark_read(tshark_bin: str, path: str = "-", stdin: bytes | None = None) -> list[dict]:
    """Every record tshark sees in the file, as plain values (None where tshark shows none)."""
    out = run_tool(
        tshark_bin, "-r", path, "-T", "json", "-x", "-J", "frame pkt_comment", stdin=stdin
    )
    records = []
    for item in json.loads(out or b"[]"):
        layers = item["_source"]["layers"]
        frame = layers["frame"]
        flags = frame.get("frame.packet_flags_tree", {}).get("frame.packet_flags_direction")
        records.append(
            {
                # A classic pcap has neither: one section, one interface.
                "section": int(frame.get("frame.section_number", 1)),
                "interface_id": int(frame.get("frame.interface_id", 0)),
                "interface_name": frame.get("frame.interface_id_tree", {}).get(
                    "frame.interface_name"
                ),
                "time_ns": ns_of(frame["frame.time_epoch"])
                if "frame.time_epoch" in frame
                else None,
                "len": int(frame["frame.len"]),
                "cap_len": int(frame["frame.cap_len"]),
                "data": bytes.fromhex(layers["frame_raw"][0]) if "frame_raw" in layers else b"",
                "direction": int(flags, 16) if flags is not None else None,
                "comment": layers.get("pkt_comment", {}).get("frame.comment"),
            }
        )
    return records


def assert_same_as_tshark(tshark_bin: str, path: str) -> list:
    """Our reader and tshark agree on every packet of ``path``; returns our packets."""
    with open_capture(path) as reader:
        ours = list(reader)
        interfaces = reader.interfaces
    theirs = tshark_read(tshark_bin, path)
    assert len(ours) == len(theirs) > 0
    for i, (p, t) in enumerate(zip(ours, theirs, strict=True)):
        info = interfaces[p.interface_id]
        got = (info.section + 1, info.id_in_section, p.timestamp_ns, p.original_length, p.data)
        want = (t["section"], t["interface_id"], t["time_ns"], t["len"], t["data"])
        assert got == want, f"packet {i}"
        assert len(p.data) == t["cap_len"]
        assert (p.flags & 3 or None) == (t["direction"] or None), f"packet {i} direction"
        assert p.comment == t["comment"], f"packet {i} comment"
    return ours


# ------------------------------------------------------------------------------- helpers


def random_packets(rng: random.Random, count: int, max_len: int = 1600) -> list[bytes]:
    sizes = [0, 1, 2, 3, 4, 5, 60, 64, 1500] + [rng.randint(0, max_len) for _ in range(count)]
    return [rng.randbytes(n) for n in sizes[:count]]


def write(packets_by_call, **writer_options) -> bytes:
    f = io.BytesIO()
    with PcapngWriter(f, **writer_options) as writer:
        iface = writer.add_interface(name="eth0")
        for packets, stamp in packets_by_call:
            writer.write_burst(iface, packets, stamp)
    return f.getvalue()


class Unseekable(io.RawIOBase):
    """A raw file that refuses seek/tell and takes at most 1000 bytes per write() call."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        chunk = bytes(memoryview(b)[:1000])
        self.data += chunk
        return len(chunk)

    def seekable(self) -> bool:
        return False

    def seek(self, *args):
        raise io.UnsupportedOperation("seek")

    def tell(self):
        raise io.UnsupportedOperation("tell")


# ------------------------------------------------------------------------ writer -> reader


def test_round_trip_every_writer_option():
    rng = random.Random(1)
    f = Unseekable()  # never seeks; a short write() is continued
    packets = random_packets(rng, 300)
    stamps = T0 + np.cumsum(rng.choices(range(0, 10**6), k=300)).astype(np.int64)
    with PcapngWriter(f, hardware="2 CPUs", os_name="Linux", comment="round trip") as writer:
        ns = writer.add_interface(name="ns", description="rx q0", comment="c")
        us = writer.add_interface(name="us", tsresol=6, snaplen=100)
        raw = writer.add_interface(linktype=147, snaplen=0)
        assert (ns, us, raw) == (0, 1, 2) and writer.interface_count == 3
        assert writer.write_burst(ns, packets[:100], stamps[:100]) == 100
        assert writer.write_burst(us, packets[100:200], int(stamps[100]), flags=FLAG_OUTBOUND)
        flags = np.array([FLAG_INBOUND, FLAG_OUTBOUND, 0, 0xFFFFFFFF] * 25, np.uint32)
        writer.write_burst(raw, packets[200:300], stamps[200:300], snaplen=50, flags=flags)
        writer.write_burst(ns, [], T0)  # nothing, and no error
        writer.write_packet(ns, b"\x01" * 7, T0 + 5, original_length=9, flags=2, comment="pkt")
        writer.write_packet(us, memoryview(b"abc"), T0 + 999)
        writer.set_statistics(ns, received=1000, dropped=7)
        writer.set_statistics(us, dropped=0)
        assert writer.packets_written(ns) == 101
    reader = CaptureReader(io.BytesIO(bytes(f.data)))
    got = list(reader)
    assert len(got) == 302
    for i, p in enumerate(got[:100]):
        assert (p.interface_id, p.linktype, p.timestamp_ns) == (ns, 1, int(stamps[i]))
        assert (p.data, p.original_length, p.flags, p.comment) == (
            packets[i],
            len(packets[i]),
            0,
            None,
        )
    stamp_us = int(stamps[100]) // 1000 * 1000
    for i, p in enumerate(got[100:200], 100):
        assert (p.interface_id, p.timestamp_ns, p.flags) == (us, stamp_us, FLAG_OUTBOUND)
        assert (p.data, p.original_length) == (packets[i][:100], len(packets[i]))
    for i, p in enumerate(got[200:300], 200):
        assert (p.interface_id, p.linktype, p.timestamp_ns) == (raw, 147, int(stamps[i]))
        assert (p.data, p.original_length, p.flags) == (
            packets[i][:50],
            len(packets[i]),
            flags[i - 200],
        )
    assert got[300][:] == (ns, 1, T0 + 5, b"\x01" * 7, 9, 2, "pkt")
    assert got[301][:] == (us, 1, (T0 + 999) // 1000 * 1000, b"abc", 3, 0, None)
    names = [
        (i.name, i.description, i.comment, i.tsresol, i.snaplen, i.linktype)
        for i in reader.interfaces
    ]
    assert names == [
        ("ns", "rx q0", "c", 9, DEFAULT_SNAPLEN, 1),
        ("us", None, None, 6, 100, 1),
        (None, None, None, 9, 0, 147),
    ]
    stats = reader.statistics
    assert (stats[ns].received, stats[ns].dropped, stats[ns].delivered) == (1000, 7, 101)
    assert (stats[us].received, stats[us].dropped, stats[us].delivered) == (None, 0, 101)
    assert (stats[raw].received, stats[raw].dropped, stats[raw].delivered) == (None, None, 100)
    assert stats[ns].start_ns == min(int(stamps[0]), T0 + 5) and stats[ns].end_ns == stamps[99]
    assert stats[raw].end_ns == int(stamps[299]) and stats[raw].timestamp_ns == int(stamps.max())
    assert reader.sections == 1 and reader.format == "pcapng"


def encode_one_by_one(batches, snaplen, flags) -> bytes:
    """The reference: the same packets through write_packet (plain struct code)."""
    f = io.BytesIO()
    writer = PcapngWriter(f)
    writer.add_interface(snaplen=snaplen)
    for packets, stamp in batches:
        for i, data in enumerate(packets):
            writer.write_packet(0, data, stamp + i, flags=None if flags is None else flags + i)
    writer.flush()
    return f.getvalue()


@pytest.fixture(params=["numpy always", "small bursts by struct"])
def small_burst(request, monkeypatch):
    """write_burst has two encoders (numpy; struct below SMALL_BURST packets): test both."""
    if request.param == "numpy always":
        monkeypatch.setattr(pcap, "SMALL_BURST", 0)
    return pcap.SMALL_BURST


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(st.lists(st.integers(0, 300), min_size=1, max_size=20), min_size=1, max_size=4),
    st.sampled_from([0, 1, 3, 64, 65, 262144]),
    st.none() | st.integers(0, 2**32 - 100),
)
def test_write_burst_encodes_like_write_packet(small_burst, sizes, snaplen, flags):
    """The numpy burst encoder writes exactly the bytes of the one-packet struct encoder."""
    rng = random.Random(len(sizes))
    batches = [([rng.randbytes(n) for n in burst], T0 + 1000 * k) for k, burst in enumerate(sizes)]
    f = io.BytesIO()
    writer = PcapngWriter(f)
    writer.add_interface(snaplen=snaplen)
    for packets, stamp in batches:
        n = len(packets)
        stamps = np.arange(n, dtype=np.uint64) + np.uint64(stamp)
        burst_flags = None if flags is None else np.arange(n, dtype=np.int64) + flags
        writer.write_burst(0, packets, stamps, flags=burst_flags)
    writer.flush()
    assert f.getvalue() == encode_one_by_one(batches, snaplen, flags)


def test_writer_refuses_bad_arguments_and_writes_nothing_then(small_burst):
    f = io.BytesIO()
    writer = PcapngWriter(f)
    iface = writer.add_interface()
    before = f.getvalue()
    bad_calls = [
        lambda: writer.write_burst(1, [b"x"], T0),  # no such interface
        lambda: writer.write_burst(iface, [b"x"], -1),
        lambda: writer.write_burst(iface, [b"x", b"y"], [T0]),
        lambda: writer.write_burst(iface, [b"x"], np.array([1.5])),
        lambda: writer.write_burst(iface, [b"x"], np.array([-5])),
        lambda: writer.write_burst(iface, [b"x"], T0, snaplen=0),
        lambda: writer.write_burst(iface, [b"x"], T0, flags=2**32),
        lambda: writer.write_burst(iface, [b"x", b"y"], T0, flags=[1]),
        lambda: writer.write_burst(iface, [b"x"], T0, flags=[-1]),
        lambda: writer.write_packet(iface, b"xy", T0, original_length=1),
        lambda: writer.write_packet(iface, b"xy", 2**64),
        lambda: writer.set_statistics(iface, dropped=-1),
        lambda: writer.add_interface(tsresol=10),
        lambda: writer.add_interface(linktype=70000),
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()
    with pytest.raises(TypeError):
        writer.write_burst(iface, [b"x", 5], T0)
    assert f.getvalue() == before and writer.bytes_written == len(before)
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        writer.write_burst(iface, [b"x"], T0)


def test_writer_owns_a_path_and_leaves_a_file_object_open(tmp_path):
    path = tmp_path / "a.pcapng"
    with PcapngWriter(path) as writer:
        writer.write_burst(writer.add_interface(), [b"abc"], T0)
    assert [p.data for p in read_all(path)] == [b"abc"]
    with open(path, "wb") as f:
        PcapngWriter(f).close()
        assert not f.closed


# ---------------------------------------------------------------- memif bursts -> tshark


@pytest.mark.memif(buffer_size=2048, ring_size=1024)
async def test_captured_memif_bursts_read_by_tshark(memif_pair, tshark_bin, tmp_path):
    """The capture path: bursts received from a real memif link (chained packets included)
    written with write_burst; tshark sees every packet, byte-identical, in order."""
    master, slave = memif_pair
    txq, rxq = slave.tx_queues[0], master.rx_queues[0]
    rng = random.Random(7)
    packets = random_packets(rng, 3000, max_len=5000)  # > 2048: chained over 2-3 buffers
    path = tmp_path / "capture.pcapng"
    stamps = []
    with PcapngWriter(path) as writer:
        iface = writer.add_interface(name="memif0/0 rx", description="master rx queue 0")
        received = 0
        sending = asyncio_task(txq.send_burst(packets))
        while received < len(packets):
            burst = await rxq.recv_burst()
            stamp = time.time_ns()
            stamps += [stamp] * len(burst)
            received += writer.write_burst(iface, burst, stamp, flags=FLAG_INBOUND)
            burst.release()
        assert await sending == len(packets)
        writer.set_statistics(iface, received=received, dropped=0)
    theirs = tshark_read(tshark_bin, str(path))
    assert len(theirs) == len(packets)
    assert [t["data"] for t in theirs] == packets
    assert [t["len"] for t in theirs] == [len(p) for p in packets]
    assert [t["time_ns"] for t in theirs] == stamps
    assert all(a <= b for a, b in zip(stamps, stamps[1:], strict=False))
    assert {t["interface_name"] for t in theirs} == {"memif0/0 rx"}
    assert {t["direction"] for t in theirs} == {FLAG_INBOUND}
    assert_same_as_tshark(tshark_bin, str(path))
    with CaptureReader(path) as reader:
        assert len(list(reader)) == 3000  # statistics fill in as the file is read
        stats = reader.statistics[iface]
    assert (stats.received, stats.dropped, stats.delivered) == (3000, 0, 3000)


def asyncio_task(coro):
    import asyncio

    return asyncio.ensure_future(coro)


def test_tap_layout_directions_and_names_read_by_tshark(tshark_bin, tmp_path):
    """What ``tap`` writes: one interface per direction and queue, epb_flags in/out."""
    rng = random.Random(3)
    path = tmp_path / "tap.pcapng"
    sent = []
    with PcapngWriter(path) as writer:
        ids = {
            (d, q): writer.add_interface(name=f"{d} q{q}", description=f"memif tap, {d} queue {q}")
            for d in ("A->B", "B->A")
            for q in (0, 1)
        }
        for k in range(40):
            d, q = rng.choice(list(ids))
            packets = random_packets(rng, rng.randint(1, 64))
            flag = FLAG_INBOUND if d == "A->B" else FLAG_OUTBOUND
            writer.write_burst(ids[d, q], packets, T0 + k * 1000, flags=flag)
            sent += [(ids[d, q], f"{d} q{q}", flag, T0 + k * 1000, p) for p in packets]
        writer.write_packet(ids["A->B", 0], b"note", T0 + 10**9, comment="link down", flags=1)
        sent.append((ids["A->B", 0], "A->B q0", 1, T0 + 10**9, b"note"))
    theirs = tshark_read(tshark_bin, str(path))
    got = [
        (t["interface_id"], t["interface_name"], t["direction"], t["time_ns"], t["data"])
        for t in theirs
    ]
    assert got == sent
    assert theirs[-1]["comment"] == "link down"
    info = run_tool(wireshark_tool(tshark_bin, "capinfos"), str(path)).decode()
    assert info.count("Number of stat entries = 1") == 4  # one ISB per interface, read
    assert "Name = B->A q1" in info


def test_streaming_into_a_pipe_to_tshark(tshark_bin, tmp_path):
    """``capture -w - | tshark -r -``: the writer on an unseekable pipe, tshark reading it as
    it comes (its output goes to a file: a pipe back to us could fill up and stall it)."""
    rng = random.Random(11)
    sent = []
    with open(tmp_path / "out.txt", "w+b") as out:
        proc = subprocess.Popen(
            [tshark_bin, "-r", "-", "-T", "fields", "-e", "frame.len", "-e", "frame.time_epoch"],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
        try:
            with PcapngWriter(proc.stdin) as writer:
                iface = writer.add_interface()
                for k in range(200):
                    packets = random_packets(rng, 50)
                    writer.write_burst(iface, packets, T0 + k)
                    sent += [(len(p), T0 + k) for p in packets]
            proc.stdin.close()
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        lines = out.read().decode().splitlines()
    got = [(int(n), ns_of(t)) for n, t in (line.split("\t") for line in lines)]
    assert got == sent


def test_reader_follows_a_live_pipe():
    """``capture -w - | replay -``: packets come out as soon as their blocks are in the pipe,
    not when a read-ahead chunk is full; the end of the stream ends the iteration."""
    read_fd, write_fd = os.pipe()
    w, r = os.fdopen(write_fd, "wb"), os.fdopen(read_fd, "rb")
    got: list = []
    worker = None
    try:
        writer = PcapngWriter(w)
        iface = writer.add_interface()
        writer.write_burst(iface, [b"one", b"two", b"three"], T0)
        writer.flush()

        def read_three() -> None:
            got.append(iter(CaptureReader(r)))  # the header is read here already
            got.extend(next(got[0]) for _ in range(3))

        worker = threading.Thread(target=read_three)
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), "the reader waited for more than the blocks it needed"
        packets = got.pop(0)
        assert [p.data for p in got] == [b"one", b"two", b"three"]
        writer.write_packet(iface, b"four", T0 + 1)
        writer.close()
        w.close()
        assert [p.data for p in packets] == [b"four"]
    finally:
        w.close()  # end of stream: a reader still waiting returns
        if worker is not None:
            worker.join(30)
        r.close()


# ------------------------------------------------------------ Wireshark's files -> reader


def text2pcap_input(rng: random.Random, count: int) -> tuple[str, list[bytes]]:
    lines, packets = [], []
    for i in range(count):
        data = rng.randbytes(rng.randint(1, 1500))
        packets.append(data)
        stamp = f"2023-11-14 22:{i // 60 % 60:02d}:{i % 60:02d}.{rng.randrange(10**9):09d}"
        lines.append(f"{'<>'[i % 2]} {stamp} {data.hex()}")
    return "\n".join(lines) + "\n", packets


@pytest.mark.parametrize(
    "conversion",
    ["pcapng", "pcap (us, editcap)", "nsecpcap (editcap)", "pcapng (editcap)", "pcap (text2pcap)"],
)
def test_files_from_text2pcap_and_editcap(tshark_bin, tmp_path, conversion):
    text, packets = text2pcap_input(random.Random(5), 300)
    (tmp_path / "in.txt").write_text(text)
    regex = r"^(?<dir>[<>])\s(?<time>\d+-\d+-\d+ \d+:\d\d:\d\d.\d+)\s(?<data>[0-9a-fA-F]+)$"
    text2pcap = wireshark_tool(tshark_bin, "text2pcap")
    editcap = wireshark_tool(tshark_bin, "editcap")
    made = tmp_path / "made"
    fmt = ["-F", "pcap"] if conversion == "pcap (text2pcap)" else []
    run_tool(
        text2pcap, "-q", *fmt, "-D", "-r", regex, "-t", "%Y-%m-%d %H:%M:%S.%f",
        str(tmp_path / "in.txt"), str(made),
    )  # fmt: skip
    target = {"pcap (us, editcap)": "pcap", "nsecpcap (editcap)": "nsecpcap"}.get(conversion)
    if conversion == "pcapng (editcap)":
        target = "pcapng"
    path = made
    if target:
        path = tmp_path / "converted"
        run_tool(editcap, "-F", target, str(made), str(path))
    ours = assert_same_as_tshark(tshark_bin, str(path))
    assert [p.data for p in ours] == packets
    with open_capture(path) as reader:
        expected = "pcapng" if conversion.startswith("pcapng") else "pcap"
        assert reader.format == expected
        stamps = [p.timestamp_ns for p in reader]
    resolution = 1000 if conversion in ("pcap (us, editcap)", "pcap (text2pcap)") else 1
    assert all(t % resolution == 0 for t in stamps)
    if resolution == 1:
        assert any(t % 1000 for t in stamps)  # nanoseconds survived


def test_dumpcap_live_capture_with_its_statistics_block(tshark_bin, tmp_path):
    """A real dumpcap capture on the loopback interface (pcapng with an ISB at the end)."""
    dumpcap = wireshark_tool(tshark_bin, "dumpcap")
    if os.geteuid() != 0 and os.environ.get("CI") != "true":
        pytest.skip("capturing on lo needs root here (CI runs as root)")
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    port = receiver.getsockname()[1]
    path = tmp_path / "lo.pcapng"
    proc = subprocess.Popen(
        [dumpcap, "-i", "lo", "-c", "20", "-f", f"udp port {port}", "-w", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        started = b""
        while b"Capturing on" not in started:
            line = proc.stderr.readline()
            if not line:
                pytest.fail(f"dumpcap did not start: {started.decode(errors='replace')}")
            started += line
        # "Capturing on" may come a moment before the filter sees traffic: send until
        # dumpcap has its 20 packets and exits (paced, bounded), then check what it kept.
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        payloads = [struct.pack("!I", i) * (i * 37 % 350 + 1) for i in range(3000)]
        for payload in payloads:
            if proc.poll() is not None:
                break
            sender.sendto(payload, ("127.0.0.1", port))
            time.sleep(0.01)
        sender.close()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        receiver.close()
    ours = assert_same_as_tshark(tshark_bin, str(path))
    assert len(ours) == 20
    first = struct.unpack("!I", ours[0].data[-4:])[0]  # UDP payload at the end of the frame
    kept = payloads[first : first + 20]
    assert [p.data[-len(q) :] for p, q in zip(ours, kept, strict=True)] == kept
    with open_capture(path) as reader:
        list(reader)
        stats = reader.statistics[0]
        assert reader.interfaces[0].name == "lo"
    # isb_ifrecv: what the kernel let through the filter until dumpcap stopped (>= kept).
    assert stats.received >= 20 and stats.dropped == 0 and stats.comment


# ------------------------------------------------- synthesised files, both byte orders


def _opt(o: str, code: int, value: bytes) -> bytes:
    return struct.pack(o + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(o: str, block_type: int, body: bytes) -> bytes:
    n = len(body) + 12
    return struct.pack(o + "II", block_type, n) + body + struct.pack(o + "I", n)


def _shb(o: str) -> bytes:
    return _block(o, 0x0A0D0D0A, struct.pack(o + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def _idb(o: str, tsresol: int | None = None, tsoffset: int = 0, snaplen: int = 0) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += _opt(o, 9, bytes([tsresol]))
    if tsoffset:
        opts += _opt(o, 14, struct.pack(o + "q", tsoffset))
    opts += _opt(o, 2, b"if") + b"\0" * 4
    return _block(o, 1, struct.pack(o + "HHI", 1, 0, snaplen) + opts)


def _epb(o: str, iface: int, ticks: int, data: bytes, opts: bytes = b"") -> bytes:
    head = struct.pack(o + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data))
    return _block(o, 6, head + data + b"\0" * (-len(data) % 4) + opts)


def _spb(o: str, data: bytes) -> bytes:
    return _block(o, 3, struct.pack(o + "I", len(data)) + data + b"\0" * (-len(data) % 4))


def _opb(o: str, iface: int, ticks: int, data: bytes, opts: bytes = b"") -> bytes:
    head = struct.pack(
        o + "HHIIII", iface, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data)
    )
    return _block(o, 2, head + data + b"\0" * (-len(data) % 4) + opts)


def _pcap(o: str, nano: bool, records: list[tuple[int, int, bytes]], snaplen=65535) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(o + "IHHiIII", magic, 2, 4, 0, 0, snaplen, 1)
    for sec, frac, data in records:
        out += struct.pack(o + "IIII", sec, frac, len(data), len(data)) + data
    return out


def synthesised_pcapng(o: str, rng: random.Random) -> bytes:
    """Every timestamp resolution we handle, two sections (the second in the other byte
    order), options, a Simple and an obsolete Packet Block, a Name Resolution Block."""
    other = "<" if o == ">" else ">"
    d = [rng.randbytes(rng.randint(1, 200)) for _ in range(12)]
    flags = _opt(o, 2, struct.pack(o + "I", FLAG_OUTBOUND)) + _opt(o, 1, b"why") + b"\0" * 4
    return b"".join(
        [
            _shb(o),
            _idb(o),  # no if_tsresol: microseconds
            _idb(o, tsresol=0x80 | 20),  # 2**-20 s
            _idb(o, tsresol=3, tsoffset=1000),  # ms, +1000 s
            _idb(o, tsresol=9),
            _epb(o, 0, 1_700_000_000_123_456, d[0]),
            _epb(o, 1, 1_700_000_000 * 2**20 + 12345, d[1]),
            _epb(o, 2, 1_700_000_000_123, d[2], flags),
            _epb(o, 3, T0, d[3]),
            _block(o, 4, _opt(o, 1, b"\x0a\x00\x00\x01host\x00") + b"\0" * 4),  # NRB
            _spb(o, d[4]),
            _opb(o, 3, T0 + 1, d[5]),
            _opb(o, 1, 2**52 + 3, d[6], flags),
            _shb(other),
            _idb(other, tsresol=6),
            _epb(other, 0, 1_700_000_001_000_001, d[7]),
            _epb(other, 0, 1_700_000_001_000_002, d[8], _opt(other, 1, "ünï".encode()) + b"\0" * 4),
        ]
    )


@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
def test_synthesised_pcapng_agrees_with_tshark(tshark_bin, tmp_path, order):
    path = tmp_path / "synth.pcapng"
    path.write_bytes(synthesised_pcapng(order, random.Random(order == "<")))
    ours = assert_same_as_tshark(tshark_bin, str(path))
    assert len(ours) == 9
    assert ours[4].timestamp_ns is None  # the Simple Packet Block carries no timestamp
    with open_capture(path) as reader:
        batches = list(reader.batches(3))
    assert [len(b) for b in batches] == [3, 3, 3]
    stamps = np.concatenate([b.timestamps_ns for b in batches])
    assert stamps[4] == -1 and stamps.tolist()[:4] == [p.timestamp_ns for p in ours[:4]]
    assert [p for b in batches for p in b.packets] == [p.data for p in ours]
    assert np.concatenate([b.interface_ids for b in batches]).tolist() == [
        p.interface_id for p in ours
    ]


@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
@pytest.mark.parametrize("nano", [False, True], ids=["us", "ns"])
def test_synthesised_classic_pcap_agrees_with_tshark(tshark_bin, tmp_path, order, nano):
    rng = random.Random(9)
    records = [
        (
            1_700_000_000 + i,
            rng.randrange(10**9 if nano else 10**6),
            rng.randbytes(rng.randint(0, 300)),
        )
        for i in range(50)
    ]
    path = tmp_path / "synth.pcap"
    path.write_bytes(_pcap(order, nano, records))
    ours = assert_same_as_tshark(tshark_bin, str(path))
    scale = 1 if nano else 1000
    assert [p.timestamp_ns for p in ours] == [s * 10**9 + f * scale for s, f, _ in records]


# ------------------------------------------------------------------------- malformed


def _small_pcapng() -> bytes:
    rng = random.Random(2)
    f = io.BytesIO()
    with PcapngWriter(f) as writer:
        iface = writer.add_interface(name="x")
        writer.write_burst(iface, random_packets(rng, 6, 40), T0, flags=1)
        writer.write_packet(iface, b"abc", T0, comment="c")
    return f.getvalue()


def _block_ends(data: bytes) -> set[int]:
    ends, at = {0}, 0
    while at < len(data):
        at += struct.unpack_from("<I", data, at + 4)[0]
        ends.add(at)
    return ends


@pytest.mark.parametrize("kind", ["pcapng", "pcap"])
def test_every_truncation_is_a_clean_error_or_a_clean_prefix(kind):
    rng = random.Random(4)
    if kind == "pcapng":
        data = _small_pcapng()
        ends = _block_ends(data)
    else:
        records = [(1, 2, rng.randbytes(rng.randint(0, 30))) for _ in range(5)]
        data = _pcap("<", True, records)
        ends, at = {24}, 24
        for *_, r in records:
            at += 16 + len(r)
            ends.add(at)
    full = read_all(io.BytesIO(data))
    for cut in range(len(data)):
        try:
            got = read_all(io.BytesIO(data[:cut]))
        except CaptureFormatError as e:
            assert isinstance(e, ValueError) and isinstance(e, MemifError)
            assert cut not in ends or cut < (28 if kind == "pcapng" else 24), cut
        else:
            assert cut in ends, f"cut at {cut} read without error"
            assert got == full[: len(got)]


def _with(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + struct.pack("<I", value) + data[at + 4 :]


def _malformed_cases() -> dict[str, tuple[bytes, str]]:
    good = _small_pcapng()
    shb_len = struct.unpack_from("<I", good, 4)[0]
    idb_at = shb_len
    epb_at = idb_at + struct.unpack_from("<I", good, idb_at + 4)[0]
    epb_len = struct.unpack_from("<I", good, epb_at + 4)[0]
    cases = {
        "empty": (b"", "shorter than 4 bytes"),
        "tiny": (b"\x0a\x0d", "truncated"),
        "unknown magic": (b"GIF89a" + bytes(40), "not a pcap or pcapng"),
        "bad byte order": (_with(good, 8, 0x11223344), "byte-order magic"),
        "version 2": (good[:12] + struct.pack("<H", 2) + good[14:], "version 2"),
        "length not x4": (_with(good, epb_at + 4, epb_len + 2), "multiple of 4"),
        "length too small": (_with(good, epb_at + 4, 8), "multiple of 4"),
        "huge block": (_with(good, epb_at + 4, 0xFFFFFFF0), "over the limit"),
        "trailer differs": (_with(good, epb_at + epb_len - 4, epb_len + 4), "trailing length"),
        "caplen beyond block": (_with(good, epb_at + 20, 10_000), "beyond its"),
        "undeclared interface": (_with(good, epb_at + 8, 1), "undeclared interface 1"),
        "IDB first": (good[idb_at:], "not a pcap or pcapng"),
        "option overrun": (
            good[:idb_at]
            + good[idb_at : idb_at + 16]
            + struct.pack("<HH", 2, 500)
            + good[idb_at + 20 :],
            "overruns",
        ),
        "pcap version": (_pcap("<", False, [])[:4] + struct.pack("<H", 3) + bytes(18), "version 3"),
        "pcap huge record": (
            _pcap("<", False, []) + struct.pack("<IIII", 0, 0, 2**31, 2**31),
            "over the limit",
        ),
        "pcap cut record": (_pcap("<", False, [(0, 0, b"abcdef")])[:-2], "truncated"),
    }
    return cases


@pytest.mark.parametrize("case", sorted(_malformed_cases()))
def test_malformed_files_raise_capture_format_error(case):
    data, message = _malformed_cases()[case]
    with pytest.raises(CaptureFormatError, match=message):
        read_all(io.BytesIO(data))


def test_limits_bound_memory():
    """A block or record that claims 2 GiB is refused before anything is read for it; a
    smaller max_block_size lowers the bar; more interfaces than max_interfaces are refused."""
    huge = _with(_small_pcapng(), 4 + 0, 0x7FFFFFF0)  # the SHB claims 2 GiB
    tracemalloc.start()
    try:
        with pytest.raises(CaptureFormatError, match="over the limit"):
            read_all(io.BytesIO(huge + bytes(100)))
        assert tracemalloc.get_traced_memory()[1] < 4 << 20
    finally:
        tracemalloc.stop()
    one_packet = write([([b"x" * 100], T0)])
    assert len(read_all(io.BytesIO(one_packet), max_block_size=132)) == 1
    with pytest.raises(CaptureFormatError, match="block of 132 bytes over the limit 128"):
        read_all(io.BytesIO(one_packet), max_block_size=128)
    many = _shb("<") + _idb("<") * 5
    with pytest.raises(CaptureFormatError, match="more than 4 interfaces"):
        read_all(io.BytesIO(many), max_interfaces=4)


def test_unknown_blocks_and_options_are_skipped():
    o = "<"
    data = b"".join(
        [
            _shb(o),
            _block(o, 0x00000BAD, b"12345678"),  # unknown type
            _block(o, 0x40000BAD, b"\0\0\0\0custom!!"),  # a custom block (no copy)
            _block(o, 1, struct.pack(o + "HHI", 1, 0, 0) + _opt(o, 0x7777, b"??") + b"\0" * 4),
            _epb(o, 0, 5, b"data", _opt(o, 0x8888, b"x" * 9) + _opt(o, 2, b"\1\0\0\0")),
            _block(o, 0x80000001, b""),  # the high bit: local use
        ]
    )
    (packet,) = read_all(io.BytesIO(data))
    assert (packet.data, packet.timestamp_ns, packet.flags) == (b"data", 5000, 1)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_corrupted_files_never_raise_anything_else(data):
    """Random byte changes anywhere: packets or a CaptureFormatError, nothing else."""
    base = bytearray(
        data.draw(st.sampled_from([_small_pcapng(), synthesised_pcapng("<", random.Random(1))]))
    )
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(base) - 1))
        base[at] = data.draw(st.integers(0, 255))
    try:
        for packet in CaptureReader(io.BytesIO(bytes(base)), max_block_size=1 << 16):
            assert len(packet.data) < 1 << 16
    except CaptureFormatError:
        pass


def test_classic_pcap_header_fields():
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 1234, 1 | 1 << 26 | 2 << 28)
    with CaptureReader(io.BytesIO(header)) as reader:
        assert list(reader) == []
        (info,) = reader.interfaces
    assert (info.linktype, info.snaplen, info.fcslen, info.tsresol) == (1, 1234, 32, 6)


def test_reader_misuse():
    reader = CaptureReader(io.BytesIO(_small_pcapng()))
    list(reader)
    with pytest.raises(ValueError, match="read once"):
        iter(reader)
    with pytest.raises(ValueError):
        list(CaptureReader(io.BytesIO(_small_pcapng())).batches(0))
