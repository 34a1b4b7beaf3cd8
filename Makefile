# The two commands of the README. Each sets itself up from a fresh clone:
# a virtualenv, the package with its Cython extension, and (for tests) DPDK's testpmd and tshark.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deps-installed
SOURCES := $(wildcard cython_ext/*.pyx cython_ext/*.pxd)

.PHONY: demo test build lint dpdk tshark bench clean

demo: build
	$(VENV)/bin/memif-aio demo

test: build dpdk tshark
	$(PY) -m pytest $(PYTEST_ARGS)

build: $(STAMP) memif_aio/.built

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "setuptools>=77" wheel "Cython>=3.0" "numpy>=1.26" "uvloop>=0.19" \
		"pytest>=8" "pytest-asyncio>=1.5,<2" "pytest-timeout>=2.3" "hypothesis>=6.100" "ruff>=0.5" "matplotlib>=3.7"
	touch $@

# Editable install builds memif_aio/_ring*.so in place; rebuilt whenever a .pyx/.pxd changes.
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

lint: build
	$(VENV)/bin/ruff check memif_aio tests benchmarks examples
	$(VENV)/bin/ruff format --check memif_aio tests benchmarks examples

bench: build dpdk
	$(PY) benchmarks/bench_dpdk.py

clean:
	rm -rf build $(VENV) memif_aio/*.so memif_aio/.built cython_ext/*.c *.egg-info
