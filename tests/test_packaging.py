"""The package as a distribution: entry points and what it imports (the wheel itself is checked
from outside the tree by tests/smoke/run.sh, in CI)."""

from __future__ import annotations

import subprocess
import sys

import memif_aio
from smoke.check_installed import WITHOUT_UVLOOP


def test_imports_and_runs_without_uvloop():
    # uvloop is a dependency, but one that is imported only when asked for (run(use_uvloop=True)).
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_UVLOOP], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "a packet moves on asyncio's loop" in done.stdout


def test_python_dash_m_prints_the_version():
    done = subprocess.run(
        [sys.executable, "-m", "memif_aio", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"memif-aio {memif_aio.__version__}"
