"""The shipped pytest plugin, used the way a user's test suite would."""

from __future__ import annotations

import asyncio

import pytest

import memif_aio

pytest_plugins = ["pytester"]


async def test_memif_pair_is_connected_both_ways(memif_pair):
    master, slave = memif_pair
    await slave.tx_queues[0].send(b"up")
    await master.tx_queues[0].send(b"down")
    assert await master.rx_queues[0].recv() == b"up"
    assert await slave.rx_queues[0].recv() == b"down"


@pytest.mark.memif(ring_size=64, rx_queues=2, tx_queues=2)
async def test_memif_pair_takes_options_from_a_marker(memif_pair):
    master, slave = memif_pair
    assert [q.ring_size for q in master.details().rx_queues] == [64, 64]


@pytest.mark.dpdk
async def test_testpmd_peer_echoes(testpmd_peer, testpmd_bin):
    pmd = await asyncio.to_thread(testpmd_peer, role="server", forward_mode="io")
    async with memif_aio.connect(pmd.socket) as iface:
        await iface.tx_queues[0].send(b"x" * 60)
        assert await asyncio.wait_for(iface.rx_queues[0].recv(), 5) == b"x" * 60


def test_plugin_works_in_a_fresh_project(pytester):
    pytester.makepyfile(
        """
        async def test_user_code(memif_pair):
            master, slave = memif_pair
            await slave.tx_queues[0].send_burst([b"a", b"b"])
            burst = await master.rx_queues[0].recv_burst()
            assert [bytes(burst[i]) for i in range(len(burst))] == [b"a", b"b"]
        """
    )
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
    )
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("args", "outcome"), [((), {"skipped": 1}), (("--memif-require-testpmd",), {"errors": 1})]
)
def test_a_missing_testpmd_skips_unless_required(pytester, monkeypatch, tmp_path, args, outcome):
    pytester.makepyfile(
        """
        def test_against_dpdk(testpmd_peer):
            testpmd_peer()
        """
    )
    monkeypatch.setenv("PATH", str(tmp_path))  # no dpdk-testpmd to be found
    monkeypatch.delenv("CI", raising=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    result.assert_outcomes(**outcome)
