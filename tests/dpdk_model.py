"""A model of DPDK ``net_memif``'s copy-mode transmit toward a slave (the server filling the
M2S ring), written from how ``eth_memif_tx`` behaves in DPDK 19.08 to 25.11 (its slow path;
the only path before 23.03). It lets unit tests put exactly DPDK's writes into our rings.

What it reproduces (README "Interop notes"):

- ``free = head - tail`` is computed once per burst, and a packet moves on to the next
  descriptor while ``free`` is non-zero, counting the slot it is leaving: at ``free == 1`` it
  steps onto ``desc[head]``, a slot it was never given, and takes that descriptor's length as
  its capacity (read as a u16).
- A packet that ends in that slot decrements ``free`` past zero (u16: 65535): the rest of the
  burst is written beyond head, and tail is published beyond head.
- A packet that needs more than that is dropped (tail stays where the packet started), after
  its bytes were copied into every slot it visited; each slot it left keeps ``NEXT``, and the
  first slot of a packet never has its flags cleared (``stale_flags``), only slots stepped onto.
  DPDK >= 26.03 (and 23.11.7, 24.11.5, 25.11.1) clears them: ``stale_flags=False``.
"""

from __future__ import annotations

NEXT = 1


class DpdkServerTx:
    """Transmit on ``ring`` (a ``Ring`` mapped by the master side) into buffers in ``regions``
    (the master's mappings, by region index), as DPDK's server does."""

    def __init__(self, ring, regions, *, stale_flags: bool = True) -> None:
        self.ring = ring
        self.regions = regions
        self.stale_flags = stale_flags
        self.sent = 0
        self.dropped = 0  # what testpmd's io forwarding counts as TX-dropped

    def _copy(self, desc: list[int], at: int, data: bytes) -> None:
        region, offset = desc[1], desc[3]
        start = offset + at
        mem = self.regions[region]
        if start + len(data) > len(mem):
            raise ValueError(f"DPDK would write beyond region {region} (and crash)")
        mem[start : start + len(data)] = data

    def tx_burst(self, packets: list[bytes]) -> int:
        """Send what fits, in order; the first packet that does not fit and all after it are
        dropped (returns how many went)."""
        ring = self.ring
        mask = ring.size - 1
        slot = ring.tail
        free = (ring.head - slot) & 0xFFFF
        sent = 0
        for packet in packets:
            if free == 0:
                break
            start = slot
            desc = list(ring.descriptor(slot & mask))
            if not self.stale_flags:
                desc[0] = 0
            capacity = desc[2] & 0xFFFF
            filled = 0
            done = 0
            dropped = False
            while done < len(packet):
                if capacity == 0:
                    if free == 0:
                        dropped = True
                        break
                    desc[0] = (desc[0] | NEXT) if self.stale_flags else NEXT
                    ring.set_descriptor(slot & mask, *desc)
                    slot = (slot + 1) & 0xFFFF
                    free -= 1
                    desc = list(ring.descriptor(slot & mask))
                    desc[0] = 0
                    capacity = desc[2] & 0xFFFF
                    filled = 0
                take = min(capacity, len(packet) - done)
                self._copy(desc, filled, packet[done : done + take])
                done += take
                filled = (filled + take) & 0xFFFF
                capacity -= take
                desc[2] = filled
                ring.set_descriptor(slot & mask, *desc)
            if dropped:
                slot = start
                break
            ring.set_descriptor(slot & mask, *desc)
            sent += 1
            slot = (slot + 1) & 0xFFFF
            free = (free - 1) & 0xFFFF
        ring.tail = slot
        self.sent += sent
        self.dropped += len(packets) - sent
        return sent
