#!/usr/bin/env bash
# The "main job" demo: on a fresh Linux machine, from the repository root,
#
#     bash bench/demo.sh
#
# sets up everything it needs and runs the quick benchmark (1-2 minutes on an idle
# machine, after the one-time installation):
#   1. a virtualenv .venv at the repo root (python3 -m venv; reused if present)
#   2. pip install -e '.[bench]'  (aiouring + uvloop, aiohttp, httptools,
#      matplotlib, aiofiles); if aiouring itself does not build, the bench
#      dependencies are installed alone and the other loops still run
#   3. wrk via apt-get if it is missing (as root; otherwise it says how)
#   4. the C load generator (built by run_benchmarks.py into bench/build/)
#   5. which ring backing aiouring got (python -m aiouring), then
#      python bench/run_benchmarks.py --quick  -> table, bench/results/latest.*
# Extra arguments are passed to run_benchmarks.py (e.g. --rounds 5).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
VENV="$ROOT/.venv"
BENCH_DEPS=(uvloop aiohttp httptools matplotlib aiofiles)

say() { printf '\n==> %s\n' "$*"; }

say "virtualenv $VENV"
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PY" -m venv "$VENV"; then
        echo "python3 -m venv failed; on Debian/Ubuntu: apt-get install python3-venv" >&2
        exit 1
    fi
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true

say "pip install -e '.[bench]'"
PIPLOG="$VENV/pip-install.log"
if "$VPY" -m pip install -e ".[bench]" >"$PIPLOG" 2>&1; then
    echo "ok (log: $PIPLOG)"
else
    tail -n 15 "$PIPLOG" >&2
    echo "!! installing aiouring failed (log: $PIPLOG); installing the benchmark dependencies alone," >&2
    echo "!! the benchmark will run without aiouring" >&2
    "$VPY" -m pip install -q "${BENCH_DEPS[@]}"
fi

say "wrk (HTTP load generator)"
if ! command -v wrk >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; } \
            || echo "!! apt-get could not install wrk: HTTP cases will be skipped" >&2
    else
        echo "!! wrk is missing: HTTP cases will be skipped (install: sudo apt-get install wrk)" >&2
    fi
fi
command -v wrk >/dev/null 2>&1 && wrk --version 2>&1 | head -1 || true

say "C compiler"
if ! command -v gcc >/dev/null 2>&1 && ! command -v cc >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get install -y -q gcc libc6-dev >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q gcc libc6-dev >/dev/null; } || true
    fi
fi
command -v gcc >/dev/null 2>&1 && gcc --version | head -1 || echo "!! no gcc: echo cases will be skipped" >&2

say "aiouring ring backing (python -m aiouring)"
if "$VPY" -c "import aiouring" >/dev/null 2>&1; then
    "$VPY" bench/platinfo.py --aiouring-backing || timeout 60 "$VPY" -m aiouring || echo "!! python -m aiouring failed" >&2
else
    echo "aiouring is not importable: $("$VPY" -c 'import aiouring' 2>&1 | tail -1)"
fi

say "quick benchmark: asyncio vs uvloop vs aiouring"
exec "$VPY" bench/run_benchmarks.py --quick "$@"
