"""Every example runs, as a newcomer would run it: separate processes, real sockets."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import memif_aio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def start(name: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 60) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{proc.args}: {err}"
    return out


@contextmanager
def listening(name: str, *args: str):
    proc = start(name, *args)
    try:
        line = proc.stdout.readline()
        assert line.startswith(("listening", "waiting", "answering")), line + proc.stderr.read()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_echo_server_and_packet_generator(memif_path):
    with listening("echo_server.py", memif_path, "--count", "20000") as server:
        generator = start("packet_generator.py", memif_path, "--count", "20000")
        assert "sent 20000, received 20000" in finish(generator)
        assert "echoed 20000 packets" in finish(server)


def test_protocol_endpoint_and_stream_client(memif_path):
    with listening("echo_server.py", memif_path):
        assert "round trips: 1000" in finish(
            start("protocol_endpoint.py", memif_path, "--count", "1000")
        )
        out = finish(start("stream_client.py", memif_path, "--count", "10"))
        assert "last reply: hello 9" in out and "10 replies" in out


def test_icmp_responder_answers_ping(memif_path):
    with listening("icmp_responder.py", memif_path, "--ip", "10.1.0.1"):
        ping = subprocess.run(
            [
                sys.executable,
                "-m",
                "memif_aio",
                "ping",
                memif_path,
                "--ip",
                "10.1.0.2",
                "10.1.0.1",
                "-c",
                "3",
                "-i",
                "0.01",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ping.returncode == 0, ping.stderr
        assert "3 packets transmitted, 3 received" in ping.stdout


def test_300_full_hd_frames_between_processes(memif_path):
    with listening("frame_receiver.py", memif_path, "--frames", "300", "--json") as receiver:
        sender = start("frame_sender.py", memif_path, "--frames", "300")
        assert "sent 300 frames of 3110400 bytes" in finish(sender, 120)
        summary = json.loads(finish(receiver, 120).strip().splitlines()[-1])
    assert summary["frames"] == 300 and summary["missing"] == 0 and summary["last_seq"] == 299
    assert summary["fps"] > 0


def test_forwarder_between_two_interfaces_and_hairpin(memif_path):
    path_a, path_b = memif_path + "-a", memif_path + "-b"

    async def drive() -> None:
        async with memif_aio.Socket(path_a) as sa, memif_aio.Socket(path_b) as sb:
            a = await sa.create_interface(id=0, role="master")
            b = await sb.create_interface(id=0, role="master")
            fwd = await asyncio.to_thread(start, "forwarder.py", path_a, path_b, "--count", "1000")
            await a.wait_connected(timeout=20)
            await b.wait_connected(timeout=20)
            packets = [i.to_bytes(4, "little") * 20 for i in range(1000)]
            await a.tx_queues[0].send_burst(packets[:500])
            await b.tx_queues[0].send_burst(packets[500:])
            got_b = [await asyncio.wait_for(b.rx_queues[0].recv(), 10) for _ in range(500)]
            got_a = [await asyncio.wait_for(a.rx_queues[0].recv(), 10) for _ in range(500)]
            assert got_b == packets[:500] and got_a == packets[500:]
            await a.tx_queues[0].send_burst(packets[:500])  # the rest of "--count 1000"
            await b.tx_queues[0].send_burst(packets[500:])
            for q in (a.rx_queues[0], b.rx_queues[0]):
                for _ in range(500):
                    await asyncio.wait_for(q.recv(), 10)
            assert "forwarded 1000 A->B and 1000 B->A" in await asyncio.to_thread(finish, fwd)

            hairpin = await asyncio.to_thread(
                start, "forwarder.py", path_a, "--hairpin", "--count", "300"
            )
            await a.wait_disconnected()
            await a.wait_connected(timeout=20)
            await a.tx_queues[0].send_burst(packets[:300])
            back = [await asyncio.wait_for(a.rx_queues[0].recv(), 10) for _ in range(300)]
            assert back == packets[:300]
            assert "forwarding 300 packets A -> A" in await asyncio.to_thread(finish, hairpin)

    asyncio.run(drive())


def test_scapy_exchange_against_the_responder(memif_path):
    """scapy builds ARP and ICMP requests, memif carries them, scapy matches the replies and
    checks their checksums (an implementation independent of ours)."""
    responder = subprocess.Popen(
        [sys.executable, "-m", "memif_aio", "responder", memif_path, "--ip", "10.7.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert responder.stdout.readline().startswith("ready"), responder.stderr.read()
        out = finish(
            start("scapy_exchange.py", memif_path, "--ip", "10.7.0.2", "--target", "10.7.0.1")
        )
    finally:
        responder.terminate()
        assert responder.wait(15) == 0
    assert "10.7.0.1 is at 02:fe:00:00:00:01" in out
    assert out.count("echo-reply 0 / Raw  (checksums ok)") == 3 and "BAD" not in out
    assert "sent 4, answered 3, unanswered 1" in out


def test_scapy_router_tests_pass_under_pytest():
    """examples/scapy_test_router.py as a user runs it: pytest with memif_aio's plugin."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(EXAMPLES / "scapy_test_router.py"), "-q",
         "-p", "no:cacheprovider"],
        capture_output=True, text=True, timeout=120, cwd=EXAMPLES.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout and "skipped" not in result.stdout
