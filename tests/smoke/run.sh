#!/usr/bin/env bash
# Smoke test of a built wheel as a user gets it: a fresh virtualenv in an empty directory
# outside the source tree, holding the wheel (+ pytest and pytest-asyncio for the plugin).
# Given the sdist too, it is also installed the way pip does without a wheel (built from
# source in an isolated environment) into a second fresh virtualenv, and checked there.
#   bash tests/smoke/run.sh dist/memif_aio-*-manylinux_*.whl [dist/memif_aio-*.tar.gz]
set -euo pipefail
{ [ $# -eq 1 ] || [ $# -eq 2 ]; } && [ -f "$1" ] || { echo "usage: $0 WHEEL [SDIST]" >&2; exit 2; }
wheel=$(realpath "$1")
sdist=${2:+$(realpath "$2")}
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/memif-aio-smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp "$here/check_installed.py" "$here/exchange.py" "$here/test_installed_plugin.py" "$work/"
cd "$work"
unset PYTHONPATH PYTHONHOME

echo "smoke: $(basename "$wheel") in $work"
"$python" -m venv venv
venv/bin/python -m pip install -q "$wheel" "pytest>=8" "pytest-asyncio>=1.5,<2"
venv/bin/python check_installed.py
venv/bin/python exchange.py 10000
venv/bin/python -m pytest -q -p no:cacheprovider -o asyncio_default_fixture_loop_scope=function \
    test_installed_plugin.py
if [ -n "$sdist" ]; then
    echo "smoke: pip install $(basename "$sdist") (built from source)"
    "$python" -m venv venv-sdist
    venv-sdist/bin/python -m pip install -q "$sdist"
    venv-sdist/bin/python check_installed.py
    venv-sdist/bin/python exchange.py 10000
fi
echo "smoke: passed"
