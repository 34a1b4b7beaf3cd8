"""A memif_aio peer in its own process, for tests: prints one JSON line per event.

    python tests/peer_process.py --role master --socket @x --id 0 [--secret s] ...

With --echo it sends every packet back on the queue it came from; with --blast it sends
64-byte packets on every queue as fast as the ring takes them (a peer killed mid-burst); with
--drain it takes every burst and drops it. --rx-mode: how its receive queues wait.
Events: {"event": "ready"}, {"event": "connected", "details": {...}},
{"event": "disconnected", "reason": "..."}; it exits cleanly when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys

import memif_aio


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def main(args: argparse.Namespace) -> None:
    sock = memif_aio.Socket(args.socket, reconnect_interval=args.reconnect_interval)
    iface = await sock.create_interface(
        id=args.id,
        role=args.role,
        secret=args.secret,
        rx_queues=args.queues,
        tx_queues=args.queues,
        ring_size=args.ring_size,
        buffer_size=args.buffer_size,
        name=args.name,
        rx_mode=args.rx_mode,
    )
    emit("ready")
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)

    async def report() -> None:
        while True:
            await iface.wait_connected()
            emit("connected", details=dataclasses.asdict(iface.details()))
            reason = await iface.wait_disconnected()
            emit("disconnected", reason=reason)

    async def echo(index: int) -> None:
        # Follows reconnects: each link-up brings new queues.
        while True:
            await iface.wait_connected()
            rxq, txq = iface.rx_queues[index], iface.tx_queues[index]
            try:
                async for burst in rxq.bursts():
                    await txq.send_burst(burst)
            except memif_aio.DisconnectedError:
                continue

    async def drain(index: int) -> None:
        while True:
            await iface.wait_connected()
            try:
                async for _ in iface.rx_queues[index].bursts():
                    pass
            except memif_aio.DisconnectedError:
                continue

    async def blast(index: int) -> None:
        burst = [bytes([index]) * 64] * 64
        while True:
            await iface.wait_connected()
            txq = iface.tx_queues[index]
            try:
                while True:
                    await txq.send_burst(burst)
            except memif_aio.DisconnectedError:
                continue

    tasks = [asyncio.create_task(report())]
    if args.echo:
        tasks += [asyncio.create_task(echo(i)) for i in range(args.queues)]
    if args.blast:
        tasks += [asyncio.create_task(blast(i)) for i in range(args.queues)]
    if args.drain:
        tasks += [asyncio.create_task(drain(i)) for i in range(args.queues)]
    await stdin_closed
    for task in tasks:
        task.cancel()
    await sock.close()
    emit("closed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", default="master")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--id", type=int, default=0)
    parser.add_argument("--secret")
    parser.add_argument("--queues", type=int, default=1)
    parser.add_argument("--ring-size", type=int, default=1024)
    parser.add_argument("--buffer-size", type=int, default=2048)
    parser.add_argument("--name")
    parser.add_argument("--reconnect-interval", type=float, default=0.2)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--echo", action="store_true", help="send back every packet received")
    parser.add_argument("--blast", action="store_true", help="send packets as fast as possible")
    parser.add_argument("--drain", action="store_true", help="take every packet, drop it")
    parser.add_argument("--rx-mode", default="interrupt", help="interrupt, polling or adaptive")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))
