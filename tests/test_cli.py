"""The memif-aio command, driven as a user would: subprocesses, output and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest

CLI = [sys.executable, "-m", "memif_aio"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@contextmanager
def service(*args: str):
    """A long-running subcommand (echo/responder) until the block ends."""
    proc = subprocess.Popen(
        [*CLI, *args, "--until-stdin-closes"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready"), line + proc.stderr.read()
        yield proc
    finally:
        proc.stdin.close()
        assert proc.wait(15) == 0


def test_help_lists_commands_with_examples():
    out = run("--help").stdout
    for command in ("demo", "bench", "probe", "echo", "responder", "ping"):
        assert command in out
    assert "example:" in run("ping", "--help").stdout


def test_probe_reports_hello_and_ack(memif_path):
    with service("echo", memif_path, "--id", "3", "--secret", "pw"):
        ok = run("probe", memif_path, "--id", "3", "--secret", "pw")
        assert ok.returncode == 0, ok.stderr
        assert "master 'memif-aio echo'" in ok.stdout and "accepted (ACK)" in ok.stdout
        assert "ring size 16384" in ok.stdout
        as_json = json.loads(
            run("probe", memif_path, "--id", "3", "--secret", "pw", "--json").stdout
        )
        assert as_json["accepted"] and as_json["hello"]["max_log2_ring_size"] == 14
        wrong = run("probe", memif_path, "--id", "3", "--secret", "nope")
        assert wrong.returncode == 1 and "refused: secret mismatch" in wrong.stdout
        unknown = run("probe", memif_path, "--id", "9", "--secret", "pw")
        assert unknown.returncode == 1 and "unknown interface id 9" in unknown.stdout


def test_no_master_listening_is_exit_3(memif_path, fs_path):
    for path in (memif_path, fs_path):
        result = run("probe", path)
        assert result.returncode == 3, result
        assert (
            result.stderr.startswith("memif-aio probe: ") and len(result.stderr.splitlines()) == 1
        )
    result = run("ping", memif_path, "--ip", "10.0.0.2", "10.0.0.1", "--timeout", "1")
    assert result.returncode == 3 and "cannot connect" in result.stderr


def test_ping_against_our_responder_and_refusals(memif_path):
    with service("responder", memif_path, "--ip", "10.9.0.1", "--secret", "pw"):
        result = run(
            "ping",
            memif_path,
            "--secret",
            "pw",
            "--ip",
            "10.9.0.2",
            "10.9.0.1",
            "-c",
            "4",
            "-i",
            "0.05",
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("bytes from 10.9.0.1: icmp_seq=") == 4
        assert "4 packets transmitted, 4 received, 0% packet loss" in result.stdout
        as_json = json.loads(
            run(
                "ping",
                memif_path,
                "--secret",
                "pw",
                "--ip",
                "10.9.0.2",
                "10.9.0.1",
                "-c",
                "2",
                "-i",
                "0",
                "--dpdk-workaround",
                "off",
                "--json",
            ).stdout
        )
        assert as_json["received"] == 2 and as_json["rtt_ms"]["p50"] > 0
        wrong = run("ping", memif_path, "--secret", "bad", "--ip", "10.9.0.2", "10.9.0.1")
        assert wrong.returncode == 1 and "refused: secret mismatch" in wrong.stderr
        silent = run(
            "ping",
            memif_path,
            "--secret",
            "pw",
            "--ip",
            "10.9.0.2",
            "10.9.0.7",
            "--timeout",
            "1",
        )
        assert silent.returncode == 4 and "no ARP reply" in silent.stderr


def test_dpdk_workaround_flag_is_a_slave_option(memif_path):
    result = run("echo", memif_path, "--role", "master", "--dpdk-workaround", "on")
    assert result.returncode == 2
    assert result.stderr == (
        "memif-aio echo: dpdk_workaround='on' is for role='slave' (it defends its rx rings)\n"
    )
    result = run("ping", memif_path, "--ip", "10.0.0.2", "10.0.0.1", "--dpdk-workaround", "x")
    assert result.returncode == 2 and "invalid choice: 'x'" in result.stderr


def test_id_in_use_is_refused(memif_path):
    with service("responder", memif_path, "--ip", "10.9.0.1"):
        with service("echo", memif_path, "--role", "slave"):
            result = run("ping", memif_path, "--ip", "10.9.0.2", "10.9.0.1", "-c", "1")
            assert result.returncode == 1
            assert "refused: interface already connected" in result.stderr


@pytest.mark.dpdk
def test_ping_through_testpmd_icmpecho(testpmd_peer, memif_path):
    testpmd_peer(role="server", forward_mode="icmpecho")
    result = run("ping", memif_path, "--ip", "192.168.7.2", "192.168.7.1", "-c", "3", "-i", "0.05")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 packets transmitted, 3 received" in result.stdout


def test_demo_prints_the_table():
    result = run("demo", "--seconds", "2", timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in ("burst         64B", "burst       1500B", "packet        64B", "RTT 64B"):
        assert line in out, out
    assert " 0 errors, 0 drops" in out


def test_demo_json():
    result = run("demo", "--seconds", "1", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(r["api"], r["size"]) for r in report["throughput"]] == [
        ("burst", 64),
        ("burst", 512),
        ("burst", 1500),
        ("packet", 64),
        ("packet", 1500),
    ]
    assert all(r["mpps"] > 0 for r in report["throughput"])
    assert report["rtt_us"]["samples"] > 0 and report["counters"]["rx_errors"] == 0


def test_bench_writes_json_markdown_and_plot(tmp_path, testpmd_bin):
    result = run(
        "bench",
        "--quick",
        "--sizes",
        "64",
        "--duration",
        "0.3",
        "--out",
        str(tmp_path),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "results.json").read_text())
    peers = {(r["peer"], r["scenario"]) for r in report["rows"]}
    assert peers == {
        ("memif_aio", "echo"),
        ("testpmd", "echo"),
        ("testpmd", "rx"),
        ("testpmd", "tx"),
    }
    assert report["ceilings_mpps"]["64"] > 0
    assert all(r["mpps"] > 0 for r in report["rows"])
    assert "| testpmd | rx | 64 | burst |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_latency_reports_each_mode_beside_the_floors(tmp_path):
    result = run("bench", "--latency", "--quick", "--json", "--out", str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Exception ignored" not in result.stderr  # the measuring children exit quietly
    report = json.loads(result.stdout)
    assert report == json.loads((tmp_path / "latency.json").read_text())
    rows = {(r["placement"], r["mode"], r["gil"]): r for r in report["rtt"]}
    for placement in ("same", "split"):
        assert (placement, "interrupt", "n/a") in rows
        for mode in ("polling", "adaptive"):
            assert {(placement, mode, "released"), (placement, mode, "held")} <= rows.keys()
    for row in rows.values():
        assert row["samples"] > 0
        assert 0 < row["p50_us"] <= row["p99_us"] <= row["p999_us"]
        assert row["floor_p50_us"] > 0 and row["loop_floor_p50_us"] > 0
    idle = {r["mode"]: r for r in report["idle"]}
    assert idle.keys() == {"interrupt", "polling", "adaptive"}
    assert idle["polling"]["master_cpu_percent"] > 20  # it spins (shared CPUs: not 100 %)
    assert {f["setting"] for f in report["fairness"]} >= {"library", "never"}
    table = (tmp_path / "latency.md").read_text()
    assert "| split | adaptive | released |" in table


def test_bad_options_are_usage_errors(memif_path):
    result = run("probe", memif_path, "--secret", "x" * 30)
    assert result.returncode == 2 and "secret" in result.stderr
    result = run("ping", memif_path, "--ip", "10.0.0.2", "10.0.0.1", "-c", "0")
    assert result.returncode == 2
    result = run("echo", memif_path, "--role", "slave", "--allow-unsealed-regions")
    assert result.returncode == 2 and "allow_unsealed_regions is for role='master'" in result.stderr


def test_echo_service_survives_a_peer_that_breaks_the_data_path(memif_path):
    import asyncio
    import os

    import memif_aio

    async def scenario() -> bytes:
        async with memif_aio.Socket(memif_path, reconnect_interval=60) as bad_sock:
            bad = await bad_sock.create_interface(id=0, role="slave")
            await bad.wait_connected(timeout=10)
            memory = bad.link.plane.memory
            ring = memory.s2m[0].ring
            ring.set_descriptor(0, 0, 1, 64, memory.region_sizes[1])  # past the end
            ring.head = 1
            os.eventfd_write(memory.s2m[0].spec.eventfd, 1)  # publish like a producer
            await asyncio.wait_for(bad.wait_disconnected(), 5)
        async with memif_aio.connect(memif_path, timeout=10) as good:
            await good.tx_queues[0].send(b"still echoing")
            return await asyncio.wait_for(good.rx_queues[0].recv(), 5)

    with service("echo", memif_path):
        assert asyncio.run(scenario()) == b"still echoing"


def test_bench_run_restores_the_callers_cpu_affinity():
    from memif_aio.cli import bench

    before = os.sched_getaffinity(0)
    config = bench.BenchConfig(
        sizes=(64,),
        apis=("burst",),
        loops=("asyncio",),
        duration=0.2,
        latency_seconds=0.2,
        use_testpmd=False,
    )
    report = bench.run(config)
    assert [(r.peer, r.scenario) for r in report.rows] == [("memif_aio", "echo")]
    assert os.sched_getaffinity(0) == before
