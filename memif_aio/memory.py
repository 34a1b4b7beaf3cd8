"""Shared memory: memfd regions, their mappings, the rings inside them and the eventfds.

The slave creates everything (libmemif layout: region 0 holds every ring, S2M rings first;
region 1 holds the packet buffers, ``ring_size`` buffers per ring in ring order; when the master
allows a single region, buffers follow the rings in region 0). The master maps what it is given,
at the offsets the slave declared, and never computes the peer's layout.

A :class:`SharedMemory` owns its mappings and fds and releases all of them in ``close()``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
from dataclasses import dataclass

import numpy as np

from . import _ring
from . import fds as _fds
from .errors import PeerProtocolError
from .handshake import REGION_TOO_SMALL, LinkSetup, Negotiated, RegionSpec, RingSpec
from .protocol import ring_bytes

log = logging.getLogger(__name__)


@dataclass
class RingMemory:
    """One ring as this process sees it. ``buffer_offsets`` is set only on the slave (owner)."""

    spec: RingSpec
    ring: _ring.Ring
    buffer_region: int = 0
    buffer_offsets: np.ndarray | None = None


class SharedMemory:
    """Mappings and fds of one link. ``peer_fds``: the fds came from the peer, so closing them
    goes off the loop (:func:`memif_aio.fds.close_later`)."""

    def __init__(
        self, fds: list[int], maps: list[mmap.mmap], cacheline: int, *, peer_fds: bool = False
    ) -> None:
        self._fds = fds
        self._peer_fds = peer_fds
        self._maps = maps
        self.cacheline = cacheline
        self.regions = _ring.RegionTable(maps)
        self.s2m: list[RingMemory] = []
        self.m2s: list[RingMemory] = []
        self.closed = False

    @property
    def region_sizes(self) -> list[int]:
        return [len(m) for m in self._maps]

    def close(self) -> None:
        """Release rings, mappings and fds; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self.regions.close()
        for m in self._maps:
            try:
                m.close()
            except BufferError:
                # A packet view the application still holds pins the mapping; it is unmapped
                # when that view dies. Closing now would free memory the view points into.
                log.debug("a mapping is still exported; it is released with its last view")
        self._maps = []
        if self._peer_fds:
            _fds.close_later(self._fds)
        else:
            for fd in self._fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fds = []


def _memfd(name: str, size: int) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        # Sealed against shrinking: a peer's mapping can never run past the end (SIGBUS).
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_unsealed_size(region: RegionSpec) -> None:
    """A region that could not be sealed (``allow_unsealed_regions``) may have shrunk since
    ADD_REGION: check its size again just before mapping. It can still shrink afterwards and
    crash us with SIGBUS: that is the risk the user accepted for a trusted peer."""
    actual = os.fstat(region.fd).st_size  # shmem or hugetlbfs: answered from the inode
    if actual < region.size:
        raise PeerProtocolError(f"{REGION_TOO_SMALL}: {actual} < {region.size}")


def _map(fd: int, size: int) -> mmap.mmap:
    return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


def create_slave_memory(
    negotiated: Negotiated, buffer_size: int, cacheline: int = 64
) -> tuple[SharedMemory, list[RegionSpec], list[RingSpec]]:
    """Create regions, initialized rings and eventfds for one connection attempt."""
    ring_size = 1 << negotiated.log2_ring_size
    one_ring = ring_bytes(negotiated.log2_ring_size, cacheline)
    directions = [True] * negotiated.s2m_rings + [False] * negotiated.m2s_rings
    rings_total = one_ring * len(directions)
    buffers_total = len(directions) * ring_size * buffer_size
    if negotiated.max_regions >= 2:
        sizes, buffer_region, buffer_base = [rings_total, buffers_total], 1, 0
    else:
        sizes, buffer_region, buffer_base = [rings_total + buffers_total], 0, rings_total

    fds: list[int] = []
    maps: list[mmap.mmap] = []
    memory: SharedMemory | None = None
    try:
        for index, size in enumerate(sizes):
            fds.append(_memfd(f"memif region {index}", size))
            maps.append(_map(fds[-1], size))
        memory = SharedMemory(fds, maps, cacheline)
        ring_specs: list[RingSpec] = []
        counters = {True: 0, False: 0}
        for position, s2m in enumerate(directions):
            eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            fds.append(eventfd)
            spec = RingSpec(
                s2m, counters[s2m], 0, position * one_ring, negotiated.log2_ring_size, eventfd
            )
            counters[s2m] += 1
            ring = _ring.Ring(memory.regions, 0, spec.offset, spec.log2_size, cacheline)
            ring.initialize()
            first = buffer_base + position * ring_size * buffer_size
            offsets = np.arange(ring_size, dtype=np.uint32) * np.uint32(buffer_size) + first
            (memory.s2m if s2m else memory.m2s).append(
                RingMemory(spec, ring, buffer_region, offsets.astype(np.uint32))
            )
            ring_specs.append(spec)
    except BaseException:
        _release(memory, maps, fds)
        raise
    regions = [
        RegionSpec(i, size, fd) for i, (size, fd) in enumerate(zip(sizes, fds, strict=False))
    ]
    return memory, regions, ring_specs


def map_master_memory(setup: LinkSetup) -> SharedMemory:
    """Map the slave's regions and check every ring's cookie; take ownership of all fds.

    Regions were sealed against shrinking when they arrived (:func:`memif_aio.fds.inspect_fd`),
    so their size, checked then, still holds.

    On failure every fd of ``setup`` is closed and ``PeerProtocolError`` says why.
    """
    fds = setup.fds()
    maps: list[mmap.mmap] = []
    memory: SharedMemory | None = None
    try:
        if any(not region.sealed for region in setup.regions):
            log.warning(
                "accepting peer regions that cannot be sealed against shrinking "
                "(allow_unsealed_regions): the peer can crash this process by truncating them"
            )
        for region in setup.regions:
            if not region.sealed:
                check_unsealed_size(region)
            maps.append(_map(region.fd, region.size))
        memory = SharedMemory(fds, maps, setup.cacheline, peer_fds=True)
        for spec in setup.s2m_rings + setup.m2s_rings:
            ring = _ring.Ring(
                memory.regions, spec.region, spec.offset, spec.log2_size, setup.cacheline
            )
            ring.check_cookie()
            ring.reset()  # both sides start from head == tail == 0 at CONNECT
            (memory.s2m if spec.s2m else memory.m2s).append(RingMemory(spec, ring))
    except (OSError, ValueError) as exc:
        _release(memory, maps, fds, peer_fds=True)
        raise PeerProtocolError(f"cannot map peer memory: {exc}") from exc
    except BaseException:
        _release(memory, maps, fds, peer_fds=True)
        raise
    return memory


def _release(
    memory: SharedMemory | None, maps: list[mmap.mmap], fds: list[int], *, peer_fds: bool = False
) -> None:
    if memory is not None:
        memory.close()
        return
    for m in maps:
        m.close()
    if peer_fds:
        _fds.close_later(fds)
        return
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
