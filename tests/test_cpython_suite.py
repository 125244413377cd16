"""A fast subset of CPython's own asyncio test suite, run against aiouring's
loop (see tests/cpython_suite.py and docs/cpython-suite.md for the whole
comparison). Every test in these modules passes on asyncio's own loop, so
any failure here is an aiouring regression."""

import os
import subprocess
import sys
import json

import pytest

_SCRIPT = os.path.join(os.path.dirname(__file__), "cpython_suite.py")

# The modules that drive a real loop through sockets, servers, streams,
# sendfile and TLS, and BaseEventLoop's real-loop tests; together about 25 s on a loaded 2-core machine.
FAST_MODULES = ("test_events", "test_sock_lowlevel", "test_sendfile", "test_server",
                "test_streams", "test_buffered_proto", "test_sslproto", "test_base_events")


def _have_cpython_tests() -> bool:
    try:
        import test.test_asyncio  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _have_cpython_tests(), reason="this Python has no test.test_asyncio")
@pytest.mark.parametrize("module", FAST_MODULES)
def test_cpython_asyncio_module_passes_on_aiouring(module):
    proc = subprocess.run([sys.executable, _SCRIPT, "--child", "aiouring", module],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@")]
    assert lines, f"the module crashed: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    report = json.loads(lines[0][len("@@RESULT@@"):])
    broken = report["failures"] + report["errors"]
    assert not broken, "\n\n".join(f"{test_id}\n{tb}" for test_id, tb in broken)
    assert report["aiouring_loops"] > 0, "the suite never made an aiouring loop: the patch failed"
    assert report["passed"]
