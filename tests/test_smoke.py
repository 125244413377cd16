"""End-to-end smoke: the loop runs coroutines, timers, sockets and threads on
both loops with the same results."""

import asyncio
import socket
import threading

from tests.support import loop, loop_kind, run  # noqa: F401


def test_sock_roundtrip_and_threadsafe(loop):
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        with a, b:
            await loop.sock_sendall(a, b"ping" * 1000)
            got = b""
            while len(got) < 4000:
                got += await loop.sock_recv(b, 65536)
            fut = loop.create_future()
            threading.Thread(target=loop.call_soon_threadsafe, args=(fut.set_result, 7)).start()
            return got, await fut

    assert run(loop, main()) == (b"ping" * 1000, 7)


def test_call_later_order(loop):
    async def main():
        seen = []
        for delay in (0.03, 0.01, 0.02):
            loop.call_later(delay, seen.append, delay)
        await asyncio.sleep(0.06)
        return seen

    assert run(loop, main()) == [0.01, 0.02, 0.03]
