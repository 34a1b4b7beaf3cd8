"""Sans-IO handshake: a master and a slave wired together in memory (frames and fd numbers are
pumped by the test, no sockets), plus every rejection reason."""

from __future__ import annotations

import itertools

import pytest
from machines import master_machine, slave_machine

from memif_aio import handshake as hs
from memif_aio import protocol as p
from memif_aio.errors import HandshakeError, HandshakeTimeout, SecretMismatch

_fd_numbers = itertools.count(1000)


SEALED = hs.FdInfo("memfd", 4096, seals=hs.SEAL_SHRINK)


def fake_fd(sizes: dict[int, int], fd: int, sealed: bool = True) -> hs.FdInfo:
    """Fake fds: numbers with a size are memfds, the others eventfds."""
    if sizes.get(fd):
        return hs.FdInfo("memfd", sizes[fd], seals=hs.SEAL_SHRINK if sealed else hs.SEAL_SEAL)
    return hs.FdInfo("eventfd")


class Pair:
    """A master and slave machine plus fake fds (numbers with sizes) and a frame pump."""

    def __init__(self, master_cfg=None, slave_cfg=None, max_region=255, claimed=()):
        self.master_cfg = master_cfg or hs.MasterInterfaceConfig()
        self.slave_cfg = slave_cfg or hs.SlaveConfig()
        self.fd_sizes: dict[int, int] = {}
        self.claimed = set(claimed)
        self.closed_fds: list[int] = []
        self.unsealed = False  # the slave's memfds cannot be sealed (DPDK zero-copy)
        self.master = master_machine(
            "master-app",
            lambda i: self.master_cfg if i == self.master_cfg.interface_id else None,
            lambda i: i in self.claimed,
            inspect_fd=lambda fd: fake_fd(self.fd_sizes, fd, not self.unsealed),
            hello=p.Hello("master-app", max_region=max_region),
        )
        self.slave = slave_machine(self.slave_cfg)
        self.results: dict[str, list] = {"master": [], "slave": []}

    def new_fd(self, size=0):
        fd = next(_fd_numbers)
        self.fd_sizes[fd] = size
        return fd

    def build_memory(self, negotiated: hs.Negotiated):
        log2 = negotiated.log2_ring_size
        ring_b = p.ring_bytes(log2)
        nrings = negotiated.s2m_rings + negotiated.m2s_rings
        regions = [
            hs.RegionSpec(0, ring_b * nrings, self.new_fd(ring_b * nrings)),
            hs.RegionSpec(1, 2048 << log2, self.new_fd(2048 << log2)),
        ]
        rings = [
            hs.RingSpec(s2m, i, 0, pos * ring_b, log2, self.new_fd())
            for pos, (s2m, i) in enumerate(
                [(True, i) for i in range(negotiated.s2m_rings)]
                + [(False, i) for i in range(negotiated.m2s_rings)]
            )
        ]
        return regions, rings

    def run(self):
        run_pair(self)
        return self


def run_pair(pair: Pair) -> None:
    """Pump frames between the two machines until neither has anything to send."""
    queue: list[tuple[str, hs.Action]] = [("master", a) for a in pair.master.start()]
    while queue:
        side, action = queue.pop(0)
        pair.results[side].append(action)
        if isinstance(action, hs.Send):
            target, target_side = (
                (pair.slave, "slave") if side == "master" else (pair.master, "master")
            )
            replies = target.receive_frame(p.encode(action.message), action.fds)
            queue += [(target_side, a) for a in replies]
        elif isinstance(action, hs.CreateMemory):
            queue += [
                ("slave", a)
                for a in pair.slave.memory_created(*pair.build_memory(action.negotiated))
            ]
        elif isinstance(action, hs.MapMemory):
            queue += [("master", a) for a in pair.master.memory_mapped()]
        elif isinstance(action, hs.ClaimInterface):
            pair.claimed.add(action.interface_id)
        elif isinstance(action, hs.CloseFds):
            pair.closed_fds += action.fds


def outcome(pair: Pair, side: str):
    return next((a for a in pair.results[side] if isinstance(a, (hs.LinkUp, hs.Closed))), None)


def test_default_pair_connects_and_agrees():
    pair = Pair(
        hs.MasterInterfaceConfig(if_name="m-if", rx_queues=2, tx_queues=2),
        hs.SlaveConfig(if_name="s-if", app_name="s-app", tx_queues=2, rx_queues=2),
    ).run()
    up_m, up_s = outcome(pair, "master"), outcome(pair, "slave")
    assert isinstance(up_m, hs.LinkUp) and isinstance(up_s, hs.LinkUp)
    assert up_m.setup.peer_name == "s-if" and up_m.setup.peer_app_name == "s-app"
    assert up_s.setup.peer_name == "m-if" and up_s.setup.peer_app_name == "master-app"
    for setup in (up_m.setup, up_s.setup):
        assert [r.index for r in setup.s2m_rings] == [0, 1]
        assert [r.index for r in setup.m2s_rings] == [0, 1]
        assert {r.log2_size for r in setup.s2m_rings + setup.m2s_rings} == {10}
    assert pair.master.connected and pair.slave.connected
    assert pair.closed_fds == []


def test_message_order_is_lock_step_and_rings_s2m_first():
    pair = Pair(
        hs.MasterInterfaceConfig(rx_queues=2, tx_queues=3), hs.SlaveConfig(tx_queues=2, rx_queues=3)
    ).run()
    sent = [a.message for a in pair.results["slave"] if isinstance(a, hs.Send)]
    kinds = [m.type.name for m in sent]
    assert kinds == ["INIT", "ADD_REGION", "ADD_REGION"] + ["ADD_RING"] * 5 + ["CONNECT"]
    rings = [(m.s2m, m.index) for m in sent if isinstance(m, p.AddRing)]
    assert rings == [(True, 0), (True, 1), (False, 0), (False, 1), (False, 2)]
    acks = [a.message for a in pair.results["master"] if isinstance(a, hs.Send)]
    assert [m.type.name for m in acks] == ["HELLO"] + ["ACK"] * 8 + ["CONNECTED"]


def test_slave_clamps_to_hello_limits():
    slave = slave_machine(hs.SlaveConfig(tx_queues=8, rx_queues=8, log2_ring_size=14))
    actions = slave.receive(
        p.Hello("m", max_region=0, max_m2s_ring=1, max_s2m_ring=3, max_log2_ring_size=11)
    )
    (create,) = actions
    assert create.negotiated == hs.Negotiated(
        s2m_rings=4, m2s_rings=2, log2_ring_size=11, max_regions=1
    )


def _rejection(pair_or_machine, side=None):
    actions = pair_or_machine
    closed = [a for a in actions if isinstance(a, hs.Closed)]
    assert closed, actions
    return closed[0]


@pytest.mark.parametrize(
    "master_cfg, slave_cfg, reason, error",
    [
        (
            hs.MasterInterfaceConfig(interface_id=1),
            hs.SlaveConfig(interface_id=2),
            hs.UNKNOWN_ID,
            HandshakeError,
        ),
        (
            hs.MasterInterfaceConfig(secret=b"right"),
            hs.SlaveConfig(secret=b"wrong"),
            hs.SECRET_MISMATCH,
            SecretMismatch,
        ),
        (
            hs.MasterInterfaceConfig(secret=b"right"),
            hs.SlaveConfig(),
            hs.SECRET_MISMATCH,
            SecretMismatch,
        ),
        (
            hs.MasterInterfaceConfig(mode=p.Mode.IP),
            hs.SlaveConfig(),
            hs.MODE_MISMATCH,
            HandshakeError,
        ),
        (
            hs.MasterInterfaceConfig(rx_queues=1),
            hs.SlaveConfig(tx_queues=2),
            hs.RING_LIMIT,
            HandshakeError,
        ),
    ],
)
def test_master_refusals_reach_both_sides(master_cfg, slave_cfg, reason, error):
    pair = Pair(master_cfg, slave_cfg).run()
    m, s = outcome(pair, "master"), outcome(pair, "slave")
    assert isinstance(m, hs.Closed) and reason in m.reason and not m.by_peer
    assert isinstance(s, hs.Closed) and reason in s.reason and s.by_peer
    assert isinstance(s.error, error)
    bye = [a.message for a in pair.results["master"] if isinstance(a, hs.Send)][-1]
    assert isinstance(bye, p.Disconnect) and reason in bye.reason


def test_secret_match_connects():
    pair = Pair(hs.MasterInterfaceConfig(secret=b"s3cr3t"), hs.SlaveConfig(secret=b"s3cr3t")).run()
    assert pair.master.connected and pair.slave.connected


def test_already_connected_id_is_refused():
    pair = Pair(claimed={0}).run()
    assert hs.ALREADY_CONNECTED in outcome(pair, "slave").reason


def test_version_mismatch_both_ways():
    slave = slave_machine(hs.SlaveConfig())
    closed = _rejection(slave.receive(p.Hello(min_version=0x0300, max_version=0x0300)))
    assert hs.VERSION_MISMATCH in closed.reason
    master = master_machine("m", lambda i: hs.MasterInterfaceConfig(), lambda i: False)
    assert hs.VERSION_MISMATCH in _rejection(master.receive(p.Init(version=0x0100))).reason


def _master_after_init(cfg=None, sizes=None):
    sizes = {} if sizes is None else sizes
    master = master_machine(
        "m",
        lambda i: cfg or hs.MasterInterfaceConfig(),
        lambda i: False,
        inspect_fd=lambda fd: fake_fd(sizes, fd),
    )
    master.start()
    master.receive(p.Init())
    return master


@pytest.mark.parametrize(
    "steps, reason",
    [
        ([(p.AddRegion(0, 4096), ())], hs.MISSING_FD),
        ([(p.AddRegion(0, 4096), (10, 11))], hs.EXTRA_FDS),
        ([(p.AddRegion(1, 4096), (10,))], hs.REGION_NOT_SEQUENTIAL),
        ([(p.AddRegion(0, 8192), (10,))], hs.REGION_TOO_SMALL),
        ([(p.AddRegion(0, 4096), (99,))], hs.REGION_NOT_FILE),
        ([(p.AddRegion(0, 0), (10,))], hs.REGION_SIZE),
        ([(p.AddRegion(0, 1 << 50), (10,))], hs.REGION_SIZE),
        ([(p.AddRing(1, 0, 0, 0, 10), (20,))], hs.RING_REGION),
        ([(p.AddRegion(0, 4096), (10,)), (p.AddRing(1, 0, 0, 0, 10, 8), (20,))], hs.PRIVATE_HDR),
        ([(p.AddRegion(0, 4096), (10,)), (p.AddRing(1, 0, 0, 0, 0), (20,))], hs.RING_SIZE),
        ([(p.AddRegion(0, 4096), (10,)), (p.AddRing(1, 0, 0, 0, 15), (20,))], hs.RING_SIZE),
        ([(p.AddRegion(0, 4096), (10,)), (p.AddRing(1, 0, 0, 0, 10), (20,))], hs.RING_OUTSIDE),
        ([(p.AddRegion(0, 4096), (10,)), (p.AddRing(1, 0, 0, 4000, 1), (20,))], hs.RING_OUTSIDE),
        ([(p.AddRegion(0, 4096), (10,)), (p.AddRing(1, 5, 0, 0, 1), (20,))], hs.RING_LIMIT),
        ([(p.AddRegion(0, 4096), (10,)), (p.AddRing(0, 0, 0, 0, 1), ())], hs.MISSING_FD),
        (
            [
                (p.AddRegion(0, 4096), (10,)),
                (p.AddRing(1, 0, 0, 0, 1), (20,)),
                (p.AddRing(1, 0, 0, 0, 1), (21,)),
            ],
            hs.RING_DUPLICATE,
        ),
        (
            [
                (p.AddRegion(0, 4096), (10,)),
                (p.AddRing(1, 0, 0, 0, 1), (20,)),
                (p.AddRegion(1, 4096), (11,)),
            ],
            hs.OUT_OF_ORDER,
        ),
        ([(p.Connect("x"), ())], hs.NO_REGIONS),
        ([(p.AddRegion(0, 4096), (10,)), (p.Connect("x"), ())], hs.NO_RINGS),
        (
            [
                (p.AddRegion(0, 4096), (10,)),
                (p.AddRing(1, 0, 0, 0, 1), (20,)),
                (p.Connect("x"), ()),
            ],
            hs.NO_RINGS,
        ),
        ([(p.Init(), ())], hs.OUT_OF_ORDER),
        ([(p.Hello(), ())], hs.OUT_OF_ORDER),
        ([(p.Ack(), ())], hs.OUT_OF_ORDER),
        ([(p.Connect("x"), (10,))], hs.EXTRA_FDS),
    ],
)
def test_master_rejects_bad_setup_and_closes_every_fd(steps, reason):
    cfg = hs.MasterInterfaceConfig(rx_queues=2, tx_queues=2)
    master = _master_after_init(cfg, sizes={10: 4096, 11: 4096})
    given: list[int] = []
    actions: list = []
    for message, fds in steps:
        given += fds
        actions = master.receive(message, fds)
        if any(isinstance(a, hs.Closed) for a in actions):
            break
    closed = _rejection(actions)
    assert reason in closed.reason
    sent = [a.message for a in actions if isinstance(a, hs.Send)]
    assert isinstance(sent[0], p.Disconnect) and reason in sent[0].reason
    closed_fds = [fd for a in actions if isinstance(a, hs.CloseFds) for fd in a.fds]
    assert sorted(closed_fds) == sorted(given)


def test_ring_indices_must_be_contiguous():
    master = _master_after_init(
        hs.MasterInterfaceConfig(rx_queues=4, tx_queues=4), sizes={10: 1 << 20}
    )
    master.receive(p.AddRegion(0, 1 << 20), (10,))
    master.receive(p.AddRing(1, 1, 0, 0, 4), (20,))
    master.receive(p.AddRing(0, 0, 0, 4096, 4), (21,))
    closed = _rejection(master.receive(p.Connect("x")))
    assert hs.RING_NOT_SEQUENTIAL in closed.reason


def test_ring_layout_respects_cacheline():
    cfg = hs.MasterInterfaceConfig(cacheline=128)
    master = _master_after_init(cfg, sizes={10: p.ring_bytes(1, 64)})
    master.receive(p.AddRegion(0, p.ring_bytes(1, 64)), (10,))
    closed = _rejection(master.receive(p.AddRing(1, 0, 0, 0, 1), (20,)))
    assert hs.RING_OUTSIDE in closed.reason


def test_malformed_frame_is_rejected_with_reason():
    master = master_machine("m", lambda i: None, lambda i: False)
    closed = _rejection(master.receive_frame(b"\x03\x00" + bytes(60)))
    assert hs.BAD_FRAME in closed.reason


def test_slave_rejects_fds_from_master_and_unexpected_messages():
    slave = slave_machine(hs.SlaveConfig())
    actions = slave.receive(p.Hello(), (5,))
    assert hs.EXTRA_FDS in _rejection(actions).reason
    assert hs.CloseFds((5,)) in actions
    slave = slave_machine(hs.SlaveConfig())
    assert hs.OUT_OF_ORDER in _rejection(slave.receive(p.Ack())).reason


def test_timeout_is_driven_by_the_caller_clock():
    master = master_machine("m", lambda i: None, lambda i: False, now=100.0, timeout=3.0)
    assert master.deadline == 103.0
    assert master.handle_timer(102.9) == []
    closed = _rejection(master.handle_timer(103.0))
    assert closed.reason == hs.TIMEOUT and isinstance(closed.error, HandshakeTimeout)


def test_peer_disconnect_after_link_up_is_reported_not_an_error_of_handshake():
    pair = Pair().run()
    actions = pair.slave.receive(p.Disconnect(0, "bye"))
    closed = _rejection(actions)
    assert closed.by_peer and closed.reason == "bye"
    assert not isinstance(closed.error, HandshakeError)


def test_local_close_sends_disconnect_once():
    pair = Pair().run()
    first = pair.master.close("shutting down")
    assert isinstance(first[0], hs.Send) and first[0].message.reason == "shutting down"
    assert pair.master.close() == []


def test_messages_after_link_up_are_refused():
    pair = Pair().run()
    closed = _rejection(pair.master.receive(p.AddRegion(2, 4096), (77,)))
    assert hs.OUT_OF_ORDER in closed.reason


@pytest.mark.parametrize(
    "region_fd, ring_fd, reason",
    [
        (hs.FdInfo("file", 4096), hs.FdInfo("eventfd"), hs.REGION_NOT_MEMFD),
        (hs.FdInfo("other"), hs.FdInfo("eventfd"), hs.REGION_NOT_FILE),
        (
            hs.FdInfo("memfd", 4096, seals=hs.SEAL_SEAL),
            hs.FdInfo("eventfd"),
            hs.REGION_NOT_SEALABLE,
        ),
        (
            hs.FdInfo("memfd", 4096, seals=0),  # the I/O layer could not seal it
            hs.FdInfo("eventfd"),
            hs.REGION_NOT_SEALABLE,
        ),
        (SEALED, hs.FdInfo("memfd", 4096), hs.RING_NOT_EVENTFD),
        (SEALED, hs.FdInfo("eventfd", blocking=True), hs.RING_NOT_EVENTFD),
        (SEALED, hs.FdInfo("eventfd", semaphore=True), hs.RING_SEMAPHORE),
    ],
)
def test_region_and_ring_fd_kinds(region_fd, ring_fd, reason):
    infos = {10: region_fd, 20: ring_fd}
    master = master_machine(
        "m", lambda i: hs.MasterInterfaceConfig(), lambda i: False, inspect_fd=infos.__getitem__
    )
    master.start()
    master.receive(p.Init())
    actions = master.receive(p.AddRegion(0, 4096), (10,))
    if not any(isinstance(a, hs.Closed) for a in actions):
        actions = master.receive(p.AddRing(1, 0, 0, 0, 1), (20,))
    closed = _rejection(actions)
    assert reason in closed.reason
    assert sorted(fd for a in actions if isinstance(a, hs.CloseFds) for fd in a.fds) == sorted(
        {10, 20} if reason in (hs.RING_NOT_EVENTFD, hs.RING_SEMAPHORE) else {10}
    )


def test_one_eventfd_for_two_rings_is_refused():
    """The kernel's eventfd id tells one eventfd handed in twice (two fd numbers) apart."""
    infos = {
        10: hs.FdInfo("memfd", 1 << 16, seals=hs.SEAL_SHRINK),
        20: hs.FdInfo("eventfd", eventfd_id=7),
        21: hs.FdInfo("eventfd", eventfd_id=7),
    }
    master = master_machine(
        "m", lambda i: hs.MasterInterfaceConfig(), lambda i: False, inspect_fd=infos.__getitem__
    )
    master.start()
    master.receive(p.Init())
    assert master.receive(p.AddRegion(0, 1 << 16), (10,)) == [hs.Send(p.Ack())]
    assert master.receive(p.AddRing(1, 0, 0, 0, 4), (20,)) == [hs.Send(p.Ack())]
    closed = _rejection(master.receive(p.AddRing(0, 0, 0, 4096, 4), (21,)))
    assert closed.reason == f"{hs.RING_EVENTFD_SHARED}: m2s 0"


def test_a_region_sealed_on_arrival_is_accepted():
    """The I/O layer seals what it can as it arrives (memif_aio.fds.inspect_fd): the facts
    then say SEAL_SHRINK, and the region is taken as one that cannot shrink."""
    infos = {10: SEALED, 20: hs.FdInfo("eventfd")}
    master = master_machine(
        "m", lambda i: hs.MasterInterfaceConfig(), lambda i: False, inspect_fd=infos.__getitem__
    )
    master.start()
    master.receive(p.Init())
    assert master.receive(p.AddRegion(0, 4096), (10,)) == [hs.Send(p.Ack())]


@pytest.mark.parametrize(
    "region_fd, accepted",
    [
        (hs.FdInfo("memfd", 4096, seals=hs.SEAL_SEAL), True),  # DPDK's memseg memfd
        (hs.FdInfo("file", 4096), False),  # a file on disk (hugetlbfs files are "memfd")
        (hs.FdInfo("other"), False),  # still not shared memory at all
        (hs.FdInfo("file", 100), False),  # still checked against the declared size
    ],
)
def test_allow_unsealed_regions_accepts_what_cannot_be_sealed(region_fd, accepted):
    config = hs.MasterInterfaceConfig(allow_unsealed_regions=True)
    master = master_machine(
        "m", lambda i: config, lambda i: False, inspect_fd={10: region_fd}.__getitem__
    )
    master.start()
    master.receive(p.Init())
    actions = master.receive(p.AddRegion(0, 4096), (10,))
    assert (actions == [hs.Send(p.Ack())]) is accepted


def test_the_mapper_learns_which_regions_are_not_sealed():
    """Only an allowed unsealed region reaches the mapper, marked so: its size is checked
    again just before it is mapped."""
    pair = Pair(hs.MasterInterfaceConfig(allow_unsealed_regions=True))
    pair.unsealed = True
    pair.run()
    mapped = next(a for a in pair.results["master"] if isinstance(a, hs.MapMemory))
    assert [r.sealed for r in mapped.setup.regions] == [False, False]
    assert isinstance(outcome(pair, "master"), hs.LinkUp)
    pair = Pair().run()
    mapped = next(a for a in pair.results["master"] if isinstance(a, hs.MapMemory))
    assert [r.sealed for r in mapped.setup.regions] == [True, True]


def test_eof_before_hello_is_a_lost_connection_not_a_refusal():
    slave = slave_machine(hs.SlaveConfig())
    closed = _rejection(slave.peer_closed())
    assert closed.by_peer and "before HELLO" in closed.reason
    assert not isinstance(closed.error, HandshakeError)
    slave = slave_machine(hs.SlaveConfig())
    slave.receive(p.Hello())
    assert isinstance(_rejection(slave.peer_closed()).error, HandshakeError)
