"""loop.sendfile() on stream transports: the zero-copy path (os.sendfile on the
transport's socket, between pausing and resuming the ring transport), the
read/write fallback (TLS), offsets and counts, order with queued writes, file
positions afterwards and asyncio's errors; on aiouring and asyncio's loop."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import tempfile

import pytest

from tests.support import loop, loop_kind, run  # noqa: F401  (fixtures)
from tests.test_tcp import native, payload
from tests.test_tls import certs, client_ctx, server_ctx  # noqa: F401  (fixtures)

FILE_SIZE = 24 * 1024 * 1024 + 123


@pytest.fixture(scope="module")
def big_file():
    data = payload(FILE_SIZE, seed=99)
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(data)
    yield f.name, data
    os.unlink(f.name)


class Sink(asyncio.Protocol):
    def __init__(self, loop):
        self.h = hashlib.sha256()
        self.n = 0
        self.done = loop.create_future()
        self.data_during = loop.create_future()

    def connection_made(self, tr):
        self.tr = tr

    def data_received(self, data):
        self.h.update(data)
        self.n += len(data)

    def eof_received(self):
        self.done.set_result((self.n, self.h.digest()))


async def serve_sink(loop, **kw):
    sinks = []

    def factory():
        sinks.append(Sink(loop))
        return sinks[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0, **kw)
    return server, sinks


@pytest.mark.parametrize("offset,count", [(0, None), (1000, None), (12345, 5_000_001), (FILE_SIZE - 10, 100)])
def test_sendfile_offset_and_count(loop, loop_kind, big_file, offset, count):
    path, data = big_file
    expected = data[offset:offset + count] if count is not None else data[offset:]

    async def main():
        server, sinks = await serve_sink(loop)
        tr, pr = await loop.create_connection(asyncio.Protocol, *server.sockets[0].getsockname())
        native(loop_kind, tr)
        tr.write(b"HEAD")            # queued data goes first
        with open(path, "rb") as f:
            sent = await loop.sendfile(tr, f, offset, count)
            assert sent == len(expected)
            assert f.tell() == offset + sent     # asyncio leaves the position after the data sent
        tr.write(b"TAIL")            # the transport works normally afterwards
        tr.write_eof()
        n, digest = await sinks[0].done
        assert n == 8 + len(expected)
        assert digest == hashlib.sha256(b"HEAD" + expected + b"TAIL").digest()
        tr.close()
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=60)


def test_sendfile_reads_arriving_meanwhile_are_kept(loop, big_file):
    """The transport stops reading during sendfile; what the peer sends in the
    meantime is delivered afterwards, complete and in order."""
    path, data = big_file

    async def main():
        received = bytearray()
        got_all = loop.create_future()
        talk = payload(300_000, seed=4)

        class Talker(asyncio.Protocol):
            def connection_made(self, tr):
                self.tr = tr
                self.h = hashlib.sha256()
                self.n = 0
                tr.write(talk)       # talks while the other side sends a file

            def data_received(self, d):
                self.h.update(d)
                self.n += len(d)
                if self.n == len(data):
                    self.tr.close()

        class Listener(asyncio.Protocol):
            def data_received(self, d):
                received.extend(d)
                if len(received) == len(talk):
                    got_all.set_result(None)

        server = await loop.create_server(Talker, "127.0.0.1", 0)
        tr, pr = await loop.create_connection(Listener, *server.sockets[0].getsockname())
        with open(path, "rb") as f:
            assert await loop.sendfile(tr, f) == len(data)
        await got_all
        assert bytes(received) == talk
        tr.close()
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=60)


def test_sendfile_fallback_over_tls(loop, big_file, server_ctx, client_ctx):  # noqa: F811
    path, data = big_file

    async def main():
        server, sinks = await serve_sink(loop, ssl=server_ctx)
        tr, pr = await loop.create_connection(asyncio.Protocol, *server.sockets[0].getsockname(),
                                              ssl=client_ctx, server_hostname="localhost")
        with open(path, "rb") as f:
            with pytest.raises(RuntimeError, match="fallback is disabled"):
                await loop.sendfile(tr, f, fallback=False)
            assert await loop.sendfile(tr, f, 0, 3_000_000) == 3_000_000
        tr.write_eof() if tr.can_write_eof() else None
        tr.close()
        while not sinks or sinks[0].n < 3_000_000:
            await asyncio.sleep(0.01)
        assert sinks[0].h.digest() == hashlib.sha256(data[:3_000_000]).digest()
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=60)


def test_sendfile_bad_input(loop, big_file):
    path, data = big_file

    async def main():
        server, sinks = await serve_sink(loop)
        tr, pr = await loop.create_connection(asyncio.Protocol, *server.sockets[0].getsockname())
        with open(path, "rb") as f:
            with pytest.raises(ValueError, match="count must be a positive integer"):
                await loop.sendfile(tr, f, 0, -1)
            with pytest.raises(ValueError, match="offset must be a non-negative integer"):
                await loop.sendfile(tr, f, -1)
            with pytest.raises(TypeError, match="count must be a positive integer"):
                await loop.sendfile(tr, f, 0, "1")
        with open(path, "r") as text:
            with pytest.raises(ValueError, match="binary mode"):
                await loop.sendfile(tr, text)
        with open(path, "rb") as f:
            assert await loop.sendfile(tr, f, FILE_SIZE + 5) == 0    # past the end: nothing
            tr.write(b"x")
        tr.close()
        with open(path, "rb") as f:
            with pytest.raises(RuntimeError, match="closing"):
                await loop.sendfile(tr, f)
        server.close()
        await server.wait_closed()

    run(loop, main())
