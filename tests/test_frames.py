"""memif_aio.frames over an in-process link: sequence number in every descriptor's metadata and
in the trailer, gaps, wraparound of the 32-bit part, and frames that must be refused."""

from __future__ import annotations

import asyncio
import struct
import zlib

import numpy as np
import pytest
from test_ring import Link

from memif_aio import _ring
from memif_aio.frames import TRAILER, FrameDataError, FrameReceiver, FrameSender, yuv420_size
from memif_aio.interrupts import InterruptSet
from memif_aio.queues import RxQueue, TxQueue

SIZE = yuv420_size(64, 48)  # 4608 bytes: 5 descriptors of 1 KiB with the trailer


@pytest.fixture(params=["slave-sends", "master-sends"])
async def frame_link(request):
    link = Link(_ring, log2=6, buffer_size=1024, eventfds=True)
    interrupts = InterruptSet(asyncio.get_running_loop())
    errors: list = []
    if request.param == "slave-sends":
        txq = TxQueue(0, link.stx, errors.append)
        rxq = RxQueue(0, link.mrx, link.efds[0], interrupts, errors.append)
        ring = link.s_s2m
    else:
        txq = TxQueue(0, link.mtx, errors.append)
        rxq = RxQueue(0, link.srx, link.efds[1], interrupts, errors.append)
        ring = link.s_m2s
    yield txq, rxq, ring
    rxq._close("done")
    txq._close("done")
    interrupts.close()
    link.close()
    assert not errors


def _frame(n: int) -> np.ndarray:
    return np.frombuffer(bytes([n % 251]) * SIZE, np.uint8)


async def test_seq_rides_in_every_descriptor_and_the_trailer(frame_link):
    txq, rxq, ring = frame_link
    sender, receiver = FrameSender(txq, SIZE), FrameReceiver(rxq, SIZE)
    for n in range(3):
        assert await sender.send(_frame(n)) == n
    txq.flush()
    descriptors = [ring.descriptor(slot) for slot in range(15)]
    assert [d[4] for d in descriptors] == [0] * 5 + [1] * 5 + [2] * 5
    assert [d[0] & _ring.DESC_FLAG_NEXT for d in descriptors[:5]] == [1, 1, 1, 1, 0]
    for n in range(3):
        frame = await receiver.recv()
        assert (frame.seq, frame.missing_before) == (n, 0)
        assert bytes(frame.data) == _frame(n).tobytes()
        assert frame.latency_ns >= 0
    assert receiver.frames == 3 and receiver.missing == 0


async def test_gap_and_the_32_bit_wrap_of_the_metadata(frame_link):
    txq, rxq, ring = frame_link
    sender, receiver = FrameSender(txq, SIZE), FrameReceiver(rxq, SIZE)
    sender.seq = 2**32 - 1
    await sender.send(_frame(0))
    await sender.send(_frame(1))  # seq 2**32: metadata wraps to 0, the trailer does not
    sender.seq += 4  # four frames lost
    await sender.send(_frame(2))
    txq.flush()
    assert [ring.descriptor(slot)[4] for slot in (0, 5, 10)] == [0xFFFFFFFF, 0, 5]
    got = [await receiver.recv() for _ in range(3)]
    assert [(f.seq, f.missing_before) for f in got] == [
        (2**32 - 1, 0),
        (2**32, 0),
        (2**32 + 5, 4),
    ]
    assert receiver.missing == 4


def _raw_frame(seq: int, *, magic=b"MFRM", crc=None) -> bytes:
    payload = bytes(range(256)) * 4
    crc = zlib.crc32(payload) if crc is None else crc
    return payload + TRAILER.pack(magic, crc, seq, 1)


@pytest.mark.parametrize(
    ("packet", "metadata", "error"),
    [
        (_raw_frame(7), 8, "frame 7: descriptor metadata 8 does not match the trailer"),
        (_raw_frame(7, magic=b"XXXX"), 7, "bad trailer magic"),
        (_raw_frame(7, crc=1), 7, "frame 7: checksum mismatch"),
        (b"short", 0, "no frame trailer"),
        (bytes(SIZE + TRAILER.size + 1), 0, "larger than max_frame_size"),
    ],
)
async def test_frames_that_are_refused(frame_link, packet, metadata, error):
    txq, rxq, _ = frame_link
    receiver = FrameReceiver(rxq, SIZE)
    await txq.send(packet, metadata=metadata)
    txq.flush()
    with pytest.raises(FrameDataError, match=error):
        await receiver.recv()
    assert receiver.frames == 0
    # The bad packet's buffers went back to the ring: the next good frame arrives.
    await FrameSender(txq, SIZE).send(_frame(1))
    assert (await receiver.recv()).seq == 0


async def test_metadata_0_means_not_carried(frame_link):
    """A hop that drops descriptor metadata (DPDK's net_memif) leaves 0: the trailer counts."""
    txq, rxq, _ = frame_link
    receiver = FrameReceiver(rxq, SIZE)
    await txq.send(_raw_frame(7), metadata=0)
    txq.flush()
    frame = await receiver.recv()
    assert frame.seq == 7 and bytes(frame.data) == _raw_frame(7)[:-24]


def test_trailer_layout():
    assert TRAILER.size == 24 and TRAILER.format == "<4sIQQ"
    assert struct.unpack("<4sIQQ", _raw_frame(2**40)[-24:])[2] == 2**40
