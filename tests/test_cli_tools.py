"""memif-aio capture, tap, replay, gen and probe, and what every long-running command does on
SIGTERM and SIGINT: real processes, real peers (this process, memif-aio echo, dpdk-testpmd),
and the real tshark reading the files they write."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_pcap import tshark_read, wireshark_tool

import memif_aio
from memif_aio import protocol as p
from memif_aio.pcap import FLAG_INBOUND, FLAG_OUTBOUND, PcapngWriter, open_capture, read_all
from memif_aio.testing.testpmd import Testpmd

CLI = [sys.executable, "-m", "memif_aio"]
LOCAL_CLOSE = "interface closed"  # the DISCONNECT reason of a closing memif_aio interface


def stopped(command: str, signum: int = signal.SIGTERM) -> str:
    """The DISCONNECT reason of a command stopped by a signal."""
    return f"memif-aio {command} stopped ({signal.Signals(signum).name})"


FAST = {"reconnect_interval": 0.1}  # our slaves: try again soon while the command starts


class Cli:
    """A memif-aio subprocess; stderr and stdout collected by threads (``binary_stdout``:
    stdout left to the caller, a pipe to another process)."""

    def __init__(self, *args: str, binary_stdout: bool = False) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [*CLI, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.err: list[str] = []
        self.out: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stderr, self.err))]
        if not binary_stdout:
            self._readers.append(
                threading.Thread(target=self._read, args=(self.proc.stdout, self.out))
            )
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.decode(errors="replace").rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)

    @property
    def stdout(self) -> str:
        return "\n".join(self.out)

    def wait_for(self, text: str, timeout: float = 20.0, stream: str = "err") -> str:
        lines = self.err if stream == "err" else self.out
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(lines):
                if text in line:
                    return line
            if self.proc.poll() is not None:
                time.sleep(0.1)  # the readers may still be catching up
                if any(text in line for line in list(lines)):
                    continue
                break
            time.sleep(0.02)
        raise AssertionError(f"{self.args[0]}: no {text!r} in\n{self.stderr}\n{self.stdout}")

    async def expect(self, text: str, timeout: float = 20.0, stream: str = "err") -> str:
        return await asyncio.to_thread(self.wait_for, text, timeout, stream)

    def finish(self, timeout: float = 30.0) -> int:
        try:
            self.proc.wait(timeout)
        finally:
            for reader in self._readers:
                reader.join(5)
        return self.proc.returncode

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        self.proc.send_signal(signum)
        return self.finish(timeout)

    def __enter__(self) -> Cli:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.finish(10)


def by_interface(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in records:
        out.setdefault(record["interface_name"], []).append(record)
    return out


# ------------------------------------------------------------------------------- capture


def test_capture_two_queues_read_by_tshark(tshark_bin, tmp_path):
    """What a peer sends on two queues, chained packets included, is in the file: one IDB per
    queue, every packet byte-identical and in order, nanosecond times never going back, and
    the statistics blocks; the master's socket file is gone after the capture stops itself."""
    path, out = str(tmp_path / "cap.sock"), tmp_path / "cap.pcapng"
    rng = random.Random(12)
    sent = [[rng.randbytes(rng.randint(60, 5000)) for _ in range(600)] for _ in range(2)]
    args = ("capture", path, "--role", "master", "--queues", "2", "-w", str(out), "-c", "1200")
    with Cli(*args) as capture:
        capture.wait_for("capturing on")

        async def send() -> str:
            options = dict(rx_queues=2, tx_queues=2, timeout=10, **FAST)
            async with memif_aio.connect(path, **options) as iface:
                await asyncio.gather(*(iface.tx_queues[q].send_burst(sent[q]) for q in (0, 1)))
                return await asyncio.wait_for(iface.wait_disconnected(), 20)

        assert asyncio.run(send()) == LOCAL_CLOSE  # the capture said goodbye at -c 1200
        assert capture.finish() == 0
    assert "link up: " in capture.stderr and "'memif0' (app 'memif_aio')" in capture.stderr
    assert "1200 packets (" in capture.stderr and ", 0 dropped" in capture.stderr
    assert not os.path.exists(path)
    records = tshark_read(tshark_bin, str(out))
    queues = by_interface(records)
    assert set(queues) == {f"{path} id 0 rx q0", f"{path} id 0 rx q1"}
    for q in (0, 1):
        got = queues[f"{path} id 0 rx q{q}"]
        assert [r["data"] for r in got] == sent[q]
        assert [r["len"] for r in got] == [r["cap_len"] for r in got] == list(map(len, sent[q]))
        assert {r["direction"] for r in got} == {FLAG_INBOUND}
    stamps = [r["time_ns"] for r in records]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] < 60e9
    assert abs(stamps[0] - time.time_ns()) < 120e9  # wall-clock nanoseconds
    with open_capture(out) as reader:
        list(reader)
        stats = reader.statistics
    assert sorted((s.received, s.dropped, s.delivered) for s in stats.values()) == [
        (600, 0, 600),
        (600, 0, 600),
    ]


def test_capture_to_stdout_into_tshark_and_sigterm(tshark_bin, tmp_path, memif_path):
    """``memif-aio capture @sock -w - | tshark -r -``, stopped by SIGTERM: tshark reads every
    packet (the file ends properly), the peer hears why, the command exits 0."""
    listing = tmp_path / "tshark.txt"
    args = ("capture", memif_path, "--role", "master", "-w", "-", "--snaplen", "100")
    capture = Cli(*args, binary_stdout=True)
    with capture, open(listing, "wb") as text:
        tshark = subprocess.Popen(
            [tshark_bin, "-r", "-", "-T", "fields", "-e", "frame.len", "-e", "frame.cap_len"],
            stdin=capture.proc.stdout,
            stdout=text,
            stderr=subprocess.DEVNULL,
        )
        sizes = [60 + 7 * i for i in range(400)]

        async def send() -> str:
            async with memif_aio.connect(memif_path, timeout=10, **FAST) as iface:
                await capture.expect("link up: ")
                txq = iface.tx_queues[0]
                await txq.send_burst([bytes([i % 256]) * n for i, n in enumerate(sizes)])
                while txq.free_slots < 1024:  # until the capture has taken them all
                    await asyncio.sleep(0.01)
                capture.proc.send_signal(signal.SIGTERM)
                return await asyncio.wait_for(iface.wait_disconnected(), 15)

        try:
            assert asyncio.run(send()) == stopped("capture")
        finally:
            assert capture.finish() == 0
            assert tshark.wait(60) == 0
    lines = listing.read_text().split()
    assert [int(n) for n in lines[0::2]] == sizes
    assert [int(n) for n in lines[1::2]] == [min(n, 100) for n in sizes]
    assert "stopping on SIGTERM" in capture.stderr and "400 packets" in capture.stderr


# ----------------------------------------------------------------------------------- tap


def test_tap_forwards_and_records_both_directions(tshark_bin, tmp_path):
    """app1 (master at A) <-> tap <-> app2 (slave at B): both directions arrive intact, the file
    tells them apart (IDB name and epb_flags), and SIGTERM disconnects both apps with a reason
    and removes the tap's socket file at B."""
    path_a, path_b = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
    out = tmp_path / "tap.pcapng"
    rng = random.Random(4)
    a_to_b = [rng.randbytes(rng.randint(60, 3000)) for _ in range(300)]
    b_to_a = [rng.randbytes(rng.randint(60, 1500)) for _ in range(200)]

    async def scenario() -> tuple[Cli, tuple[str, str]]:
        async with memif_aio.Socket(path_a) as sock_a:
            app1 = await sock_a.create_interface(role="master")
            tap = Cli("tap", path_a, path_b, "-w", str(out))  # A listens: its link comes up
            try:
                async with memif_aio.connect(path_b, timeout=20, **FAST) as app2:
                    await app1.wait_connected(20)
                    await tap.expect(f"link up: {path_a}")
                    await tap.expect(f"link up: {path_b}")
                    sending = asyncio.gather(
                        app1.tx_queues[0].send_burst(a_to_b), app2.tx_queues[0].send_burst(b_to_a)
                    )
                    got_b = [await asyncio.wait_for(app2.rx_queues[0].recv(), 10) for _ in a_to_b]
                    got_a = [await asyncio.wait_for(app1.rx_queues[0].recv(), 10) for _ in b_to_a]
                    await sending
                    assert got_b == a_to_b and got_a == b_to_a
                    tap.proc.send_signal(signal.SIGTERM)
                    reasons = await asyncio.gather(
                        app1.wait_disconnected(), app2.wait_disconnected()
                    )
                    assert await asyncio.to_thread(tap.finish) == 0
                    return tap, tuple(reasons)
            finally:
                tap.__exit__()

    tap, reasons = asyncio.run(scenario())
    assert reasons == (stopped("tap"), stopped("tap"))
    assert not os.path.exists(path_b)
    assert "A->B 300 packets" in tap.stderr and "B->A 200 packets" in tap.stderr
    directions = by_interface(tshark_read(tshark_bin, str(out)))
    assert [r["data"] for r in directions["A->B q0"]] == a_to_b
    assert [r["data"] for r in directions["B->A q0"]] == b_to_a
    assert {r["direction"] for r in directions["A->B q0"]} == {FLAG_INBOUND}
    assert {r["direction"] for r in directions["B->A q0"]} == {FLAG_OUTBOUND}
    info = subprocess.run(
        [wireshark_tool(tshark_bin, "capinfos"), str(out)], capture_output=True, text=True
    ).stdout
    assert f"from {path_a} id 0 (peer 'memif0', app 'memif_aio')" in info


# -------------------------------------------------------------------------------- replay

# Gaps between packets (ms): bursts, pauses, and a long one; 0.5 s in all.
GAPS_MS = [0, 30, 0, 0, 45, 5, 5, 60, 0, 20, 80, 10, 0, 35, 50, 15, 15, 90, 0, 40]
TIMING_TOLERANCE = 0.02  # s: ~10x what asyncio's timers give here (1-2 ms)


def text2pcap_file(tshark_bin: str, tmp_path: Path) -> tuple[Path, list[bytes], list[int]]:
    """A classic pcap (microseconds) written by Wireshark's text2pcap, with known gaps."""
    rng = random.Random(9)
    packets, stamps, lines = [], [], []
    t = 1_700_000_000_000_000  # us
    for gap in GAPS_MS:
        t += gap * 1000
        data = rng.randbytes(rng.randint(60, 1500))
        seconds, micros = divmod(t, 1_000_000)
        clock = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
        lines.append(f"> {clock}.{micros:06d} {data.hex()}")
        packets.append(data)
        stamps.append(t * 1000)
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    regex = r"^(?<dir>[<>])\s(?<time>\d+-\d+-\d+ \d+:\d\d:\d\d.\d+)\s(?<data>[0-9a-fA-F]+)$"
    out = tmp_path / "text2pcap.pcap"
    subprocess.run(
        [wireshark_tool(tshark_bin, "text2pcap"), "-q", "-F", "pcap", "-r", regex, "-t",
         "%Y-%m-%d %H:%M:%S.%f", str(tmp_path / "in.txt"), str(out)],
        check=True, capture_output=True, env={**os.environ, "TZ": "UTC"},
    )  # fmt: skip
    return out, packets, stamps


def replay_into_capture(tmp_path: Path, source: Path, count: int, *options: str) -> list:
    """``memif-aio replay`` (slave) into ``memif-aio capture`` (master); the captured packets."""
    path = str(tmp_path / "replay.sock")
    out = tmp_path / f"replayed-{'-'.join(options) or 'timed'}.pcapng"
    with Cli("capture", path, "--role", "master", "-w", str(out), "-c", str(count)) as capture:
        capture.wait_for("capturing on")
        replay = Cli("replay", str(source), path, *options)
        with replay:
            assert replay.finish() == 0, replay.stderr
        assert capture.finish() == 0, capture.stderr
    assert f"sent {count} packets" in replay.stdout
    return read_all(out)


def offsets(stamps: list[int]) -> list[float]:
    return [(t - stamps[0]) / 1e9 for t in stamps]


def test_replay_keeps_bytes_and_timing(tshark_bin, tmp_path):
    """A text2pcap pcap replayed byte-exact with its gaps (and half of them at --speed 2),
    within TIMING_TOLERANCE of each packet's time; what capture wrote replays byte-exact too,
    --loop repeats it."""
    source, packets, stamps = text2pcap_file(tshark_bin, tmp_path)
    for speed in ("1", "2"):
        got = replay_into_capture(tmp_path, source, len(packets), "--speed", speed)
        assert [g.data for g in got] == packets
        want = [t / float(speed) for t in offsets(stamps)]
        late = [g - w for g, w in zip(offsets([g.timestamp_ns for g in got]), want, strict=True)]
        assert max(map(abs, late)) < TIMING_TOLERANCE, late
    captured = tmp_path / "replayed---speed-2.pcapng"
    again = replay_into_capture(tmp_path, captured, 3 * len(packets), "--topspeed", "--loop", "3")
    assert [g.data for g in again] == packets * 3


def test_replay_refuses_what_it_cannot_send_faithfully(tmp_path, memif_path):
    ip_only = tmp_path / "raw-ip.pcapng"
    with PcapngWriter(ip_only) as writer:
        writer.write_packet(writer.add_interface(linktype=101), b"\x45" + bytes(40), 10**18)
    cut = tmp_path / "cut.pcapng"
    with PcapngWriter(cut) as writer:
        iface = writer.add_interface(snaplen=64)
        writer.write_burst(iface, [bytes(60), bytes(200)], 10**18)
    for path, message in (
        (ip_only, "has link type 101, not Ethernet (1)"),
        (cut, "packet 2 was cut by the capture's snaplen (64 of 200 bytes kept)"),
        (tmp_path, "Is a directory"),
    ):
        result = subprocess.run(
            [*CLI, "replay", str(path), memif_path], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert "link up" not in result.stderr  # refused before connecting


# ----------------------------------------------------------------------------------- gen


def test_gen_against_our_echo(memif_path):
    with Cli("echo", memif_path, "--queues", "2") as echo:
        echo.wait_for("ready", stream="out")
        gen = subprocess.run(
            [*CLI, "gen", memif_path, "--queues", "2", "--size", "IMIX", "--rate", "20000",
             "--count", "10000", "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert gen.returncode == 0, gen.stderr
        assert echo.stop() == 0
    report = json.loads(gen.stdout)
    assert (report["sent"], report["received"], report["lost"]) == (10000, 10000, 0)
    assert report["reordered"] == 0 and report["other"] == 0 and report["queues"] == 2
    imix = [64, 576, 1500, 64, 576, 64, 576, 64, 576, 64, 64, 64]  # 7:4:1, interleaved
    assert report["sent_bytes"] == 2 * sum(imix[i % 12] for i in range(5000))  # per queue
    assert 0 < report["latency_us"]["p50"] <= report["latency_us"]["max"]
    assert 5000 < report["pps"] < 40000  # paced: about 20 000 pps
    assert "link up: " in echo.stderr and "'memif-aio gen'" in echo.stderr


@pytest.mark.dpdk
def test_gen_against_testpmd_io(testpmd_bin, memif_path):
    """No loss through DPDK's io forwarding at a moderate rate; DPDK's own refusal string gets
    the same hint as ours."""
    with Testpmd(role="server", socket=memif_path, forward_mode="io") as pmd:
        pmd.wait_listening()
        wrong_id = subprocess.run(
            [*CLI, "gen", memif_path, "--id", "5", "--count", "1"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert wrong_id.returncode == 1
        assert wrong_id.stderr == (
            f"memif-aio gen: {memif_path}: refused: ID not found "
            "(check: the master has no interface with this --id)\n"
        )
        # On a CPU of its own (testpmd polls CPU 0), with a ring that rides out a busy
        # machine's pauses: testpmd io drops what does not fit in our receive ring.
        gen = subprocess.run(
            [*CLI, "gen", memif_path, "--rate", "10000", "--count", "10000", "--ring-size",
             "4096", "--json"],
            capture_output=True, text=True, timeout=60, preexec_fn=other_cpu,
        )  # fmt: skip
    assert gen.returncode == 0, gen.stderr
    report = json.loads(gen.stdout)
    assert (report["sent"], report["received"], report["lost"], report["reordered"]) == (
        10000,
        10000,
        0,
        0,
    )
    assert "app 'DPDK " in gen.stderr


def other_cpu() -> None:
    """Keep off CPU 0, where testpmd polls (when there is another CPU)."""
    cpus = os.sched_getaffinity(0) - {0}
    if cpus:
        os.sched_setaffinity(0, cpus)


# ------------------------------------------------------------------------- signals, refusals


def small_capture(tmp_path: Path) -> Path:
    path = tmp_path / "small.pcapng"
    with PcapngWriter(path) as writer:
        writer.write_burst(writer.add_interface(), [bytes(64)] * 10, 10**18)
    return path


LONG_RUNNING = {
    "echo": (),
    "responder": ("--ip", "10.5.0.1"),
    "capture": ("-w", "{tmp}/x.pcapng"),
    "gen": ("--rate", "1000"),
    "replay": ("{tmp}/small.pcapng", "--loop", "100000", "--rate", "1000"),
}


@pytest.mark.parametrize(
    "command, signum",
    [(name, signal.SIGTERM) for name in LONG_RUNNING] + [("echo", signal.SIGINT)],
    ids=[f"{name}-SIGTERM" for name in LONG_RUNNING] + ["echo-SIGINT"],
)
def test_signal_disconnects_with_reason_removes_socket_exits_0(tmp_path, command, signum):
    """Every long-running command, as master on a filesystem socket: stopped by the signal
    systemd/docker (or Ctrl-C) send, it tells the peer why, removes its socket file and
    exits 0 (tap: test_tap_forwards_and_records_both_directions; ping: the next test)."""
    small_capture(tmp_path)
    path = str(tmp_path / "m.sock")
    extra = [a.format(tmp=tmp_path) for a in LONG_RUNNING[command]]
    args = [command, *extra, path, "--role", "master"]
    if command == "replay":
        args = [command, extra[0], path, "--role", "master", *extra[1:]]

    async def peer(cli: Cli) -> str:
        async with memif_aio.connect(path, timeout=20, **FAST) as iface:
            await cli.expect("link up: ")
            cli.proc.send_signal(signum)
            return await asyncio.wait_for(iface.wait_disconnected(), 15)

    with Cli(*args) as cli:
        assert asyncio.run(peer(cli)) == stopped(command, signum)
        assert cli.finish() == 0, cli.stderr
    assert f"stopping on {signum.name}" in cli.stderr
    assert not os.path.exists(path)


def test_ping_stopped_by_sigterm_prints_its_summary(tmp_path):
    path = str(tmp_path / "p.sock")
    with Cli("responder", path, "--role", "slave", "--ip", "10.6.0.1") as responder:
        args = ("ping", path, "--role", "master", "--timeout", "20", "--ip", "10.6.0.2")
        with Cli(*args, "10.6.0.1", "-c", "1000", "-i", "0.05") as ping:
            ping.wait_for("bytes from 10.6.0.1: icmp_seq=2", stream="out")
            assert ping.stop() == 0
        responder.wait_for(f"link down: {path} id 0 (slave): {stopped('ping')}")
        assert responder.stop() == 0
    assert "packets transmitted" in ping.stdout and " 0% packet loss" in ping.stdout
    assert not os.path.exists(path)


def test_a_refused_slave_says_why_and_what_to_check(memif_path):
    """The refused slave, and the master refusing it, each name the reason and what to check;
    -q silences both; SIGTERM still ends them with 0."""
    hint = "(check: both sides need the same --secret)"
    with Cli("echo", memif_path, "--secret", "right") as master:
        master.wait_for("ready", stream="out")
        with Cli("echo", memif_path, "--role", "slave", "--secret", "wrong") as slave:
            line = slave.wait_for("handshake failed: secret mismatch")
            assert line.startswith("memif-aio echo: memif ") and line.endswith(hint)
            assert slave.stop() == 0
        with Cli("-q", "echo", memif_path, "--role", "slave", "--secret", "wrong") as quiet:
            master.wait_for(f"pid {quiet.proc.pid} uid {os.getuid()} id 0: handshake failed")
            assert quiet.stop() == 0
        assert quiet.stderr == ""
        assert master.stop() == 0
    assert f"handshake failed: secret mismatch {hint}" in master.stderr
    assert "link up" not in master.stderr


# -------------------------------------------------------------------------------- probe


@contextlib.contextmanager
def libmemif_like_master(path: str):
    """A master that, like libmemif for an id it does not have, answers INIT with ACK and then
    closes the connection without a reason."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind("\0" + path[1:])
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                conn.send(p.encode(p.Hello(name="libmemif-like")))
                with contextlib.suppress(OSError):
                    if conn.recv(256):
                        conn.send(p.encode(p.Ack()))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_probe_and_a_slave_against_a_master_that_acks_then_closes(memif_path):
    with libmemif_like_master(memif_path):
        result = subprocess.run(
            [*CLI, "probe", memif_path, "--id", "7"], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 1, result
        assert result.stdout.startswith("master 'libmemif-like' at ")
        assert "HELLO received" in result.stdout and "ring size 16384" in result.stdout
        assert "INIT id 7: acknowledged (ACK), then the master closed without a reason" in (
            result.stdout
        )
        as_json = json.loads(
            subprocess.run(
                [*CLI, "probe", memif_path, "--id", "7", "--json"],
                capture_output=True, text=True, timeout=30,
            ).stdout
        )  # fmt: skip
        assert as_json["outcome"] == "closed-after-ack" and not as_json["accepted"]
        with Cli("echo", memif_path, "--role", "slave", "--id", "7") as slave:
            line = slave.wait_for("peer closed the control channel")
            assert "libmemif does that for an unknown --id" in line
            assert slave.stop() == 0
        one_shot = subprocess.run(
            [*CLI, "gen", memif_path, "--id", "7", "--timeout", "1"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert one_shot.returncode == 1  # a refusal, though without a reason
        assert "refused: peer closed the control channel (check: the master closed without" in (
            one_shot.stderr
        )
