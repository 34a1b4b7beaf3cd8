"""Bounded-time fuzzers for what a peer controls: control frames and ring descriptors.

    python tests/hostile/fuzz.py --seconds 600 [--seed N]     # a long run, by hand

CI runs each target for ``MEMIF_FUZZ_SECONDS`` (default 2) through tests/hostile/test_fuzz.py.
Each target is a plain mutational loop over a seeded ``random.Random``: a failure prints the
seed and iteration, so it replays exactly.

- ``fuzz_frames``: mutated valid frames (bit flips, byte writes, cuts, extensions, splices,
  type swaps) go through ``protocol.decode`` (only ``FrameError`` may come out, and whatever
  decodes re-encodes to 128 bytes) and into master and slave machines stopped at a random
  point of a valid handshake (no exception; a refusal always sends DISCONNECT first).
- ``fuzz_descriptors``: random descriptor tables and counters in a real ring over two regions,
  read by the Cython core in the master role (peer's region/offset/length) and the slave role
  (length against our buffers). Checked against an oracle written from the protocol: a read
  either raises ``PeerProtocolError`` because some descriptor it had to look at is out of
  bounds, or returns packets whose bytes are exactly the in-bounds slices the descriptors name.
"""

from __future__ import annotations

import argparse
import random
import struct
import time
from collections.abc import Callable

import numpy as np
from machines import master_machine, slave_machine

from memif_aio import _ring
from memif_aio import handshake as hs
from memif_aio import protocol as p
from memif_aio.errors import FrameError, PeerProtocolError

SEEDS_FRAMES = [
    p.encode(m)
    for m in (
        p.Ack(),
        p.Hello("vpp"),
        p.Init(p.VERSION, 0, p.Mode.ETHERNET, b"s", "app"),
        p.AddRegion(0, 4096),
        p.AddRing(1, 0, 0, 0, 4),
        p.Connect("if"),
        p.Connected("if"),
        p.Disconnect(1, "why"),
    )
]


def mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        how = rng.randrange(7)
        if how == 0 and data:
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif how == 1 and data:
            data[rng.randrange(len(data))] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif how == 2:
            del data[rng.randrange(len(data) + 1) :]
        elif how == 3:
            data += rng.randbytes(rng.randint(1, 200))
        elif how == 4:
            other = rng.choice(SEEDS_FRAMES)
            i = rng.randrange(128)
            data[i:] = other[i:]
        elif how == 5 and len(data) >= 2:
            data[0:2] = struct.pack("<H", rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xFFFF)))
        elif how == 6 and len(data) > 4:
            i = rng.randrange(2, len(data) - 1)
            data[i : i + 2] = struct.pack("<H", rng.choice((0, 1, 0x7FFF, 0xFFFF)))
    return bytes(data)


def _fake_fd(fd: int) -> hs.FdInfo:
    return hs.FdInfo("memfd", 1 << 20, hs.SEAL_SHRINK) if fd < 500 else hs.FdInfo("eventfd")


def _master_at(step: int) -> hs.MasterHandshake:
    config = hs.MasterInterfaceConfig(rx_queues=2, tx_queues=2)
    master = master_machine("m", lambda i: config, lambda i: False, inspect_fd=_fake_fd)
    master.start()
    script = [
        (p.Init(), ()),
        (p.AddRegion(0, 1 << 20), (100,)),
        (p.AddRing(1, 0, 0, 0, 4), (600,)),
        (p.AddRing(0, 0, 0, 4096, 4), (601,)),
    ]
    for message, fds in script[:step]:
        master.receive(message, fds)
    return master


def _slave_at(step: int) -> hs.SlaveHandshake:
    slave = slave_machine(hs.SlaveConfig())
    if step >= 1:
        slave.receive(p.Hello("m"))
        slave.memory_created(
            [hs.RegionSpec(0, 1 << 20, 3)],
            [hs.RingSpec(True, 0, 0, 0, 4, 4), hs.RingSpec(False, 0, 0, 4096, 4, 5)],
        )
    for _ in range(max(0, step - 1)):
        slave.receive(p.Ack())
    return slave


def _check_actions(actions: list[hs.Action], fds: tuple[int, ...]) -> None:
    closed = [a for a in actions if isinstance(a, hs.Closed)]
    assert len(closed) <= 1, actions
    if closed and not closed[0].by_peer:
        sends = [a for a in actions if isinstance(a, hs.Send)]
        assert sends and isinstance(sends[-1].message, p.Disconnect), actions
    if closed or any(isinstance(a, hs.CloseFds) for a in actions):
        gone = {fd for a in actions if isinstance(a, hs.CloseFds) for fd in a.fds}
        assert set(fds) <= gone or not closed, (fds, actions)


def fuzz_frames(seconds: float, seed: int) -> int:
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
        frame = mutate(rng, rng.choice(SEEDS_FRAMES))
        try:
            try:
                message = p.decode(frame)
            except FrameError:
                message = None
            if message is not None:
                assert len(frame) == 128
                assert len(p.encode(message)) == 128
            fds = tuple(rng.sample([100, 101, 600, 601], rng.randint(0, 2)))
            machine: hs.MasterHandshake | hs.SlaveHandshake
            if rng.random() < 0.5:
                machine = _master_at(rng.randint(0, 4))
            else:
                machine = _slave_at(rng.randint(0, 3))
            _check_actions(machine.receive_frame(frame, fds), fds)
        except Exception as exc:
            raise AssertionError(f"fuzz_frames seed={seed} iteration={n}: {frame!r}") from exc
    return n


# ------------------------------------------------------------------------------- descriptors

NEXT = 1
U32 = (1 << 32) - 1


class _Rig:
    """A ring in region 0 and buffers in region 1, plain bytearrays: no peer, no fds."""

    def __init__(self, rng: random.Random) -> None:
        self.log2 = rng.randint(1, 6)
        self.size = 1 << self.log2
        self.buffer_size = rng.choice((64, 256, 2048))
        ring_len = _ring.ring_bytes(self.log2)
        self.buffers = bytearray(rng.randbytes(self.size * self.buffer_size + rng.randint(0, 99)))
        self.rings = bytearray(ring_len + rng.randint(0, 64))
        self.region_sizes = [len(self.rings), len(self.buffers)]
        self.table = _ring.RegionTable([self.rings, self.buffers])
        self.ring = _ring.Ring(self.table, 0, 0, self.log2)
        self.ring.initialize()

    def close(self) -> None:
        self.table.close()


def _expected_master(rig: _Rig, descs, avail: int, maxp: int) -> list[bytes] | None:
    """Oracle: packets a master reader must return, or None if it must refuse."""
    if avail > rig.size:
        return None
    regions = [bytes(rig.rings), bytes(rig.buffers)]
    out: list[bytes] = []
    d = 0
    while len(out) < maxp and d < avail:
        start, parts = d, []
        while True:
            if d >= avail:
                if d - start >= rig.size:
                    return None
                return out  # unfinished chain: left for later
            flags, region, length, offset = descs[d % rig.size]
            if region >= 2 or offset + length > rig.region_sizes[region]:
                return None
            parts.append(regions[region][offset : offset + length])
            if sum(map(len, parts)) > U32:
                return None
            d += 1
            if not flags & NEXT:
                out.append(b"".join(parts))
                break
    return out


def _random_desc(rng: random.Random, rig: _Rig) -> tuple[int, int, int, int]:
    flags = NEXT if rng.random() < 0.2 else 0
    if rng.random() < 0.9:  # mostly plausible, sometimes hostile
        region = 1
        length = rng.randint(0, rig.buffer_size)
        offset = rng.randint(0, max(0, rig.region_sizes[1] - length))
    else:
        region = rng.choice((0, 1, 2, 0xFFFF))
        length = rng.choice((0, 1, rig.buffer_size + 1, U32, rng.randrange(U32)))
        offset = rng.choice((0, rig.region_sizes[1] - 1, U32, rng.randrange(U32)))
    return flags, region, length, offset


def fuzz_descriptors(seconds: float, seed: int) -> int:
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
        rig = _Rig(rng)
        try:
            if rng.random() < 0.6:
                _one_master_read(rng, rig)
            else:
                _one_slave_read(rng, rig)
        except Exception as exc:
            raise AssertionError(f"fuzz_descriptors seed={seed} iteration={n}") from exc
        finally:
            rig.close()
    return n


def _one_master_read(rng: random.Random, rig: _Rig) -> None:
    max_burst = rng.choice((1, 4, 256))
    rx = _ring.RxRing(rig.ring, role="master", max_burst=max_burst)
    descs = [_random_desc(rng, rig) for _ in range(rig.size)]
    for slot, (flags, region, length, offset) in enumerate(descs):
        rig.ring.set_descriptor(slot, flags, region, length, offset)
    head = rng.choice((rng.randint(0, rig.size), rng.randint(0, 0xFFFF)))
    rig.ring.head = head
    maxp = rng.choice((1, 3, 256))
    expected = _expected_master(rig, descs, head, min(maxp, max_burst))
    try:
        burst = rx.rx_burst(maxp)
    except PeerProtocolError:
        assert expected is None, "refused a valid ring"
        return
    assert expected is not None, "accepted an invalid ring"
    got = [bytes(burst[i]) for i in range(len(burst))]
    assert got == expected
    rx.release()
    rx.close()


def _one_slave_read(rng: random.Random, rig: _Rig) -> None:
    offsets = np.arange(rig.size, dtype=np.uint32) * rig.buffer_size
    rx = _ring.RxRing(
        rig.ring,
        role="slave",
        buffer_size=rig.buffer_size,
        buffer_region=1,
        buffer_offsets=offsets,
    )
    rx.refill()  # head = size: every buffer offered to the "master"
    descs = []
    for slot in range(rig.size):
        flags = NEXT if rng.random() < 0.2 else 0
        length = rng.choice((0, 1, rig.buffer_size, rng.randint(0, rig.buffer_size)))
        if rng.random() < 0.05:
            length = rng.choice((rig.buffer_size + 1, U32))
        region, offset = rng.choice(((1, int(offsets[slot])), (7, U32)))  # ignored by a slave
        rig.ring.set_descriptor(slot, flags, region, length, offset)
        descs.append((flags, length))
    tail = rng.choice((rng.randint(0, rig.size), rng.randint(0, 0xFFFF)))
    rig.ring.tail = tail
    expected: list[bytes] | None = []
    if tail > rig.size:
        expected = None
    else:
        d = 0
        while d < tail:
            start, parts = d, []
            while True:
                if d >= tail:
                    if d - start >= rig.size:
                        expected = None
                    d = tail + 1
                    break
                flags, length = descs[d]
                if length > rig.buffer_size:
                    expected = None
                    d = tail + 1
                    break
                o = int(offsets[d])
                parts.append(bytes(rig.buffers[o : o + length]))
                d += 1
                if not flags & NEXT:
                    expected.append(b"".join(parts))
                    break
            if expected is None:
                break
    try:
        burst = rx.rx_burst()
    except PeerProtocolError:
        assert expected is None, "refused a valid ring"
        return
    assert expected is not None, "accepted an invalid ring"
    assert [bytes(burst[i]) for i in range(len(burst))] == expected
    rx.release()
    rx.close()


TARGETS: dict[str, Callable[[float, int], int]] = {
    "frames": fuzz_frames,
    "descriptors": fuzz_descriptors,
}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="per target")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--target", choices=sorted(TARGETS), action="append")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    for name in args.target or list(TARGETS):
        count = TARGETS[name](args.seconds, seed)
        print(f"{name}: {count} inputs in {args.seconds:.0f} s, seed {seed}: ok")
