"""Frame receiver: takes frames from frame_sender.py, checks sequence numbers and checksums,
and reports frames per second and latency.

    python examples/frame_receiver.py @/tmp/frames.sock --frames 300 [--json]
"""

import argparse
import json

import memif_aio
from memif_aio.cli.perf import percentile
from memif_aio.frames import FrameReceiver, frame_packet_size, yuv420_size


async def main(args: argparse.Namespace) -> None:
    size = yuv420_size(args.width, args.height)
    async with memif_aio.Socket(args.socket) as sock:
        # The receiver listens (master); the sender's buffers decide the chain length.
        iface = await sock.create_interface(
            id=0, role="master", max_packet_size=frame_packet_size(size)
        )
        print(f"waiting for frames on {args.socket}", flush=True)
        await iface.wait_connected()
        receiver = FrameReceiver(iface.rx_queues[0], size)
        # Reassembled; seq checked against the descriptor metadata, CRC checked: FrameDataError
        # if not.
        async for frame in receiver:
            if frame.missing_before:
                print(f"gap: {frame.missing_before} frame(s) lost before {frame.seq}")
            if receiver.frames % 100 == 0:
                print(f"{receiver.frames} frames, {receiver.fps:.1f} fps", flush=True)
            if receiver.frames == args.frames:
                break
        latencies = [ns / 1e3 for ns in receiver.latencies_ns]
        summary = {
            "frames": receiver.frames,
            "missing": receiver.missing,
            "last_seq": frame.seq,
            "fps": round(receiver.fps, 1),
            "latency_us_p50": round(percentile(latencies, 50), 1),
            "latency_us_p99": round(percentile(latencies, 99), 1),
        }
        print(json.dumps(summary) if args.json else summary, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("socket", nargs="?", default="@/tmp/memif-frames.sock")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--json", action="store_true")
    memif_aio.run(main(parser.parse_args()))
