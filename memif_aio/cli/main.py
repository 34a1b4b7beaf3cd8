"""memif-aio: try, measure and debug memif interfaces from the shell.

  memif-aio demo                         master + slave in two processes, traffic, a table
  memif-aio bench [--quick]              throughput/latency matrix vs. the C ceiling
  memif-aio bench --latency             RTT per rx mode beside the eventfd floor
  memif-aio probe SOCKET [--id N]        what a master says, and whether it accepts us
  memif-aio echo SOCKET [--role R]       send every packet back (like testpmd io)
  memif-aio responder SOCKET --ip A      answer ARP and ICMP echo (like icmp_responder)
  memif-aio ping SOCKET --ip A TARGET    ICMP echo over memif with per-reply RTT
  memif-aio capture SOCKET -w FILE       record what a peer sends, as pcapng (-w - : stdout)
  memif-aio tap SOCKET_A SOCKET_B        sit between two apps, forward and record both ways
  memif-aio replay FILE SOCKET           send a pcap/pcapng capture, keeping its timing
  memif-aio gen SOCKET --rate PPS        UDP traffic generator; loss, reordering, latency

SOCKET is a filesystem path or @name for an abstract socket (DPDK's default).
Link events (up, down, refused, with what to check) go to stderr: -q silences them, -v adds
the library's log. SIGTERM and SIGINT stop any command cleanly: DISCONNECT with a reason,
socket file removed, exit 0.
Exit codes: 0 ok, 1 failed/refused, 2 usage, 3 no master/peer, 4 timeout.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from .. import __version__
from ..errors import ConfigError, MemifError
from . import bench, capture, demo, gen, ping, probe, replay, serve
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CommandError,
    Console,
    ConsoleHandler,
    run_command,
    setup_logging,
    stop_on_sigterm,
)

COMMANDS = (demo, bench, probe, serve, ping, capture, replay, gen)


@dataclass
class Context:
    """What every command gets besides its arguments."""

    console: Console
    handler: ConsoleHandler


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="memif-aio", description=__doc__, formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"memif-aio {__version__}")
    _add_output_options(parser, argparse.SUPPRESS)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    # The same flags after the subcommand (memif-aio echo SOCK -v); unset there, the values
    # given before it stand.
    common = argparse.ArgumentParser(add_help=False)
    _add_output_options(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=f"example:\n  {example}",
            formatter_class=raw,
            parents=[common],
        )

    for module in COMMANDS:
        module.register(command)
    return parser


def _add_output_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "-v", "--verbose", action="count", default=default, help="more logging (-vv: debug)"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="only errors on stderr"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose, quiet = getattr(args, "verbose", 0), getattr(args, "quiet", False)
    console = Console(args.command, quiet=quiet)
    ctx = Context(console, setup_logging(console, verbose, quiet))
    try:
        if hasattr(args, "run_sync"):
            stop_on_sigterm()
            return args.run_sync(args, ctx)
        return run_command(args, lambda: args.run(args, ctx), console)
    except CommandError as exc:
        console.line(str(exc))
        return exc.code
    except ConfigError as exc:
        console.line(exc.reason)
        return EXIT_USAGE
    except MemifError as exc:
        console.line(exc.reason)
        return EXIT_FAILED
    except (ValueError, OSError) as exc:
        console.line(str(exc))
        return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_UNREACHABLE
    except KeyboardInterrupt:  # a synchronous command stopped by SIGINT or SIGTERM
        return EXIT_OK
    finally:
        ctx.handler.flush_repeats()


if __name__ == "__main__":
    sys.exit(main())
