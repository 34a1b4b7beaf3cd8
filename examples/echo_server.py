"""Echo server: a memif master that sends every packet back.

    python examples/echo_server.py @/tmp/echo.sock [--count N]

Point any slave at it: `memif-aio ping`, examples/packet_generator.py, or
`dpdk-testpmd --vdev=net_memif0,role=client,socket=/tmp/echo.sock ...`.
"""

import argparse

import memif_aio


async def main(path: str, count: int | None) -> None:
    # One socket can host many interfaces; here a single master interface with id 0.
    async with memif_aio.Socket(path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        print(f"listening on {path}", flush=True)
        echoed = 0
        while count is None or echoed < count:
            await iface.wait_connected()  # a slave (re)connects: new queues each time
            print(f"connected to {iface.details().remote_app_name}", flush=True)
            rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
            try:
                # Bursts: one wake-up hands us every packet that arrived; send_burst(burst)
                # copies them, with their metadata, straight into the tx ring (no Python
                # object per packet) before the burst is released.
                async for burst in rxq.bursts():
                    await txq.send_burst(burst)
                    echoed += len(burst)
                    if count is not None and echoed >= count:
                        break
            except memif_aio.DisconnectedError:
                print("peer left", flush=True)
        print(f"echoed {echoed} packets", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("socket", nargs="?", default="@/tmp/memif-echo.sock")
    parser.add_argument("--count", type=int, help="stop after echoing this many packets")
    args = parser.parse_args()
    memif_aio.run(main(args.socket, args.count))
