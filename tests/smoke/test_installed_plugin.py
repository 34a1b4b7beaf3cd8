"""The pytest plugin as a user gets it from the wheel: nothing configured, fixtures just there."""

import pytest


@pytest.mark.asyncio
async def test_memif_pair_from_the_installed_plugin(memif_pair):
    master, slave = memif_pair
    await slave.tx_queues[0].send(b"ping")
    assert await master.rx_queues[0].recv() == b"ping"
    await master.tx_queues[0].send_burst([b"pong", b"!"])
    burst = await slave.rx_queues[0].recv_burst()
    assert [bytes(burst[i]) for i in range(len(burst))] == [b"pong", b"!"]
