"""Run CPython's own asyncio test suite (``test.test_asyncio``, installed with
Python) against aiouring's loop and against asyncio's own loop, and print
pass/fail/skip counts per module side by side.

    .venv/bin/python tests/cpython_suite.py                      # default modules
    .venv/bin/python tests/cpython_suite.py test_events test_sock_lowlevel
    .venv/bin/python tests/cpython_suite.py -v test_events       # list failures
    .venv/bin/python tests/cpython_suite.py --json out.json

How aiouring's loop is put under the tests (``--child aiouring``)
-----------------------------------------------------------------
The tests make real loops in three ways, and all three are redirected:

* ``asyncio.SelectorEventLoop(selector)`` in the per-loop classes
  (``EPollEventLoopTests`` etc. in test_events, test_sock_lowlevel,
  test_sendfile; ``SelectorStartServerTests``, ...): the name is replaced by a
  subclass of :class:`aiouring.Loop` that ignores the selector argument;
* ``asyncio.new_event_loop()`` / ``asyncio.run()``: the default policy's loop
  factory is replaced, so this survives the many ``set_event_loop_policy(None)``
  calls in the suite's tearDowns;
* ``self.new_test_loop()`` builds ``test_utils.TestLoop``, a loop with a fake
  clock and no I/O. It is not ours and is left alone (those tests pass or fail
  identically on both sides).

The per-selector duplicates (``PollEventLoopTests``, ``SelectEventLoopTests``,
``KqueueEventLoopTests``) are dropped on both sides: with the patch they would
run aiouring three more times and add nothing.

Each module runs in its own interpreter with a time limit, so a hang or crash
in one module is reported and does not stop the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
import unittest

DEFAULT_MODULES = (
    "test_events",
    "test_sock_lowlevel",
    "test_sendfile",
    "test_server",
    "test_streams",
    "test_buffered_proto",
    "test_subprocess",
    "test_unix_events",
    "test_tasks",
    "test_futures",
    "test_futures2",
    "test_locks",
    "test_queues",
    "test_timeouts",
    "test_waitfor",
    "test_taskgroups",
    "test_runners",
    "test_context",
    "test_pep492",
    "test_threads",
    "test_ssl",
    "test_sslproto",
    "test_base_events",
    "test_selector_events",
)

# Per-selector copies of the same tests; see the module docstring.
_DUPLICATE_CLASSES = ("PollEventLoopTests", "SelectEventLoopTests", "KqueueEventLoopTests")
_MODULE_TIMEOUT = 600.0
_CHILD_MEMORY_LIMIT = 4 << 30
_SuiteLoop = None   # set by _patch_in_aiouring, to count the loops it made


def _patch_in_aiouring() -> None:
    import asyncio
    from asyncio import unix_events

    import aiouring

    class SuiteLoop(aiouring.Loop):
        """aiouring.Loop accepting (and ignoring) the selector argument the
        suite passes to SelectorEventLoop."""

        created = 0

        def __init__(self, selector=None):
            super().__init__()
            SuiteLoop.created += 1

    global _SuiteLoop
    _SuiteLoop = SuiteLoop
    asyncio.SelectorEventLoop = SuiteLoop
    unix_events.SelectorEventLoop = SuiteLoop
    unix_events._UnixDefaultEventLoopPolicy._loop_factory = SuiteLoop


def _iter_tests(suite):
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            yield from _iter_tests(test)
        else:
            yield test


class _CountingResult(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passed: list = []

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed.append(test.id())


def _child(kind: str, module: str) -> int:
    """Run one module on one loop; print one JSON line with the outcome."""
    # Started from a background shell, SIGINT arrives ignored; test_runners'
    # interrupt tests then spin forever (and a Mock in them grows without end).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # A module that runs away must fail alone, not take the machine with it.
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _CHILD_MEMORY_LIMIT if hard == resource.RLIM_INFINITY else min(hard, _CHILD_MEMORY_LIMIT)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    if kind == "aiouring":
        _patch_in_aiouring()
    from test import support
    support.requires_working_socket = lambda module=False: None  # noqa: E731 (a stub)
    loader = unittest.TestLoader()
    suite = loader.loadTestsFromName(f"test.test_asyncio.{module}")
    kept = unittest.TestSuite(
        t for t in _iter_tests(suite)
        if type(t).__name__ not in _DUPLICATE_CLASSES)
    with open(os.devnull, "w") as devnull:
        runner = unittest.TextTestRunner(stream=devnull, resultclass=_CountingResult, verbosity=0)
        result = runner.run(kept)
    report = {
        "module": module,
        "loop": kind,
        "run": result.testsRun,
        "passed": sorted(result.passed),
        "failures": sorted((t.id(), tb) for t, tb in result.failures),
        "errors": sorted((t.id(), tb) for t, tb in result.errors),
        "skipped": sorted(t.id() for t, _reason in result.skipped),
        "expected_failures": len(result.expectedFailures),
        "unexpected_successes": len(result.unexpectedSuccesses),
        "aiouring_loops": _SuiteLoop.created if _SuiteLoop is not None else 0,
    }
    sys.stdout.write("\n@@RESULT@@" + json.dumps(report) + "\n")
    return 0


def _run_module(kind: str, module: str, debug: bool = False) -> dict:
    started = time.monotonic()
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, module]
    env = dict(os.environ)
    if debug:
        env["PYTHONASYNCIODEBUG"] = "1"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_MODULE_TIMEOUT, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"module": module, "loop": kind, "crashed": f"timed out after {_MODULE_TIMEOUT:.0f}s",
                "seconds": time.monotonic() - started}
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            report = json.loads(line[len("@@RESULT@@"):])
            report["seconds"] = time.monotonic() - started
            return report
    tail = (proc.stderr or proc.stdout)[-2000:]
    return {"module": module, "loop": kind, "crashed": f"exit {proc.returncode}: {tail}",
            "seconds": time.monotonic() - started}


def _counts(report: dict) -> str:
    if "crashed" in report:
        return "CRASHED"
    bad = len(report["failures"]) + len(report["errors"])
    counts = f"{len(report['passed']):4d} pass {bad:3d} fail {len(report['skipped']):3d} skip"
    if report["loop"] == "aiouring":
        counts += f" {report['aiouring_loops']:4d} loops"
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", default=list(DEFAULT_MODULES))
    parser.add_argument("--child", choices=("aiouring", "asyncio"), help=argparse.SUPPRESS)
    parser.add_argument("--loops", default="aiouring,asyncio")
    parser.add_argument("-v", "--verbose", action="store_true", help="list tests that fail only on aiouring")
    parser.add_argument("--tracebacks", action="store_true", help="with -v: print their tracebacks")
    parser.add_argument("--json", help="write the full reports to this file")
    parser.add_argument("--debug", action="store_true", help="run both sides in asyncio debug mode")
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child, args.modules[0])

    kinds = args.loops.split(",")
    reports: list = []
    print(f"{'module':24s} " + "  ".join(f"{k:>40s}" for k in kinds) + "   only-aiouring-failures")
    regressions_total = 0
    for module in args.modules:
        row = {kind: _run_module(kind, module, args.debug) for kind in kinds}
        reports.extend(row.values())
        regressions: list = []
        if "aiouring" in row and "asyncio" in row and "crashed" not in row["aiouring"]:
            ok_on_asyncio = set(row["asyncio"].get("passed", ()))
            broken = dict(row["aiouring"]["failures"] + row["aiouring"]["errors"])
            regressions = sorted(t for t in broken if t in ok_on_asyncio)
        elif "crashed" in row.get("aiouring", {}):
            regressions = ["<module crashed>"]
        regressions_total += len(regressions)
        print(f"{module:24s} " + "  ".join(f"{_counts(row[k]):>40s}" for k in kinds)
              + f"   {len(regressions)}", flush=True)
        if args.verbose:
            if "crashed" in row.get("aiouring", {}):
                print("    " + row["aiouring"]["crashed"].replace("\n", "\n    "))
            broken = dict(row.get("aiouring", {}).get("failures", []) + row.get("aiouring", {}).get("errors", []))
            for test_id in regressions:
                print(f"    {test_id}")
                if args.tracebacks and test_id in broken:
                    print("      " + broken[test_id].strip().replace("\n", "\n      "))
    print(f"tests that pass on asyncio's loop and fail on aiouring: {regressions_total}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=1)
    return 1 if regressions_total else 0


if __name__ == "__main__":
    sys.exit(main())
