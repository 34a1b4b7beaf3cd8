"""Transport/Protocol endpoint: plain asyncio DatagramProtocol code over memif, no rings.

python examples/echo_server.py @/tmp/echo.sock &
python examples/protocol_endpoint.py @/tmp/echo.sock --count 1000
"""

import argparse
import asyncio

import memif_aio


class PingProtocol(asyncio.DatagramProtocol):
    """Sends `count` numbered packets, one at a time, and waits for each echo."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:
        self.transport = transport
        print("link up:", transport.get_extra_info("memif").remote_app_name, flush=True)
        self.transport.sendto((0).to_bytes(4, "little"))

    def datagram_received(self, data: bytes, addr) -> None:
        n = int.from_bytes(data, "little") + 1
        if n == self.count:
            self.done.set_result(n)
        else:
            self.transport.sendto(n.to_bytes(4, "little"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed"))


async def main(path: str, count: int) -> None:
    transport, protocol = await memif_aio.create_endpoint(
        lambda: PingProtocol(count), path, role="slave"
    )
    try:
        print("round trips:", await protocol.done, flush=True)
    finally:
        transport.close()
        await transport.wait_closed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("socket", nargs="?", default="@/tmp/memif-echo.sock")
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    memif_aio.run(main(args.socket, args.count))
