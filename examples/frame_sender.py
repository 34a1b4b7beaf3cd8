"""Frame sender: pushes video frames (1920x1080 YUV420 by default) to frame_receiver.py.

    python examples/frame_receiver.py @/tmp/frames.sock &
    python examples/frame_sender.py @/tmp/frames.sock --frames 300 --fps 0

Each frame is one memif packet over chained 64 KiB buffers; its sequence number rides in
every descriptor's metadata word, and in full, with a timestamp and CRC, in a trailer (see
memif_aio.frames).
"""

import argparse
import asyncio
import time

import memif_aio
from memif_aio.frames import FrameSender, frame_packet_size, yuv420_size


async def main(args: argparse.Namespace) -> None:
    size = yuv420_size(args.width, args.height)
    # Big buffers keep a 3 MB frame to 48 descriptors; the ring must hold a whole frame.
    # A frame is one packet: both ends must accept packets that large.
    async with memif_aio.connect(
        args.socket, buffer_size=65536, ring_size=1024, max_packet_size=frame_packet_size(size)
    ) as iface:
        sender = FrameSender(iface.tx_queues[0], size)
        start = time.perf_counter()
        for n in range(args.frames):
            # Paint the frame in place (here: a flat grey level per frame) and send it from
            # there, saving a copy; sender.send(bytes_or_array) works too.
            sender.buffer[:size] = n % 251
            await sender.send(size)
            if args.fps:  # pace to the wanted frame rate
                await asyncio.sleep(max(0.0, start + (n + 1) / args.fps - time.perf_counter()))
        elapsed = time.perf_counter() - start
        # Leaving the block closes the interface, which first lets the receiver take the
        # frames still in the ring (Interface.close(linger=...)).
        print(
            f"sent {args.frames} frames of {size} bytes in {elapsed:.2f}s "
            f"({args.frames / elapsed:.1f} fps)",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("socket", nargs="?", default="@/tmp/memif-frames.sock")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--fps", type=float, default=0, help="pace frames (0: as fast as possible)")
    memif_aio.run(main(parser.parse_args()))
