"""Just enough Ethernet, ARP, IPv4, ICMP and UDP to answer and send pings and generate
traffic over memif.

Pure functions over bytes: no I/O, no state. Used by the ``responder``, ``ping`` and ``gen``
commands and the ICMP responder example.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ETH_P_IP = 0x0800
IPPROTO_UDP = 17
ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IP = struct.Struct("!BBHHHBBH4s4s")
_ICMP_ECHO = struct.Struct("!BBHHH")
_UDP = struct.Struct("!HHHH")
HEADERS_UDP = _ETH.size + _IP.size + _UDP.size  # 42: where a UDP payload starts


def parse_mac(text: str) -> bytes:
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6:
        raise ValueError(f"bad MAC address {text!r}")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_ip(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def format_ip(packed: bytes) -> str:
    return str(ipaddress.IPv4Address(packed))


def checksum(data: bytes | memoryview) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def arp(op: int, src_mac: bytes, src_ip: bytes, dst_mac: bytes, dst_ip: bytes) -> bytes:
    eth_dst = BROADCAST if op == 1 else dst_mac
    body = _ARP.pack(1, ETH_P_IP, 6, 4, op, src_mac, src_ip, dst_mac, dst_ip)
    return _ETH.pack(eth_dst, src_mac, ETH_P_ARP) + body


def icmp_echo(
    kind: int,
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: bytes,
    dst_ip: bytes,
    ident: int,
    seq: int,
    payload: bytes,
    ttl: int = 64,
) -> bytes:
    icmp = _ICMP_ECHO.pack(kind, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    ip = _IP.pack(0x45, 0, 20 + len(icmp), seq & 0xFFFF, 0x4000, ttl, 1, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return _ETH.pack(dst_mac, src_mac, ETH_P_IP) + ip + icmp


def udp(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: bytes,
    dst_ip: bytes,
    src_port: int,
    dst_port: int,
    payload: bytes,
    ttl: int = 64,
) -> bytes:
    """An Ethernet/IPv4/UDP frame; the UDP checksum is 0 ("none", allowed over IPv4), so the
    payload can change in place without touching the headers."""
    length = _UDP.size + len(payload)
    ip = _IP.pack(0x45, 0, _IP.size + length, 0, 0x4000, ttl, IPPROTO_UDP, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return (
        _ETH.pack(dst_mac, src_mac, ETH_P_IP)
        + ip
        + _UDP.pack(src_port, dst_port, length, 0)
        + payload
    )


@dataclass(frozen=True)
class Arp:
    op: int
    src_mac: bytes
    src_ip: bytes
    dst_mac: bytes
    dst_ip: bytes


@dataclass(frozen=True)
class IcmpEcho:
    kind: int
    src_mac: bytes
    dst_mac: bytes
    src_ip: bytes
    dst_ip: bytes
    ident: int
    seq: int
    ttl: int
    payload: bytes


def parse(frame: bytes | memoryview) -> Arp | IcmpEcho | None:
    """ARP or ICMP echo frames; anything else (or anything malformed) is None."""
    if len(frame) < _ETH.size:
        return None
    dst, src, ethertype = _ETH.unpack_from(frame)
    if ethertype == ETH_P_ARP and len(frame) >= _ETH.size + _ARP.size:
        _, ptype, _, _, op, sha, spa, tha, tpa = _ARP.unpack_from(frame, _ETH.size)
        return Arp(op, sha, spa, tha, tpa) if ptype == ETH_P_IP else None
    if ethertype != ETH_P_IP or len(frame) < _ETH.size + _IP.size + _ICMP_ECHO.size:
        return None
    ver_ihl, _, total, _, _, ttl, proto, _, sip, dip = _IP.unpack_from(frame, _ETH.size)
    ihl = (ver_ihl & 0xF) * 4
    start = _ETH.size + ihl
    if ver_ihl >> 4 != 4 or proto != 1 or len(frame) < start + _ICMP_ECHO.size:
        return None
    end = min(len(frame), _ETH.size + total)
    kind, _, _, ident, seq = _ICMP_ECHO.unpack_from(frame, start)
    if kind not in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY):
        return None
    payload = bytes(frame[start + _ICMP_ECHO.size : end])
    return IcmpEcho(kind, src, dst, sip, dip, ident, seq, ttl, payload)


def answer(frame: bytes | memoryview, mac: bytes, ip: bytes) -> bytes | None:
    """The reply a host at (mac, ip) owes this frame: ARP reply or ICMP echo reply."""
    packet = parse(frame)
    if isinstance(packet, Arp) and packet.op == 1 and packet.dst_ip == ip:
        return arp(2, mac, ip, packet.src_mac, packet.src_ip)
    if isinstance(packet, IcmpEcho) and packet.kind == ICMP_ECHO_REQUEST and packet.dst_ip == ip:
        return icmp_echo(
            ICMP_ECHO_REPLY,
            mac,
            packet.src_mac,
            ip,
            packet.src_ip,
            packet.ident,
            packet.seq,
            packet.payload,
        )
    return None
