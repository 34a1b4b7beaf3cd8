"""Property tests over the handshake state machines.

Any sequence of (possibly invalid) messages and fds ends connected only if it is a valid
handshake, as judged by an oracle written independently of the machines below; otherwise it
ends in a clean rejection: DISCONNECT with a reason (unless the peer disconnected or left),
one ``Closed``, and every received fd closed exactly once or handed over with the link.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from machines import master_machine, slave_machine

from memif_aio import handshake as hs
from memif_aio import protocol as p

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECRET = b"s3cr3t"
QUEUES = 2  # the master accepts up to 2 rings each way


@dataclass(frozen=True)
class Fd:
    kind: str  # memfd, eventfd, blocking-eventfd, file, other, unsealable
    size: int = 0

    def info(self) -> hs.FdInfo:
        if self.kind == "memfd":
            return hs.FdInfo("memfd", self.size, hs.SEAL_SHRINK)
        if self.kind == "unsealable":
            return hs.FdInfo("memfd", self.size, hs.SEAL_SEAL)
        if self.kind == "blocking-eventfd":
            return hs.FdInfo("eventfd", blocking=True)
        return hs.FdInfo(self.kind, self.size)


@dataclass(frozen=True)
class In:
    """One input to a machine: a message (or raw frame) with fds."""

    message: p.Message | bytes
    fds: tuple[Fd, ...] = ()


REGION = 1 << 16


def valid_master_inputs(regions: int, s2m: int, m2s: int, log2: int) -> list[In]:
    ring = p.ring_bytes(log2)
    seq = [In(p.Init(p.VERSION, 0, p.Mode.ETHERNET, SECRET, "app"))]
    seq += [In(p.AddRegion(i, REGION), (Fd("memfd", REGION),)) for i in range(regions)]
    position = 0
    for s2m_flag, count in ((1, s2m), (0, m2s)):
        for i in range(count):
            region, offset = divmod(position, REGION // ring)
            seq.append(
                In(
                    p.AddRing(s2m_flag, i, region % regions, offset * ring, log2),
                    (Fd("eventfd"),),
                )
            )
            position += 1
    return seq + [In(p.Connect("slave-if"))]


fd_kinds = st.sampled_from(
    [
        Fd("memfd", REGION),
        Fd("memfd", 100),
        Fd("eventfd"),
        Fd("blocking-eventfd"),
        Fd("file", REGION),
        Fd("other"),
        Fd("unsealable", REGION),
    ]
)
messages = st.one_of(
    st.builds(
        p.Init,
        st.sampled_from([p.VERSION, 0x0100]),
        st.sampled_from([0, 1]),
        st.sampled_from(list(p.Mode)),
        st.sampled_from([SECRET, b"", b"wrong"]),
    ),
    st.builds(p.AddRegion, st.integers(0, 3), st.sampled_from([0, 100, REGION, 1 << 50])),
    st.builds(
        p.AddRing,
        st.integers(0, 3),
        st.integers(0, 3),
        st.integers(0, 2),
        st.sampled_from([0, 4, 4096, REGION - 100, 0xFFFFFFFF]),
        st.sampled_from([0, 1, 4, 14, 15]),
        st.sampled_from([0, 0, 0, 8]),
    ),
    st.builds(p.Connect, st.text(max_size=8)),
    st.sampled_from([p.Ack(), p.Hello(), p.Connected("x"), p.Disconnect(1, "bye")]),
    st.binary(max_size=140),
)
random_input = st.builds(In, messages, st.lists(fd_kinds, max_size=2).map(tuple))


@st.composite
def master_sequences(draw):
    """Valid handshakes, mutated a little or a lot, or plain noise."""
    shape = draw(st.sampled_from(["valid", "mutated", "mutated", "noise"]))
    if shape == "noise":
        return draw(st.lists(random_input, max_size=12))
    seq = valid_master_inputs(
        draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2)), 4
    )
    if shape == "valid":
        return seq
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(seq) - 1))
        how = draw(st.sampled_from(["drop", "dup", "swap", "replace", "fds", "insert"]))
        if how == "drop":
            del seq[i]
        elif how == "dup":
            seq.insert(i, seq[i])
        elif how == "swap" and i + 1 < len(seq):
            seq[i], seq[i + 1] = seq[i + 1], seq[i]
        elif how == "replace":
            seq[i] = draw(random_input)
        elif how == "fds":
            seq[i] = In(seq[i].message, draw(st.lists(fd_kinds, max_size=2).map(tuple)))
        else:
            seq.insert(i, draw(random_input))
        if not seq:
            break
    return seq


def oracle_master(seq: list[In]) -> int | None:
    """How many inputs a master must consume to be connected, or None if it must not be.

    Written from the protocol text, not from the machine: INIT for id 0 with our secret and
    mode, regions 0..n-1 (each one sealable memfd at least as large as declared), then rings
    (each one non-blocking eventfd, index below our count, no repeat, in a known region,
    inside it), then CONNECT with S2M and M2S indices 0..k-1 each.
    """
    it = iter(enumerate(seq))
    try:
        _, first = next(it)
    except StopIteration:
        return None
    m = first.message
    if not (
        isinstance(m, p.Init)
        and not first.fds
        and m.version == p.VERSION
        and m.id == 0
        and m.mode == p.Mode.ETHERNET
        and m.secret == SECRET
    ):
        return None
    regions: list[int] = []
    rings: dict[tuple[bool, int], None] = {}
    for n, item in it:
        m, fds = item.message, item.fds
        if isinstance(m, p.AddRegion) and not rings:
            if len(fds) != 1 or fds[0].kind != "memfd" or m.index != len(regions):
                return None
            if not 0 < m.size <= fds[0].size or m.size > hs.MAX_REGION_SIZE:
                return None
            regions.append(m.size)
        elif isinstance(m, p.AddRing):
            key = (bool(m.flags & 1), m.index)
            if len(fds) != 1 or fds[0].kind != "eventfd" or key in rings:
                return None
            if m.index >= QUEUES or m.private_hdr_size or not 1 <= m.log2_ring_size <= 14:
                return None
            if m.region >= len(regions):
                return None
            if m.offset + p.ring_bytes(m.log2_ring_size) > regions[m.region]:
                return None
            rings[key] = None
        elif isinstance(m, p.Connect) and not fds:
            for s2m in (True, False):
                indices = sorted(i for d, i in rings if d is s2m)
                if not indices or indices != list(range(len(indices))):
                    return None
            return n + 1 if regions else None
        else:
            return None
    return None


class FdBook:
    """Numbers for fake fds, and the proof that each is closed once or handed over."""

    def __init__(self) -> None:
        self.numbers = itertools.count(100)
        self.info: dict[int, hs.FdInfo] = {}
        self.given: list[int] = []
        self.closed: list[int] = []

    def make(self, fds: tuple[Fd, ...]) -> tuple[int, ...]:
        out = []
        for fd in fds:
            n = next(self.numbers)
            self.info[n] = fd.info()
            out.append(n)
        self.given += out
        return tuple(out)


def _feed(machine, item: In, book: FdBook) -> list[hs.Action]:
    fds = book.make(item.fds)
    if isinstance(item.message, bytes):
        return machine.receive_frame(item.message, fds)
    return machine.receive(item.message, fds)


def check_actions(actions: list[hs.Action], state: dict, book: FdBook) -> None:
    """Invariants of every action list: DISCONNECT before a refusal, one Closed, nothing
    but fd closing after it."""
    closed = [a for a in actions if isinstance(a, hs.Closed)]
    if state["closed"] is not None:
        assert all(isinstance(a, hs.CloseFds) for a in actions), actions
    assert len(closed) <= 1
    for a in actions:
        if isinstance(a, hs.CloseFds):
            book.closed += a.fds
    if closed:
        c = closed[0]
        sends = [a.message for a in actions if isinstance(a, hs.Send)]
        if not c.by_peer:
            assert sends and isinstance(sends[-1], p.Disconnect) and sends[-1].reason == c.reason
            assert c.reason and len(c.reason.encode()) <= p.REASON_SIZE
        else:
            assert not sends
        state["closed"] = c


@given(master_sequences())
@example(valid_master_inputs(1, 1, 1, 4))
@example(valid_master_inputs(2, 2, 2, 4))
@SETTINGS
def test_master_connects_only_through_a_valid_sequence(seq):
    book = FdBook()
    config = hs.MasterInterfaceConfig(secret=SECRET, rx_queues=QUEUES, tx_queues=QUEUES)
    claimed: set[int] = set()
    master = master_machine(
        "m",
        lambda i: config if i == 0 else None,
        lambda i: i in claimed,
        inspect_fd=lambda fd: book.info[fd],
    )
    assert isinstance(master.start()[0].message, p.Hello)
    state: dict = {"closed": None, "up": None, "consumed": 0}
    for n, item in enumerate(seq):
        actions = _feed(master, item, book)
        check_actions(actions, state, book)
        for a in actions:
            if isinstance(a, hs.ClaimInterface):
                claimed.add(a.interface_id)
            if isinstance(a, hs.MapMemory):
                up = master.memory_mapped()
                assert isinstance(up[0], hs.Send) and isinstance(up[0].message, p.Connected)
                assert isinstance(up[1], hs.LinkUp)
                state["up"], state["consumed"] = up[1].setup, n + 1
        if state["up"] or state["closed"]:
            # the rest of the input only ever gets its fds closed (or a clean refusal)
            for later in seq[n + 1 :]:
                check_actions(_feed(master, later, book), state, book)
            break
    expected = oracle_master(seq)
    if state["up"] is not None:
        event("connected")
        assert expected == state["consumed"], (expected, state["consumed"], seq)
        handed = state["up"].fds()
    else:
        event("refused" if state["closed"] else "incomplete")
        assert expected is None or expected > len(seq) or state["closed"] is None, (expected, seq)
        assert expected is None or state["closed"] is None
        handed = []
        if state["closed"] is None:
            check_actions(master.close(), state, book)
    # fd conservation: each received fd closed exactly once, or handed over with the link
    assert sorted(book.closed + handed) == sorted(book.given), (book.closed, handed, book.given)


# ------------------------------------------------------------------------------------ slave

hello_variants = st.one_of(
    st.just(p.Hello("m")),
    st.builds(
        p.Hello,
        st.just("m"),
        st.sampled_from([0x0100, 0x0200, 0x0201]),
        st.sampled_from([0x0100, 0x0200, 0x0300]),
        st.integers(0, 3),
        st.integers(0, 3),
        st.integers(0, 3),
        st.sampled_from([0, 1, 10, 14, 255]),
    ),
)
master_messages = st.one_of(
    hello_variants,
    st.just(p.Ack()),
    st.just(p.Connected("m-if")),
    st.just(p.Init()),
    st.just(p.Disconnect(2, "no")),
    st.binary(max_size=140),
)


@st.composite
def slave_sequences(draw):
    shape = draw(st.sampled_from(["valid", "mutated", "mutated", "noise"]))
    hello = draw(hello_variants) if shape != "valid" else p.Hello("m")
    # An honest master ACKs INIT, 1 region and 3 rings (tx 2 + rx 1): 5, then CONNECTED.
    acks = 5 if shape == "valid" else draw(st.sampled_from([5, 5, 4, 6, 0]))
    seq = [In(hello)] + [In(p.Ack())] * acks + [In(p.Connected("m-if"))]
    if shape == "noise":
        return draw(
            st.lists(
                st.builds(In, master_messages, st.lists(fd_kinds, max_size=1).map(tuple)),
                max_size=10,
            )
        )
    if shape == "mutated":
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(seq)))
            seq.insert(
                i, In(draw(master_messages), draw(st.lists(fd_kinds, max_size=1).map(tuple)))
            )
    return seq


def oracle_slave(seq: list[In], messages_to_send: int | None) -> bool:
    """Connected iff: a HELLO we can live with, then one ACK per message we sent but the
    last, then CONNECTED; no fds ever."""
    if not seq or any(item.fds for item in seq):
        return False
    hello = seq[0].message
    if not isinstance(hello, p.Hello) or messages_to_send is None:
        return False
    if not hello.min_version <= p.VERSION <= hello.max_version or hello.max_log2_ring_size < 1:
        return False
    body = [item.message for item in seq[1 : messages_to_send + 1]]
    return body == [p.Ack()] * (messages_to_send - 1) + [p.Connected("m-if")]


@given(slave_sequences())
@example([In(p.Hello("m"))] + [In(p.Ack())] * 5 + [In(p.Connected("m-if"))])
@SETTINGS
def test_slave_connects_only_through_a_valid_sequence(seq):
    book = FdBook()
    slave = slave_machine(hs.SlaveConfig(tx_queues=2, rx_queues=1, log2_ring_size=4))
    state: dict = {"closed": None}
    sent = 0
    to_send = None
    own_fds: list[int] = []
    up = None
    for n, item in enumerate(seq):
        actions = _feed(slave, item, book)
        check_actions(actions, state, book)
        while actions:
            more: list[hs.Action] = []
            for a in actions:
                if isinstance(a, hs.CreateMemory):
                    neg = a.negotiated
                    regions = [hs.RegionSpec(0, 1 << 20, 1)]
                    rings = [
                        hs.RingSpec(s2m, i, 0, 0, neg.log2_ring_size, 2)
                        for s2m, count in ((True, neg.s2m_rings), (False, neg.m2s_rings))
                        for i in range(count)
                    ]
                    to_send = 1 + len(regions) + len(rings) + 1
                    more += slave.memory_created(regions, rings)
                elif isinstance(a, hs.Send):
                    sent += 1
                    own_fds += a.fds
                elif isinstance(a, hs.LinkUp):
                    up = (a.setup, n + 1)
            check_actions(more, state, book)
            actions = more
        if up or state["closed"]:
            for later in seq[n + 1 :]:
                check_actions(_feed(slave, later, book), state, book)
            break
    if up is not None:
        event("connected")
        assert oracle_slave(seq[: up[1]], to_send), seq
        assert sent == to_send
    else:
        event("refused" if state["closed"] else "incomplete")
        assert not oracle_slave(seq, to_send) or state["closed"] is None
        if state["closed"] is None:
            check_actions(slave.close(), state, book)
    # the master never gives a slave fds: each one it tried to is closed exactly once
    assert sorted(book.closed) == sorted(book.given)
