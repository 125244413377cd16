"""fork() with an aiouring loop alive: the child never touches the parent's ring
(its memory is MADV_DONTFORK and ring.py's at-fork hook disowns it), gets a
clear error if it tries to run the inherited loop, and can make its own; the
parent's loop, including operations in flight across the fork, is unaffected.
multiprocessing pools (fork and forkserver) work next to a live loop."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import multiprocessing
import os
import signal
import socket
import time

import pytest

import aiouring
from aiouring.errors import RingClosedError


def _in_child(body) -> dict:
    """Fork; run ``body()`` in the child and return what it returned (a
    JSON-able value), or the exception it raised as text. A child that dies
    by a signal (a touched ring page would be SIGSEGV) fails the test."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never return into pytest
        code = 0
        try:
            os.close(r)
            try:
                out = {"ok": body()}
            except BaseException as exc:   # report everything, including SystemExit
                out = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(w, json.dumps(out).encode())
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("forked child hung")
        time.sleep(0.01)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, \
        f"child died: status {status:#x} (signal {os.WTERMSIG(status) if os.WIFSIGNALED(status) else None})"
    return json.loads(data)


def _is_mapped(address: int) -> bool:
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return True
    return False


async def _echo_hash_ok(nbytes: int = 200_000) -> bool:
    """A socketpair round trip through the running loop's native sock_* calls."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    payload = os.urandom(nbytes)
    with a, b:
        sender = asyncio.ensure_future(loop.sock_sendall(a, payload))
        got = bytearray()
        while len(got) < nbytes:
            got += await loop.sock_recv(b, 65536)
        await sender
    return hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def _child_makes_its_own_loop() -> dict:
    loop = aiouring.Loop()
    try:
        return {"echo_ok": loop.run_until_complete(_echo_hash_ok()),
                "own_backing": loop.ring_info().backing}
    finally:
        loop.close()


def test_child_of_an_idle_loop_gets_a_clear_error_and_can_make_its_own():
    parent = aiouring.Loop()
    try:
        assert parent.run_until_complete(_echo_hash_ok())

        ring_address = parent._ring.memory_address()

        def child():
            out = {"ring_memory_mapped": _is_mapped(ring_address)}
            try:
                parent.run_until_complete(asyncio.sleep(0))
            except RuntimeError as exc:
                out["run"] = str(exc)
            try:
                parent._ring.submit()
            except RingClosedError as exc:
                out["submit"] = str(exc)
            parent.close()   # closing the inherited loop must not touch the parent's ring
            out.update(_child_makes_its_own_loop())
            return out

        res = _in_child(child)["ok"]
        if ring_address:   # our own memory (kernel-backed rings have none)
            assert _is_mapped(ring_address), "the parent's ring memory should be mapped in the parent"
            assert res["ring_memory_mapped"] is False, "MADV_DONTFORK: the child must not inherit the ring"
        assert "forked child must create its own event loop" in res["run"]
        assert "belongs to the parent process" in res["submit"]
        assert res["echo_ok"] is True
        # The parent's ring is untouched by everything the child did.
        assert not parent.is_closed()
        assert parent.run_until_complete(_echo_hash_ok())
    finally:
        parent.close()
    assert len(parent._ops) == 0


def test_fork_from_inside_a_running_loop():
    async def main():
        assert await _echo_hash_ok()

        def child():
            out = {}
            # What a careless child does: drop everything and collect it,
            # which runs the inherited loop's __del__/close paths.
            gc.collect()
            try:
                asyncio.get_running_loop()
                out["running_loop_visible"] = True
            except RuntimeError:
                out["running_loop_visible"] = False
            out.update(_child_makes_its_own_loop())
            out["run"] = aiouring.run(_echo_hash_ok())
            return out

        res = _in_child(child)["ok"]
        assert res == {"running_loop_visible": False, "echo_ok": True,
                       "own_backing": res["own_backing"], "run": True}
        return await _echo_hash_ok()

    assert aiouring.run(main())


def test_an_operation_in_flight_across_fork_completes_in_the_parent_only():
    # The parent has a native recv pending when it forks; the child writes the
    # bytes into the inherited socket and exits. The parent's CQE must arrive,
    # with exactly those bytes, and nothing may be lost when the child's copy
    # of the ring fd goes away.
    payload = os.urandom(50_000)

    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        with a, b:
            pending = asyncio.ensure_future(loop.sock_recv(b, len(payload)))
            await asyncio.sleep(0.01)   # the recv is in the kernel now
            assert loop.statistics().ops_in_flight >= 1

            def child():
                a.setblocking(True)
                a.sendall(payload)
                return True

            assert _in_child(child)["ok"] is True
            got = bytearray(await asyncio.wait_for(pending, 10))
            while len(got) < len(payload):
                got += await asyncio.wait_for(loop.sock_recv(b, len(payload)), 10)
        return hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()

    assert aiouring.run(main())


# ---- multiprocessing ---------------------------------------------------------

def _digest_in_worker(seed: int) -> str:
    # Each worker also runs its own aiouring loop: a child can have one.
    data = hashlib.sha256(str(seed).encode()).digest() * 4096

    async def roundtrip():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        with a, b:
            sender = asyncio.ensure_future(loop.sock_sendall(a, data))
            got = bytearray()
            while len(got) < len(data):
                got += await loop.sock_recv(b, 65536)
            await sender
            return bytes(got)

    return hashlib.sha256(aiouring.run(roundtrip())).hexdigest()


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_multiprocessing_pool_next_to_a_live_loop(method):
    ctx = multiprocessing.get_context(method)
    seeds = list(range(16))
    expected = [hashlib.sha256(hashlib.sha256(str(s).encode()).digest() * 4096).hexdigest() for s in seeds]

    async def main():
        loop = asyncio.get_running_loop()
        # Workers are forked while this loop runs, with ops in flight.
        with ctx.Pool(2) as pool:
            work = loop.run_in_executor(None, pool.map, _digest_in_worker, seeds)
            alive = 0
            while not work.done():
                assert await _echo_hash_ok(20_000)   # the parent keeps doing I/O meanwhile
                alive += 1
            return await work, alive

    results, alive = aiouring.run(main())
    assert results == expected
    assert alive >= 1
