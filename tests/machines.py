"""The handshake machines as the tests drive them: fds given as plain numbers, their facts
supplied by a fake inspector, as memif_aio.link.Session does with the real one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from memif_aio import handshake as hs
from memif_aio import protocol as p


def no_fds(fd: int) -> hs.FdInfo:
    raise AssertionError(f"no fd expected, got {fd}")


class Directory:
    """A master's view of its socket's interfaces, from two plain functions."""

    def __init__(self, lookup: Callable[[int], Any], is_taken: Callable[[int], bool]) -> None:
        self.lookup, self.taken = lookup, is_taken

    def config(self, interface_id: int) -> hs.MasterInterfaceConfig | None:
        return self.lookup(interface_id)

    def is_taken(self, interface_id: int) -> bool:
        return self.taken(interface_id)


class Fed:
    """A machine whose ``receive``/``receive_frame`` take fd numbers; the facts about each
    come from ``inspect``. Everything else is the machine's."""

    def __init__(self, machine: Any, inspect: Callable[[int], hs.FdInfo] = no_fds) -> None:
        self.machine = machine
        self.inspect = inspect

    def _facts(self, fds: Sequence[int]) -> list[hs.ReceivedFd]:
        return [hs.ReceivedFd(fd, self.inspect(fd)) for fd in fds]

    def receive(self, message: p.Message, fds: Sequence[int] = ()) -> list[hs.Action]:
        return self.machine.receive(message, self._facts(fds))

    def receive_frame(self, frame: bytes, fds: Sequence[int] = ()) -> list[hs.Action]:
        return self.machine.receive_frame(frame, self._facts(fds))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.machine, name)


def master_machine(
    app_name: str,
    lookup: Callable[[int], Any],
    is_taken: Callable[[int], bool],
    inspect_fd: Callable[[int], hs.FdInfo] = no_fds,
    **options: Any,
) -> Fed:
    return Fed(hs.MasterHandshake(app_name, Directory(lookup, is_taken), **options), inspect_fd)


def slave_machine(config: hs.SlaveConfig, **options: Any) -> Fed:
    """Fds sent to a slave are refused unseen: their facts never matter."""
    return Fed(hs.SlaveHandshake(config, **options), lambda fd: hs.FdInfo("other"))
