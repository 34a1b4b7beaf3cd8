"""Packet generator: a memif slave that sends numbered packets as fast as the peer takes them
and counts what comes back (run examples/echo_server.py first).

    python examples/packet_generator.py @/tmp/echo.sock --count 100000 --size 64
"""

import argparse
import asyncio
import time

import numpy as np

import memif_aio


async def main(path: str, count: int, size: int) -> None:
    async with memif_aio.connect(path) as iface:
        rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
        # Packets as rows of a 2-D numpy array: send_burst copies rows in C, no per-packet
        # Python objects. The first 8 bytes of each packet carry its number.
        batch = 256
        data = np.zeros((batch, size), np.uint8)
        lengths = np.full(batch, size, np.uint32)
        numbers = data[:, :8].view(np.uint64)

        async def receive() -> int:
            got = 0
            async for burst in rxq.bursts():
                got += len(burst)
                if got >= count:
                    break
            return got

        receiver = asyncio.ensure_future(receive())
        start = time.perf_counter()
        for first in range(0, count, batch):
            n = min(batch, count - first)
            numbers[:n, 0] = np.arange(first, first + n, dtype=np.uint64)
            await txq.send_burst(data[:n], lengths[:n])  # waits while the ring is full
        received = await asyncio.wait_for(receiver, 30)
        elapsed = time.perf_counter() - start
        print(
            f"sent {count}, received {received} in {elapsed:.3f}s: "
            f"{count / elapsed / 1e6:.2f} Mpps each way",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("socket", nargs="?", default="@/tmp/memif-echo.sock")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    memif_aio.run(main(args.socket, args.count, args.size))
