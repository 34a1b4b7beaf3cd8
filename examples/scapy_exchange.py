"""scapy over memif: build packets with scapy, send them over a memif, match the replies.

    pip install "memif-aio[scapy]"
    memif-aio responder @/tmp/r.sock --ip 10.7.0.1 &
    python examples/scapy_exchange.py @/tmp/r.sock --ip 10.7.0.2 --target 10.7.0.1

``sr()`` is scapy's send-and-receive, over a memif interface instead of a kernel socket:
requests go out in one burst, every frame that comes back is parsed by scapy and paired
with the request it ``answers()``. examples/scapy_test_router.py uses it from pytest.
"""

from __future__ import annotations

import argparse
import asyncio

from scapy.all import ARP, ICMP, IP, UDP, Ether, Packet, raw

import memif_aio


async def sr(
    iface: memif_aio.Interface, requests: list[Packet], timeout: float = 1.0
) -> tuple[list[tuple[Packet, Packet]], list[Packet]]:
    """Send ``requests``; return ``(answered, unanswered)`` like scapy's ``sr()``: answered
    is a list of (request, reply) pairs. Stops when every request has its answer, or when
    nothing arrived for ``timeout`` seconds."""
    rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
    await txq.send_burst([raw(request) for request in requests])
    waiting = list(requests)
    answered = []
    while waiting:
        try:
            frame = await asyncio.wait_for(rxq.recv(), timeout)
        except asyncio.TimeoutError:
            break
        reply = Ether(frame)
        for request in waiting:
            if reply.answers(request):
                answered.append((request, reply))
                waiting.remove(request)
                break
    return answered, waiting


def checksums_valid(packet: Packet) -> bool:
    """The IPv4, ICMP and UDP checksums are what scapy computes for the same packet (a UDP
    checksum of 0 means "none", which IPv4 allows)."""
    rebuilt = packet.copy()
    for layer in (IP, ICMP, UDP):
        if layer in rebuilt and not (layer is UDP and rebuilt[UDP].chksum == 0):
            del rebuilt[layer].chksum
    return raw(Ether(raw(rebuilt))) == raw(packet)


async def main(args: argparse.Namespace) -> None:
    async with memif_aio.connect(args.socket, timeout=10) as iface:
        me = Ether(src=args.mac, dst="ff:ff:ff:ff:ff:ff")
        who_has = me / ARP(op="who-has", hwsrc=args.mac, psrc=args.ip, pdst=args.target)
        answered, _ = await sr(iface, [who_has])
        if not answered:
            raise SystemExit(f"no ARP reply from {args.target}")
        target_mac = answered[0][1][ARP].hwsrc
        print(f"{args.target} is at {target_mac}")
        to_target = Ether(src=args.mac, dst=target_mac) / IP(src=args.ip, dst=args.target)
        requests = [
            to_target / ICMP(id=0x4242, seq=seq) / (b"scapy over memif " * size)
            for seq, size in enumerate((1, 10, 80), start=1)
        ]
        requests.append(to_target / UDP(sport=4000, dport=9) / b"no one answers this")
        answered, unanswered = await sr(iface, requests, timeout=0.5)
        for request, reply in answered:
            ok = "checksums ok" if checksums_valid(reply) else "BAD CHECKSUM"
            print(f"{request.summary()}  ->  {reply.summary()}  ({ok})")
        for request in unanswered:
            print(f"{request.summary()}  ->  no answer")
        print(f"sent {len(requests)}, answered {len(answered)}, unanswered {len(unanswered)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("socket")
    parser.add_argument("--ip", required=True, help="our IPv4 address")
    parser.add_argument("--target", required=True, help="the address to query")
    parser.add_argument("--mac", default="02:fe:00:00:00:09")
    memif_aio.run(main(parser.parse_args()))
