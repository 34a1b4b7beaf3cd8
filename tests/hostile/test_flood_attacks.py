"""Connection floods (hostile peers, class 4).

One process holding thousands of half-open connections must not starve honest slaves: pending
handshakes are limited per peer process (``max_pending_per_peer``), and when the master is full
it evicts from the process holding most. Warnings about the refused are rate-limited, with one
line saying how many were suppressed.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap

from checks import idle_cpu, warnings
from rawpeer import PeerMemory, RawChannel, Resources, drive, slave_steps

import memif_aio
from memif_aio import LinkState

FLOOD = 2000
HONEST_ATTEMPTS = 18


async def _flooder(path: str, count: int) -> asyncio.subprocess.Process:
    """Another process keeps ``count`` connections open on which it never says a word, and
    keeps making new ones (dropping its oldest) until its stdin closes: a continuous flood."""
    address = "\0" + path[1:]
    script = textwrap.dedent(
        f"""
        import collections, select, socket, sys
        held = collections.deque()
        made = 0
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:  # blocking: waits while the backlog is full
                s.connect({address!r})
            except OSError:
                s.close()
                continue
            made += 1
            held.append(s)
            if len(held) > {count}:
                held.popleft().close()
            if made == {count}:
                print("flooding", flush=True)
            if made % 100 == 0 and select.select([sys.stdin], [], [], 0)[0]:
                break
        print("made", made, flush=True)
        """
    )
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


async def test_honest_slave_gets_through_a_flood_of_half_open_connections(memif_path, caplog):
    async with memif_aio.Socket(memif_path, handshake_timeout=30) as sock:
        iface = await sock.create_interface(id=0, role="master")
        sock.warnings.window = 3600  # one window for the whole test, however slow the machine
        before = Resources(kinds=("/memfd:", "anon_inode:", "socket:"))  # not the subprocess's
        flood = await _flooder(memif_path, FLOOD)
        assert flood.stdout is not None and flood.stdin is not None
        try:
            assert await asyncio.wait_for(flood.stdout.readline(), 30) == b"flooding\n"
            served = 0
            mem = PeerMemory()
            try:
                for _ in range(HONEST_ATTEMPTS):
                    chan = await RawChannel.connect(memif_path)
                    try:
                        assert await drive(chan, slave_steps(mem), timeout=5) is None
                        await iface.wait_connected(timeout=5)
                        served += 1
                    finally:
                        chan.close()
                    while iface.state is not LinkState.DISCONNECTED:
                        await asyncio.sleep(0.005)
            finally:
                mem.close()
            assert len(sock._pending) <= sock.max_pending_per_peer  # the flooder's share only
        finally:
            flood.stdin.close()
            made = (await asyncio.wait_for(flood.stdout.readline(), 30)).split()
            await flood.wait()
        assert made[0] == b"made"
        made = int(made[1])
        assert made > FLOOD
        assert served == HONEST_ATTEMPTS
        lines = warnings(caplog)
        assert 0 < len(lines) <= sock.warnings.burst, lines
        assert all("too many pending connections" in line for line in lines)
        await before.assert_released(timeout=10)
        assert await idle_cpu() < 0.05
    summary = warnings(caplog)[-1]
    assert "more warnings like these suppressed" in summary
    assert int(summary.split()[0]) > made / 2  # the rest were still in the backlog at close
