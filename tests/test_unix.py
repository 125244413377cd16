"""Unix stream sockets specifically (the shared transport tests in test_tcp.py
run over Unix sockets too): socketpairs, abstract addresses, servers on
existing sockets, stale and busy paths; on aiouring and asyncio's loop."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
import tempfile

import pytest

from tests.support import loop, loop_kind, run  # noqa: F401  (fixtures)
from tests.test_tcp import Collector, EchoProtocol, native, payload


def test_socketpair_transports(loop, loop_kind):
    data = payload(5_000_000, seed=8)

    async def main():
        a, b = socket.socketpair()
        ta, pa = await loop.connect_accepted_socket(EchoProtocol, a)
        tb, pb = await loop.connect_accepted_socket(lambda: Collector(loop), b)
        native(loop_kind, ta)
        native(loop_kind, tb)
        assert tb.get_extra_info("peername") == ""     # unnamed Unix socket
        tb.write(data)
        tb.write_eof()
        await pb.lost
        assert hashlib.sha256(pb.data).digest() == hashlib.sha256(data).digest()

    run(loop, main())


def test_abstract_namespace_server(loop, loop_kind):
    name = f"\0aiouring-test-{os.getpid()}-{id(loop)}"

    async def main():
        server = await loop.create_unix_server(EchoProtocol, name)
        assert server.sockets[0].getsockname() == name.encode()
        reader, writer = await asyncio.open_unix_connection(name)
        native(loop_kind, writer.transport)
        writer.write(b"abstract")
        assert await reader.readexactly(8) == b"abstract"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_server_on_existing_socket_and_stale_path(loop, loop_kind):
    async def main():
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "sock")
            # A stale socket file left behind by a dead server is replaced.
            stale = socket.socket(socket.AF_UNIX)
            stale.bind(path)
            stale.close()
            server = await loop.create_unix_server(EchoProtocol, path)
            # A live server's path is refused.
            with pytest.raises(OSError) as info:
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.bind(path)
                finally:
                    s.close()
            assert info.value.errno == errno.EADDRINUSE
            server.close()
            await server.wait_closed()

            # A server on a socket the caller made and bound.
            own = socket.socket(socket.AF_UNIX)
            own.bind(os.path.join(d, "own"))
            server2 = await loop.create_unix_server(EchoProtocol, sock=own)
            reader, writer = await asyncio.open_unix_connection(os.path.join(d, "own"))
            native(loop_kind, writer.transport)
            writer.write(b"own socket")
            assert await reader.readexactly(10) == b"own socket"
            writer.close()
            await writer.wait_closed()
            server2.close()
            await server2.wait_closed()

    run(loop, main())


def test_unix_connection_refused_and_not_a_socket(loop):
    async def main():
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "sock")
            s = socket.socket(socket.AF_UNIX)
            s.bind(path)      # bound but not listening
            try:
                with pytest.raises(ConnectionRefusedError):
                    await loop.create_unix_connection(asyncio.Protocol, path)
            finally:
                s.close()
            plain = os.path.join(d, "file")
            open(plain, "w").close()
            with pytest.raises(ConnectionRefusedError):
                await loop.create_unix_connection(asyncio.Protocol, plain)

    run(loop, main())
