"""The fuzzers of fuzz.py for a bounded time in CI: ``MEMIF_FUZZ_SECONDS`` per target (default
2; ``MEMIF_FUZZ_SEED`` replays a failure). Long runs: ``python tests/hostile/fuzz.py``."""

from __future__ import annotations

import os
import random

import pytest
from fuzz import TARGETS


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz(target):
    seconds = float(os.environ.get("MEMIF_FUZZ_SECONDS", "2"))
    seed = int(os.environ.get("MEMIF_FUZZ_SEED", random.randrange(1 << 32)))
    print(f"fuzz {target}: seed {seed}")
    assert TARGETS[target](seconds, seed) > 0
