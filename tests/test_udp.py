"""Datagram endpoints (asyncio's selector datagram transport on ring polls) on
aiouring and on asyncio's own loop: many datagrams checked by content,
connected and unconnected endpoints, reuse_port, allow_broadcast, Unix
datagram sockets, ICMP errors and asyncio's exceptions for bad input."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import tempfile

import pytest

from tests.support import loop, loop_kind, run  # noqa: F401  (fixtures)


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, tr):
        self.tr = tr

    def datagram_received(self, data, addr):
        self.tr.sendto(data, addr)


class Client(asyncio.DatagramProtocol):
    def __init__(self, loop):
        self.got = []
        self.errors = []
        self.lost = loop.create_future()
        self.event = asyncio.Event()

    def connection_made(self, tr):
        self.tr = tr

    def datagram_received(self, data, addr):
        self.got.append((data, addr))
        self.event.set()

    def error_received(self, exc):
        self.errors.append(exc)
        self.event.set()

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def datagram(i: int) -> bytes:
    return i.to_bytes(4, "big") + hashlib.sha256(str(i).encode()).digest() * (1 + i % 40)


async def wait_for_count(proto, n, timeout=10.0):
    async def waiter():
        while len(proto.got) < n:
            proto.event.clear()
            await proto.event.wait()
    await asyncio.wait_for(waiter(), timeout)


def test_many_datagrams_unconnected(loop):
    async def main():
        str_, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        addr = str_.get_extra_info("sockname")
        ctr, cpr = await loop.create_datagram_endpoint(lambda: Client(loop), local_addr=("127.0.0.1", 0))
        expected = set()
        # In bursts the receive buffer can absorb: UDP may drop what overflows.
        for burst in range(20):
            for i in range(burst * 100, burst * 100 + 100):
                d = datagram(i)
                expected.add(d)
                ctr.sendto(d, addr)
            await wait_for_count(cpr, (burst + 1) * 100)
        assert {d for d, a in cpr.got} == expected
        assert all(a == addr for d, a in cpr.got)
        ctr.close()
        str_.close()
        assert await cpr.lost is None

    run(loop, main())


def test_connected_endpoint_and_bad_sendto(loop):
    async def main():
        str_, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        addr = str_.get_extra_info("sockname")
        ctr, cpr = await loop.create_datagram_endpoint(lambda: Client(loop), remote_addr=addr)
        assert ctr.get_extra_info("peername") == addr
        ctr.sendto(b"one")
        ctr.sendto(b"two", addr)     # the connected address itself is allowed
        await wait_for_count(cpr, 2)
        assert sorted(d for d, a in cpr.got) == [b"one", b"two"]
        with pytest.raises(ValueError, match="Invalid address"):
            ctr.sendto(b"x", ("127.0.0.1", 9))
        with pytest.raises(TypeError, match="data argument must be a bytes-like object"):
            ctr.sendto("text")
        ctr.close()
        str_.close()
        await cpr.lost

    run(loop, main())


def test_icmp_unreachable_reaches_error_received(loop):
    async def main():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()
        s.close()
        ctr, cpr = await loop.create_datagram_endpoint(lambda: Client(loop), remote_addr=dead)
        for _ in range(50):
            ctr.sendto(b"anyone?")
            await asyncio.sleep(0.01)
            if cpr.errors:
                break
        assert cpr.errors and isinstance(cpr.errors[0], ConnectionRefusedError)
        ctr.close()
        await cpr.lost

    run(loop, main())


def test_reuse_port_and_broadcast(loop):
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT")

    async def main():
        a, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0), reuse_port=True)
        port = a.get_extra_info("sockname")[1]
        b, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", port), reuse_port=True)
        with pytest.raises(OSError):
            await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", port))
        c, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0), allow_broadcast=True)
        assert c.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        for t in (a, b, c):
            t.close()
        await asyncio.sleep(0)

    run(loop, main())


def test_unix_datagram(loop):
    async def main():
        with tempfile.TemporaryDirectory() as d:
            spath, cpath = os.path.join(d, "s"), os.path.join(d, "c")
            stransport, _ = await loop.create_datagram_endpoint(Echo, local_addr=spath, family=socket.AF_UNIX)
            ctr, cpr = await loop.create_datagram_endpoint(lambda: Client(loop), local_addr=cpath,
                                                           remote_addr=spath, family=socket.AF_UNIX)
            payloads = [datagram(i) for i in range(300)]
            for p in payloads:
                ctr.sendto(p)
                if len(payloads) % 50 == 0:
                    await asyncio.sleep(0)
            await wait_for_count(cpr, len(payloads))
            assert [d for d, a in cpr.got] == payloads     # Unix datagrams keep order
            ctr.close()
            stransport.close()
            await cpr.lost

    run(loop, main())


def test_flow_control_with_abort(loop):
    async def main():
        ctr, cpr = await loop.create_datagram_endpoint(lambda: Client(loop), remote_addr=("127.0.0.1", 9))
        assert ctr.get_write_buffer_size() == 0
        ctr.abort()
        assert ctr.is_closing()
        assert await cpr.lost is None
        ctr.sendto(b"after abort")     # ignored, as asyncio does

    run(loop, main())
