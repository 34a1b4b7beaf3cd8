"""``memif-aio ping``: ICMP echo over memif, per-reply RTT and a summary like ``ping``.

It ARP-resolves the target first (answering the peer's own ARP requests meanwhile). Stopped by
SIGINT or SIGTERM, it prints the summary of what it sent so far, like ``ping`` on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from . import packets, perf
from .common import (
    BY_ROLE,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    SLAVE_TIMEOUT,
    CommandError,
    add_peer_options,
    open_peer,
    say,
    watching,
)


def register(command) -> None:
    parser = command(
        "ping",
        "ICMP echo over memif; ARP-resolves the target first",
        "memif-aio ping @/tmp/r.sock --ip 192.168.1.1 192.168.1.2 -c 5",
    )
    add_peer_options(parser, "slave", timeout=BY_ROLE)
    parser.add_argument("target", help="IPv4 address to ping")
    parser.add_argument("--ip", required=True, help="our IPv4 address")
    parser.add_argument("--mac", default="02:fe:00:00:00:02", help="our MAC address")
    parser.add_argument("-c", "--count", type=int, default=5, help="echo requests (default 5)")
    parser.add_argument("-i", "--interval", type=float, default=0.2, help="seconds between")
    parser.add_argument("-s", "--size", type=int, default=56, help="ICMP payload bytes")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(run=run)


async def run(args: argparse.Namespace, ctx) -> int:
    if args.count < 1 or args.size < 0:
        raise CommandError("--count must be at least 1 and --size not negative", EXIT_USAGE)
    mac, ip = packets.parse_mac(args.mac), packets.parse_ip(args.ip)
    target = packets.parse_ip(args.target)
    wait = args.timeout if args.timeout is not None else SLAVE_TIMEOUT  # for ARP and replies
    rtts: list[float] = []
    sent = 0
    async with open_peer(args, args.role, ctx.handler) as iface, watching(iface, ctx.console):
        rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
        target_mac = await _resolve(rxq, txq, mac, ip, target, wait)
        ident = os.getpid() & 0xFFFF
        payload = bytes(i & 0xFF for i in range(args.size))
        if not args.json:
            say(
                f"PING {args.target} ({packets.format_mac(target_mac)}) over memif "
                f"{args.socket}: {args.size} data bytes"
            )
        try:
            for seq in range(1, args.count + 1):
                request = packets.icmp_echo(
                    packets.ICMP_ECHO_REQUEST, mac, target_mac, ip, target, ident, seq, payload
                )
                start = time.perf_counter_ns()
                await txq.send(request)
                sent += 1
                reply = await _await_reply(rxq, ident, seq, min(wait, 2.0))
                if reply is not None:
                    rtt = (time.perf_counter_ns() - start) / 1e6
                    rtts.append(rtt)
                    if not args.json:
                        say(
                            f"{len(reply.payload) + 8} bytes from {args.target}: icmp_seq={seq} "
                            f"ttl={reply.ttl} time={rtt:.3f} ms"
                        )
                elif not args.json:
                    say(f"no reply for icmp_seq={seq}")
                if seq < args.count:
                    await asyncio.sleep(args.interval)
        finally:  # also when a signal stops it: the summary of what was sent
            _summary(args, sent, rtts)
    return EXIT_OK if rtts else EXIT_FAILED


def _summary(args: argparse.Namespace, sent: int, rtts: list[float]) -> None:
    have = bool(rtts)
    summary = {
        "target": args.target,
        "transmitted": sent,
        "received": len(rtts),
        "loss_percent": 100.0 * (sent - len(rtts)) / sent if sent else 0.0,
        "rtt_ms": {
            "min": min(rtts) if have else None,
            "avg": sum(rtts) / len(rtts) if have else None,
            "max": max(rtts) if have else None,
            "p50": perf.percentile(rtts, 50) if have else None,
            "p99": perf.percentile(rtts, 99) if have else None,
        },
    }
    if args.json:
        say(json.dumps(summary))
        return
    say(f"--- {args.target} ping statistics ---")
    say(
        f"{sent} packets transmitted, {len(rtts)} received, "
        f"{summary['loss_percent']:.0f}% packet loss"
    )
    if rtts:
        r = summary["rtt_ms"]
        say(f"rtt min/avg/max/p99 = {r['min']:.3f}/{r['avg']:.3f}/{r['max']:.3f}/{r['p99']:.3f} ms")


async def _resolve(rxq, txq, mac: bytes, ip: bytes, target: bytes, timeout: float) -> bytes:
    """ARP for ``target``; answer the peer's own ARP requests meanwhile."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        await txq.send(packets.arp(1, mac, ip, bytes(6), target))
        try:
            while True:
                frame = await asyncio.wait_for(rxq.recv(), 0.2)
                parsed = packets.parse(frame)
                if isinstance(parsed, packets.Arp) and parsed.op == 2 and parsed.src_ip == target:
                    return parsed.src_mac
                reply = packets.answer(frame, mac, ip)
                if reply is not None:
                    await txq.send(reply)
        except asyncio.TimeoutError:
            continue
    raise CommandError(f"no ARP reply from {packets.format_ip(target)}", EXIT_TIMEOUT)


async def _await_reply(rxq, ident: int, seq: int, timeout: float) -> packets.IcmpEcho | None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while (remaining := end - loop.time()) > 0:
        try:
            frame = await asyncio.wait_for(rxq.recv(), remaining)
        except asyncio.TimeoutError:
            return None
        parsed = packets.parse(frame)
        if (
            isinstance(parsed, packets.IcmpEcho)
            and parsed.kind == packets.ICMP_ECHO_REPLY
            and (parsed.ident, parsed.seq) == (ident, seq)
        ):
            return parsed
    return None
