"""Video-sized frames between services on one node, in the manner of Media Communications
Mesh's memif sharing.

A frame travels as ONE memif packet spread over chained buffers (``NEXT``), followed by a
24-byte trailer: ``magic "MFRM" | crc32 | seq u64 | timestamp_ns u64`` (little-endian). Every
descriptor of the frame also carries the low 32 bits of ``seq`` in its ``metadata`` word, so a
consumer can tell which frame a buffer belongs to without reading the payload; the trailer holds
what 32 bits cannot: the full 64-bit sequence number and the nanosecond timestamp. The receiver
checks that the two agree; metadata 0 means "not carried" (a hop such as DPDK's net_memif does
not forward it), and then only the trailer counts. ``timestamp_ns`` is CLOCK_MONOTONIC, which
both ends share on one host, so the receiver can measure latency.

Size the interface for it: a 1920x1080 YUV420 frame (3 110 400 bytes) needs 48 buffers of
64 KiB or 1 519 of 2 KiB, and the ring must hold at least one whole frame
(``buffer_size=65536`` with the default 1024-slot ring works). Both ends must also accept such
a packet: ``max_packet_size=frame_packet_size(max_frame_size)`` (the default bound is 64 KiB).
"""

from __future__ import annotations

import struct
import time
import zlib
from collections import deque
from dataclasses import dataclass

import numpy as np

from .errors import DisconnectedError, MemifError
from .queues import RxQueue, TxQueue

TRAILER = struct.Struct("<4sIQQ")
SEQ_METADATA_MASK = 0xFFFFFFFF  # the part of seq that fits in a descriptor's metadata
MAGIC = b"MFRM"
YUV420_1080P = 1920 * 1080 * 3 // 2  # 3 110 400 bytes


def yuv420_size(width: int, height: int) -> int:
    return width * height * 3 // 2


def frame_packet_size(max_frame_size: int) -> int:
    """The ``max_packet_size`` both interfaces need to carry frames of ``max_frame_size``."""
    return max_frame_size + TRAILER.size


class FrameSender:
    """Send frames on ``txq``; each gets the next sequence number and a timestamp."""

    def __init__(self, txq: TxQueue, max_frame_size: int, *, checksum: bool = True) -> None:
        self._txq = txq
        self._raw = bytearray(max_frame_size + TRAILER.size)
        self._buffer = np.frombuffer(self._raw, np.uint8)
        self._checksum = checksum
        self.seq = 0

    @property
    def buffer(self) -> np.ndarray:
        """Write a frame here and call ``send(length)`` to avoid one copy."""
        return self._buffer[: -TRAILER.size]

    async def send(self, frame: bytes | memoryview | np.ndarray | int) -> int:
        """Send ``frame`` (or, given an int, that many bytes already in :attr:`buffer`);
        return its sequence number. Waits while the ring is full: frames are never dropped."""
        if isinstance(frame, int):
            length = frame
        else:
            data = np.frombuffer(frame, np.uint8)
            length = len(data)
            self._buffer[:length] = data
        if length > len(self._buffer) - TRAILER.size:
            raise ValueError(f"frame of {length} bytes > max_frame_size")
        crc = zlib.crc32(memoryview(self._raw)[:length]) if self._checksum else 0
        seq = self.seq
        TRAILER.pack_into(self._raw, length, MAGIC, crc, seq, time.monotonic_ns())
        frame_bytes = memoryview(self._raw)[: length + TRAILER.size]
        await self._txq.send(frame_bytes, metadata=seq & SEQ_METADATA_MASK)
        self.seq += 1
        return seq


@dataclass
class Frame:
    seq: int
    timestamp_ns: int
    latency_ns: int
    missing_before: int  # frames lost between the previous one and this one
    data: memoryview  # valid until the next frame is taken


class FrameDataError(MemifError, ValueError):
    """A received packet is not a valid frame (no trailer, bad checksum, too large)."""


class FrameReceiver:
    """Reassembled frames from ``rxq``, with gap detection, fps and latency."""

    def __init__(self, rxq: RxQueue, max_frame_size: int, *, verify: bool = True) -> None:
        self._rxq = rxq
        self._raw = bytearray(max_frame_size + TRAILER.size)
        self._verify = verify
        self._expected: int | None = None
        self._arrivals: deque[int] = deque(maxlen=120)
        self.frames = 0
        self.missing = 0
        self.latencies_ns: deque[int] = deque(maxlen=10_000)

    async def recv(self) -> Frame:
        burst = await self._rxq.recv_burst(1)
        try:
            metadata = int(burst.metadata[0])
            length = burst.copy_into(0, self._raw)
        except ValueError as exc:
            raise FrameDataError(f"frame larger than max_frame_size: {exc}") from None
        finally:
            burst.release()
        now = time.monotonic_ns()
        if length < TRAILER.size:
            raise FrameDataError(f"packet of {length} bytes has no frame trailer")
        end = length - TRAILER.size
        magic, crc, seq, stamp = TRAILER.unpack_from(self._raw, end)
        if magic != MAGIC:
            raise FrameDataError("packet is not a frame (bad trailer magic)")
        if metadata and metadata != seq & SEQ_METADATA_MASK:
            raise FrameDataError(
                f"frame {seq}: descriptor metadata {metadata} does not match the trailer"
            )
        if self._verify and crc != zlib.crc32(memoryview(self._raw)[:end]):
            raise FrameDataError(f"frame {seq}: checksum mismatch")
        missing = 0 if self._expected is None else max(0, seq - self._expected)
        self._expected = seq + 1
        self.frames += 1
        self.missing += missing
        self._arrivals.append(now)
        self.latencies_ns.append(now - stamp)
        return Frame(seq, stamp, now - stamp, missing, memoryview(self._raw)[:end])

    def __aiter__(self) -> FrameReceiver:
        return self

    async def __anext__(self) -> Frame:
        try:
            return await self.recv()
        except DisconnectedError:
            raise StopAsyncIteration from None

    @property
    def fps(self) -> float:
        """Frames per second over the last (up to) 120 arrivals."""
        if len(self._arrivals) < 2:
            return 0.0
        return (len(self._arrivals) - 1) / ((self._arrivals[-1] - self._arrivals[0]) / 1e9)
