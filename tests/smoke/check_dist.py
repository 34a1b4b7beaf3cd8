"""What `make dist` produced, checked against the source tree (run from the tree, after it).

    python tests/smoke/check_dist.py dist

The sdist carries what a build needs (every .pyx/.pxd/.pxi, no generated C) and what a user
reads and runs; the wheel is manylinux_2_28 (or older), holds every module of the tree, and
its extension is stripped and carries no RPATH of the build machine. Needs pyelftools (comes
with auditwheel).
"""

from __future__ import annotations

import io
import sys
import tarfile
import zipfile
from pathlib import Path

from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

MAX_GLIBC = (2, 28)

TREE = Path(__file__).resolve().parents[2]


def fail(message: str) -> None:
    raise SystemExit(f"check_dist: {message}")


def check_sdist(path: Path) -> None:
    with tarfile.open(path) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    cython = {str(p.relative_to(TREE)) for p in (TREE / "cython_ext").iterdir()}
    cython = {name for name in cython if name.endswith((".pyx", ".pxd", ".pxi", ".h"))}
    cython.add("memif_aio/_ring.pxd")  # the extension module's declarations
    needed = cython | {
        "pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "CHANGELOG.md",
        "tests/conftest.py", *(str(p.relative_to(TREE)) for p in TREE.glob("examples/*.py")),
        *(str(p.relative_to(TREE)) for p in TREE.glob("memif_aio/**/*.py")),
    }  # fmt: skip
    if missing := sorted(needed - names):
        fail(f"{path.name} lacks {missing}")
    if generated := sorted(n for n in names if n.startswith("cython_ext/") and n.endswith(".c")):
        fail(f"{path.name} ships generated C {generated}: the build cythonizes the .pyx")
    size = path.stat().st_size
    print(f"sdist: {path.name}, {size} bytes, {len(names)} files, Cython {sorted(cython)}")


def check_extension(name: str, data: bytes) -> None:
    elf = ELFFile(io.BytesIO(data))
    sections = {s.name for s in elf.iter_sections()}
    if unstripped := sorted(s for s in sections if s == ".symtab" or s.startswith(".debug")):
        fail(f"{name} is not stripped: {unstripped}")
    for section in elf.iter_sections():
        if isinstance(section, DynamicSection):
            for tag in section.iter_tags():
                if tag.entry.d_tag in ("DT_RPATH", "DT_RUNPATH"):
                    fail(f"{name} carries a library path of the build machine: {tag.runpath}")
    print(f"  {name}: {len(data)} bytes, stripped, no RPATH")


def check_wheel(path: Path) -> None:
    if "-manylinux_" not in path.name:
        fail(f"{path.name} is not a manylinux wheel")
    # glibc 2.28: RHEL 8, Debian 10, Ubuntu 20.04 and later. A newer symbol version (glibc 2.34
    # re-versioned the pthread functions, for one) silently drops those systems.
    glibc = tuple(map(int, path.name.split("-manylinux_")[1].split("_")[:2]))
    if glibc > MAX_GLIBC:
        fail(f"{path.name} needs glibc {glibc} > {MAX_GLIBC}: a newer libc symbol crept in")
    with zipfile.ZipFile(path) as wheel:
        names = set(wheel.namelist())
        modules = {str(p.relative_to(TREE)) for p in TREE.glob("memif_aio/**/*.py")}
        stubs = {"memif_aio/py.typed", "memif_aio/_ring.pyi"}
        if missing := sorted((modules | stubs) - names):
            fail(f"{path.name} lacks {missing}")
        print(f"wheel: {path.name}, {path.stat().st_size} bytes, {len(names)} files")
        extensions = [n for n in names if n.endswith(".so")]
        if not extensions:
            fail(f"{path.name} has no compiled extension")
        for name in extensions:
            check_extension(name, wheel.read(name))


def main() -> None:
    dist = Path(sys.argv[1])
    sdists, wheels = list(dist.glob("*.tar.gz")), list(dist.glob("*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        fail(f"want one sdist and one wheel in {dist}, found {sdists + wheels}")
    check_sdist(sdists[0])
    check_wheel(wheels[0])


if __name__ == "__main__":
    main()
