"""pcapng writer and pcap/pcapng reader, fast enough to sit on a memif data path.

Pure library: no asyncio, no clock (timestamps are passed in), never seeks (so stdout and pipes
work). The writer emits one Section Header Block, one Interface Description Block per
:meth:`PcapngWriter.add_interface`, Enhanced Packet Blocks, and at :meth:`~PcapngWriter.close`
one Interface Statistics Block per interface. :meth:`PcapngWriter.write_burst` writes a whole
received ``Burst`` (or a list of bytes-like packets) with one ``write()``: the block headers of
the burst are built with numpy in one buffer, so the Python work per packet is one copy.

The reader (:class:`CaptureReader`, :func:`open_capture`) takes classic pcap (microsecond and
nanosecond magic, either byte order) and pcapng (any number of sections, either byte order,
``if_tsresol`` decimal or binary, ``if_tsoffset``; EPB, SPB and the obsolete Packet Block;
unknown blocks skipped by length). Every length in the file is checked before it is used and
no block larger than ``max_block_size`` is read, so a truncated or hostile file raises
:class:`CaptureFormatError` (a ``ValueError``), never a crash or a huge allocation.

Format: the pcapng specification (IETF draft-ietf-opsawg-pcapng) and the classic pcap format
(draft-ietf-opsawg-pcap). Everything this module writes is little-endian.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple

import numpy as np

from .errors import CaptureFormatError

__all__ = [
    "CaptureFormatError",
    "CaptureReader",
    "DEFAULT_SNAPLEN",
    "FLAG_INBOUND",
    "FLAG_OUTBOUND",
    "InterfaceInfo",
    "InterfaceStatistics",
    "LINKTYPE_ETHERNET",
    "MAX_BLOCK_SIZE",
    "Packet",
    "PacketBatch",
    "PcapngWriter",
    "open_capture",
    "read_all",
]

LINKTYPE_ETHERNET = 1
"""Link type of every interface the writer declares by default (Ethernet frames)."""
DEFAULT_SNAPLEN = 262144
"""The writer's default snapshot length: Wireshark refuses an Ethernet packet longer than
this (its WTAP_MAX_PACKET_SIZE_STANDARD)."""
MAX_BLOCK_SIZE = 16 * 1024 * 1024
"""The largest block or record the reader accepts unless told otherwise (Wireshark's own
pcapng block limit is 16 MiB as well)."""
MAX_INTERFACES = 65536
"""The most interfaces the reader accepts in one file unless told otherwise."""

FLAG_INBOUND = 0x1
"""epb_flags direction bits (0-1): the packet was received on the interface."""
FLAG_OUTBOUND = 0x2
"""epb_flags direction bits (0-1): the packet was sent on the interface."""

_SHB, _IDB, _OPB, _SPB, _NRB, _ISB, _EPB = 0x0A0D0D0A, 1, 2, 3, 4, 5, 6
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END, _OPT_COMMENT = 0, 1
_IF_NAME, _IF_DESCRIPTION, _IF_TSRESOL, _IF_FCSLEN, _IF_TSOFFSET = 2, 3, 9, 13, 14
_EPB_FLAGS, _EPB_DROPCOUNT = 2, 4
_SHB_HARDWARE, _SHB_OS, _SHB_USERAPPL = 2, 3, 4
_ISB_STARTTIME, _ISB_ENDTIME, _ISB_IFRECV, _ISB_IFDROP = 2, 3, 4, 5
_ISB_FILTERACCEPT, _ISB_OSDROP, _ISB_USRDELIV = 6, 7, 8

_PCAP_MAGIC_US, _PCAP_MAGIC_NS = 0xA1B2C3D4, 0xA1B23C4D
_U32 = 0xFFFFFFFF
# Per file interface, as read: (global interface id, link type, multiplier, divisor, offset
# in ns) turning its timestamp units into nanoseconds.
_Conversion = tuple[int, int, int, int, int]
_U64 = (1 << 64) - 1

_EPB_HEADER = 28  # type, total length, interface, ts high, ts low, captured, original
_EPB_FIXED = _EPB_HEADER + 4  # + the trailing total length
_ROW_INDEX = {1: np.arange(8), 4: np.arange(11)}  # write_burst: words per header row
# write_burst encodes bursts up to this many packets one block at a time, larger ones with numpy.
SMALL_BURST = 4


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def _options(items: Iterable[tuple[int, bytes]]) -> bytes:
    """Encode (code, value) options, each padded to 32 bits, then opt_endofopt; b"" if none."""
    out = bytearray()
    for code, value in items:
        if len(value) > 0xFFFF:
            raise ValueError(f"option {code} is {len(value)} bytes; 65535 at most")
        out += (
            struct.pack("<HH", code, len(value)) + value + b"\0" * (_pad4(len(value)) - len(value))
        )
    if out:
        out += b"\0\0\0\0"
    return bytes(out)


def _text(value: str | None) -> bytes | None:
    return None if value is None else value.encode()


def _block(block_type: int, body: bytes) -> bytes:
    total = len(body) + 12
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def _flag_words(flags: Any, n: int) -> Any:
    """epb_flags for a burst: one int for all packets or one per packet, each a u32."""
    if isinstance(flags, (int, np.integer)):
        if not 0 <= flags <= _U32:
            raise ValueError(f"flags {flags} not in 0..2**32-1")
        return int(flags)
    values = np.asarray(flags)
    if values.shape != (n,) or values.dtype.kind not in "iu":
        raise ValueError(f"flags must be an int or {n} ints")
    if values.min() < 0 or values.max() > _U32:
        raise ValueError("flags not in 0..2**32-1")
    return values


def _epb(
    interface_id: int,
    ticks: int,
    data: Any,
    length: int,
    flags: int | None = None,
    comment: str | None = None,
) -> bytes:
    """One Enhanced Packet Block (arguments already checked), with struct: what write_packet
    and small bursts use, and what the numpy burst encoder must reproduce byte for byte."""
    options = []
    if comment is not None:
        options.append((_OPT_COMMENT, comment.encode()))
    if flags is not None:
        options.append((_EPB_FLAGS, struct.pack("<I", flags)))
    caplen = len(data)
    head = struct.pack("<IIIII", interface_id, ticks >> 32, ticks & _U32, caplen, length)
    padding = b"\0" * (_pad4(caplen) - caplen)
    return _block(_EPB, b"".join((head, data, padding, _options(options))))


def _write_all(file: IO[bytes], data: Any) -> None:
    """``file.write`` until everything went: a raw (unbuffered) file may take part of it."""
    view = memoryview(data).cast("B")
    while view:
        written = file.write(view)
        if written is None:
            raise BlockingIOError("capture file is non-blocking and full")
        view = view[written:]


@dataclass
class _WriterInterface:
    linktype: int
    snaplen: int
    divisor: int  # nanoseconds per timestamp unit
    packets: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    received: int | None = None
    dropped: int | None = None


class PcapngWriter:
    """Write a pcapng stream (one section) to a binary file object or a path.

    The file is only ever appended to (stdout, a pipe or a socket work); a path is opened and
    closed by the writer, a file object is flushed but left open. Use as a context manager or
    call :meth:`close`, which appends one Interface Statistics Block per interface.

    ``tsresol`` (per interface, default 9: nanoseconds) is the decimal exponent of the
    timestamp unit; every timestamp given to the writer is in nanoseconds since the epoch.
    """

    def __init__(
        self,
        file: IO[bytes] | str | os.PathLike[str],
        *,
        application: str | None = "memif_aio",
        hardware: str | None = None,
        os_name: str | None = None,
        comment: str | None = None,
    ) -> None:
        if isinstance(file, (str, os.PathLike)):
            self._file: IO[bytes] = open(file, "wb")  # noqa: SIM115 - owned until close()
            self._owns_file = True
        else:
            self._file = file
            self._owns_file = False
        self._interfaces: list[_WriterInterface] = []
        self._scratch = np.zeros(0, np.uint8)
        self._closed = False
        self.bytes_written = 0
        options = _options(
            (code, value)
            for code, value in (
                (_OPT_COMMENT, _text(comment)),
                (_SHB_HARDWARE, _text(hardware)),
                (_SHB_OS, _text(os_name)),
                (_SHB_USERAPPL, _text(application)),
            )
            if value is not None
        )
        # Section length -1: unknown, since the file is never rewritten.
        self._emit(_block(_SHB, struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + options))

    # ----------------------------------------------------------------------- interfaces

    def add_interface(
        self,
        *,
        linktype: int = LINKTYPE_ETHERNET,
        snaplen: int = DEFAULT_SNAPLEN,
        name: str | None = None,
        description: str | None = None,
        comment: str | None = None,
        tsresol: int = 9,
    ) -> int:
        """Append an Interface Description Block; return its interface id (0, 1, ...).

        ``snaplen`` 0 means no limit (Wireshark still refuses Ethernet packets over 256 KiB).
        """
        self._check_open()
        if not 0 <= linktype <= 0xFFFF:
            raise ValueError(f"linktype {linktype} not in 0..65535")
        if not 0 <= snaplen <= _U32:
            raise ValueError(f"snaplen {snaplen} not in 0..{_U32}")
        if not 0 <= tsresol <= 9:
            raise ValueError(f"tsresol {tsresol} not in 0..9 (decimal exponent)")
        if len(self._interfaces) >= MAX_INTERFACES:
            raise ValueError(f"more than {MAX_INTERFACES} interfaces")
        options = _options(
            (code, value)
            for code, value in (
                (_OPT_COMMENT, _text(comment)),
                (_IF_NAME, _text(name)),
                (_IF_DESCRIPTION, _text(description)),
                (_IF_TSRESOL, bytes([tsresol])),
            )
            if value is not None
        )
        self._emit(_block(_IDB, struct.pack("<HHI", linktype, 0, snaplen) + options))
        self._interfaces.append(_WriterInterface(linktype, snaplen, 10 ** (9 - tsresol)))
        return len(self._interfaces) - 1

    @property
    def interface_count(self) -> int:
        return len(self._interfaces)

    def packets_written(self, interface_id: int) -> int:
        return self._interface(interface_id).packets

    def set_statistics(
        self, interface_id: int, *, received: int | None = None, dropped: int | None = None
    ) -> None:
        """Counters for the Interface Statistics Block that :meth:`close` writes:
        ``received`` (isb_ifrecv) and ``dropped`` (isb_ifdrop) as the interface counted them."""
        iface = self._interface(interface_id)
        for name, value in (("received", received), ("dropped", dropped)):
            if value is not None and not 0 <= value <= _U64:
                raise ValueError(f"{name} {value} not in 0..2**64-1")
        if received is not None:
            iface.received = received
        if dropped is not None:
            iface.dropped = dropped

    # ----------------------------------------------------------------------- packets

    def write_packet(
        self,
        interface_id: int,
        data: Any,
        timestamp_ns: int,
        *,
        original_length: int | None = None,
        flags: int | None = None,
        comment: str | None = None,
    ) -> None:
        """One Enhanced Packet Block; ``data`` is truncated to the interface's snaplen.

        ``flags``: epb_flags (e.g. :data:`FLAG_INBOUND`), ``comment``: opt_comment.
        """
        iface = self._interface(interface_id)
        view = memoryview(data).cast("B")
        length = view.nbytes if original_length is None else original_length
        if not view.nbytes <= length <= _U32:
            raise ValueError(f"original_length {length} < captured {view.nbytes} or > 2**32-1")
        if iface.snaplen and view.nbytes > iface.snaplen:
            view = view[: iface.snaplen]
        if flags is not None and not 0 <= flags <= _U32:
            raise ValueError(f"flags {flags} not in 0..2**32-1")
        ticks = self._ticks(iface, timestamp_ns)
        self._emit(_epb(interface_id, ticks, view, length, flags, comment))
        self._count(iface, 1, timestamp_ns, timestamp_ns)

    def write_burst(
        self,
        interface_id: int,
        packets: Any,
        timestamp_ns: int | Sequence[int] | np.ndarray,
        *,
        snaplen: int | None = None,
        flags: int | Sequence[int] | np.ndarray | None = None,
    ) -> int:
        """Write every packet of ``packets`` in one ``write()``; return how many.

        ``packets``: a received memif ``Burst`` (read through ``burst.lengths`` and its
        items, chained packets joined) or a sequence of bytes-like objects (``len()`` must be
        their size in bytes). ``timestamp_ns``: one timestamp for the whole burst or one per
        packet. ``snaplen`` (at most the interface's) truncates packets; their original
        length is kept. ``flags``: epb_flags for every packet or one per packet.
        """
        iface = self._interface(interface_id)
        n = len(packets)
        if n == 0:
            return 0
        lengths = getattr(packets, "lengths", None)
        if lengths is None:
            lengths = np.fromiter(map(len, packets), np.int64, n)
            if lengths.max() > _U32:
                raise ValueError("a packet is longer than 2**32-1 bytes")
        else:
            lengths = np.asarray(lengths, np.int64)
            if lengths.shape != (n,):
                raise ValueError(f"{lengths.shape} lengths for {n} packets")
        limit = iface.snaplen
        if snaplen is not None:
            if snaplen <= 0:
                raise ValueError(f"snaplen {snaplen} must be positive")
            limit = snaplen if limit == 0 else min(limit, snaplen)
        truncated = bool(limit) and bool((lengths > limit).any())
        caplen = np.minimum(lengths, limit) if truncated else lengths
        high, low, first_ns, last_ns = self._burst_ticks(iface, timestamp_ns, n)
        flag_words = None if flags is None else _flag_words(flags, n)
        if n <= SMALL_BURST:
            self._write_small(interface_id, packets, lengths, caplen, high, low, flag_words)
            self._count(iface, n, first_ns, last_ns)
            return n

        # Block i's header (7 words) directly follows block i-1's tail (its options, if any,
        # and its trailing length): one row of `tail + 7` words per packet, scattered at once.
        # A spare `tail` words before the burst take row 0's "previous tail".
        tail = 1 if flag_words is None else 4
        block = ((caplen + 3) & ~3) + (_EPB_FIXED + 4 * (tail - 1))
        ends = np.cumsum(block)
        size = int(ends[-1])
        spare = 4 * tail
        buf = self._buffer(spare + size)
        words = buf[: spare + size].view("<u4")
        rows = np.empty((n, tail + 7), np.uint32)
        if flag_words is not None:
            rows[:, 0] = _EPB_FLAGS | (4 << 16)
            rows[1:, 1] = flag_words if isinstance(flag_words, int) else flag_words[:-1]
            rows[:, 2] = _OPT_END
        rows[0, tail - 1] = 0
        rows[1:, tail - 1] = block[:-1]
        rows[:, tail] = _EPB
        rows[:, tail + 1] = block
        rows[:, tail + 2] = interface_id
        rows[:, tail + 3] = high
        rows[:, tail + 4] = low
        rows[:, tail + 5] = caplen
        rows[:, tail + 6] = lengths
        first = (ends - block) >> 2  # in `words`: block i starts at first[i] + tail
        # Zero each block's last data word (its padding) before the headers go in: for an
        # empty packet that word is the header's last one, rewritten just below.
        words[(ends >> 2) - 1] = 0
        words[first[:, None] + _ROW_INDEX[tail]] = rows
        last = size // 4 + tail  # the last block's tail ends here
        if flag_words is not None:
            flags_last = flag_words if isinstance(flag_words, int) else flag_words[-1]
            words[last - 4 : last - 1] = (_EPB_FLAGS | (4 << 16), flags_last, _OPT_END)
        words[last - 1] = block[-1]

        out = buf.data
        data_at = first * 4 + (spare + _EPB_HEADER)
        gather = getattr(packets, "gather_into", None)
        if gather is not None:
            gather(out, data_at, limit if truncated else 0)  # a memif Burst: in C
        elif truncated:
            for i, (start, cap) in enumerate(zip(data_at.tolist(), caplen.tolist(), strict=True)):
                out[start : start + cap] = memoryview(packets[i]).cast("B")[:cap]
        else:
            # The one per-packet Python step: a slice copy.
            starts = data_at.tolist()
            stops = (data_at + caplen).tolist()
            for start, stop, packet in zip(starts, stops, packets, strict=True):
                out[start:stop] = packet
        self._emit(out[spare : spare + size])
        self._count(iface, n, first_ns, last_ns)
        return n

    def _write_small(
        self,
        interface_id: int,
        packets: Any,
        lengths: np.ndarray,
        caplen: np.ndarray,
        high: Any,
        low: Any,
        flags: Any,
    ) -> None:
        """A few packets: one struct-built block each (the numpy set-up of a burst costs
        more than that below about SMALL_BURST packets), still one write()."""
        blocks = []
        for i in range(len(lengths)):
            data = memoryview(packets[i]).cast("B")[: int(caplen[i])]
            hi = int(high if isinstance(high, int) else high[i])
            lo = int(low if isinstance(low, int) else low[i])
            flag = flags if flags is None or isinstance(flags, int) else int(flags[i])
            blocks.append(_epb(interface_id, hi << 32 | lo, data, int(lengths[i]), flag))
        self._emit(b"".join(blocks))

    # ----------------------------------------------------------------------- end

    def write_statistics(self, interface_id: int, timestamp_ns: int) -> None:
        """Append an Interface Statistics Block for ``interface_id`` now (:meth:`close` writes
        one for every interface): isb_starttime/isb_endtime (earliest and latest packet written),
        isb_ifrecv/isb_ifdrop (from :meth:`set_statistics`, if given) and isb_usrdeliv (the
        packets written)."""
        iface = self._interface(interface_id)
        ticks = self._ticks(iface, timestamp_ns)
        options = []
        for code, value in ((_ISB_STARTTIME, iface.first_ns), (_ISB_ENDTIME, iface.last_ns)):
            if value is not None:
                t = value // iface.divisor
                options.append((code, struct.pack("<II", t >> 32, t & _U32)))
        for code, count in (
            (_ISB_IFRECV, iface.received),
            (_ISB_IFDROP, iface.dropped),
            (_ISB_USRDELIV, iface.packets),
        ):
            if count is not None:
                options.append((code, struct.pack("<Q", count)))
        body = struct.pack("<III", interface_id, ticks >> 32, ticks & _U32) + _options(options)
        self._emit(_block(_ISB, body))

    def flush(self) -> None:
        flush = getattr(self._file, "flush", None)
        if flush is not None:
            flush()

    def close(self, timestamp_ns: int | None = None) -> None:
        """Write the statistics blocks (stamped ``timestamp_ns``, default: the last packet
        written, else 0), flush, and close the file if the writer opened it. Idempotent."""
        if self._closed:
            return
        try:
            if timestamp_ns is None:
                stamps = [i.last_ns for i in self._interfaces if i.last_ns is not None]
                timestamp_ns = max(stamps, default=0)
            for interface_id in range(len(self._interfaces)):
                self.write_statistics(interface_id, timestamp_ns)
            self.flush()
        finally:
            self._closed = True
            if self._owns_file:
                self._file.close()

    def __enter__(self) -> PcapngWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("pcapng writer is closed")

    def _interface(self, interface_id: int) -> _WriterInterface:
        self._check_open()
        if not 0 <= interface_id < len(self._interfaces):
            raise ValueError(f"no interface {interface_id} (add_interface() first)")
        return self._interfaces[interface_id]

    @staticmethod
    def _ticks(iface: _WriterInterface, timestamp_ns: int) -> int:
        if not 0 <= timestamp_ns <= _U64:
            raise ValueError(f"timestamp {timestamp_ns} ns not in 0..2**64-1")
        return timestamp_ns // iface.divisor

    @staticmethod
    def _burst_ticks(
        iface: _WriterInterface, timestamp_ns: Any, n: int
    ) -> tuple[Any, Any, int, int]:
        """(high words, low words, first ns, last ns) of one timestamp or one per packet."""
        if isinstance(timestamp_ns, (int, np.integer)):
            ticks = PcapngWriter._ticks(iface, int(timestamp_ns))
            return ticks >> 32, ticks & _U32, int(timestamp_ns), int(timestamp_ns)
        stamps = np.asarray(timestamp_ns)
        if stamps.shape != (n,):
            raise ValueError(f"{stamps.shape} timestamps for {n} packets")
        if stamps.dtype.kind not in "iu":
            raise ValueError("timestamps must be integers (nanoseconds)")
        first, last = int(stamps.min()), int(stamps.max())
        if first < 0:
            raise ValueError(f"timestamp {first} ns is negative")
        each = stamps.astype(np.uint64)
        if iface.divisor != 1:
            each //= np.uint64(iface.divisor)
        return each >> np.uint64(32), each & np.uint64(_U32), first, last

    def _buffer(self, size: int) -> np.ndarray:
        if len(self._scratch) < size:
            self._scratch = np.zeros(max(size, 2 * len(self._scratch)), np.uint8)
        return self._scratch

    def _emit(self, data: Any) -> None:
        self._check_open()
        _write_all(self._file, data)
        self.bytes_written += len(data)

    @staticmethod
    def _count(iface: _WriterInterface, n: int, first_ns: int, last_ns: int) -> None:
        iface.packets += n
        iface.first_ns = first_ns if iface.first_ns is None else min(iface.first_ns, first_ns)
        iface.last_ns = last_ns if iface.last_ns is None else max(iface.last_ns, last_ns)


# =========================================================================== reader


class Packet(NamedTuple):
    """One packet record. ``interface_id`` indexes :attr:`CaptureReader.interfaces`, numbered
    across sections (tshark shows the id within the section, ``frame.interface_id``, next to
    ``frame.section_number``); ``timestamp_ns`` is None for a Simple Packet Block, which has
    none; ``flags`` is epb_flags (0 if absent)."""

    interface_id: int
    linktype: int
    timestamp_ns: int | None
    data: bytes
    original_length: int
    flags: int = 0
    comment: str | None = None


@dataclass
class InterfaceInfo:
    """What an Interface Description Block (or a classic pcap header) said."""

    linktype: int
    snaplen: int
    section: int = 0  # 0 for the first Section Header Block
    id_in_section: int = 0
    name: str | None = None
    description: str | None = None
    comment: str | None = None
    tsresol: int = 6  # raw if_tsresol byte (bit 7 set: a power of 2)
    tsoffset: int = 0  # seconds
    fcslen: int | None = None
    _mul: int = field(default=1000, repr=False)
    _div: int = field(default=1, repr=False)


@dataclass
class InterfaceStatistics:
    """The latest Interface Statistics Block of an interface (None: option absent)."""

    interface_id: int
    timestamp_ns: int
    start_ns: int | None = None
    end_ns: int | None = None
    received: int | None = None
    dropped: int | None = None
    filter_accepted: int | None = None
    os_dropped: int | None = None
    delivered: int | None = None
    comment: str | None = None


@dataclass
class PacketBatch:
    """Up to ``max_packets`` consecutive packets, column-wise (see :meth:`CaptureReader.batches`).

    ``timestamps_ns`` is -1 where the record has none (Simple Packet Block)."""

    packets: list[bytes]
    interface_ids: np.ndarray
    timestamps_ns: np.ndarray
    original_lengths: np.ndarray
    flags: np.ndarray

    def __len__(self) -> int:
        return len(self.packets)


def _resolution(tsresol: int) -> tuple[int, int]:
    """(mul, div) turning timestamp units into nanoseconds: ns = units * mul // div."""
    exponent = tsresol & 0x7F
    if tsresol & 0x80:
        return 10**9, 1 << exponent
    if exponent <= 9:
        return 10 ** (9 - exponent), 1
    return 1, 10 ** (exponent - 9)


def open_capture(file: IO[bytes] | str | os.PathLike[str], **options: Any) -> CaptureReader:
    """A :class:`CaptureReader` over a path or a binary file object (pcap or pcapng)."""
    return CaptureReader(file, **options)


class CaptureReader:
    """Iterate the packets of a classic pcap or a pcapng stream (detected from its magic).

    ``for packet in reader`` yields :class:`Packet` records; :meth:`batches` yields them by
    hundreds as numpy columns plus a list of ``bytes``. :attr:`interfaces` and
    :attr:`statistics` fill in as the file is read. The file is read sequentially in
    ``chunk_size`` pieces (pipes and stdin work). A malformed or truncated file raises
    :class:`CaptureFormatError` with the byte offset; no block over ``max_block_size`` and no
    more than ``max_interfaces`` interfaces are accepted.
    """

    def __init__(
        self,
        file: IO[bytes] | str | os.PathLike[str],
        *,
        max_block_size: int = MAX_BLOCK_SIZE,
        max_interfaces: int = MAX_INTERFACES,
        chunk_size: int = 1 << 18,
    ) -> None:
        if isinstance(file, (str, os.PathLike)):
            self._file: IO[bytes] = open(file, "rb")  # noqa: SIM115 - owned until close()
            self._owns_file = True
        else:
            self._file = file
            self._owns_file = False
        if max_block_size < 64:
            raise ValueError("max_block_size below 64 bytes")
        self.max_block_size = max_block_size
        self.max_interfaces = max_interfaces
        self._chunk = max(chunk_size, 4096)
        self.interfaces: list[InterfaceInfo] = []
        """The interfaces declared so far, in file order (pcap: one)."""
        self.statistics: dict[int, InterfaceStatistics] = {}
        """The last Interface Statistics Block seen for each interface index (pcapng)."""
        self.sections = 0
        self._buf = b""
        self._pos = 0
        self._offset = 0  # file offset of self._buf[0]
        self._eof = False
        self._started = False
        try:
            head = self._peek(4)
            if len(head) < 4:
                raise CaptureFormatError("not a capture file: shorter than 4 bytes")
            magic = int.from_bytes(head, "little")
            if magic == _SHB:
                self.format = "pcapng"
            elif magic in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS) or int.from_bytes(head, "big") in (
                _PCAP_MAGIC_US,
                _PCAP_MAGIC_NS,
            ):
                self.format = "pcap"
                self._read_pcap_header()
            else:
                raise CaptureFormatError(f"not a pcap or pcapng file (magic {head.hex()})")
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------------- public

    def __iter__(self) -> Iterator[Packet]:
        if self._started:
            raise ValueError("a CaptureReader is read once")
        self._started = True
        return self._pcapng() if self.format == "pcapng" else self._pcap()

    def batches(self, max_packets: int = 256) -> Iterator[PacketBatch]:
        """The packets by consecutive groups of at most ``max_packets`` (for replay: one
        ``send_burst(batch.packets)`` and the timestamps as one array)."""
        if max_packets < 1:
            raise ValueError("max_packets must be positive")
        packets = iter(self)
        while True:
            chunk = list(itertools.islice(packets, max_packets))
            if not chunk:
                return
            ifaces, _lt, stamps, data, orig, flags, _comments = zip(*chunk, strict=True)
            if None in stamps:
                stamps = tuple(-1 if t is None else t for t in stamps)
            yield PacketBatch(
                list(data),
                np.array(ifaces, np.uint32),
                np.array(stamps, np.int64),
                np.array(orig, np.uint32),
                np.array(flags, np.uint32),
            )

    def close(self) -> None:
        if self._owns_file:
            self._file.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------------- buffer

    def _error(self, message: str, at: int) -> CaptureFormatError:
        return CaptureFormatError(f"{message} (at byte {self._offset + at})")

    def _read(self, need: int) -> bytes:
        """At least ``need`` bytes (fewer only at end of file), up to about a chunk: each read
        takes what is there (``read1``), so a live pipe is never waited on beyond ``need``."""
        read1 = getattr(self._file, "read1", None)
        parts, got = [], 0
        while got < need:
            want = max(self._chunk, need - got)
            part = read1(want) if read1 is not None else self._file.read(want)
            if part is None:
                raise BlockingIOError("capture file is non-blocking and has no data")
            if not part:
                self._eof = True
                break
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def _fill(self, need: int) -> bool:
        """Make ``self._buf[self._pos:]`` hold at least ``need`` bytes; False at clean EOF
        before any of them, CaptureFormatError at EOF in the middle."""
        have = len(self._buf) - self._pos
        if have >= need:
            return True
        rest = self._buf[self._pos :]
        self._offset += self._pos
        more = b"" if self._eof else self._read(need - have)
        self._buf = rest + more if rest else more
        self._pos = 0
        if len(self._buf) >= need:
            return True
        if not self._buf:
            return False
        raise self._error(
            f"file truncated: {len(self._buf)} bytes left where {need} were expected", 0
        )

    def _peek(self, n: int) -> bytes:
        self._fill(n)
        return self._buf[self._pos : self._pos + n]

    # ----------------------------------------------------------------------- classic pcap

    def _read_pcap_header(self) -> None:
        if not self._fill(24):
            raise CaptureFormatError("empty file")
        head = self._buf[:24]
        order = (
            "<" if int.from_bytes(head[:4], "little") in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS) else ">"
        )
        magic, major, _minor, _zone, _sigfigs, snaplen, network = struct.unpack(
            order + "IHHiIII", head
        )
        if major != 2:
            raise CaptureFormatError(f"pcap version {major} unsupported (2 expected)")
        self._order = order
        self._pcap_nano = magic == _PCAP_MAGIC_NS
        # The LinkType word: bit 26 set says the top 4 bits give the FCS length in 16-bit words.
        info = InterfaceInfo(
            linktype=network & 0xFFFF,
            snaplen=snaplen,
            tsresol=9 if self._pcap_nano else 6,
            fcslen=(network >> 28) * 16 if network & (1 << 26) else None,
        )
        info._mul, info._div = _resolution(info.tsresol)
        self.interfaces.append(info)
        self.sections = 1
        self._pos = 24

    def _pcap(self) -> Iterator[Packet]:
        record = struct.Struct(self._order + "IIII")
        unpack = record.unpack_from
        limit = self.max_block_size
        linktype = self.interfaces[0].linktype
        scale = 1 if self._pcap_nano else 1000
        new = tuple.__new__
        buf, pos = self._buf, self._pos
        while True:
            if len(buf) - pos < 16:
                self._pos = pos
                if not self._fill(16):
                    return
                buf, pos = self._buf, self._pos
            sec, sub, caplen, length = unpack(buf, pos)
            if caplen > limit:
                raise self._error(f"record of {caplen} bytes over the limit {limit}", pos)
            end = pos + 16 + caplen
            if end > len(buf):
                self._pos = pos
                self._fill(16 + caplen)
                buf, pos = self._buf, self._pos
                end = pos + 16 + caplen
            yield new(
                Packet,
                (
                    0,
                    linktype,
                    sec * 1_000_000_000 + sub * scale,
                    buf[pos + 16 : end],
                    length,
                    0,
                    None,
                ),
            )
            pos = end

    # ----------------------------------------------------------------------- pcapng

    def _pcapng(self) -> Iterator[Packet]:
        limit = self.max_block_size
        new = tuple.__new__
        billion = 1_000_000_000
        # Per local interface: (global id, linktype, mul, div, offset ns); ns = t * mul // div + o
        conv: list[_Conversion] = []
        hdr = struct.Struct("<II")  # each Section Header Block sets the byte order
        epb = struct.Struct("<IIIIIII").unpack_from
        tail = struct.Struct("<I").unpack_from
        started = False
        buf, pos = self._buf, self._pos
        while True:
            if len(buf) - pos >= _EPB_FIXED:
                # Fast path: a well-formed option-less Enhanced Packet Block already in the
                # buffer. Anything else, including every malformed block, takes the slow path.
                btype, blen, iface, hi, lo, caplen, length = epb(buf, pos)
                end = pos + blen
                if (
                    btype == _EPB
                    and blen == ((caplen + 3) & ~3) + _EPB_FIXED
                    and end <= len(buf)
                    and iface < len(conv)
                    and blen <= limit
                    and tail(buf, end - 4)[0] == blen
                ):
                    gid, linktype, mul, div, offset = conv[iface]
                    data = buf[pos + _EPB_HEADER : pos + _EPB_HEADER + caplen]
                    stamp = ((hi << 32) | lo) * mul // div + offset
                    yield new(Packet, (gid, linktype, stamp, data, length, 0, None))
                    pos = end
                    continue
            if len(buf) - pos < 12:
                self._pos = pos
                if not self._fill(12):
                    return
                buf, pos = self._buf, self._pos
            if buf[pos : pos + 4] == b"\x0a\x0d\x0d\x0a":
                # A Section Header Block: the type reads the same in both byte orders; the
                # magic says which one the section uses.
                magic = buf[pos + 8 : pos + 12]
                if magic == b"\x4d\x3c\x2b\x1a":
                    order = "<"
                elif magic == b"\x1a\x2b\x3c\x4d":
                    order = ">"
                else:
                    raise self._error(f"bad byte-order magic {magic.hex()}", pos)
                hdr = struct.Struct(order + "II")
                epb = struct.Struct(order + "IIIIIII").unpack_from
                tail = struct.Struct(order + "I").unpack_from
                self._order = order
                conv = []
                started = True
            elif not started:
                raise self._error("pcapng file does not start with a Section Header Block", pos)
            btype, blen = hdr.unpack_from(buf, pos)
            if blen < 12 or blen & 3:
                raise self._error(f"block length {blen} is not a multiple of 4 >= 12", pos)
            if blen > limit:
                raise self._error(f"block of {blen} bytes over the limit {limit}", pos)
            if len(buf) - pos < blen:
                self._pos = pos
                self._fill(blen)
                buf, pos = self._buf, self._pos
            end = pos + blen
            if tail(buf, end - 4)[0] != blen:
                raise self._error("block's trailing length differs from its leading one", pos)
            if btype == _EPB or btype == _OPB:
                yield self._packet_block(btype, buf, pos, end, conv)
            elif btype == _SHB:
                self._section(buf, pos, end)
            elif btype == _IDB:
                info = self._interface_block(buf, pos, end, len(conv))
                conv.append(
                    (
                        len(self.interfaces) - 1,
                        info.linktype,
                        info._mul,
                        info._div,
                        info.tsoffset * billion,
                    )
                )
            elif btype == _SPB:
                yield self._simple_packet(buf, pos, end, conv)
            elif btype == _ISB:
                self._statistics_block(buf, pos, end, conv)
            pos = end

    def _packet_block(
        self, btype: int, buf: bytes, pos: int, end: int, conv: list[_Conversion]
    ) -> Packet:
        """An Enhanced Packet Block (with options, or malformed) or an obsolete Packet Block."""
        name = "Enhanced Packet Block" if btype == _EPB else "Packet Block"
        if end - pos < _EPB_FIXED:
            raise self._error(f"{name} too short", pos)
        if btype == _EPB:
            iface, hi, lo, caplen, length = struct.unpack_from(self._order + "IIIII", buf, pos + 8)
        else:
            iface, _drops, hi, lo, caplen, length = struct.unpack_from(
                self._order + "HHIIII", buf, pos + 8
            )
        data_end = pos + _EPB_HEADER + caplen
        if data_end > end - 4:
            raise self._error(f"captured length {caplen} beyond its {name}", pos)
        if iface >= len(conv):
            raise self._error(f"packet on undeclared interface {iface}", pos)
        gid, linktype, mul, div, offset = conv[iface]
        flags, comment = self._packet_options(buf, pos + _EPB_HEADER + _pad4(caplen), end - 4)
        stamp = ((hi << 32) | lo) * mul // div + offset
        data = buf[pos + _EPB_HEADER : data_end]
        return Packet(gid, linktype, stamp, data, length, flags, comment)

    def _section(self, buf: bytes, pos: int, end: int) -> None:
        if end - pos < 28:
            raise self._error("Section Header Block too short", pos)
        major, minor = struct.unpack_from(self._order + "HH", buf, pos + 12)
        if major != 1:
            raise self._error(f"pcapng version {major}.{minor} unsupported (1.x expected)", pos)
        self.sections += 1

    def _options(self, buf: bytes, at: int, end: int) -> Iterator[tuple[int, bytes]]:
        unpack = struct.Struct(self._order + "HH").unpack_from
        while at + 4 <= end:
            code, length = unpack(buf, at)
            if code == _OPT_END:
                return
            stop = at + 4 + length
            if stop > end:
                raise self._error(f"option {code} of {length} bytes overruns its block", at)
            yield code, buf[at + 4 : stop]
            at = at + 4 + _pad4(length)

    def _packet_options(self, buf: bytes, at: int, end: int) -> tuple[int, str | None]:
        flags, comment = 0, None
        for code, value in self._options(buf, at, end):
            if code == _EPB_FLAGS and len(value) == 4:
                flags = struct.unpack(self._order + "I", value)[0]
            elif code == _OPT_COMMENT and comment is None:
                comment = value.decode("utf-8", "replace")
        return flags, comment

    def _interface_block(self, buf: bytes, pos: int, end: int, id_in_section: int) -> InterfaceInfo:
        if end - pos < 20:
            raise self._error("Interface Description Block too short", pos)
        if len(self.interfaces) >= self.max_interfaces:
            raise self._error(f"more than {self.max_interfaces} interfaces", pos)
        linktype, _reserved, snaplen = struct.unpack_from(self._order + "HHI", buf, pos + 8)
        info = InterfaceInfo(linktype, snaplen, self.sections - 1, id_in_section)
        for code, value in self._options(buf, pos + 16, end - 4):
            if code == _IF_NAME:
                info.name = value.decode("utf-8", "replace")
            elif code == _IF_DESCRIPTION:
                info.description = value.decode("utf-8", "replace")
            elif code == _OPT_COMMENT and info.comment is None:
                info.comment = value.decode("utf-8", "replace")
            elif code == _IF_TSRESOL and len(value) == 1:
                info.tsresol = value[0]
                if (info.tsresol & 0x7F) > (63 if info.tsresol & 0x80 else 18):
                    raise self._error(f"if_tsresol {info.tsresol:#x} out of range", pos)
            elif code == _IF_TSOFFSET and len(value) == 8:
                info.tsoffset = struct.unpack(self._order + "q", value)[0]
            elif code == _IF_FCSLEN and len(value) == 1:
                info.fcslen = value[0]
        info._mul, info._div = _resolution(info.tsresol)
        self.interfaces.append(info)
        return info

    def _simple_packet(self, buf: bytes, pos: int, end: int, conv: list[_Conversion]) -> Packet:
        if not conv:
            raise self._error("Simple Packet Block before any interface", pos)
        if end - pos < 16:
            raise self._error("Simple Packet Block too short", pos)
        (length,) = struct.unpack_from(self._order + "I", buf, pos + 8)
        caplen = min(length, end - 4 - (pos + 12))
        snaplen = self.interfaces[conv[0][0]].snaplen
        if snaplen:
            caplen = min(caplen, snaplen)
        data = buf[pos + 12 : pos + 12 + caplen]
        return Packet(conv[0][0], conv[0][1], None, data, length)

    def _statistics_block(self, buf: bytes, pos: int, end: int, conv: list[_Conversion]) -> None:
        if end - pos < 24:
            raise self._error("Interface Statistics Block too short", pos)
        iface, hi, lo = struct.unpack_from(self._order + "III", buf, pos + 8)
        if iface >= len(conv):
            raise self._error(f"statistics for undeclared interface {iface}", pos)
        gid, _linktype, mul, div, offset = conv[iface]

        def ns(units: int) -> int:
            return int(units * mul // div + offset)

        stats = InterfaceStatistics(gid, ns((hi << 32) | lo))
        u64 = struct.Struct(self._order + "Q").unpack
        u32x2 = struct.Struct(self._order + "II").unpack
        counters = {
            _ISB_IFRECV: "received",
            _ISB_IFDROP: "dropped",
            _ISB_FILTERACCEPT: "filter_accepted",
            _ISB_OSDROP: "os_dropped",
            _ISB_USRDELIV: "delivered",
        }
        for code, value in self._options(buf, pos + 20, end - 4):
            if code in counters and len(value) == 8:
                setattr(stats, counters[code], u64(value)[0])
            elif code in (_ISB_STARTTIME, _ISB_ENDTIME) and len(value) == 8:
                high, low = u32x2(value)
                setattr(
                    stats, "start_ns" if code == _ISB_STARTTIME else "end_ns", ns(high << 32 | low)
                )
            elif code == _OPT_COMMENT and stats.comment is None:
                stats.comment = value.decode("utf-8", "replace")
        self.statistics[gid] = stats


def read_all(file: IO[bytes] | str | os.PathLike[str], **options: Any) -> list[Packet]:
    """Every packet of a capture file (small files, tests)."""
    with CaptureReader(file, **options) as reader:
        return list(reader)
