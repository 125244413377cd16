"""Threads: one loop per thread in many threads at once, call_soon_threadsafe
storms, and the ring's single-issuer rule.

The rule (a decision, documented here and in the error message): the ring is
created with ``SINGLE_ISSUER`` and enabled lazily, so **the first thread that
runs a loop owns it for the loop's life**. A loop may be created in one thread
and run in another. Running it later in a *different* thread raises a
``RuntimeError`` that names both threads, and leaves the loop intact for its
owner. ``close()`` may be called from any thread (the usual "run_forever in a
worker thread, close from main after join"): it releases the ring and every fd.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import socket
import threading

import pytest

import aiouring
from tests.support import loop, loop_kind, open_fds, run  # noqa: F401


async def _tcp_echo_hash_ok(nbytes: int) -> bool:
    payload = os.urandom(nbytes)

    async def handle(reader, writer):
        writer.write(await reader.readexactly(nbytes))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        writer.write(payload)
        got = await reader.readexactly(nbytes)
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    return hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_one_loop_per_thread_in_many_threads_at_once():
    fds_before = open_fds()
    n_threads = 16
    barrier = threading.Barrier(n_threads)

    def worker(i):
        barrier.wait()   # all rings set up and running at the same time
        return aiouring.run(_tcp_echo_hash_ok(64 * 1024 + i))

    with concurrent.futures.ThreadPoolExecutor(n_threads) as pool:
        results = list(pool.map(worker, range(n_threads), timeout=60))
    assert results == [True] * n_threads
    leaked = {fd for fd in open_fds() - fds_before if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked


def test_call_soon_threadsafe_storm_runs_every_callback_once_in_order(loop):
    n_threads, per_thread = 4, 5000

    async def main():
        seen = {t: [] for t in range(n_threads)}
        done = loop.create_future()
        remaining = [n_threads * per_thread]

        def callback(t, i):
            seen[t].append(i)
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set_result(None)

        def producer(t):
            for i in range(per_thread):
                loop.call_soon_threadsafe(callback, t, i)

        threads = [threading.Thread(target=producer, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        await done
        for th in threads:
            th.join()
        return seen

    seen = run(loop, main(), timeout=60)
    assert all(seen[t] == list(range(per_thread)) for t in seen)


def test_run_coroutine_threadsafe_from_many_threads(loop):
    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    async def main():
        def submitter(base):
            futs = [asyncio.run_coroutine_threadsafe(double(base + i), loop) for i in range(200)]
            return [f.result(timeout=30) for f in futs]

        return await asyncio.gather(*(loop.run_in_executor(None, submitter, b * 1000) for b in range(4)))

    results = run(loop, main(), timeout=60)
    assert results == [[2 * (b * 1000 + i) for i in range(200)] for b in range(4)]


def test_threadsafe_wakeup_of_a_loop_sleeping_in_the_kernel(loop):
    # The loop blocks in io_uring_enter with no timer due; only the cross-thread
    # wake-up can end the wait.
    async def main():
        fut = loop.create_future()
        timer = threading.Timer(0.05, loop.call_soon_threadsafe, args=(fut.set_result, "woken"))
        timer.start()
        try:
            return await asyncio.wait_for(fut, 10)
        finally:
            timer.cancel()

    assert run(loop, main()) == "woken"


def test_stop_from_another_thread_ends_run_forever(loop):
    started = threading.Event()
    loop.call_soon(started.set)
    stopper = threading.Thread(target=lambda: (started.wait(10), loop.call_soon_threadsafe(loop.stop)))
    stopper.start()
    loop.run_forever()
    stopper.join()
    assert not loop.is_running()


# ---- the single-issuer rule ------------------------------------------------

def test_loop_created_in_one_thread_runs_in_another():
    lp = aiouring.Loop()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as owner:
            ok = owner.submit(lp.run_until_complete, _tcp_echo_hash_ok(100_000)).result(60)
            owner_ident = owner.submit(threading.get_ident).result()
            assert ok
            if "SINGLE_ISSUER" in lp.ring_info().setup_flags:
                assert lp._ring.owner_thread == owner_ident
            owner.submit(lp.close).result(60)
    finally:
        if not lp.is_closed():
            lp.close()
    assert lp.statistics().ops_in_flight == 0


def test_running_in_a_second_thread_is_a_clear_error_and_the_owner_keeps_the_loop():
    lp = aiouring.Loop()
    if "SINGLE_ISSUER" not in lp.ring_info().setup_flags:
        lp.close()
        pytest.skip("this kernel did not grant IORING_SETUP_SINGLE_ISSUER: any thread may drive the ring")
    fds_before = open_fds()
    with concurrent.futures.ThreadPoolExecutor(1) as owner, concurrent.futures.ThreadPoolExecutor(1) as other:
        assert owner.submit(lp.run_until_complete, _tcp_echo_hash_ok(10_000)).result(60)
        with pytest.raises(RuntimeError, match="single-thread use and is owned by thread"):
            other.submit(lp.run_until_complete, asyncio.sleep(0)).result(60)
        with pytest.raises(RuntimeError, match="owned by thread"):
            lp.run_until_complete(asyncio.sleep(0))   # the main thread is not the owner either
        assert not lp.is_running()
        # The owner can still run it, and close it with nothing left in flight.
        assert owner.submit(lp.run_until_complete, _tcp_echo_hash_ok(10_000)).result(60)
        owner.submit(lp.close).result(60)
    assert lp.statistics().ops_in_flight == 0
    leaked = {fd for fd in open_fds() - fds_before if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked


def test_close_from_another_thread_after_run_forever_in_a_worker():
    fds_before = open_fds()
    lp = aiouring.Loop()
    result = {}

    async def serve_once():
        result["echo"] = await _tcp_echo_hash_ok(50_000)

    worker = threading.Thread(target=lp.run_forever)
    worker.start()
    asyncio.run_coroutine_threadsafe(serve_once(), lp).result(60)
    lp.call_soon_threadsafe(lp.stop)
    worker.join(60)
    lp.close()   # from the main thread, which never ran it
    assert result["echo"] is True
    assert lp.is_closed() and lp._ring.closed
    leaked = {fd for fd in open_fds() - fds_before if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, leaked


def test_close_from_another_thread_with_a_receive_in_flight(caplog):
    # Regression: the op records of a ring closed by a thread that may not
    # reap it stayed counted in flight, and would have been freed with the
    # loop while the kernel could still write into their buffers.
    lp = aiouring.Loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    pending = {}

    async def start_receive():
        pending["task"] = asyncio.ensure_future(lp.sock_recv(a, 1024))
        await asyncio.sleep(0.01)

    worker = threading.Thread(target=lp.run_until_complete, args=(start_receive(),))
    worker.start()
    worker.join(60)
    assert lp.statistics().ops_in_flight >= 1
    with caplog.at_level("WARNING", logger="aiouring"):
        lp.close()
    assert lp.statistics().ops_in_flight == 0
    assert "left to the kernel to cancel" in caplog.text
    # The kernel cancels the receive: the peer's data stays in the socket.
    b.send(b"still here")
    a.settimeout(5)
    assert a.recv(1024) == b"still here"
    a.close()
    b.close()


def test_sock_operations_from_a_loop_run_in_a_non_main_thread():
    # Native sock_* ops submitted by the owning worker thread, signals-free.
    def worker():
        async def main():
            lp = asyncio.get_running_loop()
            a, b = socket.socketpair()
            a.setblocking(False)
            b.setblocking(False)
            payload = os.urandom(300_000)
            with a, b:
                sender = asyncio.ensure_future(lp.sock_sendall(a, payload))
                got = bytearray()
                while len(got) < len(payload):
                    got += await lp.sock_recv(b, 65536)
                await sender
            return hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        return aiouring.run(main())

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert all(f.result(60) for f in [pool.submit(worker) for _ in range(4)])
