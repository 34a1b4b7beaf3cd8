"""Forwarder: joins two memif interfaces, A <-> B, like a tiny L2 bridge.

    python examples/forwarder.py @/tmp/a.sock @/tmp/b.sock [--count N]

Both sides are slaves here. Buffers of two interfaces live in different shared-memory regions,
so packets are copied between them (one memcpy each, in C). Zero-copy is possible within one
slave interface, where rx and tx buffers share a region: `--hairpin` bounces A's packets back
to A by handing the received buffers to the tx ring (TxQueue.forward), without copying.
"""

import argparse
import asyncio

import memif_aio


async def pump(src: memif_aio.Interface, dst: memif_aio.Interface, count: int | None) -> int:
    moved = 0
    txq = dst.tx_queues[0]
    async for burst in src.rx_queues[0].bursts():
        if src is dst:
            txq.forward(burst)  # zero-copy: swap descriptors (stops at a chain or a full ring)
        # Copy, ring to ring in C, whatever forward() did not take (here: all of it for B);
        # descriptor metadata travels along either way.
        await txq.send_burst(burst)
        moved += len(burst)
        if count is not None and moved >= count:
            return moved
    return moved


async def main(path_a: str, path_b: str | None, count: int | None) -> None:
    async with memif_aio.connect(path_a, name="fwd-a") as a:
        if path_b is None:  # hairpin
            print("forwarding", await pump(a, a, count), "packets A -> A (zero-copy)")
            return
        async with memif_aio.connect(path_b, name="fwd-b") as b:
            print("forwarding A <-> B", flush=True)
            moved = await asyncio.gather(pump(a, b, count), pump(b, a, count))
            print(f"forwarded {moved[0]} A->B and {moved[1]} B->A", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("a")
    parser.add_argument("b", nargs="?")
    parser.add_argument("--hairpin", action="store_true", help="A -> A, zero-copy")
    parser.add_argument("--count", type=int, help="stop after this many packets each way")
    args = parser.parse_args()
    if args.b is None and not args.hairpin:
        parser.error("give two sockets, or one with --hairpin")
    memif_aio.run(main(args.a, None if args.hairpin else args.b, args.count))
