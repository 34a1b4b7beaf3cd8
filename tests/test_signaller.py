"""The Signaller: eventfd writes toward the peer that never block the calling thread, with
either backend (io_uring RWF_NOWAIT, or the helper thread used where io_uring is forbidden),
whatever the peer does to the eventfd it shares with us."""

from __future__ import annotations

import fcntl
import os
import threading
import time

import pytest

from memif_aio import _ring
from memif_aio.errors import LocalProtocolError

FULL = (2**64 - 2).to_bytes(8, "little")  # an eventfd counter cannot go higher
BACKENDS = ["thread"] + (["io_uring"] if _ring.signal_backend() == "io_uring" else [])


def counter(fd: int) -> int:
    """The eventfd's counter, read (and reset) without ever sleeping."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        return int.from_bytes(os.read(fd, 8), "little")
    except BlockingIOError:
        return 0
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


def make_blocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)


def returns_promptly(call, timeout: float = 5.0) -> None:
    """``call()`` in a thread must return within ``timeout`` (it takes microseconds)."""
    done = threading.Event()

    def run() -> None:
        call()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(timeout), f"{call} blocked for {timeout} s"


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def eventfd():
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    yield fd
    os.close(fd)


def until(predicate, what: str, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting until {what}"
        time.sleep(0.001)


def test_each_signal_reaches_the_peer(backend, eventfd):
    signaller = _ring.Signaller(backend=backend)
    slot = signaller.add(eventfd)
    try:
        signaller.signal(slot)
        until(lambda: counter(eventfd) == 1, "the first signal arrived")
        for _ in range(3):
            signaller.signal(slot)
        # The helper thread may merge signals that arrive while one is pending: at least one.
        until(lambda: counter(eventfd) >= 1, "later signals arrived")
        assert signaller.signals == 4 and signaller.fault is None
    finally:
        signaller.close()


def test_a_full_counter_is_a_pending_wake_up_not_a_fault(backend, eventfd):
    os.write(eventfd, FULL)
    signaller = _ring.Signaller(backend=backend)
    slot = signaller.add(eventfd)
    try:
        returns_promptly(lambda: signaller.signal(slot))
        returns_promptly(lambda: signaller.signal(slot))
        assert signaller.fault is None and signaller.failures == 0
    finally:
        returns_promptly(signaller.close)
    assert counter(eventfd) == 2**64 - 2


def test_a_blocking_full_eventfd_never_blocks_the_caller(backend, eventfd):
    """The hostile case: the peer cleared O_NONBLOCK on the shared file and filled the counter.
    A plain write() would sleep forever. io_uring refuses at once (a fault, reported once);
    the helper thread is the one that sleeps, and close() frees it by draining the counter."""
    faults: list[str] = []
    until(lambda: helper_count() == 0, "helpers of earlier tests exited")
    signaller = _ring.Signaller(faults.append, backend=backend)
    slot = signaller.add(eventfd)
    make_blocking(eventfd)
    os.write(eventfd, FULL)
    for _ in range(3):
        returns_promptly(lambda: signaller.signal(slot))
    if backend == "io_uring":
        assert faults == ["the peer made its ring eventfd blocking"]
        assert signaller.fault == faults[0] and signaller.failures == 3
    else:
        assert faults == []  # the helper cannot tell a slow peer from a hostile one
    returns_promptly(signaller.close)
    # The helper was freed (its stalled write went through after the drain), not abandoned:
    # no thread is left behind.
    until(lambda: helper_count() == 0, "the helper exited")


def helper_count() -> int:
    """Our signal helper threads (they name themselves ``memif-signal``)."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                count += comm.read().strip() == "memif-signal"
        except FileNotFoundError:  # a thread that just exited
            pass
    return count


def test_no_helper_thread_outlives_its_signallers(eventfd):
    until(lambda: helper_count() == 0, "helpers of earlier tests exited")
    signallers = [_ring.Signaller(backend="thread") for _ in range(5)]
    for signaller in signallers:
        signaller.signal(signaller.add(eventfd))
    until(lambda: helper_count() == 5, "five helpers named themselves")
    for signaller in signallers:
        signaller.close()
    until(lambda: helper_count() == 0, "every helper exited")


def test_a_closed_signaller_refuses_politely(backend, eventfd):
    signaller = _ring.Signaller(backend=backend)
    slot = signaller.add(eventfd)
    signaller.close()
    signaller.close()  # idempotent
    with pytest.raises(LocalProtocolError):
        signaller.signal(slot)
    with pytest.raises(LocalProtocolError):
        signaller.add(eventfd)


def test_the_environment_can_force_the_helper_thread(monkeypatch):
    monkeypatch.setenv("MEMIF_AIO_SIGNAL_BACKEND", "thread")
    assert _ring.signal_backend() == "thread"
    assert _ring.Signaller().backend == "thread"
    monkeypatch.setenv("MEMIF_AIO_SIGNAL_BACKEND", "carrier-pigeon")
    with pytest.raises(ValueError, match="MEMIF_AIO_SIGNAL_BACKEND"):
        _ring.signal_backend()
