#!/usr/bin/env bash
# The whole test suite, on a fresh machine: creates .venv, installs aiouring
# (compiling its C layer) with the test dependencies, runs pytest.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k tcp -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
