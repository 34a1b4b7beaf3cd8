"""Two processes exchange packets over memif through the installed memif_aio.

    python exchange.py 10000

This process is the slave (on uvloop); it starts a master (on asyncio's loop) as a child
process on a fresh abstract socket. The slave sends COUNT packets of 60..1500 bytes, each
stamped with its sequence number; the master checks each one and echoes it; the slave checks
each echo. Both count packets and bytes, and both sides' interface counters must agree.
Exit status 0 only if every packet arrived intact, in order, both ways.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import memif_aio


def payload(seq: int) -> bytes:
    size = 60 + (seq * 37) % 1441  # 60..1500
    return seq.to_bytes(4, "little") + bytes([seq & 0xFF]) * (size - 4)


def expected(count: int) -> dict[str, int]:
    return {"packets": count, "bytes": sum(len(payload(seq)) for seq in range(count))}


async def master(path: str, count: int) -> dict[str, int]:
    async with memif_aio.Socket(path) as sock:
        iface = await sock.create_interface(id=0, role="master")
        print("listening", flush=True)
        await iface.wait_connected(10)
        rxq, txq = iface.rx_queues[0], iface.tx_queues[0]
        seq = nbytes = 0
        while seq < count:
            burst = await rxq.recv_burst()
            for i in range(len(burst)):
                packet = bytes(burst[i])
                if packet != payload(seq):
                    raise SystemExit(f"master: packet {seq} arrived corrupted")
                seq += 1
                nbytes += len(packet)
            await txq.send_burst(burst)  # echo, copied ring to ring
        await iface.wait_disconnected()  # the slave leaves once it has every echo
        return {"packets": seq, "bytes": nbytes, **iface.stats()}


async def slave(path: str, count: int) -> dict[str, int]:
    async with memif_aio.connect(path, id=0, timeout=10) as iface:
        rxq, txq = iface.rx_queues[0], iface.tx_queues[0]

        async def send_all() -> None:
            for seq in range(count):
                await txq.send(payload(seq))  # waits for room: never dropped

        sender = asyncio.create_task(send_all())
        seq = nbytes = 0
        async for packet in rxq:
            if bytes(packet) != payload(seq):
                raise SystemExit(f"slave: echo {seq} came back corrupted")
            seq += 1
            nbytes += len(packet)
            if seq == count:
                break
        await sender
        return {"packets": seq, "bytes": nbytes, **iface.stats()}


def main() -> int:
    if sys.argv[1] == "--master":
        result = memif_aio.run(master(sys.argv[2], int(sys.argv[3])), use_uvloop=False)
        print(json.dumps(result), flush=True)
        return 0
    count = int(sys.argv[1])
    path = f"@/tmp/memif-aio-smoke-{uuid.uuid4().hex[:12]}"
    child = subprocess.Popen(
        [sys.executable, __file__, "--master", path, str(count)], stdout=subprocess.PIPE, text=True
    )
    try:
        if child.stdout.readline().strip() != "listening":
            raise SystemExit("master did not start")
        ours = memif_aio.run(slave(path, count))  # uvloop: a dependency of the package
        out, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    if child.returncode != 0:
        raise SystemExit(f"master exited with {child.returncode}")
    theirs = json.loads(out)
    want = expected(count)
    checks = {
        "slave received": (ours["packets"], ours["bytes"]),
        "master received": (theirs["packets"], theirs["bytes"]),
        "slave counters rx": (ours["rx_packets"], ours["rx_bytes"]),
        "slave counters tx": (ours["tx_packets"], ours["tx_bytes"]),
        "master counters rx": (theirs["rx_packets"], theirs["rx_bytes"]),
        "master counters tx": (theirs["tx_packets"], theirs["tx_bytes"]),
    }
    wrong = {k: v for k, v in checks.items() if v != (want["packets"], want["bytes"])}
    errors = sum(side[k] for side in (ours, theirs) for k in ("rx_errors", "tx_errors"))
    drops = sum(side[k] for side in (ours, theirs) for k in ("rx_drops", "tx_drops"))
    if wrong or errors or drops:
        raise SystemExit(f"expected {want} everywhere, got {wrong}; errors {errors} drops {drops}")
    print(
        f"exchange: {count} packets, {want['bytes']} bytes each way between pids "
        f"{child.pid} (master) and this one (slave); counters agree, 0 errors, 0 drops"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
