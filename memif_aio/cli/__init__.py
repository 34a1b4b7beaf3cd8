"""The ``memif-aio`` command: tools built on the library (they import it, never the reverse)."""

from .main import main

__all__ = ["main"]
