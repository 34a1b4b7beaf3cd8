"""Packet streams: asyncio.open_connection's shape, framed by packets.

python examples/echo_server.py @/tmp/echo.sock &
python examples/stream_client.py @/tmp/echo.sock
"""

import argparse

import memif_aio


async def main(path: str, count: int) -> None:
    reader, writer = await memif_aio.open_packet_stream(path)
    for i in range(count):
        writer.write(f"hello {i}".encode())
    await writer.drain()  # waits only if the ring and the write buffer are full
    replies = 0
    async for packet in reader:  # ends when the peer disconnects
        replies += 1
        if replies == count:
            print("last reply:", packet.decode(), flush=True)
            break
    writer.close()
    await writer.wait_closed()
    print(f"{replies} replies", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("socket", nargs="?", default="@/tmp/memif-echo.sock")
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    memif_aio.run(main(args.socket, args.count))
