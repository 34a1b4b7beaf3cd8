"""Warnings about peers, rate-limited: a flood of bad peers must not become a flood of log lines.

Each :class:`~memif_aio.Socket` has one :class:`WarningLimiter`. Within a window it lets
``burst`` lines through; the rest are counted, and when the window ends one line says how many
were suppressed. Peer-supplied text must be made printable (``protocol.printable``) by the
caller before it gets here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

DEFAULT_BURST = 10
DEFAULT_WINDOW = 10.0  # seconds


class WarningLimiter:
    """``warning(msg, *args)`` on ``logger``, at most ``burst`` lines per ``window`` seconds."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = DEFAULT_BURST,
        window: float = DEFAULT_WINDOW,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.window = window
        self._window_start = -window
        self._emitted = 0
        self.suppressed = 0  # in the current window
        self.suppressed_total = 0
        self._timer: asyncio.TimerHandle | None = None

    def warning(self, msg: str, *args: object, level: int = logging.WARNING) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.window:
            self._summarise()
            self._window_start = now
            self._emitted = 0
        if self._emitted < self.burst:
            self._emitted += 1
            self.logger.log(level, msg, *args)
            return
        self.suppressed += 1
        self.suppressed_total += 1
        if self._timer is None:
            with contextlib.suppress(RuntimeError):  # no running loop: summarised on next call
                loop = asyncio.get_running_loop()
                delay = max(0.0, self._window_start + self.window - now)
                self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._summarise()

    def _summarise(self) -> None:
        if self.suppressed:
            self.logger.warning(
                "%d more warnings like these suppressed in the last %.0f s",
                self.suppressed,
                self.window,
            )
            self.suppressed = 0

    def close(self) -> None:
        """Say what was suppressed now, and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._summarise()
