"""Signal handlers on both loops (asyncio's own loop is the oracle).

On aiouring a signal reaches the loop as asyncio's does: the C-level handler
writes the signal number to the self-pipe (``signal.set_wakeup_fd``) and a ring
poll on that pipe wakes the ``io_uring_enter`` the loop is waiting in (which
also returns early with EINTR). These tests check that path end to end,
including signals sent while the loop sleeps in the kernel and from another
process, and asyncio's rules for bad input.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tests.support import loop, loop_kind, run  # noqa: F401  (fixtures)

PY = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_handler_called_with_args(loop):
    got = []

    async def main():
        fut = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, lambda *a: (got.append(a), fut.done() or fut.set_result(None)), 1, "x")
        loop.call_later(0.05, os.kill, os.getpid(), signal.SIGUSR1)
        await fut
        return loop.remove_signal_handler(signal.SIGUSR1), loop.remove_signal_handler(signal.SIGUSR1)

    assert run(loop, main()) == (True, False)
    assert got == [(1, "x")]
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_while_loop_waits_in_the_kernel(loop):
    """Nothing else is ready: the loop is blocked in io_uring_enter (or epoll)
    with a long timeout when another thread sends the signal."""
    async def main():
        fut = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR2, fut.set_result, "woken")
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR2)).start()
        sleeper = asyncio.ensure_future(asyncio.sleep(3600))
        started = time.monotonic()
        res = await asyncio.wait_for(fut, 10)
        sleeper.cancel()
        loop.remove_signal_handler(signal.SIGUSR2)
        return res, time.monotonic() - started

    res, elapsed = run(loop, main())
    assert res == "woken" and elapsed < 10


def test_signal_from_another_process(loop):
    async def main():
        fut = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, fut.set_result, "from kill(1)")
        p = await asyncio.create_subprocess_exec("kill", "-USR1", str(os.getpid()))
        assert await p.wait() == 0
        res = await asyncio.wait_for(fut, 10)
        loop.remove_signal_handler(signal.SIGUSR1)
        return res

    assert run(loop, main()) == "from kill(1)"


def test_sigint_and_sigterm_handlers(loop):
    async def main():
        seen = []
        both = loop.create_future()

        def on(signame):
            seen.append(signame)
            if len(seen) == 2 and not both.done():
                both.set_result(None)

        loop.add_signal_handler(signal.SIGINT, on, "INT")
        loop.add_signal_handler(signal.SIGTERM, on, "TERM")
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(both, 10)
        assert loop.remove_signal_handler(signal.SIGINT)
        assert loop.remove_signal_handler(signal.SIGTERM)
        return sorted(seen)

    assert run(loop, main()) == ["INT", "TERM"]
    # asyncio puts Python's KeyboardInterrupt handler back for SIGINT.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_burst_of_signals_each_handled_at_least_once(loop):
    async def main():
        count = 0
        first = loop.create_future()

        def on():
            nonlocal count
            count += 1
            if not first.done():
                first.set_result(None)

        loop.add_signal_handler(signal.SIGUSR1, on)
        for _ in range(200):
            os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.wait_for(first, 10)
        await asyncio.sleep(0.05)
        loop.remove_signal_handler(signal.SIGUSR1)
        return count

    # Pending signals of one kind coalesce: between 1 and 200 calls.
    assert 1 <= run(loop, main()) <= 200


def test_handler_replaced(loop):
    async def main():
        fut = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, fut.set_result, "old")
        loop.add_signal_handler(signal.SIGUSR1, fut.set_result, "new")
        os.kill(os.getpid(), signal.SIGUSR1)
        res = await asyncio.wait_for(fut, 10)
        loop.remove_signal_handler(signal.SIGUSR1)
        return res

    assert run(loop, main()) == "new"


def test_bad_input_raises_what_asyncio_raises(loop):
    async def coro_handler():
        pass

    cases = {
        "SIGKILL": lambda: loop.add_signal_handler(signal.SIGKILL, print),
        "SIGSTOP": lambda: loop.add_signal_handler(signal.SIGSTOP, print),
        "zero": lambda: loop.add_signal_handler(0, print),
        "too big": lambda: loop.add_signal_handler(signal.NSIG + 1, print),
        "string": lambda: loop.add_signal_handler("SIGINT", print),
        "coroutine function": lambda: loop.add_signal_handler(signal.SIGUSR1, coro_handler),
        "remove invalid": lambda: loop.remove_signal_handler(signal.NSIG + 1),
        "remove string": lambda: loop.remove_signal_handler("SIGINT"),
    }
    raised = {}
    for name, call in cases.items():
        with pytest.raises(Exception) as info:
            call()
        raised[name] = (type(info.value), str(info.value))
    assert {k: v[0] for k, v in raised.items()} == {
        "SIGKILL": RuntimeError, "SIGSTOP": RuntimeError, "zero": ValueError, "too big": ValueError,
        "string": TypeError, "coroutine function": TypeError, "remove invalid": ValueError,
        "remove string": TypeError,
    }
    assert raised["SIGKILL"][1] == f"sig {int(signal.SIGKILL)} cannot be caught"
    # A failed add leaves nothing behind: no handler, no wakeup fd.
    assert loop.remove_signal_handler(signal.SIGKILL) is False
    assert signal.set_wakeup_fd(-1) == -1


def test_only_from_the_main_thread(loop):
    errors = []

    def other_thread():
        try:
            loop.add_signal_handler(signal.SIGUSR1, print)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert len(errors) == 1 and type(errors[0]) is RuntimeError
    assert "main thread" in str(errors[0])


def test_close_removes_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR1, print)
    loop.add_signal_handler(signal.SIGINT, print)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.set_wakeup_fd(-1) == -1


_CTRL_C_CHILD = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {repo!r})
    import aiouring

    async def main():
        try:
            print("ready", flush=True)
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            print("main task cancelled", flush=True)
            raise

    runner = aiouring.run if sys.argv[1] == "aiouring" else asyncio.run
    kwargs = {{"strict": True}} if sys.argv[1] == "aiouring" else {{}}
    try:
        runner(main(), **kwargs)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        sys.exit(3)
""")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.run cancels the main task on Ctrl-C from 3.11")
@pytest.mark.parametrize("runner", ["aiouring", "asyncio"])
def test_ctrl_c_cancels_the_main_task(runner):
    child = subprocess.Popen([PY, "-c", _CTRL_C_CHILD.format(repo=REPO), runner],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        time.sleep(0.1)   # let the loop go back to waiting in the kernel
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert (out, child.returncode) == ("main task cancelled\nKeyboardInterrupt\n", 3), err


_PLAIN_CTRL_C_CHILD = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {repo!r})
    import aiouring

    loop = aiouring.Loop() if sys.argv[1] == "aiouring" else asyncio.SelectorEventLoop()
    # No loop signal handler anywhere, so no wakeup fd: only the interrupted
    # wait (EINTR) can bring Python's KeyboardInterrupt to the loop.
    print("ready", flush=True)
    try:
        loop.run_until_complete(asyncio.sleep(3600))
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
    finally:
        loop.close()
""")


@pytest.mark.parametrize("kind", ["aiouring", "asyncio"])
def test_ctrl_c_without_any_signal_handler_interrupts_the_wait(kind):
    child = subprocess.Popen([PY, "-c", _PLAIN_CTRL_C_CHILD.format(repo=REPO), kind],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        time.sleep(0.2)   # the loop is now blocked in the kernel
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert (out, child.returncode) == ("KeyboardInterrupt\n", 0), err
