"""Run DPDK's ``dpdk-testpmd`` with one ``net_memif`` port as a real peer (benchmarks, tests).

Invocation facts from shared/INTEROP.md: two lcores mapped onto one CPU, no hugepages, a
16 384-mbuf pool, a unique ``--file-prefix`` per instance, abstract sockets by default.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import threading
import time
import uuid

FORWARDING = r"Logical Core \d+ \(socket \d+\) forwards packets"  # cores being launched
LINK_UP = r"memif_connect\(\): Connected"  # the PMD's own word that its link is up


def find_testpmd() -> str | None:
    return shutil.which("dpdk-testpmd")


def unix_socket_listening(path: str) -> bool:
    """Whether a Unix socket is listening on ``path`` (``@name`` for an abstract one), as
    /proc/net/unix says: the path column, and the SO_ACCEPTCON bit (0x10000) in the flags."""
    with open("/proc/net/unix") as table:
        next(table)
        for line in table:
            fields = line.rstrip("\n").split(None, 7)
            if len(fields) == 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                return True
    return False


class Testpmd:
    __test__ = False  # not a pytest test class despite the name

    """``dpdk-testpmd`` in a subprocess; its output is collected by a thread."""

    def __init__(
        self,
        *,
        role: str,
        socket: str,
        forward_mode: str = "io",
        id: int = 0,
        secret: str | None = None,
        txpkts: int | None = None,
        cpu: int = 0,
        extra_args: tuple[str, ...] = (),
        zero_copy: bool = False,
    ) -> None:
        binary = find_testpmd()
        if binary is None:
            raise FileNotFoundError("dpdk-testpmd not found (Debian package dpdk-dev)")
        self.socket = socket
        abstract = socket.startswith("@")
        vdev = f"net_memif0,role={role},id={id},socket={socket.lstrip('@')}"
        vdev += ",socket-abstract=" + ("yes" if abstract else "no")
        if secret is not None:
            vdev += f",secret={secret}"
        # Zero-copy (client only) shares DPDK's own mbuf memory, which must then be one file.
        zero_copy_args = ["--single-file-segments"] if zero_copy else []
        if zero_copy:
            vdev += ",zero-copy=yes"
        args = [
            binary,
            f"--lcores=0@{cpu},1@{cpu}",
            "--no-huge",
            "-m",
            "1024",
            "--no-pci",
            "--log-level=pmd.net.memif:debug",
            f"--file-prefix=memifaio{uuid.uuid4().hex[:10]}",
            *zero_copy_args,
            f"--vdev={vdev}",
            "--",
            "--no-mlockall",
            "--total-num-mbufs=16384",
            f"--forward-mode={forward_mode}",
            "--stats-period",
            "1",
            *extra_args,
        ]
        if txpkts is not None:
            args.append(f"--txpkts={txpkts}")
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        regex = re.compile(pattern)
        end = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if match := regex.search(line):
                    return match
            seen = len(self.lines)
            if time.monotonic() > end or self.proc.poll() is not None:
                raise TimeoutError(f"testpmd never printed {pattern!r}:\n{self.output()[-2000:]}")
            time.sleep(0.02)

    def wait_listening(self, timeout: float = 20.0) -> None:
        """Return once a server (role=server) accepts connections and forwards packets.

        The PMD listens from its probe on, long before testpmd forwards: a packet that
        arrives in between is taken off the ring and lost. So: the line announcing the
        forwarding cores (printed as they are launched; a handshake takes longer), then the
        kernel's word that the socket listens.
        """
        end = time.monotonic() + timeout
        self.wait_for(FORWARDING, timeout)
        while not unix_socket_listening(self.socket):
            if time.monotonic() > end or self.proc.poll() is not None:
                raise TimeoutError(f"testpmd never listened on {self.socket}")
            time.sleep(0.005)

    def rate(self, key: str = "Rx-pps", seconds: float = 2.0) -> float:
        """Median of testpmd's per-second ``key`` (``Rx-pps``/``Tx-pps``) over ``seconds``."""
        start = len(self.lines)
        time.sleep(seconds)
        values = [
            int(m.group(1))
            for line in self.lines[start:]
            if (m := re.search(rf"{key}:\s+(\d+)", line))
        ]
        return float(statistics.median(values)) if values else 0.0

    def forward_stats(self) -> dict[str, int]:
        """testpmd's accumulated forward statistics, printed when it stops (after :meth:`stop`):
        ``rx_packets``, ``rx_dropped``, ``tx_packets``, ``tx_dropped``. In ``io`` forwarding,
        ``tx_dropped`` counts the received packets its transmit did not take (freed, lost).

        The memif PMD zeroes its packet counters when its link goes down, so stop testpmd
        while the link is up for the packet counts; ``tx_dropped`` is testpmd's own and stays.
        """
        text = self.output()
        at = text.rfind("Accumulated forward statistics")
        if at < 0:
            raise ValueError("testpmd printed no forward statistics (not stopped yet?)")
        stats = {}
        for key in ("RX-packets", "RX-dropped", "TX-packets", "TX-dropped"):
            match = re.search(rf"{key}:\s+(\d+)", text[at:])
            if match is None:
                raise ValueError(f"no {key} in testpmd's forward statistics")
            stats[key.lower().replace("-", "_")] = int(match.group(1))
        return stats

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)

    def __enter__(self) -> Testpmd:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
