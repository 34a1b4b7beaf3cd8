"""What every ``memif-aio`` subcommand shares: exit codes, output, logging, signals, and the
one way the commands open an interface.

Output: results go to stdout; link events (up, down, refused), warnings and the one-line error
go to stderr, each prefixed ``memif-aio COMMAND:``. ``-q`` keeps only the error line, ``-v``
adds the library's INFO lines, ``-vv`` its DEBUG lines.

Signals: SIGTERM (systemd, docker) and SIGINT (Ctrl-C) first close what the command opened
(``closes_on_signal``), so every peer's DISCONNECT says ``memif-aio COMMAND stopped (SIGTERM)``
and the socket files we created are removed; then the command is cancelled (its ``async
with`` blocks find everything closed) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from .. import handshake as hs
from ..errors import DisconnectedError, HandshakeError, HandshakeTimeout, MemifError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TIMEOUT = 0, 1, 2, 3, 4
LIBRARY_LOGGER = "memif_aio"


class CommandError(Exception):
    """A failure the command reports as one line on stderr, with an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def say(text: str = "") -> None:
    """A result line on stdout."""
    print(text, flush=True)


# ------------------------------------------------------------------------------ refusal hints

# What to check for each refusal reason: ours (handshake.py's constants) and the strings
# libmemif and DPDK send in DISCONNECT (seen from libmemif's socket.h and DPDK 22.11), matched
# without case; a reason with details appended ("ring index beyond limit: s2m 1") matches by
# its leading words.
_SECRET = "both sides need the same --secret"
_ID = "the master has no interface with this --id"
REFUSAL_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    ((hs.SECRET_MISMATCH, "incorrect secret", "secret required"), _SECRET),
    ((hs.UNKNOWN_ID, "unmatched interface id", "id not found"), _ID),
    (
        (hs.ALREADY_CONNECTED, "already connected"),
        "another slave holds this id: stop it or use another --id",
    ),
    ((hs.MODE_MISMATCH,), "both sides need the same mode (ethernet, ip, punt/inject)"),
    ((hs.VERSION_MISMATCH,), "the peer speaks another memif protocol version (2.0 here)"),
    ((hs.RING_LIMIT,), "the slave asks for more queues than the master accepts: check --queues"),
    (
        (hs.REGION_NOT_SEALABLE,),
        "a DPDK zero-copy client? --allow-unsealed-regions, for a trusted peer only",
    ),
    ((hs.TIMEOUT,), "the peer stopped answering in the middle of the handshake"),
    (
        (hs.PEER_CLOSED,),
        "the master closed without a reason: libmemif does that for an unknown --id or more "
        "--queues than it has (memif-aio probe SOCKET --id N shows its answer)",
    ),
)


def hint(reason: str) -> str | None:
    """What to check for a refusal ``reason`` (ours or a peer's), or None."""
    folded = reason.lower()
    for reasons, text in REFUSAL_HINTS:
        for known in reasons:
            if folded == known or folded.startswith((known + ":", known + " ")):
                return text
    return None


def with_hint(reason: str) -> str:
    text = hint(reason)
    return f"{reason} (check: {text})" if text else reason


# ---------------------------------------------------------------------------------- console


class Console:
    """stderr lines of one command: link events, progress, and the library's log records."""

    def __init__(self, command: str, quiet: bool = False) -> None:
        self.prefix = f"memif-aio {command}: "
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._live = False  # a \r progress line is showing
        # "{socket} id {id}" of our slave interfaces: how the library labels their sessions.
        self.slave_labels: set[str] = set()

    def event(self, text: str) -> None:
        """A link event or status line (silenced by -q)."""
        if not self.quiet:
            self.line(text)

    def line(self, text: str) -> None:
        if self._live:
            sys.stderr.write("\r\033[K")
            self._live = False
        sys.stderr.write(self.prefix + text + "\n")
        sys.stderr.flush()

    def progress(self, text: str) -> None:
        """A live counter: rewritten in place on a terminal, a plain line otherwise."""
        if self.quiet:
            return
        if self.tty:
            sys.stderr.write("\r\033[K" + self.prefix + text)
            sys.stderr.flush()
            self._live = True
        else:
            self.line(text)


class ConsoleHandler(logging.Handler):
    """The library's log records as console lines. Refusals get what to check; a refusal
    logged at INFO (a master that closed without a reason mid-handshake) is shown like a
    warning. Identical lines in a row (a slave retrying every 2 s) are counted, not repeated:
    one summary line at most a minute, and when something else is said."""

    REPEAT_EVERY = 60.0

    def __init__(self, console: Console, level: int) -> None:
        super().__init__(logging.DEBUG)
        self.console = console
        self.show_level = level
        self.mute_refusals = False  # a fail-fast open reports the refusal as its error
        self._last = ""
        self._repeats = 0
        self._summarised = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            args = record.args if isinstance(record.args, tuple) else ()
            reason = next((a for a in args if isinstance(a, str) and hint(a)), None)
            level = record.levelno
            if reason == hs.PEER_CLOSED:
                # A master that closes mid-handshake refuses silently (libmemif): say so. A
                # slave that leaves a master mid-handshake is no refusal: as logged.
                if args[0] in self.console.slave_labels and "handshake failed" in args:
                    level = max(level, logging.WARNING)
                else:
                    reason = None
            if level < self.show_level:
                return
            if reason is not None and self.mute_refusals:
                return
            text = record.getMessage()
            if reason is not None:
                text = f"{text} (check: {hint(reason)})"
            if record.levelno <= logging.DEBUG:
                text = f"{record.name}: {text}"
            self._say(text)
        except Exception:  # a log line must never break the command
            self.handleError(record)

    def _say(self, text: str) -> None:
        now = time.monotonic()
        if text == self._last:
            self._repeats += 1
            if now - self._summarised >= self.REPEAT_EVERY:
                self.flush_repeats()
            return
        self.flush_repeats()
        self._last = text
        self._summarised = now
        self.console.line(text)

    def flush_repeats(self) -> None:
        if self._repeats:
            self.console.line(f"(last line repeated {self._repeats} more times)")
            self._repeats = 0
            self._summarised = time.monotonic()


def setup_logging(console: Console, verbose: int, quiet: bool) -> ConsoleHandler:
    """Route the library's logger to the console: warnings by default, nothing below
    errors with -q, INFO with -v, DEBUG with -vv (asyncio's too)."""
    if quiet:
        level = logging.ERROR
    else:
        level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = ConsoleHandler(console, level)
    for name in (LIBRARY_LOGGER, "asyncio"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        # INFO records are looked at even when not shown: a refusal may be logged at INFO.
        logger.setLevel(min(level, logging.INFO) if name == LIBRARY_LOGGER else level)
    return handler


# ---------------------------------------------------------------------------------- signals


class _Closable(Protocol):
    async def close(self, *, reason: str) -> None: ...


_Opened = TypeVar("_Opened", bound=_Closable)
# What a signal closes (with its reason) before the command is cancelled: Sockets and
# Interfaces the command opened, forgotten as soon as nothing else holds them.
_closes_on_signal: weakref.WeakSet[Any] = weakref.WeakSet()


def closes_on_signal(opened: _Opened) -> _Opened:
    """Register a Socket or Interface to be closed, with the signal as the reason, on SIGTERM."""
    _closes_on_signal.add(opened)
    return opened


def run_command(
    args: argparse.Namespace,
    command: Callable[[], Awaitable[int]],
    console: Console | None = None,
) -> int:
    """Run an async command on the chosen loop; SIGTERM/SIGINT stop it cleanly (exit 0)."""
    from .. import run

    name = f"memif-aio {getattr(args, 'command', None) or 'command'}"
    return run(_supervised(command, console, name), use_uvloop=args.uvloop)


async def _supervised(
    command: Callable[[], Awaitable[int]], console: Console | None, name: str = "memif-aio"
) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(command())
    signalled: list[int] = []
    closing: list[asyncio.Task[None]] = []

    async def close_then_cancel(reason: str) -> None:
        try:
            opened = list(_closes_on_signal)
            await asyncio.gather(
                *(item.close(reason=reason) for item in opened), return_exceptions=True
            )
        finally:
            task.cancel()

    def stop(signum: int) -> None:
        # A second signal interrupts the clean-up too.
        if signalled:
            task.cancel()
            return
        signame = signal.Signals(signum).name
        if console is not None:
            console.event(f"stopping on {signame}")
        signalled.append(signum)
        closing.append(loop.create_task(close_then_cancel(f"{name} stopped ({signame})")))

    installed = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(signum, stop, signum)
            installed.append(signum)
    try:
        return await task
    except asyncio.CancelledError:
        if signalled:
            return EXIT_OK
        raise
    except (CommandError, MemifError):
        # After a signal our own close ends the link under the command: not a failure.
        if signalled:
            return EXIT_OK
        raise
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        await asyncio.gather(*closing, return_exceptions=True)


def stop_on_sigterm() -> None:
    """For the synchronous commands (demo, bench): SIGTERM unwinds like Ctrl-C."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


# ------------------------------------------------------------------------------ interfaces


SLAVE_TIMEOUT = 5.0  # seconds a one-shot command waits for its master by default
BY_ROLE = "by role"  # --timeout default: SLAVE_TIMEOUT as slave, no limit as master


def add_peer_options(
    parser: argparse.ArgumentParser,
    role: str | None = None,
    *,
    socket_help: str = "socket path, or @name for an abstract socket",
    queues: bool = False,
    timeout: float | str | None = 5.0,
) -> None:
    parser.add_argument("socket", help=socket_help)
    add_interface_options(parser, role, queues=queues, timeout=timeout)


def add_interface_options(
    parser: argparse.ArgumentParser,
    role: str | None = None,
    *,
    queues: bool = False,
    timeout: float | str | None = 5.0,
) -> None:
    parser.add_argument("--id", type=int, default=0, help="interface id (default 0)")
    parser.add_argument("--secret", help="interface secret (up to 24 bytes)")
    if timeout == BY_ROLE:
        parser.add_argument(
            "--timeout",
            type=float,
            help=f"seconds to wait for the link (default {SLAVE_TIMEOUT:g} as slave, no limit "
            "as master)",
        )
    elif timeout is not None:
        parser.add_argument(
            "--timeout",
            type=float,
            default=timeout,
            help=f"seconds to wait for the link (default {timeout:g})",
        )
    if role is not None:
        parser.add_argument(
            "--role", choices=("master", "slave"), default=role, help=f"our role (default {role})"
        )
        parser.add_argument(
            "--dpdk-workaround",
            choices=("auto", "on", "off"),
            help="slave: defend the rx rings against DPDK's transmit off-by-one (default "
            "auto: when the master is DPDK; see README, Interop notes)",
        )
    if queues:
        parser.add_argument(
            "--queues", type=int, default=1, help="queue pairs (slave: asks; master: accepts)"
        )
        parser.add_argument(
            "--ring-size",
            type=int,
            help="slots per ring, a power of two up to 16384 (slave: asks; default 1024); "
            "a larger ring rides out longer pauses of a busy machine",
        )


def interface_options(args: argparse.Namespace) -> dict[str, Any]:
    """Interface options from the common flags (unset ones left to the library)."""
    options = {
        "id": args.id,
        "secret": args.secret,
        "dpdk_workaround": getattr(args, "dpdk_workaround", None),
        "app_name": f"memif-aio {args.command}",
    }
    queues = getattr(args, "queues", None)
    if queues is not None:
        options["rx_queues"] = options["tx_queues"] = queues
    options["ring_size"] = getattr(args, "ring_size", None)
    if getattr(args, "allow_unsealed_regions", False):
        options["allow_unsealed_regions"] = True
    return {k: v for k, v in options.items() if v is not None}


@contextlib.asynccontextmanager
async def open_peer(
    args: argparse.Namespace, role: str, handler: ConsoleHandler | None = None, **extra: Any
) -> AsyncIterator[Any]:
    """The interface of a one-shot command (ping, gen, replay), connected: a slave gives up at
    the first refusal, either role after ``--timeout``. Failures become CommandError: refused
    exit 1, nobody listening exit 3, timeout exit 4."""
    from .. import open_interface

    fail_fast = role == "slave"
    timeout = getattr(args, "timeout", None)
    if timeout is None and fail_fast:
        timeout = SLAVE_TIMEOUT
    options = {**interface_options(args), **extra}
    async with contextlib.AsyncExitStack() as stack:
        if handler is not None and fail_fast:
            handler.mute_refusals = True  # the error line below says it, with the hint
        try:
            iface = await stack.enter_async_context(
                open_interface(
                    args.socket, role=role, timeout=timeout, fail_fast=fail_fast, **options
                )
            )
            closes_on_signal(iface)
        except HandshakeError as exc:
            raise CommandError(f"{args.socket}: refused: {with_hint(exc.reason)}") from None
        except HandshakeTimeout as exc:
            code = EXIT_UNREACHABLE if exc.unreachable else EXIT_TIMEOUT
            # "not connected after 5.0s (<the last attempt's reason>)"
            last = exc.reason.rpartition("(")[2].rstrip(")")
            what = hint(last)
            message = f"{exc.reason} (check: {what})" if what else exc.reason
            raise CommandError(f"{args.socket}: {message}", code) from None
        except OSError as exc:  # e.g. a master's socket address in use
            raise CommandError(f"{args.socket}: {exc.strerror or exc}", EXIT_UNREACHABLE) from None
        finally:
            if handler is not None:
                handler.mute_refusals = False
        yield iface


def describe_link(iface: Any) -> str:
    """``peer 'x' (app 'y'), 1 rx + 1 tx queues, ring 1024, buffers 2048 B``"""
    d = iface.details()
    rx, tx = d.rx_queues, d.tx_queues
    ring = rx[0].ring_size if rx else (tx[0].ring_size if tx else 0)
    buffers = (
        f"buffers {d.rx_queues[0].buffer_size} B"
        if rx and rx[0].buffer_size
        else ("buffers of the slave's size")
    )
    return (
        f"peer {d.remote_name!r} (app {d.remote_app_name!r}), {len(rx)} rx + {len(tx)} tx "
        f"queues, ring {ring}, {buffers}"
    )


def label(iface: Any) -> str:
    return f"{iface.socket_path} id {iface.id} ({iface.role.value})"


async def watch_link(iface: Any, console: Console) -> None:
    """One line per link event of ``iface`` until it is closed: link up (peer name, app,
    queues, ring, buffers), link down (reason); a slave that finds nobody listening says
    so once. Refusals come from the library's log (ConsoleHandler)."""
    try:
        if iface.role.value == "slave":
            try:
                await iface.wait_connected(1.0)
            except HandshakeTimeout as exc:
                if exc.unreachable:
                    console.event(
                        f"waiting for a master at {iface.socket_path}: "
                        f"{iface.last_disconnect_reason} (retrying)"
                    )
            except HandshakeError:
                pass  # logged by the library, with a hint
        while True:
            await iface.wait_connected()
            console.event(f"link up: {label(iface)}: {describe_link(iface)}")
            reason = await iface.wait_disconnected()
            console.event(f"link down: {label(iface)}: {reason}")
    except (DisconnectedError, MemifError):
        return  # the interface was closed


@contextlib.asynccontextmanager
async def in_background(work: Awaitable[None]) -> AsyncIterator[None]:
    """Run ``work`` as a task while the block runs; cancel it (and wait) on the way out."""
    task = asyncio.ensure_future(work)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def watching(iface: Any, console: Console) -> AsyncIterator[None]:
    if iface.role.value == "slave":
        console.slave_labels.add(f"{iface.socket_path} id {iface.id}")
    async with in_background(watch_link(iface, console)):
        yield


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM a ``memif-aio`` child (it says goodbye to its peers and exits 0); kill it if it
    has not gone after ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Progress:
    """One live line on a stdout terminal; a plain line every 2 s otherwise (logs, CI)."""

    def __init__(self, quiet: bool = False) -> None:
        self.tty = sys.stdout.isatty()
        self.quiet = quiet
        self._last = 0.0

    def update(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stdout.write("\r\033[K" + text)
            sys.stdout.flush()
        elif time.monotonic() - self._last > 2:
            self._last = time.monotonic()
            say("  " + text)

    def done(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stdout.write("\r\033[K")
        say(text)
