"""CPython's own subprocess and signal tests, run on aiouring's loop and on
asyncio's, side by side (asyncio is the oracle).

    .venv/bin/python tests/cpython_subprocess_suite.py          # counts
    .venv/bin/python tests/cpython_subprocess_suite.py -v       # and every non-pass

What runs
---------
* ``test.test_asyncio.test_subprocess``: its loops come from
  ``policy.new_event_loop()`` (and ``asyncio.new_event_loop()`` /
  ``asyncio.Runner``), so on the aiouring side aiouring's policy is installed.
  Every ``Subprocess*WatcherTests`` class then runs against aiouring's ring
  child watch, whichever watcher the class attaches: aiouring does not consult
  child watchers (as uvloop does not).
* The signal tests of ``test.test_asyncio.test_unix_events``
  (``SelectorEventLoopSignalTests``), whose loops are built as
  ``asyncio.SelectorEventLoop()``: that name is pointed at aiouring's loop.

Each side runs in its own interpreter with a time limit.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = (
    "test.test_asyncio.test_subprocess",
    "test.test_asyncio.test_unix_events.SelectorEventLoopSignalTests",
)
TIME_LIMIT = 600


def _use_aiouring() -> None:
    sys.path.insert(0, REPO)
    import asyncio
    import aiouring

    class _SelectorLoop(aiouring.Loop):
        # test_unix_events builds asyncio.SelectorEventLoop(selector=None).
        def __init__(self, selector=None):
            super().__init__()

    asyncio.SelectorEventLoop = _SelectorLoop
    asyncio.unix_events.SelectorEventLoop = _SelectorLoop
    # The suite resets the policy in tearDowns (set_event_loop_policy(None)),
    # which builds a fresh default policy: make that default ours.
    asyncio.unix_events.DefaultEventLoopPolicy._loop_factory = _SelectorLoop
    asyncio.DefaultEventLoopPolicy._loop_factory = _SelectorLoop
    asyncio.set_event_loop_policy(aiouring.EventLoopPolicy())


def _child(kind: str, verbose: bool) -> int:
    if kind == "aiouring":
        _use_aiouring()
    suite = unittest.defaultTestLoader.loadTestsFromNames(TESTS)
    result = unittest.TextTestRunner(stream=open(os.devnull, "w"), verbosity=0).run(suite)
    skipped = len(result.skipped)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - skipped - failed - len(result.expectedFailures)
    print(f"RESULT {kind} run={result.testsRun} passed={passed} failed={failed} skipped={skipped}", flush=True)
    if verbose:
        for test, tb in result.failures + result.errors:
            print(f"--- NOT PASSED {kind}: {test.id()}\n{tb}", flush=True)
        for test in result.unexpectedSuccesses:
            print(f"--- UNEXPECTED SUCCESS {kind}: {test.id()}", flush=True)
    return 0 if failed == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--child", choices=("aiouring", "asyncio"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args.child, args.verbose)
    status = 0
    for kind in ("asyncio", "aiouring"):
        cmd = [sys.executable, __file__, "--child", kind] + (["-v"] if args.verbose else [])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIME_LIMIT, cwd=REPO)
        except subprocess.TimeoutExpired:
            print(f"{kind}: timed out after {TIME_LIMIT}s")
            status = 1
            continue
        out = proc.stdout
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT")]
        print(lines[0] if lines else f"{kind}: crashed (rc {proc.returncode})\n{proc.stderr[-3000:]}")
        if args.verbose:
            print("\n".join(ln for ln in out.splitlines() if not ln.startswith("RESULT")))
        status |= proc.returncode != 0
    return status


if __name__ == "__main__":
    sys.exit(main())
