"""ICMP responder: answers ARP and ping for one IPv4 address over memif (the counterpart of
libmemif's icmp_responder example).

    python examples/icmp_responder.py /run/vpp/memif.sock --role slave --ip 192.168.1.2
    # then in VPP: ping 192.168.1.2   (or: memif-aio ping SOCKET --ip 192.168.1.1 192.168.1.2)
"""

import argparse

import memif_aio
from memif_aio.cli import packets


async def main(args: argparse.Namespace) -> None:
    mac, ip = packets.parse_mac(args.mac), packets.parse_ip(args.ip)
    async with memif_aio.Socket(args.socket) as sock:
        iface = await sock.create_interface(id=args.id, role=args.role)
        print(f"answering for {args.ip} on {args.socket}", flush=True)
        answered = 0
        while args.count is None or answered < args.count:
            await iface.wait_connected()  # (re)connects are handled by the interface
            rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
            try:
                async for frame in rxq:  # one zero-copy view per packet
                    reply = packets.answer(frame, mac, ip)  # ARP reply, echo reply or None
                    if reply is not None:
                        await txq.send(reply)
                        answered += 1
                        if args.count is not None and answered >= args.count:
                            break
            except memif_aio.DisconnectedError:
                print("peer left; waiting for the next one", flush=True)
        print(f"answered {answered} requests", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("socket")
    parser.add_argument("--role", choices=("master", "slave"), default="master")
    parser.add_argument("--id", type=int, default=0)
    parser.add_argument("--ip", required=True)
    parser.add_argument("--mac", default="02:fe:00:00:00:01")
    parser.add_argument("--count", type=int, help="exit after answering this many")
    memif_aio.run(main(parser.parse_args()))
