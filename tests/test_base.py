"""The scheduling contract of an asyncio event loop, run on aiouring and on
asyncio's own loop (the oracle): the same test must pass on both.

Covers the run-once step (ready callbacks first, no waiting while callbacks are
ready, waking for the next timer), call_soon/call_later/call_at ordering,
call_soon_threadsafe from many threads, run/stop/close and their errors,
exception handlers, debug mode, executors, async generators, DNS helpers and
task factories.
"""

import asyncio
import concurrent.futures
import contextvars
import gc
import logging
import socket
import sys
import threading
import time
import warnings

import pytest

from tests.support import loop, loop_kind, make_loop, run  # noqa: F401


# ---- call_soon / run-once ---------------------------------------------------

def test_call_soon_runs_in_fifo_order_with_args(loop):
    seen = []
    for i in range(100):
        loop.call_soon(seen.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == list(range(100))


def test_callbacks_scheduled_by_callbacks_run_next_iteration(loop):
    seen = []

    def first():
        seen.append("first")
        loop.call_soon(seen.append, "scheduled-by-first")

    loop.call_soon(first)
    loop.call_soon(seen.append, "second")
    loop.call_soon(loop.stop)
    loop.run_forever()
    # stop() lets the current iteration finish; the callback that first()
    # scheduled belongs to the next one.
    assert seen == ["first", "second"]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["first", "second", "scheduled-by-first"]


def test_ready_callbacks_do_not_wait_for_a_far_timer(loop):
    """With a timer 60 s away, a chain of 2000 call_soon hops must not block
    in the kernel waiting for it (the wait must be 0 while callbacks are ready)."""
    far = loop.call_later(60, lambda: None)
    done = loop.create_future()
    hops = [0]

    def hop():
        hops[0] += 1
        if hops[0] == 2000:
            done.set_result(hops[0])
        else:
            loop.call_soon(hop)

    loop.call_soon(hop)
    assert run(loop, done, timeout=20) == 2000
    far.cancel()


def test_loop_wakes_for_timer_without_any_io(loop):
    t0 = loop.time()
    run(loop, asyncio.sleep(0.05), timeout=10)
    assert loop.time() - t0 >= 0.05 - loop._clock_resolution - 0.001


def test_call_soon_rejects_non_callables_and_coroutine_functions_in_debug(loop):
    loop.set_debug(True)   # asyncio only checks callbacks in debug mode
    with pytest.raises(TypeError):
        loop.call_soon(1)

    async def coro():
        pass

    with pytest.raises(TypeError):
        loop.call_soon(coro)
    with pytest.raises(TypeError):
        loop.call_later(0.1, coro)
    with pytest.raises(TypeError):
        loop.call_soon_threadsafe(coro)


def test_call_soon_passes_context(loop):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")
    seen = []
    loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    loop.call_soon(lambda: seen.append(var.get()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["in-ctx", "default"]


def test_cancelled_handle_does_not_run(loop):
    seen = []
    h = loop.call_soon(seen.append, 1)
    loop.call_soon(seen.append, 2)
    h.cancel()
    t = loop.call_later(0.01, seen.append, 3)
    t.cancel()
    assert h.cancelled() and t.cancelled()
    run(loop, asyncio.sleep(0.05))
    assert seen == [2]


# ---- timers -----------------------------------------------------------------

def test_timers_fire_in_deadline_order(loop):
    seen = []
    base = loop.time() + 0.05
    for i, offset in enumerate([0.04, 0.01, 0.03, 0.01, 0.0, 0.02, 0.01]):
        loop.call_at(base + offset, seen.append, (offset, i))
    run(loop, asyncio.sleep(0.2))
    # Ties have no defined order in asyncio (its timer heap is not stable).
    assert [offset for offset, _ in seen] == sorted(offset for offset, _ in seen)
    assert sorted(i for _, i in seen) == list(range(7))


def test_call_later_never_fires_early(loop):
    fired = []

    def record(scheduled_at, delay):
        fired.append(loop.time() - scheduled_at - delay)

    for delay in (0.0, 0.01, 0.02, 0.05, 0.1):
        loop.call_later(delay, record, loop.time(), delay)
    run(loop, asyncio.sleep(0.2))
    assert len(fired) == 5
    # asyncio runs a timer up to one clock resolution early by design.
    assert min(fired) >= -loop._clock_resolution - 1e-6


def test_negative_and_zero_delays_run_soon(loop):
    seen = []
    loop.call_later(-5, seen.append, "negative")
    loop.call_at(loop.time() - 100, seen.append, "past")
    loop.call_later(0, seen.append, "zero")
    run(loop, asyncio.sleep(0.01))
    assert sorted(seen) == ["negative", "past", "zero"]


def test_call_later_rejects_bad_delay(loop):
    with pytest.raises(TypeError):
        loop.call_later(None, lambda: None)
    with pytest.raises(TypeError):
        loop.call_later("soon", lambda: None)


def test_time_is_monotonic(loop):
    samples = [loop.time() for _ in range(1000)]
    assert samples == sorted(samples)
    assert abs(loop.time() - time.monotonic()) < 1.0


def test_many_timers_all_fire(loop):
    fired = []
    for i in range(5000):
        loop.call_later((i % 50) / 1000, fired.append, i)
    run(loop, asyncio.sleep(0.2))
    assert sorted(fired) == list(range(5000))


# ---- call_soon_threadsafe ----------------------------------------------------

def test_threadsafe_wakeups_from_many_threads(loop):
    threads_n, per_thread = 8, 300

    async def main():
        got = []
        done = loop.create_future()
        total = threads_n * per_thread

        def deliver(item):
            got.append(item)
            if len(got) == total:
                done.set_result(None)

        def worker(tid):
            for i in range(per_thread):
                loop.call_soon_threadsafe(deliver, (tid, i))
                if i % 50 == 0:
                    time.sleep(0.001)   # let the loop go back to sleep in between

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
        for t in threads:
            t.start()
        await done
        for t in threads:
            t.join()
        return got

    got = run(loop, main(), timeout=60)
    assert sorted(got) == [(t, i) for t in range(threads_n) for i in range(per_thread)]
    for tid in range(threads_n):   # each thread's calls keep their order
        assert [i for t, i in got if t == tid] == list(range(per_thread))


def test_threadsafe_wakes_a_loop_blocked_with_no_timers(loop):
    """The loop sleeps in io_uring_enter with no deadline; a call from another
    thread must wake it (it would otherwise wait forever)."""
    async def main():
        fut = loop.create_future()
        timer = threading.Timer(0.05, loop.call_soon_threadsafe, (fut.set_result, "woken"))
        timer.start()
        try:
            return await fut
        finally:
            timer.join()

    # Not run(): wait_for would add a timer and the loop would wake anyway.
    result = []
    watchdog = threading.Timer(20, lambda: loop.call_soon_threadsafe(loop.stop))
    watchdog.start()
    try:
        task = loop.create_task(main())
        task.add_done_callback(lambda t: (result.append(t.result()), loop.stop()))
        loop.run_forever()
    finally:
        watchdog.cancel()
    assert result == ["woken"]


def test_run_coroutine_threadsafe_from_threads(loop):
    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    async def main():
        def worker(x):
            return asyncio.run_coroutine_threadsafe(double(x), loop).result(timeout=20)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futs = [loop.run_in_executor(pool, worker, i) for i in range(50)]
            return await asyncio.gather(*futs)

    assert run(loop, main()) == [2 * i for i in range(50)]


def test_call_soon_from_other_thread_in_debug_mode_raises(loop):
    loop.set_debug(True)
    errors = []

    async def main():
        def worker():
            try:
                loop.call_soon(lambda: None)
            except RuntimeError as exc:
                errors.append(str(exc))

        await loop.run_in_executor(None, worker)

    run(loop, main())
    assert len(errors) == 1 and "thread" in errors[0]


def test_loop_created_in_one_thread_can_run_in_another(loop_kind):
    """asyncio loops are often created in one thread and run in another."""
    lp = make_loop(loop_kind)
    result = []

    def runner():
        async def main():
            await asyncio.sleep(0.01)
            a, b = socket.socketpair()
            with a, b:
                a.setblocking(False)
                b.setblocking(False)
                await lp.sock_sendall(a, b"x")
                return await lp.sock_recv(b, 10)

        result.append(lp.run_until_complete(main()))

    t = threading.Thread(target=runner)
    t.start()
    t.join(30)
    lp.close()
    assert result == [b"x"]


# ---- run / stop / close -----------------------------------------------------

def test_stop_before_run_forever_runs_one_iteration(loop):
    seen = []
    loop.call_soon(seen.append, 1)
    loop.stop()
    loop.run_forever()
    assert seen == [1]
    assert not loop.is_running()


def test_run_forever_while_running_raises(loop):
    async def main():
        with pytest.raises(RuntimeError, match="already running"):
            loop.run_forever()
        # (run_until_complete() from inside is left out: on CPython 3.13.0 it
        # hangs on asyncio's own loop too.)

    run(loop, main())


def test_close_while_running_raises(loop):
    async def main():
        with pytest.raises(RuntimeError, match="running"):
            loop.close()

    run(loop, main())
    assert not loop.is_closed()


def test_closed_loop_rejects_work(loop):
    loop.close()
    assert loop.is_closed()
    loop.close()   # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(lambda: None)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_later(1, lambda: None)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon_threadsafe(lambda: None)
    with pytest.raises(RuntimeError, match="closed"):
        loop.run_forever()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="closed"):
        loop.run_until_complete(coro)
    coro.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.run_in_executor(None, print)


def test_loop_is_reusable_after_stop(loop):
    for i in range(3):
        assert run(loop, asyncio.sleep(0.001, result=i)) == i


def test_run_until_complete_with_foreign_future_raises(loop_kind, loop):
    other = asyncio.SelectorEventLoop()
    try:
        fut = other.create_future()
        with pytest.raises(ValueError, match="future"):
            loop.run_until_complete(fut)
    finally:
        other.close()


def test_run_until_complete_stopped_early_raises(loop):
    async def main():
        loop.stop()
        await asyncio.sleep(1)

    task = loop.create_task(main())
    with pytest.raises(RuntimeError, match="stopped before Future completed"):
        loop.run_until_complete(task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)


def test_close_drains_operations_in_flight(loop_kind, loop):
    """close() with receives and accepts still pending: they are cancelled and
    the kernel has answered for all of them before close returns (teardown
    checks the aiouring op table is empty and no fd leaked)."""
    socks = []

    async def main():
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        socks.append(listener)
        tasks = [loop.create_task(loop.sock_accept(listener))]
        for _ in range(20):
            a, b = socket.socketpair()
            a.setblocking(False)
            socks.extend((a, b))
            tasks.append(loop.create_task(loop.sock_recv(a, 100)))
        await asyncio.sleep(0.01)
        return tasks

    tasks = run(loop, main())
    assert not any(t.done() for t in tasks)
    for t in tasks:
        t.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()
    if loop_kind == "aiouring":
        assert len(loop._ops) == 0
    for s in socks:
        s.close()


@pytest.mark.loop_errors_ok   # "Task was destroyed but it is pending!", as on asyncio
def test_close_with_pending_tasks_does_not_hang(loop):
    async def forever():
        await asyncio.sleep(3600)

    async def main():
        loop.create_task(forever())
        await asyncio.sleep(0)

    run(loop, main())
    loop.close()   # must return at once; the pending task is just destroyed
    assert loop.is_closed()


# ---- exception handlers ------------------------------------------------------

@pytest.mark.loop_errors_ok
def test_exception_in_callback_goes_to_handler(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))

    def boom():
        raise ZeroDivisionError("boom")

    loop.call_soon(boom)
    loop.call_later(0.001, boom)
    run(loop, asyncio.sleep(0.02))
    assert len(calls) == 2
    for ctx in calls:
        assert isinstance(ctx["exception"], ZeroDivisionError)
        assert ctx["message"].startswith("Exception in callback")
        assert "handle" in ctx


def test_set_exception_handler_validates(loop):
    with pytest.raises(TypeError):
        loop.set_exception_handler(42)
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_default_exception_handler_logs(loop, caplog):
    loop.set_exception_handler(None)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "custom message", "exception": ValueError("v")})
    assert "custom message" in caplog.text
    assert "ValueError" in caplog.text


@pytest.mark.loop_errors_ok
def test_failing_exception_handler_is_logged_not_raised(loop, caplog):
    def bad_handler(lp, ctx):
        raise RuntimeError("handler broke")

    loop.set_exception_handler(bad_handler)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(lambda: 1 / 0)
        run(loop, asyncio.sleep(0.01))
    assert "Unhandled error in exception handler" in caplog.text


@pytest.mark.loop_errors_ok
def test_unretrieved_task_exception_reported(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))

    async def fail():
        raise KeyError("lost")

    async def main():
        loop.create_task(fail())
        await asyncio.sleep(0.01)

    run(loop, main())
    gc.collect()
    assert any(isinstance(c.get("exception"), KeyError) for c in calls)


def test_keyboard_interrupt_in_callback_propagates(loop):
    def interrupt():
        raise KeyboardInterrupt

    loop.call_soon(interrupt)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    # The loop is still usable afterwards.
    assert run(loop, asyncio.sleep(0, result="ok")) == "ok"


# ---- debug mode -------------------------------------------------------------

def test_debug_mode_warns_about_slow_callbacks(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(time.sleep, 0.05)
        run(loop, asyncio.sleep(0.01))
    assert "Executing" in caplog.text and "took" in caplog.text


def test_debug_flag_roundtrip(loop):
    assert loop.get_debug() in (True, False)
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_unclosed_loop_warns_resource_warning(loop_kind):
    lp = make_loop(loop_kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del lp
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) and "unclosed event loop" in str(w.message)
               for w in caught)


def test_never_awaited_coroutine_warns_in_debug(loop):
    loop.set_debug(True)

    async def forgotten():
        pass

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        forgotten()
        gc.collect()
    assert any(issubclass(w.category, RuntimeWarning) and "never awaited" in str(w.message) for w in caught)


# ---- executors --------------------------------------------------------------

def test_run_in_executor_default_and_custom(loop):
    async def main():
        a = await loop.run_in_executor(None, sum, [1, 2, 3])
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            b = await loop.run_in_executor(pool, threading.current_thread)
        return a, b

    a, b = run(loop, main())
    assert a == 6 and b is not threading.current_thread()


def test_run_in_executor_propagates_exceptions(loop):
    async def main():
        with pytest.raises(ZeroDivisionError):
            await loop.run_in_executor(None, lambda: 1 / 0)

    run(loop, main())


def test_run_in_executor_rejects_coroutine_functions(loop):
    async def coro():
        pass

    loop.set_debug(True)   # asyncio only checks the callable in debug mode
    with pytest.raises(TypeError):
        loop.run_in_executor(None, coro)


def test_set_default_executor(loop):
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="custom-default")

    async def main():
        return await loop.run_in_executor(None, lambda: threading.current_thread().name)

    loop.set_default_executor(pool)
    try:
        assert run(loop, main()).startswith("custom-default")
    finally:
        run(loop, loop.shutdown_default_executor())
    if sys.version_info >= (3, 11):   # 3.10 only warned
        with pytest.raises(TypeError):
            loop.set_default_executor(concurrent.futures.ProcessPoolExecutor())


def test_shutdown_default_executor_waits_for_work(loop):
    finished = []

    async def main():
        fut = loop.run_in_executor(None, lambda: (time.sleep(0.05), finished.append(1)))
        await loop.shutdown_default_executor()
        assert finished == [1]
        await fut
        with pytest.raises(RuntimeError):
            loop.run_in_executor(None, print)

    run(loop, main())


# ---- async generators --------------------------------------------------------

def test_shutdown_asyncgens_finalizes_generators(loop):
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)
            finalized.append(True)

    async def main():
        g = agen()
        assert await g.__anext__() == 1
        return g

    g = run(loop, main())
    run(loop, loop.shutdown_asyncgens())
    assert finalized == [True]
    del g


def test_asyncgen_finalizer_runs_on_gc(loop):
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append(True)

    async def main():
        g = agen()
        await g.__anext__()
        del g
        gc.collect()
        await asyncio.sleep(0.01)

    run(loop, main())
    assert finalized == [True]


# ---- DNS helpers -------------------------------------------------------------

def test_getaddrinfo_matches_socket_module(loop):
    async def main():
        return await loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)

    assert run(loop, main()) == socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)


def test_getaddrinfo_error_is_gaierror(loop):
    async def main():
        with pytest.raises(socket.gaierror):
            await loop.getaddrinfo("no-such-host.invalid", 80)

    run(loop, main())


def test_getnameinfo(loop):
    async def main():
        return await loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)

    assert run(loop, main()) == ("127.0.0.1", "80")


# ---- task factories ----------------------------------------------------------

def test_task_factory(loop):
    made = []

    def factory(lp, coro, **kwargs):
        task = asyncio.Task(coro, loop=lp, **kwargs)
        made.append(task)
        return task

    async def child():
        return 5

    async def main():
        return await loop.create_task(child())

    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory
    assert run(loop, main()) == 5
    assert len(made) >= 2
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    with pytest.raises(TypeError):
        loop.set_task_factory(1)


def test_create_task_name_and_context(loop):
    var = contextvars.ContextVar("v", default=0)

    async def read():
        return var.get()

    async def main():
        ctx = contextvars.copy_context()
        ctx.run(var.set, 9)
        if sys.version_info >= (3, 11):
            t = loop.create_task(read(), name="named", context=ctx)
        else:
            t = ctx.run(loop.create_task, read(), name="named")
        assert t.get_name() == "named"
        return await t

    assert run(loop, main()) == 9


def test_debug_handles_remember_where_they_were_scheduled(loop):
    """In debug mode a handle's source traceback ends at the caller's line
    (CPython's test_handle_source_traceback), not inside the loop."""
    loop.set_debug(True)
    this_file = __file__.rstrip("c")
    h = loop.call_soon(lambda: None)
    t = loop.call_later(1, lambda: None)
    ts = loop.call_soon_threadsafe(lambda: None)
    for handle in (h, t, ts):
        assert handle._source_traceback[-1][0] == this_file
        assert handle._source_traceback[-1][2] == "test_debug_handles_remember_where_they_were_scheduled"
        handle.cancel()


def test_slow_callback_warning_goes_through_asyncio_logger(loop):
    """The warning is asyncio's, through ``asyncio.base_events.logger`` looked
    up when it is logged (CPython's test_log_slow_callbacks patches it)."""
    from unittest import mock
    loop.set_debug(True)
    loop.slow_callback_duration = 0.0
    with mock.patch("asyncio.base_events.logger") as m_logger:
        loop.call_soon(loop.stop)
        loop.run_forever()
    fmt, *args = m_logger.warning.call_args[0]
    assert (fmt % tuple(args)).startswith("Executing <Handle")
