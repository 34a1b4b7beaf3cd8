"""Testing a network function from pytest: packets built with scapy, sent over memif, replies
matched, with the fixtures memif_aio installs (memif_pair: a connected master and slave).

    pip install "memif-aio[scapy]" pytest pytest-asyncio
    pytest examples/scapy_test_router.py

The network function here is a toy UDP reflector that routes like a router should: it
answers every UDP datagram to its address with the same payload, swapping addresses and
ports, decrements the TTL (dropping what would expire) and computes the IPv4 checksum. In a
real project it would be your VPP graph node, DPDK app or Python service behind a memif
socket: start it in a fixture, connect with ``memif_aio.connect`` instead of ``memif_pair``,
and keep the tests as they are.
"""

from __future__ import annotations

import asyncio
import struct

import pytest
from scapy.all import ARP, IP, UDP, Ether, raw
from scapy_exchange import checksums_valid, sr

import memif_aio

ROUTER_MAC, ROUTER_IP = "02:fe:00:00:0a:01", "10.8.0.1"
HOST_MAC, HOST_IP = "02:fe:00:00:0a:02", "10.8.0.2"


def reflect(frame: bytes) -> bytes | None:
    """The network function under test: plain bytes in, plain bytes (or nothing) out."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:  # IPv4/UDP only
        return None
    ihl = (frame[14] & 0x0F) * 4
    ttl = frame[22]
    if ttl <= 1:
        return None
    ip = bytearray(frame[14 : 14 + ihl])
    ip[8] = ttl - 1
    ip[12:16], ip[16:20] = frame[30:34], frame[26:30]
    ip[10:12] = b"\0\0"
    total = sum(struct.unpack(f"!{ihl // 2}H", ip))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    ip[10:12] = struct.pack("!H", ~total & 0xFFFF)
    udp = bytearray(frame[14 + ihl :])
    udp[0:2], udp[2:4] = frame[16 + ihl : 18 + ihl], frame[14 + ihl : 16 + ihl]
    udp[6:8] = b"\0\0"  # no UDP checksum (allowed over IPv4)
    return frame[6:12] + frame[0:6] + frame[12:14] + bytes(ip) + bytes(udp)


@pytest.fixture
async def router(memif_pair):
    """The function behind the master end of a memif; the test gets the slave end."""
    master, slave = memif_pair

    async def serve() -> None:
        rxq, txq = master.rx_queues[0], master.tx_queues[0]
        async for frame in rxq:  # a zero-copy view, valid until the next one
            reply = reflect(bytes(frame))
            if reply is not None:
                await txq.send(reply)

    task = asyncio.ensure_future(serve())
    yield slave
    task.cancel()
    (outcome,) = await asyncio.gather(task, return_exceptions=True)
    if not isinstance(outcome, asyncio.CancelledError):
        raise AssertionError(f"the network function died: {outcome!r}")


def udp_request(payload: bytes, ttl: int = 64, sport: int = 5000, dport: int = 7):
    return (
        Ether(src=HOST_MAC, dst=ROUTER_MAC)
        / IP(src=HOST_IP, dst=ROUTER_IP, ttl=ttl)
        / UDP(sport=sport, dport=dport)
        / payload
    )


async def test_every_datagram_is_answered_with_its_payload(router: memif_aio.Interface):
    requests = [udp_request(bytes([n % 256]) * n, sport=5000 + n) for n in (1, 18, 300, 1400)]
    answered, unanswered = await sr(router, requests)
    assert not unanswered
    for request, reply in answered:
        assert reply[UDP].payload.load == request[UDP].payload.load
        assert (reply[UDP].sport, reply[UDP].dport) == (request[UDP].dport, request[UDP].sport)
        assert (reply[IP].src, reply[IP].dst) == (ROUTER_IP, HOST_IP)
        assert reply[Ether].dst == HOST_MAC


async def test_ttl_is_decremented_and_the_checksum_recomputed(router: memif_aio.Interface):
    answered, _ = await sr(router, [udp_request(b"ttl", ttl=ttl) for ttl in (2, 64, 255)])
    assert sorted(reply[IP].ttl for _, reply in answered) == [1, 63, 254]
    assert all(checksums_valid(reply) for _, reply in answered)


async def test_what_would_expire_or_is_not_udp_is_dropped(router: memif_aio.Interface):
    arp = Ether(src=HOST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=HOST_IP, pdst=ROUTER_IP)
    answered, unanswered = await sr(
        router, [udp_request(b"x", ttl=1), udp_request(b"y", ttl=0), arp], timeout=0.3
    )
    assert answered == [] and len(unanswered) == 3


def test_reflect_alone_with_scapy_checking_it():
    """The function without memif at all: the same scapy checks, for unit speed."""
    reply = Ether(reflect(raw(udp_request(b"hello", ttl=9))))
    assert reply[IP].ttl == 8 and reply[UDP].load == b"hello" and checksums_valid(reply)
