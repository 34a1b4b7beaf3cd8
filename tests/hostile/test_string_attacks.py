"""Peer strings in our logs and details() (hostile peers, class 5).

Names and DISCONNECT reasons come from the peer. Raw, a newline forges a log line of its own,
an ESC sequence rewrites the operator's terminal, and bytes that are not UTF-8 make a UTF-8
log handler drop the line. Every peer string is escaped before it is logged, raised or shown.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from checks import honest_master_serves, one_warning, wait_state
from rawpeer import (
    PeerMemory,
    RawChannel,
    RawListener,
    Step,
    drive,
    raw_frame,
    serve_as_master,
    slave_steps,
)

import memif_aio
from memif_aio import LinkState
from memif_aio import protocol as p

# A newline with a forged log line after it, a terminal escape, and bytes that are not UTF-8.
EVIL = b"ok\nWARN forged\x1b[2J\xff\xfe"  # 20 bytes: fits a 32-byte name


def _clean(text: str) -> None:
    assert "\n" not in text and "\r" not in text and "\x1b" not in text, repr(text)
    text.encode("utf-8")  # strict: a UTF-8 handler keeps the line


def _records(caplog, level=logging.INFO) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= level and r.name.startswith("memif_aio")
    ]


async def test_master_escapes_names_and_reasons(memif_path, caplog):
    caplog.set_level(logging.INFO, logger="memif_aio")
    async with memif_aio.Socket(memif_path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        mem = PeerMemory()
        steps = slave_steps(mem)
        init = bytearray(steps[0].data)
        init[33 : 33 + len(EVIL)] = EVIL  # INIT app name
        steps[0] = Step(bytes(init), (), "init")
        steps[-1] = Step(raw_frame(6, EVIL), (), "connect")  # CONNECT interface name
        chan = await RawChannel.connect(memif_path)
        try:
            assert await drive(chan, steps) is None
            await iface.wait_connected(timeout=3)
            details = iface.details()
            for text in (details.remote_name, details.remote_app_name):
                _clean(text)
                assert text.startswith("ok\\nWARN forged\\x1b[2J\\xff\\xfe")
            chan.send(raw_frame(8, b"\0\0\0\0" + EVIL))  # DISCONNECT with an evil reason
            reason = await iface.wait_disconnected()
        finally:
            chan.close()
            mem.close()
        _clean(reason)
        _clean(iface.details().last_disconnect_reason)
        lines = _records(caplog)
        assert any("forged" in line for line in lines)
        for line in lines:
            _clean(line)


async def test_master_escapes_a_refusal_reason(memif_path, caplog):
    async with memif_aio.Socket(memif_path) as sock:
        await sock.create_interface(id=0, role="master")
        chan = await RawChannel.connect(memif_path)
        try:
            await chan.expect(p.Hello)
            chan.send(raw_frame(8, b"\0\0\0\0" + EVIL))  # DISCONNECT during the handshake
            assert await chan.recv() is None
        finally:
            chan.close()
        line = await one_warning(caplog, "handshake failed", "forged")
        _clean(line)


async def test_slave_escapes_the_masters_words(memif_path, caplog):
    """A master's HELLO name and its refusal reason reach our warning line and the exception
    connect() raises: escaped both times."""
    evil_name = EVIL.decode("utf-8", "surrogateescape")
    listener = RawListener(memif_path)

    async def refuse() -> None:
        chan = await listener.accept()
        try:
            chan.send(p.Hello(evil_name))
            await chan.expect(p.Init)
            chan.send(raw_frame(8, b"\0\0\0\0" + EVIL))
            assert await chan.recv() is None
        finally:
            chan.close()

    refusing = asyncio.ensure_future(refuse())
    try:
        with pytest.raises(memif_aio.HandshakeError) as refused:
            async with memif_aio.connect(memif_path, timeout=5):
                pass
        await refusing
    finally:
        listener.close()
    _clean(str(refused.value))
    assert refused.value.reason.startswith("ok\\nWARN forged\\x1b[2J\\xff\\xfe")
    line = await one_warning(caplog, "forged")
    _clean(line)


async def test_slave_shows_an_evil_master_name_escaped(memif_path):
    listener = RawListener(memif_path)
    sock = memif_aio.Socket(memif_path, reconnect_interval=0.05)
    try:
        iface = await sock.create_interface(id=0, role="slave", ring_size=16)
        chan = await listener.accept()
        try:
            view = await serve_as_master(chan, p.Hello(EVIL.decode("utf-8", "surrogateescape")))
            await iface.wait_connected(timeout=3)
            _clean(iface.details().remote_app_name)
            view.close()
        finally:
            chan.close()
        await wait_state(iface, LinkState.CONNECTING, LinkState.DISCONNECTED)
        await honest_master_serves(listener, iface)
    finally:
        await sock.close()
        listener.close()
