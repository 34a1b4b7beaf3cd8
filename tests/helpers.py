"""Real peer processes for tests: memif_aio peers and dpdk-testpmd."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import sys
import time
from pathlib import Path

from memif_aio.testing.testpmd import Testpmd

PEER_SCRIPT = Path(__file__).with_name("peer_process.py")


class PeerProcess:
    """tests/peer_process.py in a subprocess; ``expect(event)`` reads its JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str) -> PeerProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(PEER_SCRIPT),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        peer = cls(proc)
        await peer.expect("ready")
        return peer

    async def expect(self, event: str, timeout: float = 15.0) -> dict:
        async def read() -> dict:
            assert self.proc.stdout is not None
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"peer exited before {event!r}")
                record = json.loads(line)
                if record["event"] == event:
                    return record

        return await asyncio.wait_for(read(), timeout)

    async def stop(self) -> int:
        """Close stdin (a clean shutdown) and wait; kill if it hangs."""
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()


class DpdkTestpmd:
    """memif_aio.testing.testpmd.Testpmd for async tests: waits run in a thread, off the loop."""

    def __init__(self, pmd: Testpmd) -> None:
        self.pmd = pmd

    @classmethod
    async def start(cls, binary: str, **options) -> DpdkTestpmd:
        # ``binary`` comes from the testpmd_bin fixture, which fails under CI when missing.
        assert binary
        return cls(await asyncio.to_thread(Testpmd, **options))

    def output(self) -> str:
        return self.pmd.output()

    async def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match:
        try:
            return await asyncio.to_thread(self.pmd.wait_for, pattern, timeout)
        except TimeoutError as exc:
            raise AssertionError(str(exc)) from None

    async def wait_listening(self, timeout: float = 20.0) -> None:
        try:
            await asyncio.to_thread(self.pmd.wait_listening, timeout)
        except TimeoutError as exc:
            raise AssertionError(str(exc)) from None

    async def stop(self) -> None:
        await asyncio.to_thread(self.pmd.stop)

    def forward_stats(self) -> dict[str, int]:
        """After stop(): testpmd's accumulated forward statistics (Testpmd.forward_stats)."""
        return self.pmd.forward_stats()


def open_fds() -> set[int]:
    """Our open fds. The listing holds one of its own (the lowest free number at the time),
    closed by the time it returns: only fds still open afterwards count."""
    return {fd for fd in map(int, os.listdir("/proc/self/fd")) if _is_open(fd)}


def _is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


async def until_stopped(pid: int, timeout: float = 5.0) -> None:
    """Wait until process ``pid`` is stopped (state T in /proc/PID/stat) after a SIGSTOP."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t"):
            return
        if loop.time() > end:
            raise AssertionError(f"process {pid} still in state {state} after SIGSTOP")
        await asyncio.sleep(0.001)


def wait_peer_fds_closed(timeout: float = 5.0) -> None:
    """fds received from a peer are closed off the loop (memif_aio.fds.close_later): wait for
    the closer threads before comparing fd tables."""
    from memif_aio import fds

    end = time.monotonic() + timeout
    while fds.closing_pending() and time.monotonic() < end:
        time.sleep(0.005)
    assert not fds.closing_pending(), f"{fds.closing_pending()} peer fds still open"


async def peer_fds_closed(timeout: float = 5.0) -> None:
    await asyncio.to_thread(wait_peer_fds_closed, timeout)
