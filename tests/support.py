"""Shared test support: run one behaviour test on both aiouring and asyncio's
own loop (asyncio is the oracle), and check that a test leaves nothing behind.

Use the ``loop`` fixture (parametrized over LOOP_KINDS) in a test module:

    from tests.support import loop, loop_kind, run  # noqa: F401  (fixtures)

    def test_echo(loop):
        async def main(): ...
        run(loop, main())

Teardown fails the test when the loop's exception handler was called
unexpectedly (mark the test with ``@pytest.mark.loop_errors_ok`` to allow it),
when aiouring still has operations in flight after ``close()``, or when the
process has more open fds than before the test.
"""

from __future__ import annotations

import asyncio
import gc
import os

import pytest

import aiouring

LOOP_KINDS = ("aiouring", "asyncio")


def make_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "aiouring":
        return aiouring.Loop()
    if kind == "asyncio":
        return asyncio.SelectorEventLoop()
    raise ValueError(kind)


def open_fds() -> set:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request) -> str:
    return request.param


@pytest.fixture
def loop(loop_kind, request):
    gc.collect()
    fds_before = open_fds()
    lp = make_loop(loop_kind)
    errors: list = []
    lp.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    asyncio.set_event_loop(lp)
    try:
        yield lp
    finally:
        try:
            if not lp.is_closed():
                lp.run_until_complete(lp.shutdown_asyncgens())
                lp.close()
        finally:
            asyncio.set_event_loop(None)
    if loop_kind == "aiouring":
        assert len(lp._ops) == 0, f"operations still in flight after close: {lp._ops.handlers}"
    gc.collect()
    leaked = open_fds() - fds_before
    # The directory listing itself opens an fd that is gone by now; compare sets.
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"fds leaked: {sorted(leaked)} -> {[os.readlink(f'/proc/self/fd/{fd}') for fd in leaked if os.path.exists(f'/proc/self/fd/{fd}')]}"
    if not request.node.get_closest_marker("loop_errors_ok"):
        assert not errors, f"unexpected exception handler calls: {errors}"


def run(loop: asyncio.AbstractEventLoop, coro, timeout: float = 30.0):
    """Run ``coro`` to completion on ``loop`` with a watchdog, so a hang fails."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))
