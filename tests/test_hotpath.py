"""The scheduler's C paths (aiouring._hotpath): call_soon, the handle it
returns, the callback loop of the run-once step and the CQE walk.

Every behaviour test runs on both loops: asyncio's Python Handle and
_run_once are the specification the C code must match, to the message.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
import sys
import weakref
from asyncio import format_helpers

import pytest

from aiouring.ring import Ring, uapi
from tests.support import loop, loop_kind, run  # noqa: F401  (fixtures)


def cb():
    pass


def test_handle_attributes_match_asyncio(loop):
    ctx = contextvars.copy_context()
    handle = loop.call_soon(cb, 1, "two", context=ctx)
    assert handle._callback is cb
    assert handle._args == (1, "two")
    assert handle._loop is loop
    assert handle._context is ctx
    assert handle.get_context() is ctx if hasattr(asyncio.Handle, "get_context") else True
    assert handle._cancelled is False and handle.cancelled() is False
    assert handle._source_traceback is None
    # 3.13 shows a callback's arguments only in debug mode: asyncio's own
    # Handle is the reference.
    assert repr(handle) == repr(asyncio.Handle(cb, (1, "two"), loop, context=ctx))
    assert repr(handle).startswith(("<Handle cb(1, 'two') at ", "<Handle cb() at "))
    handle.cancel()
    assert handle.cancelled() is True
    assert handle._callback is None and handle._args is None
    assert repr(handle) == "<Handle cancelled>"
    run(loop, asyncio.sleep(0))


def test_handle_without_context_copies_the_current_one(loop):
    var = contextvars.ContextVar("var", default="unset")
    seen = []

    async def main():
        var.set("in task")
        loop.call_soon(lambda: seen.append(var.get()))
        var.set("changed after scheduling")
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    run(loop, main())
    assert seen == ["in task"]


def test_handles_can_be_weakly_referenced_and_are_collected(loop):
    class Payload:
        pass

    payload = Payload()
    handle = loop.call_soon(lambda *args: None, payload)
    ref = weakref.ref(handle)
    payload.handle = handle          # a cycle through the handle's args
    run(loop, asyncio.sleep(0))
    del handle, payload
    gc.collect()
    assert ref() is None


def test_a_callback_that_cancels_its_own_handle_and_a_later_one(loop):
    ran = []
    handles = {}

    def first():
        ran.append("first")
        handles["first"].cancel()    # drops its own callback while it runs
        handles["second"].cancel()

    handles["first"] = loop.call_soon(first)
    handles["second"] = loop.call_soon(ran.append, "second")
    loop.call_soon(ran.append, "third")
    run(loop, asyncio.sleep(0.01))
    assert ran == ["first", "third"]


def test_call_soon_argument_errors_match_asyncio(loop):
    with pytest.raises(TypeError):
        loop.call_soon()
    with pytest.raises(TypeError, match="unexpected keyword argument 'when'"):
        loop.call_soon(cb, when=1)
    with pytest.raises(TypeError):
        loop.call_soon(cb, context=None, when=1)


def test_call_soon_on_a_closed_loop(loop):
    loop.close()
    with pytest.raises(RuntimeError, match="^Event loop is closed$"):
        loop.call_soon(cb)


@pytest.mark.loop_errors_ok
def test_failing_callback_reaches_the_exception_handler_as_in_asyncio(loop):
    reports = []
    loop.set_exception_handler(lambda _loop, context: reports.append(context))

    def boom(x):
        raise ZeroDivisionError(x)

    handle = loop.call_soon(boom, 7)
    after = []
    loop.call_soon(after.append, "still runs")
    run(loop, asyncio.sleep(0.01))
    assert after == ["still runs"]
    [report] = reports
    assert set(report) == {"message", "exception", "handle"}
    assert report["message"].startswith("Exception in callback ")
    shown = "()" if "debug" in inspect.signature(format_helpers._format_callback_source).parameters else "(7)"
    assert report["message"].split(" at ")[0] == (
        "Exception in callback test_failing_callback_reaches_the_exception_handler_as_in_asyncio.<locals>.boom" + shown)
    assert isinstance(report["exception"], ZeroDivisionError)
    assert report["exception"].__traceback__ is not None
    assert report["handle"] is handle


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_interrupt_leaves_the_rest_of_the_ready_queue_for_the_next_run(loop, exc_type):
    ran = []

    def interrupt():
        raise exc_type()

    loop.call_soon(ran.append, 1)
    loop.call_soon(interrupt)
    loop.call_soon(ran.append, 2)
    with pytest.raises(exc_type):
        loop.run_forever()
    assert ran == [1]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == [1, 2]


def test_debug_mode_switched_on_at_run_time(loop):
    handle = loop.call_soon(cb)
    assert handle._source_traceback is None
    loop.set_debug(True)
    try:
        debug_handle = loop.call_soon(cb)   # this line must end its traceback
        assert debug_handle._source_traceback[-1].name == "test_debug_mode_switched_on_at_run_time"
        with pytest.raises(TypeError, match="a callable object was expected by call_soon"):
            loop.call_soon(42)
        loop.set_debug(0)                    # any false value, not only False
        assert loop.call_soon(cb)._source_traceback is None
        loop.set_debug(1)
        assert loop.call_soon(cb)._source_traceback is not None
    finally:
        loop.set_debug(False)
    run(loop, asyncio.sleep(0))


def test_timer_and_reader_handles_share_the_ready_queue(loop):
    order = []

    async def main():
        loop.call_later(0, order.append, "timer")
        await asyncio.sleep(0.01)
        loop.call_soon(order.append, "soon")
        loop.call_later(0, order.append, "timer2").cancel()
        await asyncio.sleep(0.01)

    run(loop, main())
    assert order == ["timer", "soon"]


def test_tasks_and_futures_run_on_the_c_handles(loop):
    async def worker(n):
        total = 0
        for i in range(n):
            await asyncio.sleep(0)
            total += i
        return total

    async def main():
        return await asyncio.gather(*(worker(100) for _ in range(50)))

    assert run(loop, main()) == [4950] * 50


def test_handle_is_not_constructible_directly(loop_kind):
    if loop_kind != "aiouring":
        pytest.skip("aiouring's handle class")
    from aiouring._scheduler import Handle
    with pytest.raises(TypeError):
        Handle(cb, (), None, None)


@pytest.mark.loop_errors_ok
def test_a_failing_completion_handler_is_reported_and_the_batch_goes_on(loop_kind):
    if loop_kind != "aiouring":
        pytest.skip("the CQE walk is aiouring's")
    import aiouring
    lp = aiouring.Loop()
    reports = []
    lp.set_exception_handler(lambda _loop, context: reports.append(context))
    delivered = []

    def failing(res, flags):
        raise ValueError("handler bug")

    def fine(res, flags):
        delivered.append(res)

    try:
        ops, ring = lp._ops, lp._ring
        for handler in (failing, fine, failing, fine):
            ring.prep(uapi.IORING_OP_NOP, -1, Ring.null, 0, 0, 0, ops.register(handler))
        lp.run_until_complete(asyncio.sleep(0.01))
        assert delivered == [0, 0]
        assert [type(r["exception"]) for r in reports] == [ValueError, ValueError]
        assert all(r["handler"] is failing for r in reports)
        # One-shot completions leave the table.
        assert failing not in ops.handlers.values() and fine not in ops.handlers.values()

        def interrupt(res, flags):
            raise KeyboardInterrupt

        ring.prep(uapi.IORING_OP_NOP, -1, Ring.null, 0, 0, 0, ops.register(interrupt))
        ring.prep(uapi.IORING_OP_NOP, -1, Ring.null, 0, 0, 0, ops.register(fine))
        lp.call_later(1.0, lp.stop)     # only if the interrupt got lost
        with pytest.raises(KeyboardInterrupt):
            lp.run_forever()
        assert delivered == [0, 0, 0]    # the walk finished before re-raising
    finally:
        lp.close()


# ---- BufferTaker and send_nowait: the stream transports' per-chunk calls ----

def _receive_into_ring(ring, group, sock, size):
    """One IORING_OP_RECV with a buffer picked from ``group``: (bid, length)."""
    ring.prep(uapi.IORING_OP_RECV, sock.fileno(), Ring.null, 0, 0, 0, 99, uapi.IOSQE_BUFFER_SELECT, group)
    batch = []
    while not batch:
        batch = ring.submit_and_reap(1.0)
    ud, res, flags = batch[:3]
    assert ud == 99 and res == size and flags & uapi.IORING_CQE_F_BUFFER, batch
    return flags >> uapi.IORING_CQE_BUFFER_SHIFT, res


def test_buffer_taker_hands_out_large_receives_and_copies_small_ones():
    import socket
    from aiouring._hotpath import BufferTaker
    a, b = socket.socketpair()
    try:
        with Ring(sq_entries=8) as ring:
            buffers = ring.buffer_ring(7, 2, 4096, provide=False)
            taker = BufferTaker(buffers)
            seen = set()
            for size in (4096, 2048, 5, 2047, 4096, 1):       # >= half a buffer: no copy
                payload = bytes([size % 251]) * size
                a.sendall(payload)
                bid, n = _receive_into_ring(ring, 7, b, size)
                seen.add(bid)
                assert taker.take(bid, n) == payload          # and the buffer went back
            assert seen == {0, 1}
            a.sendall(b"0123456789")
            bid, n = _receive_into_ring(ring, 7, b, 10)
            small = bytearray(3)
            assert taker.copy_into(bid, 4, 6, small) == 3 and small == b"456"
            assert taker.copy_out(bid, 7, 3) == b"789"
            with pytest.raises(TypeError, match="read-only"):
                taker.copy_into(bid, 0, 3, b"abc")
            taker.recycle(bid)
            for bad in ((2, 1), (0, 4097), (-1, 1)):
                with pytest.raises(ValueError):
                    taker.take(*bad)
            with pytest.raises(ValueError):
                taker.copy_out(0, 4095, 2)                    # past the buffer's end
            with pytest.raises(TypeError):
                taker.take(0)
            with pytest.raises(ValueError):
                buffers.view(0, 1)                            # the taker owns the memory
            buffers.close()
            with pytest.raises(RuntimeError):
                taker.recycle(0)                              # the ring is gone: refused
        own = Ring(sq_entries=8)
        with own:
            with pytest.raises(ValueError):
                BufferTaker(own.buffer_ring(8, 2, 4096))      # a ring with its own buffers
    finally:
        a.close()
        b.close()


def test_buffer_taker_outliving_its_ring_and_the_other_way_round():
    from aiouring._hotpath import BufferTaker
    ring = Ring(sq_entries=8)
    buffers = ring.buffer_ring(3, 4, 65536, provide=False)
    taker = BufferTaker(buffers)
    ring.close()           # unregisters: the taker may free its buffers now
    del taker
    ring2 = Ring(sq_entries=8)
    taker2 = BufferTaker(ring2.buffer_ring(3, 4, 65536, provide=False))
    del taker2             # ring still registered: buffers deliberately kept alive
    ring2.close()


def test_send_nowait_counts_stops_when_full_and_raises_like_socket_send():
    import errno
    import socket
    from aiouring._hotpath import send_nowait
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        assert send_nowait(a, b"abc") == 3
        assert send_nowait(a, bytearray(b"de")) == 2
        assert send_nowait(a, memoryview(b"xfgx")[1:3]) == 2
        assert b.recv(100) == b"abcdefg"
        chunk = b"x" * 65536
        sent = 0
        while True:
            n = send_nowait(a, chunk)
            if n == 0:
                break                 # full: 0, not BlockingIOError
            sent += n
        assert sent > 0
        with pytest.raises(TypeError):
            send_nowait(a, "text")
        b.close()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):   # and no SIGPIPE
            send_nowait(a, b"after the peer closed")
    finally:
        a.close()
        b.close()
    with pytest.raises(OSError) as info:
        send_nowait(a, b"closed")    # fileno() is -1: never a reused fd
    assert info.value.errno == errno.EBADF


def test_copy_into_fills_what_fits_and_refuses_read_only_buffers():
    from aiouring._hotpath import BufferTaker, copy_into
    dst = bytearray(4)
    assert copy_into(b"abcdefgh", 2, 5, dst) == 4 and dst == b"cdef"
    assert copy_into(b"abcdefgh", 6, 2, dst) == 2 and dst == b"ghef"
    wide = memoryview(bytearray(8)).cast("I")          # any format: counted in bytes
    assert copy_into(b"12345678", 0, 8, wide) == 8 and wide.tobytes() == b"12345678"
    with pytest.raises(TypeError, match="read-only"):
        copy_into(b"abc", 0, 3, b"xyz")
    with pytest.raises(ValueError):
        copy_into(b"abc", 2, 2, dst)
    with pytest.raises(ValueError):
        copy_into(b"abc", -1, 1, dst)



# ---- completions that wait behind callbacks ready before their poll ----------

def _nop(lp, handler):
    lp._ring.prep(uapi.IORING_OP_NOP, -1, Ring.null, 0, 0, 0, lp._ops.register(handler))


@pytest.mark.parametrize("then", ["run_again", "close"])
def test_completions_left_behind_by_an_interrupt_are_delivered(loop_kind, then):
    if loop_kind != "aiouring":
        pytest.skip("the CQE walk is aiouring's")
    import time
    import aiouring
    lp = aiouring.Loop()
    delivered = []

    def interrupt():
        raise KeyboardInterrupt

    try:
        lp.call_soon(interrupt)              # ready before the poll ...
        _nop(lp, lambda res, flags: delivered.append(res))   # ... which reaps this
        with pytest.raises(KeyboardInterrupt):
            lp.run_forever()
        assert delivered == []               # it waits behind the interrupted callback
        if then == "run_again":
            lp.call_soon(lp.stop)
            lp.run_forever()
            assert delivered == [0]
    finally:
        started = time.monotonic()
        lp.close()
        assert time.monotonic() - started < 2   # nothing left for drain() to wait for
    assert delivered == [0]


def test_callbacks_ready_before_a_poll_run_before_its_completions(loop_kind):
    if loop_kind != "aiouring":
        pytest.skip("the CQE walk is aiouring's")
    import aiouring
    lp = aiouring.Loop()
    order = []
    try:
        lp.call_soon(order.append, "ready before the poll")
        _nop(lp, lambda res, flags: (order.append("completion"), lp.call_soon(order.append, "scheduled by it")))
        lp.call_later(0, order.append, "due timer")
        lp.call_soon(lp.stop)
        lp.run_forever()
        lp.call_soon(lp.stop)
        lp.run_forever()
    finally:
        lp.close()
    assert order == ["ready before the poll", "completion", "due timer", "scheduled by it"]


def test_stream_data_never_overtakes_the_connect_caller(loop):
    # asyncio's order: create_connection() returns before data_received runs,
    # even when the peer's data is already there at the first poll.
    async def main():
        events = []

        class Proto(asyncio.Protocol):
            def data_received(self, data):
                events.append(("data", data))

        async def serve(reader, writer):
            writer.write(b"hello")
            await writer.drain()
            await reader.read()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(Proto, "127.0.0.1", port)
        events.append(("connected",))
        while len(events) < 2:
            await asyncio.sleep(0.001)
        transport.close()
        server.close()
        await server.wait_closed()
        return events

    assert run(loop, main())[:2] == [("connected",), ("data", b"hello")]


# ---- timers: call_at / call_later ----------------------------------------------

def test_timer_handles_match_asyncio(loop):
    now = loop.time()
    late = loop.call_at(now + 100, cb)
    early = loop.call_later(50, cb)
    assert late.when() == late._when == now + 100
    assert early._scheduled is True and early._cancelled is False
    assert early < late and late > early and early <= late and late >= early
    assert early != late and not (early == late)
    assert hash(late) == hash(now + 100)
    assert repr(late).startswith(f"<TimerHandle when={now + 100} cb() at ")
    twin = loop.call_at(now + 100, cb)
    assert twin == late and twin <= late and twin >= late
    assert (early == object()) is False
    with pytest.raises(TypeError):
        early < object()
    late.cancel()
    assert late.cancelled() and late._callback is None
    assert repr(late) == f"<TimerHandle cancelled when={now + 100}>"
    assert twin != late
    for handle in (early, twin):
        handle.cancel()
    run(loop, asyncio.sleep(0))


def test_timer_argument_errors_match_asyncio(loop):
    # asyncio names the None from 3.11 on; 3.10 fails on the arithmetic or
    # on an assert (aiouring raises 3.11's TypeError everywhere).
    named = sys.version_info >= (3, 11)
    with pytest.raises(TypeError, match="^delay must not be None$" if named else None):
        loop.call_later(None, cb)
    with pytest.raises(TypeError if named else (TypeError, AssertionError),
                       match="^when cannot be None$" if named else None):
        loop.call_at(None, cb)
    with pytest.raises(TypeError):
        loop.call_later("1", cb)
    with pytest.raises(TypeError):
        loop.call_later(1)
    with pytest.raises(TypeError):
        loop.call_later(1, cb, delay=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'after'"):
        loop.call_later(1, cb, after=2)
    loop.close()
    with pytest.raises(RuntimeError, match="^Event loop is closed$"):
        loop.call_later(1, cb)
    with pytest.raises(RuntimeError, match="^Event loop is closed$"):
        loop.call_at(1, cb)


def test_timers_fire_in_deadline_order_with_mixed_number_types(loop):
    import random
    rng = random.Random(7)
    fired = []
    base = loop.time()
    expected = []
    handles = []
    for i in range(400):
        offset = rng.random() * 0.05
        when = base + offset if i % 3 else int(base) + 1 + i   # ints far in the future
        handle = loop.call_at(when, fired.append, i)
        handles.append(handle)
        if i % 3 and i % 4:       # cancel enough that the heap gets rebuilt
            expected.append((when, i))
        else:
            handle.cancel()
    run(loop, asyncio.sleep(0.1))
    assert fired == [i for _, i in sorted(expected)]
    assert loop._timer_cancelled_count >= 0
    assert all(not h._scheduled for h in handles if not h._cancelled)


def test_debug_timers_remember_their_callers_line(loop):
    loop.set_debug(True)
    try:
        later = loop.call_later(10, cb)
        at = loop.call_at(loop.time() + 10, cb)
        assert later._source_traceback[-1].name == "test_debug_timers_remember_their_callers_line"
        assert at._source_traceback[-1].name == "test_debug_timers_remember_their_callers_line"
        later.cancel()
        at.cancel()
    finally:
        loop.set_debug(False)
    run(loop, asyncio.sleep(0))


def test_sleep_and_wait_for_run_on_the_c_timers(loop):
    async def main():
        started = loop.time()
        await asyncio.sleep(0.02)
        assert loop.time() - started >= 0.02
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 0.01)
        return "ok"

    assert run(loop, main()) == "ok"
