"""Ring hot path: wire layout, round trips, wraparound, hostile peers, interrupts, zero-copy.

Every test runs against the Cython core (``memif_aio._ring``) and the pure-Python oracle
(``memif_aio._ring_py``). A :class:`Link` is one memif link inside one process: the slave's
and the master's objects are built over *separate* mmaps of the same memfds, as two processes
would have them.
"""

from __future__ import annotations

import gc
import importlib
import mmap
import os
import random
import struct
import tracemalloc

import numpy as np
import pytest
from dpdk_model import DpdkServerTx

from memif_aio import _ring
from memif_aio.errors import LocalProtocolError, PeerProtocolError

IMPLS = {"cython": "memif_aio._ring", "python": "memif_aio._ring_py"}


@pytest.fixture(params=sorted(IMPLS))
def R(request):
    return importlib.import_module(IMPLS[request.param])


@pytest.fixture
def cy():
    return importlib.import_module(IMPLS["cython"])


class Link:
    """A slave and a master over the same two memfds: region 0 = rings, region 1 = buffers.

    Region 1 holds ``size`` buffers for S2M then ``size`` for M2S (libmemif's layout). The slave
    initialises both rings, presets head = tail = ``start`` and refills its receive ring.
    """

    def __init__(
        self,
        R,
        *,
        log2=6,
        cacheline=64,
        buffer_size=2048,
        start=0,
        eventfds=False,
        max_burst=256,
        rx_options=None,
    ):
        self.R = R
        self.size = size = 1 << log2
        self.bs = buffer_size
        rb = R.ring_bytes(log2, cacheline)
        self.fds = [os.memfd_create("memif-rings"), os.memfd_create("memif-buffers")]
        self.sizes = [2 * rb, 2 * size * buffer_size]
        for fd, n in zip(self.fds, self.sizes, strict=True):
            os.ftruncate(fd, n)
        self.smaps = [mmap.mmap(fd, n) for fd, n in zip(self.fds, self.sizes, strict=True)]
        self.mmaps = [mmap.mmap(fd, n) for fd, n in zip(self.fds, self.sizes, strict=True)]
        self.efds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2)] if eventfds else []
        # Signalling is not the ring's business (it only calls its signaller): both ring
        # implementations share the real one.
        self.signaller = _ring.Signaller() if eventfds else None
        signal = [
            {"signaller": self.signaller, "eventfd": efd} if eventfds else {}
            for efd in self.efds or [-1, -1]
        ]
        self.S = R.RegionTable(self.smaps)
        self.M = R.RegionTable(self.mmaps)
        self.s_s2m = R.Ring(self.S, 0, 0, log2, cacheline)
        self.s_m2s = R.Ring(self.S, 0, rb, log2, cacheline)
        for ring in (self.s_s2m, self.s_m2s):
            ring.initialize()
            ring.head = ring.tail = start
        self.m_s2m = R.Ring(self.M, 0, 0, log2, cacheline)
        self.m_m2s = R.Ring(self.M, 0, rb, log2, cacheline)
        for ring in (self.m_s2m, self.m_m2s):
            ring.check_cookie()
        offs = np.arange(size, dtype=np.uint64) * buffer_size
        common = dict(buffer_size=buffer_size, buffer_region=1, max_burst=max_burst)
        self.stx = R.TxRing(self.s_s2m, role="slave", buffer_offsets=offs, **signal[0], **common)
        self.srx = R.RxRing(
            self.s_m2s,
            role="slave",
            buffer_offsets=offs + size * buffer_size,
            **common,
            **(rx_options or {}),
        )
        self.mrx = R.RxRing(self.m_s2m, role="master", max_burst=max_burst)
        self.mtx = R.TxRing(self.m_m2s, role="master", max_burst=max_burst, **signal[1])
        self.queues = [self.stx, self.srx, self.mrx, self.mtx]
        self.srx.refill()

    def memory(self) -> bytes:
        return b"".join(bytes(m) for m in self.smaps)

    def signals(self, rx) -> int:
        """How many times the peer of ``rx`` signalled it since the last look (reads and
        resets the test's own eventfd)."""
        efd = self.efds[0] if rx is self.mrx else self.efds[1]
        try:
            return os.eventfd_read(efd)
        except BlockingIOError:
            return 0

    def close(self):
        for q in self.queues:
            q.close()
        if self.signaller is not None:
            self.signaller.close()
        self.S.close()
        self.M.close()
        gc.collect()  # memoryviews a test kept in a cycle would block mmap.close()
        for m in self.smaps + self.mmaps:
            m.close()
        for fd in self.fds + self.efds:
            os.close(fd)


@pytest.fixture
def make_link():
    links = []

    def make(R, **kw):
        link = Link(R, **kw)
        links.append(link)
        return link

    yield make
    for link in links:
        link.close()


def payloads(rng: random.Random, count: int, max_len: int = 9000) -> list[bytes]:
    return [rng.randbytes(rng.randint(0, max_len)) for _ in range(count)]


def pump(tx, rx, packets, *, max_packets=None, chunk=300):
    """Send ``packets`` through tx -> rx; return what arrived, as bytes, in order."""
    out: list[bytes] = []
    sent = 0
    for _ in range(100 * len(packets) + 10):
        if sent < len(packets):
            sent += tx.tx_burst(packets[sent : sent + chunk])
        burst = rx.rx_burst(max_packets)
        out.extend(bytes(burst[i]) for i in range(len(burst)))
        if len(out) == len(packets):
            break
    rx.release()
    return out


def raw_u16(m: mmap.mmap, at: int) -> int:
    return struct.unpack_from("<H", m, at)[0]


# ---------------------------------------------------------------------------------- layout


def test_struct_sizes_and_header_layout(R, make_link):
    assert R.RING_COOKIE == 0x3E31F20
    assert R.DESC_FLAG_NEXT == 1 and R.RING_FLAG_MASK_INT == 1
    assert R.ring_bytes(0) == 128 + 16
    assert R.ring_bytes(10) == 128 + 16 * 1024 == 16512
    assert R.ring_bytes(10, 128) == 256 + 16 * 1024
    for cl in (64, 128):
        link = make_link(R, log2=4, cacheline=cl)
        ring, m = link.s_s2m, link.smaps[0]
        assert struct.unpack_from("<I", m, 0)[0] == R.RING_COOKIE
        ring.head, ring.tail, ring.flags = 0x1234, 0xBEEF, 0x0001
        assert raw_u16(m, 4) == 1 and raw_u16(m, 6) == 0x1234 and raw_u16(m, cl) == 0xBEEF
        ring.set_descriptor(3, 1, 0x0102, 0x03040506, 0x0708090A, 0x0B0C0D0E)
        at = 2 * cl + 16 * 3
        assert struct.unpack_from("<HHIII", m, at) == (
            1,
            0x0102,
            0x03040506,
            0x0708090A,
            0x0B0C0D0E,
        )
        assert link.m_s2m.descriptor(3) == (1, 0x0102, 0x03040506, 0x0708090A, 0x0B0C0D0E)
        assert (link.m_s2m.head, link.m_s2m.tail) == (0x1234, 0xBEEF)
        assert ring.size == 16 and ring.log2_size == 4 and ring.cacheline == cl
        # The second ring starts right after the first one.
        assert link.s_m2s.offset == R.ring_bytes(4, cl)


def test_geometry_validation(R):
    with pytest.raises(ValueError):
        R.ring_bytes(15)
    with pytest.raises(ValueError):
        R.ring_bytes(4, 32)
    buf = bytearray(4096)
    regions = R.RegionTable([buf])
    assert len(regions) == 1 and regions.size(0) == 4096
    R.Ring(regions, 0, 4096 - R.ring_bytes(5), 5)
    for args in [(1, 0, 4), (0, 0, 15), (0, 4096 - 100, 4), (0, 2, 4), (0, -4, 4)]:
        with pytest.raises(ValueError):
            R.Ring(regions, *args)
    with pytest.raises(ValueError):
        R.Ring(regions, 0, 0, 4, 96)
    with pytest.raises(ValueError):
        R.RegionTable([b"read-only bytes"])
    regions.close()
    with pytest.raises(LocalProtocolError):
        R.Ring(regions, 0, 0, 4)


def test_cookie_initialize_reset(R, make_link):
    link = make_link(R, log2=3)
    link.s_s2m.set_descriptor(2, 1, 1, 1, 1, 1)
    link.s_s2m.head = 5
    link.s_s2m.initialize()
    assert link.m_s2m.descriptor(2) == (0, 0, 0, 0, 0)
    assert (link.m_s2m.cookie, link.m_s2m.flags, link.m_s2m.head, link.m_s2m.tail) == (
        R.RING_COOKIE,
        0,
        0,
        0,
    )
    link.s_s2m.head, link.s_s2m.tail = 7, 3
    link.m_s2m.reset()
    assert (link.s_s2m.head, link.s_s2m.tail) == (0, 0)
    link.s_s2m.cookie = 0xDEADBEEF
    with pytest.raises(PeerProtocolError, match="bad ring cookie 0xdeadbeef"):
        link.m_s2m.check_cookie()


def test_buffer_table_validation(R, make_link):
    link = make_link(R, log2=3, buffer_size=256)
    offs = np.arange(8) * 256
    with pytest.raises(ValueError, match="buffer_offsets"):
        R.TxRing(link.s_s2m, role="slave", buffer_size=256)
    with pytest.raises(ValueError, match="exactly 8"):
        R.TxRing(link.s_s2m, role="slave", buffer_size=256, buffer_offsets=offs[:4])
    with pytest.raises(ValueError, match="beyond region 1"):
        R.RxRing(link.s_m2s, role="slave", buffer_size=256, buffer_offsets=offs + link.sizes[1])
    with pytest.raises(ValueError, match="beyond region 1"):
        R.RxRing(link.s_m2s, role="slave", buffer_size=256, buffer_offsets=offs - 256)
    with pytest.raises(ValueError, match="buffer region"):
        R.RxRing(link.s_m2s, role="slave", buffer_region=2, buffer_offsets=offs)
    with pytest.raises(ValueError, match="role"):
        R.RxRing(link.s_m2s, role="server")
    with pytest.raises(ValueError, match="only used"):
        R.RxRing(link.m_s2m, role="master", buffer_offsets=offs)


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_round_trip_random_sizes(R, make_link, direction):
    rng = random.Random(f"{direction}-1")
    link = make_link(R, log2=7, buffer_size=2048)
    tx, rx = (link.stx, link.mrx) if direction == "s2m" else (link.mtx, link.srx)
    packets = payloads(rng, 400)
    assert pump(tx, rx, packets, max_packets=37) == packets
    assert tx.packets == rx.packets == len(packets)
    assert tx.bytes == rx.bytes == sum(map(len, packets))
    assert tx.errors == rx.errors == 0


@pytest.mark.parametrize("start", [65530, 65535, 65536 - 64])
def test_wraparound_of_u16_counters(R, make_link, start):
    rng = random.Random(start)
    link = make_link(R, log2=6, buffer_size=512, start=start)
    for tx, rx in ((link.stx, link.mrx), (link.mtx, link.srx)):
        packets = payloads(rng, 300, 3000)
        assert pump(tx, rx, packets) == packets
    assert link.s_s2m.head == link.s_s2m.tail
    assert link.s_s2m.head < start  # it did wrap


def test_long_run_wraps_many_times(cy, make_link):
    link = make_link(cy, log2=10, buffer_size=128)
    n = 70_000
    data = np.arange(n * 64, dtype=np.uint64).astype(np.uint8).reshape(n, 64)
    lengths = (np.arange(n) % 65).astype(np.uint32)
    for tx, rx in ((link.stx, link.mrx), (link.mtx, link.srx)):
        got = 0
        while got < n:
            sent = tx.tx_burst_array(data[got : got + 256], lengths[got : got + 256])
            burst = rx.rx_burst()
            assert len(burst) == sent
            assert np.array_equal(burst.lengths, lengths[got : got + sent])
            for i in (0, sent - 1):
                L = int(lengths[got + i])
                assert bytes(burst[i]) == data[got + i, :L].tobytes()
            got += sent
        rx.release()
    assert link.mrx.packets == link.srx.packets == n


def test_zero_length_packets(R, make_link):
    link = make_link(R, log2=3)
    for tx, rx in ((link.stx, link.mrx), (link.mtx, link.srx)):
        assert tx.tx_burst([b"", b"x", b""]) == 3
        burst = rx.rx_burst()
        assert list(burst.lengths) == [0, 1, 0]
        assert [bytes(burst[i]) for i in range(3)] == [b"", b"x", b""]
        rx.release()


def test_tx_burst_array(R, make_link):
    link = make_link(R, log2=5, buffer_size=256)
    data = np.frombuffer(random.Random(3).randbytes(10 * 700), np.uint8).reshape(10, 700).copy()
    lengths = np.array([0, 1, 255, 256, 257, 700, 512, 513, 5, 699], np.uint32)
    for tx, rx in ((link.stx, link.mrx), (link.mtx, link.srx)):
        assert tx.tx_burst_array(data, lengths) == 10
        burst = rx.rx_burst()
        assert [bytes(burst[i]) for i in range(10)] == [
            data[i, : lengths[i]].tobytes() for i in range(10)
        ]
        assert list(burst.nsegments) == [1, 1, 1, 1, 2, 3, 2, 3, 1, 3]
        rx.release()
    with pytest.raises(ValueError, match="row width"):
        link.stx.tx_burst_array(data, np.full(10, 701, np.uint32))
    with pytest.raises(ValueError):
        link.stx.tx_burst_array(data.astype(np.uint16), lengths)
    with pytest.raises(ValueError):
        link.stx.tx_burst_array(data, lengths.astype(np.int64))
    with pytest.raises(ValueError):
        link.stx.tx_burst_array(data, lengths[:5])
    with pytest.raises((ValueError, BufferError)):
        link.stx.tx_burst_array(data[:, ::2], lengths)


# --------------------------------------------------------------------------------- metadata


def _ring_of(link, tx):
    return link.s_s2m if tx is link.stx else link.s_m2s


def test_metadata_round_trip_on_every_transmit_path(R, make_link):
    link = make_link(R, log2=5, buffer_size=64)
    for tx, rx in ((link.stx, link.mrx), (link.mtx, link.srx)):
        ring = _ring_of(link, tx)
        start = ring.head if tx is link.stx else ring.tail
        # tx_burst: a list; the 150-byte packet spans three descriptors, each carrying it.
        assert tx.tx_burst([b"a", bytes(150), b"c"], metadata=[7, 0xFFFFFFFF, 0]) == 3
        per_descriptor = [ring.descriptor((start + k) % 32)[4] for k in range(5)]
        assert per_descriptor == [7, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0]
        burst = rx.rx_burst()
        assert burst.metadata.dtype == np.uint32 and not burst.metadata.flags.writeable
        assert burst.metadata.tolist() == [7, 0xFFFFFFFF, 0]
        # A uint32 array, the array path, staging and alloc/commit.
        assert tx.tx_burst([b"d", b"e"], metadata=np.array([1, 2], np.uint32)) == 2
        rows = np.zeros((2, 8), np.uint8)
        assert tx.tx_burst_array(rows, np.array([8, 3], np.uint32), metadata=[3, 4]) == 2
        assert tx.stage(b"f", metadata=5) and tx.stage(b"g") and tx.flush() == 2
        bufs = tx.alloc(2)
        del bufs
        assert tx.commit([1, 1], metadata=(6, 8)) == 2
        assert tx.tx_burst([b"h"]) == 1  # no metadata: 0, not a stale value
        burst = rx.rx_burst()
        assert burst.metadata.tolist() == [1, 2, 3, 4, 5, 0, 6, 8, 0]
        rx.release()
        assert len(burst.metadata) == 0


def test_metadata_is_checked_before_anything_is_sent(R, make_link):
    link = make_link(R, log2=4)
    for tx in (link.stx, link.mtx):
        free = tx.free_slots()
        with pytest.raises(ValueError, match="1 metadata values for 2 packets"):
            tx.tx_burst([b"a", b"b"], metadata=[1])
        with pytest.raises(ValueError, match=r"metadata\[1\] = -1 not in 0..4294967295"):
            tx.tx_burst([b"a", b"b"], metadata=[1, -1])
        with pytest.raises(ValueError, match=r"metadata\[0\] = 4294967296"):
            tx.stage(b"a", metadata=2**32)
        with pytest.raises(TypeError):
            tx.stage(b"a", metadata=1.5)
        with pytest.raises(ValueError, match="3 metadata values for 2 packets"):
            tx.tx_burst_array(np.zeros((2, 4), np.uint8), np.ones(2, np.uint32), [1, 2, 3])
        bufs = tx.alloc(2)
        del bufs
        with pytest.raises(ValueError, match="metadata values"):
            tx.commit([1, 1], metadata=[1])
        assert tx.commit([1], metadata=np.array([9], np.int64)) == 1  # any integers
        assert tx.free_slots() == free - 1 and tx.staged == 0
        # Values of packets that would not fit now are checked too: nothing goes.
        offered = [b"x"] * (free + 1)
        with pytest.raises(ValueError, match=rf"metadata\[{free}\] = -5"):
            tx.tx_burst(offered, metadata=[0] * free + [-5])
        assert tx.free_slots() == free - 1


def _base_chain(array):
    owner = array
    while owner is not None:
        yield owner
        owner = owner.obj if isinstance(owner, memoryview) else getattr(owner, "base", None)


def test_burst_views_stay_read_only_and_generation_tracks_release(R, make_link):
    link = make_link(R, log2=3)
    link.stx.tx_burst([b"a", b"b"], metadata=[5, 6])
    burst = link.mrx.rx_burst()
    generation = burst.generation
    for view in (burst.lengths, burst.nsegments, burst.metadata):
        assert not view.flags.writeable
        # The C code trusts these values: nothing reachable from a view may change them.
        for owner in _base_chain(view):
            if isinstance(owner, np.ndarray):
                with pytest.raises(ValueError):
                    owner.flags.writeable = True
            else:
                with memoryview(owner) as raw:
                    assert raw.readonly
    assert burst.lengths.tolist() == [1, 1] and burst.metadata.tolist() == [5, 6]
    assert burst.generation == generation
    burst.release()
    assert burst.generation != generation
    link.stx.tx_burst([b"c"])
    burst = link.mrx.rx_burst()
    assert burst.metadata.tolist() == [0]
    generation = burst.generation
    link.mrx.close()
    assert burst.generation != generation
    assert len(burst) == 0 and len(burst.lengths) == 0 and len(burst.metadata) == 0


def test_forward_keeps_metadata(R, make_link):
    link = make_link(R, log2=4, buffer_size=64)
    assert link.mtx.tx_burst([b"x", b"y" * 100, b"z"], metadata=[11, 12, 13]) == 3
    burst = link.srx.rx_burst()
    assert burst.metadata.tolist() == [11, 12, 13]
    assert link.stx.forward(burst) == 1  # stops at the chained packet
    assert link.stx.tx_burst([burst[1], burst[2]], metadata=burst.metadata[1:]) == 2
    got = link.mrx.rx_burst()
    assert got.metadata.tolist() == [11, 12, 13]
    assert [bytes(got[i]) for i in range(3)] == [b"x", b"y" * 100, b"z"]


def test_tx_stops_at_first_packet_that_does_not_fit(R, make_link):
    link = make_link(R, log2=3, buffer_size=100)
    # 8 slots: 3 + 3 descriptors fit, the next 3-descriptor packet does not, nor does b"x".
    pk = [b"a" * 250, b"b" * 201, b"c" * 300, b"x"]
    assert link.stx.tx_burst(pk) == 2
    assert link.stx.free_slots() == 2
    assert link.mtx.tx_burst(pk) == 2
    assert link.mtx.free_slots() == 2
    with pytest.raises(LocalProtocolError, match="ring has 8"):
        link.stx.tx_burst([b"z" * 801])


def test_max_burst_and_max_packets(R, make_link):
    link = make_link(R, log2=6, max_burst=10)
    assert link.stx.tx_burst([b"p"] * 40) == 10
    assert link.stx.tx_burst([b"q"] * 40) == 10
    assert len(link.mrx.rx_burst(3)) == 3
    assert link.mrx.pending() == 17
    assert len(link.mrx.rx_burst(0)) == 0
    assert len(link.mrx.rx_burst()) == 10
    assert len(link.mrx.rx_burst(100)) == 7
    assert len(link.mrx.rx_burst()) == 0
    assert link.mrx.pending() == 0


def test_burst_api(R, make_link):
    link = make_link(R, log2=4, buffer_size=64)
    pk = [b"A" * 10, bytes(range(150)), b"C" * 64]
    link.stx.tx_burst(pk)
    burst = link.mrx.rx_burst()
    assert burst is link.mrx.burst
    assert len(burst) == 3
    assert burst.lengths.dtype == np.uint32 and list(burst.lengths) == [10, 150, 64]
    assert list(burst.nsegments) == [1, 3, 1]
    assert not burst.lengths.flags.writeable
    view = burst[0]
    assert isinstance(view, memoryview) and bytes(view) == pk[0]
    assert bytes(burst[-2]) == pk[1] and isinstance(burst[1], bytes)
    assert bytes(burst[-1]) == pk[2]
    with pytest.raises(IndexError):
        burst[3]
    with pytest.raises(IndexError):
        burst[-4]
    segs = burst.segments(1)
    assert [len(s) for s in segs] == [64, 64, 22] and b"".join(segs) == pk[1]
    out = bytearray(200)
    assert burst.copy_into(1, out) == 150 and out[:150] == pk[1]
    with pytest.raises(ValueError):
        burst.copy_into(1, bytearray(149))
    # Zero-copy: the view shows the shared buffer itself.
    slot_off = link.stx.buffer_offsets[0]
    link.smaps[1][slot_off] = ord("Z")
    assert view[0] == ord("Z")
    del view, segs
    burst.release()
    assert len(burst) == 0 and link.m_s2m.tail == 5
    burst.release()  # idempotent
    assert link.m_s2m.tail == 5


def test_burst_gather_into(R, make_link):
    link = make_link(R, log2=4, buffer_size=64)
    pk = [b"A" * 10, bytes(range(150)), b"", b"C" * 64]
    link.stx.tx_burst(pk)
    burst = link.mrx.rx_burst()
    assert list(burst.nsegments) == [1, 3, 1, 1]
    offsets = np.array([300, 0, 200, 220], np.int64)  # any order, gaps left alone
    out = bytearray(b"\xee" * 320)
    assert burst.gather_into(out, offsets) == 224
    assert out[:150] == pk[1] and out[150:200] == b"\xee" * 50 and out[220:284] == pk[3]
    assert out[300:310] == pk[0] and out[310:] == b"\xee" * 10
    # snaplen cuts the chained packet inside its second segment; shorter packets are whole.
    out = bytearray(400)
    assert burst.gather_into(out, offsets, 70) == 10 + 70 + 0 + 64
    assert out[:71] == pk[1][:70] + b"\0" and out[300:310] == pk[0] and out[220:284] == pk[3]
    out = bytearray(400)
    view_offsets = np.array([150, 0, 100, 120], np.int64)  # relative to the view
    assert burst.gather_into(memoryview(out)[100:], view_offsets, 2) == 6
    assert out[100:102] == pk[1][:2] and out[250:252] == pk[0][:2] and out[220:222] == b"CC"
    assert out.count(0) == 400 - 5  # pk[1] starts with a zero byte
    # Every check runs before the first byte moves.
    untouched = bytearray(400)
    for bad_offsets, snaplen, error in [
        (offsets[:3], 0, "3 offsets for 4 packets"),
        (np.array([300, 0, 200, 337], np.int64), 0, "packet 3 .* does not fit in 400"),
        (np.array([300, -1, 200, 220], np.int64), 0, "packet 1 .* offset -1"),
        (offsets.astype(np.uint32), 0, "int64"),
        (offsets.astype(np.float64), 0, "int64"),
        (offsets, -1, "snaplen -1 is negative"),
    ]:
        with pytest.raises(ValueError, match=error):
            burst.gather_into(untouched, bad_offsets, snaplen)
    assert untouched == bytearray(400)
    with pytest.raises((ValueError, BufferError)):
        burst.gather_into(np.zeros(800, np.uint8)[::2], offsets)
    with pytest.raises(BufferError):
        burst.gather_into(bytes(400), offsets)
    with pytest.raises(TypeError):
        burst.gather_into(out, [300, 0, 200, 220])
    burst.release()
    assert burst.gather_into(bytearray(0), np.zeros(0, np.int64)) == 0
    # Forwarded packets are gone from the burst: refused, as indexing them is.
    link.mtx.tx_burst([b"x" * 20, b"y" * 30])
    got = link.srx.rx_burst()
    assert link.stx.forward(got) == 2
    with pytest.raises(LocalProtocolError, match="forwarded"):
        got.gather_into(bytearray(100), np.array([0, 50], np.int64))
    link.srx.close()
    with pytest.raises(LocalProtocolError, match="rx ring is closed"):
        got.gather_into(bytearray(100), np.array([0, 50], np.int64))


def test_release_returns_slots_once_per_burst(R, make_link):
    link = make_link(R, log2=4)
    link.stx.tx_burst([b"x"] * 10)
    link.mrx.rx_burst(4)
    assert link.m_s2m.tail == 0  # held by the burst
    link.mrx.rx_burst(4)  # releases the first 4
    assert link.m_s2m.tail == 4
    assert link.stx.free_slots() == 16 - 6
    link.mrx.release()
    assert link.stx.free_slots() == 16 - 2
    # Slave receive: released slots are refilled (head moves), held ones are not.
    link.mtx.tx_burst([b"y"] * 10)
    head0 = link.m_m2s.head
    link.srx.rx_burst(6)
    assert link.m_m2s.head == head0
    link.srx.release()
    assert link.m_m2s.head == (head0 + 6) & 0xFFFF
    assert link.mtx.free_slots() == 16 - 10 + 6


# -------------------------------------------------------------------------------- chains


def test_partial_chain_waits_for_the_rest(R, make_link):
    link = make_link(R, log2=4, buffer_size=64)
    ring = link.s_s2m  # we play the slave by hand
    ring.set_descriptor(0, 0, 1, 5, 0)
    ring.set_descriptor(1, R.DESC_FLAG_NEXT, 1, 64, 64)
    ring.set_descriptor(2, R.DESC_FLAG_NEXT, 1, 64, 128)
    ring.set_descriptor(3, 0, 1, 7, 192)
    ring.head = 3  # the chain 1..3 is cut after 2 descriptors
    burst = link.mrx.rx_burst()
    assert list(burst.lengths) == [5]
    assert len(link.mrx.rx_burst()) == 0
    assert link.m_s2m.tail == 1  # the partial chain stays unconsumed
    ring.head = 4
    burst = link.mrx.rx_burst()
    assert list(burst.lengths) == [135] and list(burst.nsegments) == [3]
    link.mrx.release()
    assert link.m_s2m.tail == 4


def test_partial_chain_on_slave_receive(R, make_link):
    link = make_link(R, log2=3, buffer_size=64)
    ring = link.m_m2s  # the master writes by hand into the slave's refilled descriptors
    ring.set_descriptor(0, R.DESC_FLAG_NEXT, 1, 64, 0)
    ring.tail = 1
    assert len(link.srx.rx_burst()) == 0
    ring.set_descriptor(1, 0, 1, 3, 0)
    ring.tail = 2
    assert list(link.srx.rx_burst().lengths) == [67]


# ---------------------------------------------------------------------------- hostile peer


def _expect_peer_error(rx_or_tx, call, match):
    before = rx_or_tx.errors
    for _ in range(2):  # stays broken, stays safe
        with pytest.raises(PeerProtocolError, match=match):
            call()
    assert rx_or_tx.errors == before + 2


def test_master_rx_rejects_bad_descriptors(R, make_link):
    link = make_link(R, log2=6, buffer_size=2048)
    ring = link.s_s2m
    rsize = link.sizes[1]
    cases = [
        ((0, 5, 10, 0), "descriptor 0: region 5 does not exist"),
        (
            (0, 1, 9000, rsize - 100),
            f"descriptor 0: offset {rsize - 100} \\+ length 9000 beyond region 1 "
            f"\\({rsize} bytes\\)",
        ),
        ((0, 1, 0xFFFFFFFF, 0xFFFFFFFF), "beyond region 1"),  # 64-bit sum, no wrap
        ((0, 0, 1, link.sizes[0]), "beyond region 0"),
    ]
    for (flags, region, length, offset), match in cases:
        ring.set_descriptor(0, flags, region, length, offset)
        ring.head = 1
        _expect_peer_error(link.mrx, link.mrx.rx_burst, match)
        assert len(link.mrx.burst) == 0 and link.m_s2m.tail == 0
    ring.set_descriptor(0, 0, 1, 10, 0)  # repaired: the ring works again
    assert list(link.mrx.rx_burst().lengths) == [10]


def test_master_rx_rejects_counter_jumps_and_endless_chains(R, make_link):
    link = make_link(R, log2=6)
    ring = link.s_s2m
    ring.head = 3000
    _expect_peer_error(link.mrx, link.mrx.rx_burst, "head moved by 3000 > ring size 64")
    _expect_peer_error(link.mrx, link.mrx.pending, "head moved by 3000")
    for slot in range(64):
        ring.set_descriptor(slot, R.DESC_FLAG_NEXT, 1, 1, 0)
    ring.head = 64
    _expect_peer_error(link.mrx, link.mrx.rx_burst, "NEXT chain longer than ring")
    ring.set_descriptor(63, 0, 1, 1, 0)
    burst = link.mrx.rx_burst()
    assert list(burst.lengths) == [64] and list(burst.nsegments) == [64]
    # A chain that is merely unfinished, and shorter than the ring, is not an error.
    link.mrx.release()
    for slot in range(64):
        ring.set_descriptor(slot, R.DESC_FLAG_NEXT, 1, 1, 0)
    ring.head = 64 + 63
    assert len(link.mrx.rx_burst()) == 0


def test_master_rx_chain_longer_than_max_packet_size(R, make_link):
    """A chain of in-bounds descriptors (the hostile-peer issue: 4 MiB each, RSS +511 MiB when
    joined) is refused as soon as it passes max_packet_size: nothing is joined."""
    link = make_link(R, log2=3, buffer_size=1 << 22)  # sparse 64 MiB buffer region
    ring = link.s_s2m
    for slot in range(8):
        ring.set_descriptor(slot, R.DESC_FLAG_NEXT if slot < 7 else 0, 1, 1 << 22, 0)
    ring.head = 8
    _expect_peer_error(
        link.mrx,
        link.mrx.rx_burst,
        f"descriptor 0: packet of at least {1 << 22} bytes exceeds max_packet_size "
        f"{R.DEFAULT_MAX_PACKET_SIZE}",
    )
    # A larger bound takes exactly the chains that fit it.
    rx = R.RxRing(link.m_s2m, role="master", max_packet_size=8 << 22)
    link.queues.append(rx)
    burst = rx.rx_burst()
    assert len(burst) == 1 and burst.lengths.tolist() == [8 << 22]
    burst.release()


def test_master_rx_chain_longer_than_4gib(R, make_link):
    link = make_link(R, log2=3, buffer_size=1 << 27)  # sparse 2 GiB buffer region
    region_size = link.sizes[1]
    ring = link.s_s2m
    count = (1 << 32) // region_size + 1
    assert count <= 8
    for slot in range(count):
        ring.set_descriptor(slot, R.DESC_FLAG_NEXT if slot < count - 1 else 0, 1, region_size, 0)
    ring.head = count
    rx = R.RxRing(link.m_s2m, role="master", max_packet_size=(1 << 32) - 1)
    link.queues.append(rx)
    _expect_peer_error(rx, rx.rx_burst, "exceeds max_packet_size 4294967295")


def test_slave_rx_rejects_overlong_descriptor_and_tail_jumps(R, make_link):
    link = make_link(R, log2=4, buffer_size=256)
    ring = link.m_m2s
    ring.set_descriptor(0, 0, 1, 257, 0)
    ring.tail = 1
    _expect_peer_error(link.srx, link.srx.rx_burst, "descriptor 0: length 257 > buffer size 256")
    ring.tail = 40
    _expect_peer_error(
        link.srx, link.srx.rx_burst, r"tail 40 is 24 slots past head 16 \(ring size 16\)"
    )
    ring.tail = 0
    assert len(link.srx.rx_burst()) == 0  # usable again once the peer behaves
    link2 = make_link(R, log2=4, buffer_size=256)
    link2.s_m2s.head = 0  # the slave published only 0 descriptors...
    srx = R.RxRing(link2.s_m2s, role="slave", buffer_size=256, buffer_offsets=np.arange(16) * 256)
    link2.queues.append(srx)
    link2.m_m2s.tail = 3  # ...but the master claims to have filled 3
    _expect_peer_error(srx, srx.pending, "tail 3 is 3 slots past head 0")


def test_slave_rx_ignores_peer_region_and_offset(R, make_link):
    link = make_link(R, log2=3, buffer_size=64)
    link.mtx.tx_burst([b"hello"])
    link.m_m2s.set_descriptor(0, 0, 9, 5, 0xFFFFFF00)  # hostile rewrite after filling
    burst = link.srx.rx_burst()
    assert bytes(burst[0]) == b"hello"


def test_master_tx_rejects_bad_empty_descriptors(R, make_link):
    link = make_link(R, log2=4, buffer_size=64)
    ring = link.s_m2s  # the slave's refilled descriptors, rewritten hostilely
    rsize = link.sizes[1]
    cases = [
        ((0, 0, 0, 0), "descriptor 2: tx descriptor capacity 0"),
        ((0, 7, 64, 0), "descriptor 2: region 7 does not exist"),
        ((0, 1, 64, rsize - 63), f"offset {rsize - 63} \\+ capacity 64 beyond region 1"),
    ]
    good = ring.descriptor(2)
    for fields, match in cases:
        ring.set_descriptor(2, *fields)
        before = link.memory()
        _expect_peer_error(link.mtx, lambda: link.mtx.tx_burst([b"a", b"b", b"c"]), match)
        _expect_peer_error(link.mtx, lambda: link.mtx.alloc(3), match)
        assert link.memory() == before  # nothing written, nothing published
    ring.set_descriptor(2, *good)
    assert link.mtx.tx_burst([b"a", b"b", b"c"]) == 3
    # Only descriptors actually needed are checked.
    ring.set_descriptor(5, 0, 0, 0, 0)
    assert link.mtx.tx_burst([b"d", b"e"]) == 2


def test_master_tx_rejects_head_jump(R, make_link):
    link = make_link(R, log2=4)
    link.s_m2s.head = 1000
    _expect_peer_error(link.mtx, link.mtx.free_slots, "head moved by 1000 > ring size 16")
    _expect_peer_error(link.mtx, lambda: link.mtx.tx_burst([b"x"]), "head moved")


def test_slave_tx_rejects_tail_out_of_range(R, make_link):
    link = make_link(R, log2=4)
    link.stx.tx_burst([b"x"] * 3)
    link.m_s2m.tail = 100
    _expect_peer_error(link.stx, lambda: link.stx.tx_burst([b"y"]), "tail 100 out of range")
    link.m_s2m.tail = 3
    assert link.stx.free_slots() == 16


def test_master_tx_honours_peer_capacity(R, make_link):
    link = make_link(R, log2=4, buffer_size=100)
    assert link.mtx.tx_burst([b"q" * 250]) == 1
    assert [link.m_m2s.descriptor(s)[2] for s in range(3)] == [100, 100, 50]
    assert [link.m_m2s.descriptor(s)[0] for s in range(3)] == [1, 1, 0]
    # A peer that advertises smaller buffers gets more, smaller segments.
    link.s_m2s.set_descriptor(3, 0, 1, 10, link.srx.buffer_offsets[3])
    link.s_m2s.set_descriptor(4, 0, 1, 10, link.srx.buffer_offsets[4])
    assert link.mtx.tx_burst([b"r" * 30]) == 1
    assert [link.m_m2s.descriptor(s)[2] for s in (3, 4, 5)] == [10, 10, 10]


# ------------------------------------------------------------------------------ interrupts


def test_eventfd_once_per_burst_and_mask_int(R, make_link):
    link = make_link(R, log2=8, eventfds=True)
    for tx, rx in ((link.stx, link.mrx), (link.mtx, link.srx)):
        assert link.signals(rx) == 0
        assert tx.tx_burst([b"x"] * 100) == 100
        assert link.signals(rx) == 1  # one write for 100 packets
        tx.tx_burst([b"x"] * 3)
        tx.tx_burst([b"x"] * 3)
        assert link.signals(rx) == 2
        assert tx.tx_burst([]) == 0
        assert link.signals(rx) == 0  # nothing published, nothing signalled
        rx.mask_interrupts = True
        assert rx.mask_interrupts and rx.ring.flags & R.RING_FLAG_MASK_INT
        tx.tx_burst([b"y"] * 5)
        assert link.signals(rx) == 0
        tx.signal()  # explicit kick ignores the mask
        assert link.signals(rx) == 1
        rx.mask_interrupts = False
        assert not rx.mask_interrupts and rx.ring.flags == 0
        bufs = tx.alloc(2)
        tx.commit([1, 1])
        assert link.signals(rx) == 1
        del bufs
        while len(rx.rx_burst()):
            pass
        rx.release()
        # Receiving and releasing never signals.
        assert link.signals(rx) == 0


# ---------------------------------------------------------------------------- alloc/commit


@pytest.mark.parametrize("side", ["slave", "master"])
def test_alloc_commit(R, make_link, side):
    link = make_link(R, log2=3, buffer_size=128)
    tx, rx = (link.stx, link.mrx) if side == "slave" else (link.mtx, link.srx)
    bufs = tx.alloc(5)
    assert len(bufs) == 5 and all(len(b) == 128 for b in bufs)
    with pytest.raises(LocalProtocolError, match="pending"):
        tx.alloc(1)
    with pytest.raises(LocalProtocolError, match="pending"):
        tx.tx_burst([b"x"])
    for i, b in enumerate(bufs[:3]):
        b[: i + 1] = bytes([65 + i]) * (i + 1)
    with pytest.raises(LocalProtocolError, match="capacity"):
        tx.commit([1, 129])
    with pytest.raises(LocalProtocolError, match="only 5 allocated"):
        tx.commit([1] * 6)
    assert tx.commit([1, 2, 3]) == 3  # the other two are abandoned
    del bufs
    burst = rx.rx_burst()
    assert [bytes(burst[i]) for i in range(3)] == [b"A", b"BB", b"CCC"]
    rx.release()
    with pytest.raises(LocalProtocolError, match="without alloc"):
        tx.commit([1])
    assert tx.commit([]) == 0
    assert len(tx.alloc(100)) == 8  # capped by the free slots
    tx.commit([])
    assert tx.alloc(0) == [] and tx.tx_burst([b"ok"]) == 1  # an empty alloc is not pending


# ---------------------------------------------------------------------------------- forward


def test_forward_zero_copy(R, make_link):
    link = make_link(R, log2=4, buffer_size=64)
    every_buffer = sorted(
        np.concatenate([link.stx.buffer_offsets, link.srx.buffer_offsets]).tolist()
    )
    rng = random.Random(9)
    for round_ in range(12):
        packets = payloads(rng, rng.randint(1, 12), 150)
        sent = link.mtx.tx_burst(packets)
        burst = link.srx.rx_burst()
        assert len(burst) == sent
        before_tx = link.stx.buffer_offsets
        k = link.stx.forward(burst)
        single = 0
        while single < sent and burst.nsegments[single] == 1:
            single += 1
        assert k == min(single, link.stx.free_slots() + k)
        assert burst.forwarded == k
        if k:
            with pytest.raises(LocalProtocolError, match="forwarded"):
                burst[0]
        assert link.stx.forward(burst) == 0  # never twice
        got = link.mrx.rx_burst()
        assert [bytes(got[i]) for i in range(len(got))] == packets[:k]
        # The tx descriptors point at what were rx buffers: no copy happened.
        if k:
            assert got.segments(0)[0].nbytes == len(packets[0])
            assert link.m_s2m.descriptor((link.m_s2m.head - k) & 15)[3] not in before_tx
        link.mrx.release()
        link.srx.release()
        owned = sorted(np.concatenate([link.stx.buffer_offsets, link.srx.buffer_offsets]).tolist())
        assert owned == every_buffer, f"round {round_}: buffer ownership is not a permutation"
    assert link.stx.packets > 0


def test_tx_burst_from_copies_a_received_burst_with_its_metadata(R, make_link):
    link = make_link(R, log2=3, buffer_size=64)
    packets = [b"a" * 10, bytes(range(150)), b"c", b"d" * 64]
    assert link.stx.tx_burst(packets, metadata=[1, 2, 3, 4]) == 4
    burst = link.mrx.rx_burst()
    assert list(burst.nsegments) == [1, 3, 1, 1]
    # Master rx -> master tx (an echo): the slave published 8 empty slots; the chained packet
    # takes 3 of them, so all 4 fit; then the same burst again from packet 2 on only 2 fit.
    assert link.mtx.tx_burst_from(burst) == 4
    assert link.mtx.tx_burst_from(burst, 2) == 2
    assert link.mtx.tx_burst_from(burst, 4) == 0
    with pytest.raises(IndexError, match="start 5 outside 0..4"):
        link.mtx.tx_burst_from(burst, 5)
    with pytest.raises(IndexError):
        link.mtx.tx_burst_from(burst, -1)
    got = link.srx.rx_burst()
    assert [bytes(got[i]) for i in range(len(got))] == packets + packets[2:]
    assert got.metadata.tolist() == [1, 2, 3, 4, 3, 4]
    link.mrx.release()
    assert link.mtx.tx_burst_from(link.mrx.burst) == 0  # released: nothing left to copy
    # Slave rx -> slave tx, after forward() took the first packet: copy starts past it.
    assert link.stx.forward(got) == 1
    with pytest.raises(LocalProtocolError, match="packet 0 was forwarded"):
        link.stx.tx_burst_from(got)
    assert link.stx.tx_burst_from(got, 1) == 5
    again = link.mrx.rx_burst()
    assert [bytes(again[i]) for i in range(len(again))] == packets + packets[2:]
    assert again.metadata.tolist() == [1, 2, 3, 4, 3, 4]
    link.srx.close()  # a closed source is refused whatever the start
    for start in (0, 3):
        with pytest.raises(LocalProtocolError, match="rx ring is closed"):
            link.stx.tx_burst_from(got, start)


def test_a_transmit_call_cannot_be_reentered(R, make_link):
    """Python code run inside a transmit call (here the packets sequence; in real life a GC
    finalizer) must not transmit on the same ring: it would overwrite the call's plan."""
    link = make_link(R, log2=4)
    refused = []

    class Packets:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            for call in (
                lambda: link.stx.stage(b"zz"),
                lambda: link.stx.tx_burst([b"zz"]),
                lambda: link.stx.flush(),
            ):
                try:
                    call()
                except LocalProtocolError as exc:
                    refused.append(str(exc))
            return b"p%d" % i

    assert link.stx.tx_burst(Packets(), metadata=[7, 8, 9]) == 3
    got = link.mrx.rx_burst()
    assert [bytes(got[i]) for i in range(len(got))] == [b"p0", b"p1", b"p2"]
    assert got.metadata.tolist() == [7, 8, 9]
    assert len(refused) == 9 and all("re-entered" in reason for reason in refused)
    assert link.stx.stage(b"after") and link.stx.flush() == 1  # the guard is released


def test_forward_checks(R, make_link):
    link = make_link(R, log2=3, buffer_size=64)
    link.stx.tx_burst([b"x"])
    with pytest.raises(LocalProtocolError):
        link.mtx.forward(link.mrx.rx_burst())
    other = make_link(R, log2=3, buffer_size=64)
    other.mtx.tx_burst([b"y"])
    with pytest.raises(LocalProtocolError, match="same RegionTable"):
        link.stx.forward(other.srx.rx_burst())


# ---------------------------------------------------------------------------------- closing


def test_close_region_table_is_safe(R, make_link):
    link = make_link(R, log2=3)
    link.stx.tx_burst([b"abc"])
    burst = link.mrx.rx_burst()
    view = burst[0]
    link.M.close()
    link.M.close()  # idempotent
    assert link.M.closed
    for call in (
        lambda: burst[0],
        link.mrx.rx_burst,
        link.mrx.release,
        link.mrx.pending,
        lambda: link.mtx.tx_burst([b"x"]),
        link.mtx.free_slots,
        lambda: link.m_s2m.head,
        link.m_m2s.check_cookie,
    ):
        with pytest.raises(LocalProtocolError, match="closed"):
            call()
    # A view the application kept still pins the mapping: closing it is refused, not a crash.
    with pytest.raises(BufferError):
        link.mmaps[1].close()
    assert bytes(view) == b"abc"
    del view
    gc.collect()
    link.mmaps[1].close()
    link.mrx.close()
    with pytest.raises(LocalProtocolError, match="rx ring is closed"):
        link.mrx.rx_burst()
    link.stx.close()
    with pytest.raises(LocalProtocolError, match="tx ring is closed"):
        link.stx.tx_burst([b"x"])


def _maps_of(name: str) -> int:
    with open("/proc/self/maps") as f:
        return sum(f"/memfd:{name} " in line for line in f)


def test_view_outlives_region_table_close(R):
    """A packet view kept across RegionTable.close() and a refused mmap.close() stays readable
    and pins the mapping; dropping it unmaps the region (the memory.py contract)."""
    name = f"memif-view-{os.getpid()}-{R.__name__.rsplit('.', 1)[1]}"
    fd = os.memfd_create(name)
    try:
        os.ftruncate(fd, 1 << 16)
        m = mmap.mmap(fd, 1 << 16)
        m[100:105] = b"hello"
        regions = R.RegionTable([m])
        ring = R.Ring(regions, 0, 0, 2)
        ring.initialize()
        offs = np.arange(4, dtype=np.uint32) * 2048 + 4096
        tx = R.TxRing(ring, role="slave", buffer_region=0, buffer_offsets=offs)
        (buf,) = tx.alloc(1)
        buf[:5] = b"world"
        tx.commit([5])
        rx = R.RxRing(R.Ring(regions, 0, 0, 2), role="master")
        burst = rx.rx_burst()
        view, seg = burst[0], burst.segments(0)[0]
        if hasattr(regions, "live_views"):
            assert regions.live_views == 3  # buf, view, seg
        del burst, buf
        assert _maps_of(name) == 1
        rx.close()
        tx.close()
        regions.close()
        with pytest.raises(BufferError):
            m.close()
        del m  # as memory.py does: drop the mmap, the views keep the mapping alive
        gc.collect()
        assert _maps_of(name) == 1
        assert bytes(view) == b"world" and bytes(seg) == b"world"
        view[:1] = b"W"  # still writable, still mapped
        assert bytes(seg) == b"World"
        del view
        gc.collect()
        assert _maps_of(name) == 1
        del seg
        gc.collect()
        assert _maps_of(name) == 0
    finally:
        os.close(fd)


def test_live_view_count(cy, make_link):
    link = make_link(cy, log2=3)
    link.stx.tx_burst([b"abc", b"defg"])
    burst = link.mrx.rx_burst()
    assert link.M.live_views == 0
    a, b = burst[0], burst[1]
    c = a[1:]  # a slice shares a's export
    assert link.M.live_views == 2
    assert (bytes(a), bytes(b), bytes(c)) == (b"abc", b"defg", b"bc")
    assert not a.readonly and a.format == "B" and a.c_contiguous and len(b) == 4
    del a
    assert link.M.live_views == 2
    c.release()
    assert link.M.live_views == 1
    b.release()
    assert link.M.live_views == 0
    bufs = link.stx.alloc(2)
    assert link.S.live_views == 2 and [len(v) for v in bufs] == [link.bs] * 2
    link.stx.commit([0])
    del bufs
    assert link.S.live_views == 0


# ---------------------------------------------------------------------------- stage / flush


@pytest.mark.parametrize("side", ["slave", "master"])
def test_stage_flush_ordering_and_one_signal(R, make_link, side):
    link = make_link(R, log2=4, buffer_size=256, eventfds=True)
    tx, rx = (link.stx, link.mrx) if side == "slave" else (link.mtx, link.srx)
    efd = link.efds[0] if side == "slave" else link.efds[1]
    ring = link.m_s2m if side == "slave" else link.s_m2s
    big = bytes(range(256)) * 3  # 3 buffers, chained
    assert tx.stage(b"one") and tx.stage(big) and tx.stage(b"three")
    assert tx.staged == 3
    assert rx.pending() == 0 and len(rx.rx_burst()) == 0  # nothing published yet
    assert link.signals(rx) == 0
    before = (tx.packets, tx.bytes)
    assert tx.flush() == 3 and tx.staged == 0
    assert (tx.packets - before[0], tx.bytes - before[1]) == (3, 3 + 768 + 5)
    assert os.read(efd, 8) == (1).to_bytes(8, "little")  # one signal for the lot
    assert tx.flush() == 0
    burst = rx.rx_burst()
    assert [bytes(burst[i]) for i in range(len(burst))] == [b"one", big, b"three"]
    assert list(burst.nsegments) == [1, 3, 1]
    rx.release()
    # Any other transmit call publishes the staged packets first, in order.
    for call in (
        lambda: tx.tx_burst([b"after"]),
        lambda: tx.free_slots(),
        lambda: tx.tx_burst_array(np.zeros((1, 5), np.uint8), np.array([5], np.uint32)),
        lambda: (tx.alloc(1), tx.commit([0])),
    ):
        assert tx.stage(b"staged")
        call()
        assert tx.staged == 0
        burst = rx.rx_burst()
        assert bytes(burst[0]) == b"staged" and len(burst) in (1, 2)
        rx.release()
    # MASK_INT: flush publishes without signalling.
    os.read(efd, 8)
    ring.flags = 1
    assert tx.stage(b"quiet") and tx.flush() == 1
    with pytest.raises(BlockingIOError):
        os.read(efd, 8)
    assert bytes(rx.rx_burst()[0]) == b"quiet"
    rx.release()


def test_stage_full_ring_discard_and_misuse(R, make_link):
    link = make_link(R, log2=2, buffer_size=64)
    tx = link.stx
    assert [tx.stage(bytes([i]) * 10) for i in range(5)] == [True] * 4 + [False]
    assert tx.staged == 4 and tx.free_slots() == 0 and tx.staged == 0  # free_slots flushed
    assert not tx.stage(b"x")
    burst = link.mrx.rx_burst()
    assert len(burst) == 4
    link.mrx.release()
    assert tx.stage(bytes(100)) and tx.staged == 1  # 2 descriptors
    assert not tx.stage(bytes(150))  # 3 more do not fit
    assert tx.stage(bytes(64))
    assert tx.discard() == 2 and tx.staged == 0 and tx.flush() == 0
    assert link.mrx.pending() == 0
    with pytest.raises(LocalProtocolError, match="need 5 descriptors"):
        tx.stage(bytes(300))
    tx.alloc(1)
    with pytest.raises(LocalProtocolError, match="alloc"):
        tx.stage(b"x")
    tx.commit([])
    assert tx.stage(b"lost")
    tx.close()
    assert tx.staged == 0
    for call in (lambda: tx.stage(b"x"), tx.flush):
        with pytest.raises(LocalProtocolError, match="closed"):
            call()
    assert link.mrx.pending() == 0


def test_stage_rejects_counter_moving_back(R, make_link):
    link = make_link(R, log2=2)
    assert link.mtx.stage(b"a") and link.mtx.stage(b"b")
    link.s_m2s.head = (link.s_m2s.head - 3) & 0xFFFF  # the slave takes back refilled slots
    assert link.mtx.stage(b"c")  # the cached room is still used
    assert link.mtx.stage(b"d")
    with pytest.raises(PeerProtocolError):
        link.mtx.stage(b"e")  # reload: head - tail < staged


# ----------------------------------------------------------------- allocation (Cython only)


def test_steady_state_does_not_allocate(cy, make_link):
    link = make_link(cy, log2=10, buffer_size=2048)
    data = np.zeros((256, 64), np.uint8)
    lengths = np.full(256, 64, np.uint32)
    pairs = ((link.stx, link.mrx), (link.mtx, link.srx))

    def run(n):
        for _ in range(n):
            for tx, rx in pairs:
                tx.tx_burst_array(data, lengths)
                rx.rx_burst()
                rx.release()

    run(50)
    tracemalloc.start()
    try:
        run(50)
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        run(2000)  # 2000 bursts x 256 packets x 2 directions = 1,024,000 packets
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert link.mrx.packets + link.srx.packets >= 1_024_000
    assert current - base < 2048, (base, current)
    assert peak - base < 16384, (base, peak)


# ------------------------------------------------------------- differential (hypothesis)

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SIZES = st.lists(st.integers(0, 700), min_size=1, max_size=10)
_RX = st.sampled_from(["mrx", "srx"])
# How a transmit op passes metadata: not at all, a list, a uint32 array, a bad value, a short list.
_META = st.sampled_from([None, "list", "array", "bad", "short"])
_TX_OP = st.tuples(st.sampled_from(["stx", "mtx", "stx_array", "mtx_array"]), _SIZES, _META)
_RX_OP = st.tuples(st.just("rx"), _RX, st.none() | st.integers(0, 12))
_OTHER_OP = st.one_of(
    st.tuples(st.just("release"), _RX),
    st.tuples(st.just("refill")),
    st.tuples(st.just("alloc"), st.sampled_from(["stx", "mtx"]), st.integers(0, 12), _SIZES, _META),
    st.tuples(st.just("forward")),
    st.tuples(st.just("mask"), _RX, st.booleans()),
    st.tuples(st.just("query")),
    st.tuples(st.just("stage"), st.sampled_from(["stx", "mtx"]), _SIZES, _META),
    st.tuples(st.just("flush"), st.sampled_from(["stx", "mtx"])),
    st.tuples(st.just("gather"), _RX, st.sampled_from([0, 1, 63, 64, 65, 300]), st.integers(0, 3)),
    st.tuples(
        st.just("tx_from"),
        st.sampled_from([("mtx", "mrx"), ("stx", "srx"), ("mtx", "srx"), ("stx", "mrx")]),
        st.integers(0, 12),
    ),
)
# Weighted: mostly the data path (tx 40%, rx 35%), the rest spread over the other calls.
_BENIGN = st.integers(0, 99).flatmap(
    lambda k: _TX_OP if k < 40 else _RX_OP if k < 75 else _OTHER_OP
)
_HOSTILE = st.one_of(
    st.tuples(
        st.just("desc"),
        st.sampled_from(["s2m", "m2s"]),
        st.integers(0, 15),
        st.sampled_from([0, 1]),
        st.sampled_from([0, 1, 2, 7]),
        st.sampled_from([0, 1, 64, 200, 256, 257, 5000, 0xFFFFFFFF]),
        st.sampled_from([0, 64, 256, 4096, 8000, 0xFFFFFFF0]),
        st.sampled_from([0, 1, 0xFFFFFFFF]),
    ),
    st.tuples(
        st.just("counter"),
        st.sampled_from(["s2m", "m2s"]),
        st.sampled_from(["head", "tail"]),
        st.integers(-3, 20) | st.integers(0, 65535),
    ),
)


def _packet(n: int) -> bytes:
    return random.Random(n).randbytes(n)


def _metadata(mode, sizes):
    if mode is None:
        return None
    values = [(n * 0x9E3779B1 + i) & 0xFFFFFFFF for i, n in enumerate(sizes)]
    if mode == "array":
        return np.array(values, np.uint32)
    if mode == "bad":
        return values[:-1] + [1 << 32]
    if mode == "short":
        return values[:-1]
    return values


def _apply(link: Link, op):
    kind = op[0]
    if kind in ("stx", "mtx"):
        return getattr(link, kind).tx_burst(
            [_packet(n) for n in op[1]], metadata=_metadata(op[2], op[1])
        )
    if kind in ("stx_array", "mtx_array"):
        width = max(op[1], default=0)
        data = np.zeros((len(op[1]), width), np.uint8)
        for i, n in enumerate(op[1]):
            data[i, :n] = np.frombuffer(_packet(n), np.uint8)
        lengths = np.array(op[1], np.uint32)
        return getattr(link, kind[:3]).tx_burst_array(data, lengths, _metadata(op[2], op[1]))
    if kind == "rx":
        burst = getattr(link, op[1]).rx_burst(op[2])
        out = []
        for i in range(len(burst)):
            try:
                out.append(bytes(burst[i]))
            except LocalProtocolError as e:
                out.append(str(e))
        lengths, nsegs, meta = (
            a.tolist() for a in (burst.lengths, burst.nsegments, burst.metadata)
        )
        return len(burst), lengths, nsegs, meta, out
    if kind == "release":
        return getattr(link, op[1]).release()
    if kind == "refill":
        return link.srx.refill()
    if kind == "alloc":
        tx = getattr(link, op[1])
        views = tx.alloc(op[2])
        caps = [len(v) for v in views]
        lens = [min(n, c) for n, c in zip(op[3], caps, strict=False)]
        for v, n in zip(views, lens, strict=False):
            v[:n] = _packet(n)
        del views
        return caps, _outcome(tx.commit, lens, _metadata(op[4], lens))
    if kind == "forward":
        return link.stx.forward(link.srx.burst)
    if kind == "stage":
        tx = getattr(link, op[1])
        meta = _metadata(op[3], op[2])
        meta = [0] * len(op[2]) if meta is None else list(meta)  # "short": one stage fewer
        staged = [_outcome(tx.stage, _packet(n), m) for n, m in zip(op[2], meta, strict=False)]
        return staged, tx.staged
    if kind == "flush":
        return getattr(link, op[1]).flush()
    if kind == "gather":  # the current burst, or (when empty) a new one
        rx = getattr(link, op[1])
        burst = rx.burst if len(rx.burst) else rx.rx_burst()
        lengths = burst.lengths.astype(np.int64)
        if op[2]:
            lengths = np.minimum(lengths, op[2])
        # Layout op[3]: 0 packed, 1 gaps, 2 reversed with gaps, 3 one byte short of room.
        gap = 0 if op[3] in (0, 3) else 5
        offsets = np.cumsum(lengths + gap) - lengths - gap
        if op[3] == 2:
            offsets = offsets[::-1].copy()
        out = bytearray(int(lengths.sum()) + gap * len(lengths) - (op[3] == 3))
        return _outcome(burst.gather_into, out, offsets, op[2]), bytes(out)
    if kind == "tx_from":
        tx, rx = (getattr(link, name) for name in op[1])
        return tx.tx_burst_from(rx.burst, op[2])
    if kind == "mask":
        getattr(link, op[1]).mask_interrupts = op[2]
        return getattr(link, op[1]).mask_interrupts
    if kind == "query":
        return [
            _outcome(link.mrx.pending),
            _outcome(link.srx.pending),
            _outcome(link.stx.free_slots),
            _outcome(link.mtx.free_slots),
            link.mrx.unread_packets(),
            link.srx.unread_packets(),
        ]
    if kind == "dpdk":
        link.dpdk.stale_flags = op[2]
        return link.dpdk.tx_burst([_packet(n) for n in op[1]])
    ring = link.s_s2m if op[1] == "s2m" else link.s_m2s
    if kind == "desc":
        slot = op[2] & (link.size - 1)
        return ring.set_descriptor(slot, *op[3:])
    if kind == "counter":
        value = getattr(ring, op[2]) + op[3] if op[3] < 21 else op[3]
        setattr(ring, op[2], value & 0xFFFF)
        return None
    raise AssertionError(op)


def _outcome(call, *args):
    try:
        return "ok", call(*args)
    except (PeerProtocolError, LocalProtocolError, ValueError, IndexError) as e:
        return "error", type(e).__name__, str(e)


def _differential(geometry, ops, rx_options=None):
    log2, cacheline, bs, start, max_burst = geometry
    cy_mod = importlib.import_module(IMPLS["cython"])
    py_mod = importlib.import_module(IMPLS["python"])
    kw = dict(log2=log2, cacheline=cacheline, buffer_size=bs, start=start, max_burst=max_burst)
    a, b = Link(cy_mod, rx_options=rx_options, **kw), Link(py_mod, rx_options=rx_options, **kw)
    a.dpdk, b.dpdk = _dpdk(a), _dpdk(b)
    try:
        assert a.memory() == b.memory()
        for step, op in enumerate(ops):
            ra, rb = _outcome(_apply, a, op), _outcome(_apply, b, op)
            assert ra == rb, f"step {step} {op}: cython {ra} != python {rb}"
            if ra[0] == "error":
                event(ra[1])
            elif op[0] == "rx" and ra[1][0]:
                event("chained packet received" if max(ra[1][2]) > 1 else "packets received")
            elif op[0] == "forward" and ra[1]:
                event("forwarded")
            elif op[0] == "gather" and ra[1][0] == ("ok", ra[1][0][1]) and ra[1][0][1]:
                event("gathered")
            assert a.memory() == b.memory(), f"step {step} {op}: shared memory differs"
        for qa, qb in zip(a.queues, b.queues, strict=True):
            assert (qa.packets, qa.bytes, qa.errors) == (qb.packets, qb.bytes, qb.errors)
        assert a.srx.buffer_offsets.tolist() == b.srx.buffer_offsets.tolist()
        assert a.stx.buffer_offsets.tolist() == b.stx.buffer_offsets.tolist()
    finally:
        a.close()
        b.close()


_GEOMETRY = st.tuples(
    st.integers(1, 4),
    st.sampled_from([64, 128]),
    st.sampled_from([64, 200, 256]),
    st.sampled_from([0, 65530, 65535]) | st.integers(0, 65535),
    st.integers(1, 16),
)
_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(_GEOMETRY, st.lists(_BENIGN, min_size=5, max_size=60))
def test_differential_benign(geometry, ops):
    _differential(geometry, ops)


@_SETTINGS
@given(
    _GEOMETRY,
    st.lists(
        st.integers(0, 99).flatmap(lambda k: _HOSTILE if k < 12 else _BENIGN),
        min_size=5,
        max_size=60,
    ),
)
def test_differential_hostile(geometry, ops):
    _differential(geometry, ops)


def test_master_rx_clears_flags_of_returned_slots(R, make_link):
    """A slave that never resets a packet's first descriptor flags (DPDK's copy-mode tx does
    only `flags |= NEXT`) must not see its stale NEXT glue packets together on the next lap."""
    link = make_link(R, log2=2, buffer_size=2048)
    ring = link.s_s2m
    # Lap 1: one packet chained over all 4 slots (NEXT on slots 0..2).
    for slot in range(4):
        ring.set_descriptor(slot, 1 if slot < 3 else 0, 1, 100, slot * 2048)
    ring.head = 4
    assert list(link.mrx.rx_burst().lengths) == [400]
    link.mrx.release()
    assert [ring.descriptor(s)[0] for s in range(4)] == [0, 0, 0, 0]
    # Lap 2: a writer that only ORs NEXT in and leaves first-descriptor flags alone.
    for slot in range(4):
        flags, region, _, offset, meta = ring.descriptor(slot)
        ring.set_descriptor(slot, flags, region, 10 + slot, offset, meta)
    ring.head = 8
    assert list(link.mrx.rx_burst().lengths) == [10, 11, 12, 13]


# ------------------------------------------------------------- DPDK's transmit off-by-one
# tests/dpdk_model.py writes into the M2S ring exactly what DPDK's eth_memif_tx writes.

DEFENCE = {"sentinel": True, "short_next_ends_packet": True}


def _dpdk(link, **kw):
    return DpdkServerTx(link.m_m2s, link.mmaps, **kw)


def _numbered(i: int, size: int) -> bytes:
    return (i.to_bytes(4, "little") + random.Random(i).randbytes(size))[:size]


def _fill(dpdk, count: int, first: int = 0, size: int = 100) -> list[bytes]:
    packets = [_numbered(first + i, size) for i in range(count)]
    assert dpdk.tx_burst(packets) == count
    return packets


@pytest.mark.parametrize("variant", ["ends-in-stolen-slot", "rolled-back"])
def test_dpdk_model_without_the_defence_corrupts_and_glues(R, make_link, variant):
    """The model reproduces what the issue saw; the overrun is caught before any refill."""
    link = make_link(R, log2=4, buffer_size=256)
    dpdk = _dpdk(link)
    held = _fill(dpdk, 15)  # one free slot left of the 16 we published
    burst = link.srx.rx_burst()
    assert [bytes(burst[i]) for i in range(15)] == held
    if variant == "ends-in-stolen-slot":
        assert dpdk.tx_burst([_numbered(99, 300)]) == 1  # needs 2 slots: the 2nd is slot 0
        assert link.m_m2s.tail == 17  # free wrapped: tail published past our head
        _expect_peer_error(
            link.srx, link.srx.rx_burst, r"tail 17 is 1 slots past head 16 \(ring size 16\)"
        )
        assert link.s_m2s.head == 16  # not refilled: the overrun cannot be made to look legal
        assert len(burst) == 15 and bytes(burst[0]) != held[0]  # a view it wrote under us
        assert link.srx.unread_packets() == 1
    else:
        assert dpdk.tx_burst([_numbered(99, 600)]) == 0  # dropped after writing into slot 0
        assert bytes(burst[0]) != held[0]
        late = _fill(dpdk, 1, first=100, size=50)  # lands on slot 15, which kept NEXT
        assert len(link.srx.rx_burst()) == 0  # looks like the start of a chain
        after = _fill(dpdk, 1, first=101, size=40)
        glued = link.srx.rx_burst()
        assert len(glued) == 1 and bytes(glued[0]) == late[0] + after[0]


@pytest.mark.parametrize("size", [300, 600])  # ends in the extra slot; needs yet more
def test_sentinel_turns_dpdk_extra_step_into_a_drop(R, make_link, size):
    link = make_link(R, log2=4, buffer_size=256, rx_options=DEFENCE)
    assert link.s_m2s.head == 15 and link.s_m2s.descriptor(15)[2] == 0  # the sentinel
    dpdk = _dpdk(link)
    held = _fill(dpdk, 14)  # exactly one free slot
    burst = link.srx.rx_burst()
    views = [burst[i] for i in range(14)]
    before = link.memory()
    assert dpdk.tx_burst([_numbered(99, size)]) == 0 and dpdk.dropped == 1
    assert link.m_m2s.tail == 14
    assert [bytes(v) for v in views] == held  # nothing written under a held view
    assert link.s_m2s.descriptor(15) == before_desc(before, link, 15)
    late = _fill(dpdk, 1, first=100, size=50)  # on slot 14, left with a stale NEXT
    assert link.s_m2s.descriptor(14)[0] == R.DESC_FLAG_NEXT
    del views
    got = link.srx.rx_burst()
    assert [bytes(got[i]) for i in range(len(got))] == late
    more = _fill(dpdk, 3, first=101, size=700)
    got = link.srx.rx_burst()
    assert [bytes(got[i]) for i in range(len(got))] == more
    assert link.srx.errors == 0


def before_desc(memory: bytes, link, slot: int) -> tuple:
    at = link.s_m2s.offset + 2 * link.s_m2s.cacheline + 16 * slot
    return struct.unpack_from("<HHIII", memory, at)


def test_without_the_stale_next_rule_dpdk_22_glues_after_a_drop(R, make_link):
    link = make_link(R, log2=4, buffer_size=256, rx_options={"sentinel": True})
    dpdk = _dpdk(link)
    _fill(dpdk, 14)
    link.srx.rx_burst()
    assert dpdk.tx_burst([_numbered(99, 600)]) == 0
    late = _fill(dpdk, 1, first=100, size=50)
    assert len(link.srx.rx_burst()) == 0
    after = _fill(dpdk, 1, first=101, size=40)
    assert bytes(link.srx.rx_burst()[0]) == late[0] + after[0]
    # DPDK >= 26.03 clears the flags it leaves: the sentinel alone is enough there.
    link = make_link(R, log2=4, buffer_size=256, rx_options={"sentinel": True})
    dpdk = _dpdk(link, stale_flags=False)
    _fill(dpdk, 14)
    link.srx.rx_burst()
    assert dpdk.tx_burst([_numbered(99, 600)]) == 0
    late = _fill(dpdk, 1, first=100, size=50)
    assert [bytes(p) for p in [link.srx.rx_burst()[0]]] == late


def test_sentinel_placement_and_handover_across_wraparound(R, make_link):
    start = 65530
    link = make_link(R, log2=3, buffer_size=256, start=start, rx_options=DEFENCE)
    ring, srx = link.s_m2s, link.srx
    head = (start + 7) & 0xFFFF
    assert ring.head == head and ring.descriptor(head & 7)[2] == 0
    dpdk = _dpdk(link)
    sent = _fill(dpdk, 3)
    burst = srx.rx_burst()
    assert [bytes(burst[i]) for i in range(len(burst))] == sent
    srx.release()  # tail had not reached head: the old sentinel is handed over empty
    old, head = head, (start + 10) & 0xFFFF
    assert ring.head == head
    assert ring.descriptor(old & 7)[2] == 0  # given as it was: capacity 0
    assert [ring.descriptor((old + k) & 7)[2] for k in (1, 2)] == [256, 256]
    assert ring.descriptor(head & 7)[2] == 0  # the new sentinel, the slot before our rel
    # DPDK steps over the empty slot (it costs the packet on it a slot); we skip it: one
    # segment, zero-copy.
    sent = _fill(dpdk, 6, first=10)
    assert link.m_m2s.tail == head
    burst = srx.rx_burst()
    assert [bytes(burst[i]) for i in range(len(burst))] == sent
    assert set(burst.nsegments.tolist()) == {1}
    srx.release()  # tail == head: no burst can step onto it any more, it is refilled
    old, head = head, (head + 7) & 0xFFFF
    assert ring.head == head and ring.head < start  # wrapped
    assert [ring.descriptor((old + k) & 7)[2] for k in range(7)] == [256] * 7
    assert ring.descriptor(head & 7)[2] == 0
    # One slot freed while tail is short of head: nothing would be gained, wait.
    _fill(dpdk, 1, first=20)
    srx.rx_burst()
    srx.release()
    assert ring.head == head
    _fill(dpdk, 1, first=21)
    srx.rx_burst()
    srx.release()
    assert ring.head == (head + 2) & 0xFFFF
    assert (ring.head - link.m_m2s.tail) & 0xFFFF <= 7


def test_refill_never_publishes_more_than_size_minus_one(R, make_link):
    rng = random.Random(7)
    link = make_link(R, log2=4, buffer_size=128, start=65500, rx_options=DEFENCE)
    dpdk = _dpdk(link)
    seq = 0
    for _ in range(400):
        sizes = [rng.choice([60, 100, 128, 129, 300, 500]) for _ in range(rng.randint(1, 6))]
        dpdk.tx_burst([_numbered(seq + i, n) for i, n in enumerate(sizes)])
        seq += len(sizes)
        if rng.random() < 0.7:
            link.srx.rx_burst(rng.randint(0, 5))
        if rng.random() < 0.3:
            link.srx.release()
        ring = link.s_m2s
        assert (ring.head - link.srx.ring.tail) & 0xFFFF <= 15
        assert ring.descriptor(ring.head & 15)[2] == 0
    assert link.srx.errors == 0


def test_sentinel_and_stale_next_rule_are_slave_options(R, make_link):
    link = make_link(R, log2=3)
    with pytest.raises(ValueError, match="role='slave'"):
        R.RxRing(link.m_s2m, role="master", sentinel=True)
    with pytest.raises(ValueError, match="role='slave'"):
        R.RxRing(link.m_s2m, role="master", short_next_ends_packet=True)
    regions = R.RegionTable([bytearray(4096)])
    one = R.Ring(regions, 0, 0, 0)
    one.initialize()
    with pytest.raises(ValueError, match="at least 2"):
        R.RxRing(
            one, role="slave", buffer_region=0, buffer_size=64, buffer_offsets=[2048], sentinel=True
        )
    regions.close()
    assert not link.srx.sentinel and not link.srx.short_next_ends_packet
    link = make_link(R, log2=3, rx_options=DEFENCE)
    assert link.srx.sentinel and link.srx.short_next_ends_packet


@pytest.mark.parametrize("rule", [False, True])
def test_short_next_rule(R, make_link, rule):
    link = make_link(
        R, log2=4, buffer_size=256, rx_options={"short_next_ends_packet": rule, "sentinel": True}
    )
    ring = link.m_m2s
    offs = link.srx.buffer_offsets
    layout = [
        (1, 100), (0, 50),  # NEXT on a partly filled slot: stale under the rule
        (1, 256), (0, 20),  # a real chain either way
        (1, 0), (0, 30),  # an empty slot the peer stepped over
        (1, 256), (1, 40), (0, 10),  # a packet starts at 40: the chain before it was stale
        (1, 256), (1, 0), (0, 5),  # an empty slot inside a chain stays a (0-byte) segment
    ]  # fmt: skip
    for slot, (flags, length) in enumerate(layout):
        ring.set_descriptor(slot, flags, 1, length, int(offs[slot]))
    ring.tail = len(layout)
    unread = link.srx.unread_packets()
    burst = link.srx.rx_burst()
    if rule:
        assert burst.lengths.tolist() == [100, 50, 276, 30, 256, 40, 10, 261]
        assert burst.nsegments.tolist() == [1, 1, 2, 1, 1, 1, 1, 3]
    else:
        assert burst.lengths.tolist() == [150, 276, 30, 306, 261]
        assert burst.nsegments.tolist() == [2, 2, 1, 3, 3]
    assert unread == len(burst)
    data = [bytes(burst[i]) for i in range(len(burst))]
    assert [len(x) for x in data] == burst.lengths.tolist()
    assert link.srx.unread_packets() == 0


def test_empty_next_slot_is_kept_as_a_segment_without_the_sentinel(R, make_link):
    link = make_link(R, log2=3, buffer_size=256)
    ring, offs = link.m_m2s, link.srx.buffer_offsets
    ring.set_descriptor(0, 1, 1, 0, int(offs[0]))
    ring.set_descriptor(1, 0, 1, 30, int(offs[1]))
    ring.tail = 2
    assert link.srx.rx_burst().nsegments.tolist() == [2]


def test_master_rx_bounds_head_by_what_it_has_returned(R, make_link):
    """A peer that refills past the slots we still hold (DPDK's client at a full ring does)
    is caught even while we hold a burst."""
    link = make_link(R, log2=4)
    assert link.stx.tx_burst([b"x"] * 10) == 10
    burst = link.mrx.rx_burst()
    assert len(burst) == 10
    link.s_s2m.head = 17  # 17 beyond the tail we published (0)
    _expect_peer_error(link.mrx, link.mrx.rx_burst, "head moved by 17 > ring size 16")
    assert len(burst) == 10 and link.m_s2m.tail == 0  # nothing released
    link.s_s2m.head = 16
    assert len(link.mrx.rx_burst()) == 6


def test_unread_packets_counts_whole_packets_and_no_error(R, make_link):
    link = make_link(R, log2=4, buffer_size=256)
    assert link.mtx.tx_burst([b"a" * 10, b"b" * 600, b"c"]) == 3  # 1 + 3 + 1 descriptors
    assert link.srx.unread_packets() == 3 and link.srx.pending() == 5
    assert link.stx.tx_burst([b"d" * 300, b"e"]) == 2
    assert link.mrx.unread_packets() == 2
    link.m_m2s.tail = 40
    before = link.srx.errors
    # The peer claims more than we gave it: counted up to what we had published (3 packets,
    # then 11 slots it says it filled one packet each).
    assert link.srx.unread_packets() == 3 + 11
    assert link.srx.errors == before
    link.srx.close()
    assert link.srx.unread_packets() == 0


def _dpdk_run(R, make_link, seed: int, rx_options, steps: int):
    """Random DPDK bursts against a slave that reads, holds and releases at random, then
    drains; returns the problems seen (corrupt, glued, duplicated or reordered packets, held
    views that changed, peer errors), packets DPDK took and dropped, and packets delivered."""
    rng = random.Random(seed)
    link = make_link(R, log2=5, buffer_size=256, rx_options=rx_options)
    dpdk = _dpdk(link)
    srx = link.srx
    sent: dict[int, bytes] = {}
    problems: list[str] = []
    held: list[tuple[object, bytes]] = []
    state = {"last": -1, "delivered": 0}

    def receive(max_packets: int) -> int:
        burst = srx.rx_burst(max_packets)
        held.clear()
        for i in range(len(burst)):
            data = bytes(burst[i])
            number = int.from_bytes(data[:4], "little")
            if sent.get(number) != data:
                problems.append(f"corrupt or glued packet ({len(data)} bytes)")
            elif number <= state["last"]:
                problems.append(f"packet {number} duplicated or out of order")
            else:
                state["last"] = number
                state["delivered"] += 1
                held.append((burst[i], data))
        return len(burst)

    seq = 0
    try:
        for _ in range(steps):
            count = rng.randint(1, 8)
            # Exactly one buffer long is the one length the stale-NEXT rule cannot tell from
            # the start of a chain (README): left out here, pinned by its own test.
            sizes = [
                rng.choice([rng.randint(60, 255), rng.randint(257, 1200)]) for _ in range(count)
            ]
            packets = [_numbered(seq + i, n) for i, n in enumerate(sizes)]
            n = dpdk.tx_burst(packets)
            sent.update((seq + i, packets[i]) for i in range(n))
            seq += count
            if any(bytes(view) != data for view, data in held):
                problems.append("a held view changed")
            if rng.random() < 0.5:
                receive(rng.randint(1, 12))
                if rng.random() < 0.3:
                    srx.release()
                    held.clear()
        while receive(256):
            pass
    except PeerProtocolError as exc:
        problems.append(f"peer error: {exc.reason}")
    return problems, dpdk.sent, dpdk.dropped, state["delivered"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dpdk_model_soak_with_the_defence_delivers_nothing_bad(R, make_link, seed):
    steps = 3000 if R.__name__.endswith("._ring") else 600
    problems, sent, dropped, delivered = _dpdk_run(R, make_link, seed, DEFENCE, steps)
    assert problems == []
    assert dropped > steps // 20  # the ring was often full: the extra step really happened
    assert delivered == sent  # every packet DPDK took arrived, exactly once


def test_dpdk_model_soak_without_the_defence_goes_wrong(R, make_link):
    steps = 3000 if R.__name__.endswith("._ring") else 600
    problems, *_ = _dpdk_run(R, make_link, 0, {}, steps)
    assert problems  # the same traffic, undefended: corrupt, glued or an overrun


# DPDK as the master's transmitter (the model), never our own TxRing on that ring: both write
# its tail. The receiver is a slave with or without the defences.
_DPDK_SIZES = st.lists(st.sampled_from([0, 1, 60, 63, 64, 65, 199, 200, 201, 256, 257, 700]),
                       min_size=1, max_size=8)  # fmt: skip
_DPDK_OPS = st.integers(0, 99).flatmap(
    lambda k: (
        st.tuples(st.just("dpdk"), _DPDK_SIZES, st.booleans())
        if k < 40
        else st.tuples(st.just("rx"), st.just("srx"), st.none() | st.integers(0, 12))
        if k < 75
        else st.tuples(st.just("release"), st.just("srx"))
        if k < 85
        else st.tuples(st.just("refill"))
        if k < 88
        else st.tuples(st.just("query"))
        if k < 94
        else st.tuples(st.just("counter"), st.just("m2s"), st.just("tail"), st.integers(-3, 20))
        if k < 97
        else st.tuples(
            st.just("desc"),
            st.just("m2s"),
            st.integers(0, 31),
            st.sampled_from([0, 1]),
            st.just(1),
            st.sampled_from([0, 1, 64, 200, 256, 257]),
            st.sampled_from([0, 64, 256]),
            st.just(0),
        )
    )
)


@_SETTINGS
@given(
    _GEOMETRY.filter(lambda g: g[0] >= 1),
    st.sampled_from([{}, {"sentinel": True}, DEFENCE]),
    st.lists(_DPDK_OPS, min_size=5, max_size=60),
)
def test_differential_dpdk_peer(geometry, rx_options, ops):
    _differential(geometry, ops, rx_options)


def test_has_news_is_one_unvalidated_load(R, make_link):
    """What an interrupt is checked against: the peer's counter moved, bogus or not, and no
    error is counted for it (the next rx_burst reports a bogus one, once)."""
    link = make_link(R, log2=4, buffer_size=256)
    assert not link.mrx.has_news() and not link.srx.has_news()
    assert link.stx.tx_burst([b"x"]) == 1
    assert link.mrx.has_news()
    assert len(link.mrx.rx_burst()) == 1 and not link.mrx.has_news()
    link.s_s2m.head = 3000  # bogus
    assert link.mrx.has_news() and link.mrx.errors == 0
    _expect_peer_error(link.mrx, link.mrx.rx_burst, "head moved by")
    link.mrx.close()
    assert not link.mrx.has_news()
