"""Frame codec: exact sizes, field offsets against the wire layout, strict decode."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memif_aio import protocol as p
from memif_aio.errors import ConfigError, FrameError

SAMPLES = [
    p.Ack(),
    p.Hello("vpp", 0x0200, 0x0200, 255, 255, 255, 14),
    p.Init(0x0200, 7, p.Mode.IP, b"s3cr3t", "app"),
    p.AddRegion(1, 4194304),
    p.AddRing(p.ADD_RING_FLAG_S2M, 3, 0, 16512, 10, 0),
    p.Connect("memif0/0"),
    p.Connected("memif0"),
    p.Disconnect(1, "secret mismatch"),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_is_exactly_128_bytes(message):
    frame = p.encode(message)
    assert len(frame) == p.MESSAGE_SIZE == 128
    assert p.decode(frame) == message


def test_field_offsets_match_the_wire_layout():
    # Offsets from the fact sheet, packed little-endian after a u16 type.
    hello = p.encode(p.Hello("m", 0x0200, 0x0201, 3, 4, 5, 12))
    assert struct.unpack_from("<H", hello, 0)[0] == 2
    assert hello[2:4] == b"m\0"
    assert struct.unpack_from("<HHHHHB", hello, 34) == (0x0200, 0x0201, 3, 4, 5, 12)
    init = p.encode(p.Init(0x0200, 0xDEADBEEF, p.Mode.PUNT_INJECT, b"abc", "n"))
    assert struct.unpack_from("<HHIB", init, 0) == (3, 0x0200, 0xDEADBEEF, 2)
    assert init[9:12] == b"abc" and init[33] == ord("n")
    region = p.encode(p.AddRegion(2, 1 << 33))
    assert struct.unpack_from("<HHQ", region, 0) == (4, 2, 1 << 33)
    ring = p.encode(p.AddRing(1, 2, 1, 0x10203, 14, 0))
    assert struct.unpack_from("<HHHHIBH", ring, 0) == (5, 1, 2, 1, 0x10203, 14, 0)
    bye = p.encode(p.Disconnect(9, "why"))
    assert struct.unpack_from("<HI", bye, 0) == (8, 9) and bye[6:9] == b"why"


def test_full_string_fields_need_no_terminator():
    name = "x" * 32
    assert p.decode(p.encode(p.Connect(name))).if_name == name
    with pytest.raises(ConfigError):
        p.encode(p.Connect("x" * 33))


def test_long_disconnect_reason_is_cut_not_refused():
    assert p.decode(p.encode(p.Disconnect(0, "r" * 200))).reason == "r" * 96


@pytest.mark.parametrize("size", [0, 1, 127, 129, 256])
def test_wrong_frame_size_is_rejected(size):
    with pytest.raises(FrameError, match="expected 128"):
        p.decode(b"\x01" + bytes(size - 1) if size else b"")


@pytest.mark.parametrize("kind", [0, 9, 0xFFFF])
def test_unknown_type_is_rejected(kind):
    with pytest.raises(FrameError, match="unknown message type"):
        p.decode(struct.pack("<H", kind).ljust(128, b"\0"))


def test_unknown_mode_is_rejected():
    frame = bytearray(p.encode(p.Init()))
    frame[8] = 7
    with pytest.raises(FrameError, match="mode"):
        p.decode(bytes(frame))


def test_non_utf8_names_do_not_break_decoding():
    frame = bytearray(p.encode(p.Connect("a")))
    frame[2:6] = b"\xff\xfe\x00\x41"
    name = p.decode(bytes(frame)).if_name
    assert name.encode("utf-8", "surrogateescape") == b"\xff\xfe"


@given(st.binary(min_size=0, max_size=256))
def test_decode_raises_only_frame_error(data):
    try:
        message = p.decode(data)
    except FrameError:
        return
    assert len(data) == 128
    assert len(p.encode(message)) == 128


@given(st.integers(1, 8), st.binary(min_size=126, max_size=126))
def test_any_known_type_decodes_and_reencodes_to_a_frame(kind, body):
    frame = struct.pack("<H", kind) + body
    try:
        message = p.decode(frame)
    except FrameError:
        return  # bad mode byte in INIT
    again = p.decode(p.encode(message))
    assert again == message
