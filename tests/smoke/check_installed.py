"""The installed package, seen from a directory outside the source tree.

- memif_aio and its compiled ring core load from this virtualenv's site-packages;
- ``memif-aio --version`` and ``python -m memif_aio --version`` print the installed version;
- with uvloop made unimportable, every module of the package imports and a master/slave pair
  moves a packet on asyncio's own loop (uvloop is imported only when asked for).
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import sysconfig
from pathlib import Path

import memif_aio
import memif_aio._ring

WITHOUT_UVLOOP = """
import asyncio, importlib, importlib.util, pkgutil, sys
sys.modules["uvloop"] = None  # import uvloop now raises ImportError
import memif_aio
modules = pkgutil.walk_packages(memif_aio.__path__, "memif_aio.")
names = [m.name for m in modules if not m.name.endswith(".__main__")]  # that one runs the CLI
if importlib.util.find_spec("pytest") is None:  # the pytest plugin needs pytest, nothing else does
    names.remove("memif_aio.testing.plugin")
for name in names:
    importlib.import_module(name)
assert sys.modules["uvloop"] is None

async def pair():
    path = "@/tmp/memif-aio-no-uvloop-%d" % id(names)
    async with memif_aio.Socket(path) as a, memif_aio.Socket(path) as b:
        master = await a.create_interface(role="master")
        slave = await b.create_interface(role="slave")
        await asyncio.gather(master.wait_connected(10), slave.wait_connected(10))
        await slave.tx_queues[0].send(b"no uvloop needed")
        return await master.rx_queues[0].recv()

assert memif_aio.run(pair(), use_uvloop=False) == b"no uvloop needed"
print(f"without uvloop: {len(names)} modules import, a packet moves on asyncio's loop")
"""


def main() -> None:
    site = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    package = Path(memif_aio.__file__).resolve().parent
    assert package.parent in site, f"memif_aio imported from {package}, not {site}"
    ring = Path(memif_aio._ring.__file__).resolve()
    assert ring.parent == package and ring.suffix == ".so", ring
    print(f"import: {package} (ring core {ring.name})")

    version = importlib.metadata.version("memif-aio")
    assert memif_aio.__version__ == version, (memif_aio.__version__, version)
    script = Path(sys.executable).parent / "memif-aio"
    for command in ([str(script), "--version"], [sys.executable, "-m", "memif_aio", "--version"]):
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
        assert out == f"memif-aio {version}", (command, out)
        print(f"{' '.join(Path(c).name for c in command)}: {out}")

    subprocess.run([sys.executable, "-c", WITHOUT_UVLOOP], check=True)


if __name__ == "__main__":
    main()
