"""Real peer processes for tests: memif_aio peers and dpdk-testpmd."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from pathlib import Path

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


_prefix_counter = 0


class DpdkTestpmd:
    """dpdk-testpmd with one net_memif port, driven through its periodic stats output."""

    def __init__(self, proc: asyncio.subprocess.Process, log: list[str]) -> None:
        self.proc = proc
        self.log = log
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(
        cls,
        binary: str,
        *,
        role: str,
        socket: str,
        id: int = 0,
        secret: str | None = None,
        forward_mode: str = "io",
        extra_vdev: str = "",
        extra_args: tuple[str, ...] = (),
        cpu: int = 0,
    ) -> DpdkTestpmd:
        global _prefix_counter
        _prefix_counter += 1
        abstract = socket.startswith("@")
        vdev = f"net_memif0,role={role},id={id},socket={socket.lstrip('@')}"
        vdev += ",socket-abstract=" + ("yes" if abstract else "no")
        if secret is not None:
            vdev += f",secret={secret}"
        vdev += extra_vdev
        args = [
            binary,
            f"--lcores=0@{cpu},1@{cpu}",
            "--no-huge",
            "-m",
            "1024",
            "--no-pci",
            "--log-level=pmd.net.memif:debug",
            f"--file-prefix=memifaio{os.getpid()}x{_prefix_counter}",
            f"--vdev={vdev}",
            "--",
            "--no-mlockall",
            "--total-num-mbufs=16384",
            f"--forward-mode={forward_mode}",
            "--stats-period",
            "1",
            *extra_args,
        ]
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(proc, [])

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.log.append(line.decode(errors="replace").rstrip())

    def output(self) -> str:
        return "\n".join(self.log)

    async def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match:
        regex = re.compile(pattern)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        seen = 0
        while loop.time() < end:
            for line in self.log[seen:]:
                if match := regex.search(line):
                    return match
            seen = len(self.log)
            if self.proc.returncode is not None and self._reader.done():
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"testpmd never printed {pattern!r}:\n" + self.output()[-3000:])

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._reader, 5)
