"""Stream transports over TCP and Unix sockets, on aiouring and on asyncio's own
loop (the oracle): echo with Protocol, BufferedProtocol and streams, big
transfers checked by hash, many connections, half-close, resets, flow control
both ways, server close, and asyncio's errors for bad input.

Most tests run over both TCP and Unix sockets (the ``family`` fixture); the
transport is the same code for both.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import resource
import socket
import struct
import sys
import tempfile

import pytest

from tests.support import loop, loop_kind, run  # noqa: F401  (fixtures)


@pytest.fixture(params=["tcp", "unix"])
def family(request):
    return request.param


class Endpoint:
    """Where a test server listens: create it and connect to it."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._dir = None

    async def start_server(self, loop, factory, **kw):
        if self.family == "tcp":
            return await loop.create_server(factory, "127.0.0.1", 0, **kw)
        self._dir = tempfile.TemporaryDirectory()
        return await loop.create_unix_server(factory, os.path.join(self._dir.name, "s"), **kw)

    async def start_streams(self, handler, **kw):
        if self.family == "tcp":
            return await asyncio.start_server(handler, "127.0.0.1", 0, **kw)
        self._dir = tempfile.TemporaryDirectory()
        return await asyncio.start_unix_server(handler, os.path.join(self._dir.name, "s"), **kw)

    async def connect(self, loop, factory, server, **kw):
        addr = server.sockets[0].getsockname()
        if self.family == "tcp":
            return await loop.create_connection(factory, *addr[:2], **kw)
        return await loop.create_unix_connection(factory, addr, **kw)

    async def open_connection(self, server, **kw):
        addr = server.sockets[0].getsockname()
        if self.family == "tcp":
            return await asyncio.open_connection(*addr[:2], **kw)
        return await asyncio.open_unix_connection(addr, **kw)

    def raw_address(self, server):
        return server.sockets[0].getsockname()

    def raw_socket(self):
        return socket.socket(socket.AF_INET if self.family == "tcp" else socket.AF_UNIX)

    def cleanup(self):
        if self._dir is not None:
            self._dir.cleanup()


def skip_asyncio_310_pause_bug(loop_kind):
    if loop_kind == "asyncio" and sys.version_info < (3, 11):
        pytest.skip("asyncio 3.10 starts reading after pause_reading() in connection_made() (fixed in 3.11)")


@pytest.fixture
def endpoint(family):
    ep = Endpoint(family)
    yield ep
    ep.cleanup()


def payload(n: int, seed: int = 1) -> bytes:
    # Random but reproducible, and not periodic: a reordering shows in the hash.
    return hashlib.shake_256(struct.pack("<II", seed, n)).digest(n)


def native(loop_kind, transport) -> None:
    """On aiouring the transport must be the ring one, not the fallback."""
    if loop_kind == "aiouring":
        raw = transport.get_extra_info("ssl_object") and transport._ssl_protocol._transport or transport
        assert type(raw).__name__ == "RingSocketTransport", type(raw)


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        self.transport.close()
        return True


class EchoBuffered(asyncio.BufferedProtocol):
    def __init__(self, size=1000):
        self.buf = bytearray(size)   # deliberately small: data spans several get_buffer rounds

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.transport.write(bytes(self.buf[:nbytes]))

    def eof_received(self):
        self.transport.close()
        return True


class Collector(asyncio.Protocol):
    """Client side: records everything, in order."""

    def __init__(self, loop):
        self.data = bytearray()
        self.events = []
        self.lost = loop.create_future()
        self.eof = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        assert isinstance(data, bytes)
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self):
        self.events.append("eof")
        if not self.eof.done():
            self.eof.set_result(None)

    def connection_lost(self, exc):
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


# ---- echo ---------------------------------------------------------------------


@pytest.mark.parametrize("server_kind", ["protocol", "buffered"])
def test_echo_protocols(loop, loop_kind, endpoint, server_kind):
    data = payload(3 * 1024 * 1024 + 17)
    factory = EchoProtocol if server_kind == "protocol" else EchoBuffered

    async def main():
        server = await endpoint.start_server(loop, factory)
        tr, pr = await endpoint.connect(loop, lambda: Collector(loop), server)
        native(loop_kind, tr)
        for i in range(0, len(data), 65536):
            tr.write(data[i:i + 65536])
        tr.write_eof()
        assert await pr.lost is None
        assert pr.events == ["made", "data", "eof", "lost"]
        assert hashlib.sha256(pr.data).digest() == hashlib.sha256(data).digest()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_echo_streams(loop, loop_kind, endpoint):
    messages = [payload(n, seed=n) for n in (1, 100, 1024, 65536, 300_000)]

    async def handle(reader, writer):
        native(loop_kind, writer.transport)
        while True:
            header = await reader.read(4)
            if not header:
                break
            header += await reader.readexactly(4 - len(header))
            (n,) = struct.unpack("!I", header)
            body = await reader.readexactly(n)
            writer.write(header + body)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await endpoint.start_streams(handle)
        reader, writer = await endpoint.open_connection(server)
        native(loop_kind, writer.transport)
        for m in messages:
            writer.write(struct.pack("!I", len(m)) + m)
            await writer.drain()
            (n,) = struct.unpack("!I", await reader.readexactly(4))
            assert await reader.readexactly(n) == m
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_many_small_writes_keep_order(loop, endpoint):
    """Thousands of writes in one go: some go straight out, the rest queue behind
    a kernel send; the peer must see them in order."""
    chunks = [payload(1 + i % 700, seed=i) for i in range(20000)]
    expected = hashlib.sha256(b"".join(chunks)).digest()

    async def main():
        got = loop.create_future()

        class Sink(asyncio.Protocol):
            def connection_made(self, tr):
                self.h = hashlib.sha256()

            def data_received(self, data):
                self.h.update(data)

            def eof_received(self):
                got.set_result(self.h.digest())

        server = await endpoint.start_server(loop, Sink)
        tr, pr = await endpoint.connect(loop, asyncio.Protocol, server)
        for c in chunks:
            tr.write(bytearray(c))    # a mutable buffer: the transport must copy what it keeps
        tr.write_eof()
        assert await got == expected
        tr.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_large_transfer_both_directions(loop, loop_kind):
    """~200 MB client->server and 64 MB server->client at once, hashed on arrival."""
    up = 200 * 1024 * 1024
    down = 64 * 1024 * 1024
    block = payload(1024 * 1024, seed=7)

    async def main():
        server_done = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, tr):
                self.tr = tr
                self.h = hashlib.sha256()
                self.n = 0
                for _ in range(down // len(block)):
                    tr.write(block)
                tr.write_eof()

            def data_received(self, data):
                self.h.update(data)
                self.n += len(data)

            def eof_received(self):
                server_done.set_result((self.n, self.h.digest()))

        server = await loop.create_server(Server, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        native(loop_kind, writer.transport)

        async def send():
            for _ in range(up // len(block)):
                writer.write(block)
                await writer.drain()
            writer.write_eof()

        async def receive():
            h = hashlib.sha256()
            n = 0
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    return n, h.digest()
                n += len(data)
                h.update(data)

        sender = asyncio.ensure_future(send())
        n, digest = await receive()
        await sender
        expected_down = hashlib.sha256(block * (down // len(block))).digest()
        assert (n, digest) == (down, expected_down)
        n_up, digest_up = await server_done
        assert n_up == up
        assert digest_up == hashlib.sha256(block * (up // len(block))).digest()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=120)


def test_thousand_concurrent_connections(loop, loop_kind):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low for 2000 sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4200), hard))
    try:
        async def main():
            server = await loop.create_server(EchoProtocol, "127.0.0.1", 0, backlog=2048)
            port = server.sockets[0].getsockname()[1]

            async def client(i):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                msgs = [payload(50 + (i * 37 + k) % 3000, seed=i * 10 + k) for k in range(3)]
                for m in msgs:
                    writer.write(m)
                    assert await reader.readexactly(len(m)) == m
                writer.close()
                await writer.wait_closed()

            await asyncio.gather(*(client(i) for i in range(1000)))
            server.close()
            await server.wait_closed()

        run(loop, main(), timeout=120)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---- connection lifecycle -------------------------------------------------------


def test_callbacks_are_scheduled_not_inline(loop, endpoint):
    """connection_made before any data; close() returns before connection_lost."""

    async def main():
        order = []

        class Server(asyncio.Protocol):
            def connection_made(self, tr):
                tr.write(b"hello")   # arrives before the client awaited anything else
                tr.close()

        server = await endpoint.start_server(loop, Server)

        class Client(Collector):
            def connection_made(self, tr):
                order.append("made")
                super().connection_made(tr)

            def data_received(self, data):
                # asyncio: create_connection() has returned before the first data.
                order.append(("data", holder.get("tr") is not None))
                super().data_received(data)

        holder = {}
        tr, pr = await endpoint.connect(loop, lambda: Client(loop), server)
        holder["tr"] = tr
        await pr.lost
        assert order[0] == "made"
        assert order[1] == ("data", True)
        assert bytes(pr.data) == b"hello"

        tr2, pr2 = await endpoint.connect(loop, lambda: Collector(loop), server)
        tr2.close()
        assert pr2.events[-1] != "lost"     # not yet: connection_lost is scheduled
        assert tr2.is_closing()
        assert await pr2.lost is None
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_get_extra_info(loop, loop_kind, endpoint):
    async def main():
        server = await endpoint.start_server(loop, EchoProtocol)
        tr, pr = await endpoint.connect(loop, lambda: Collector(loop), server)
        sock = tr.get_extra_info("socket")
        assert sock.fileno() >= 0
        assert tr.get_extra_info("sockname") == sock.getsockname()
        assert tr.get_extra_info("peername") == sock.getpeername()
        assert tr.get_extra_info("nope", 42) == 42
        assert tr.can_write_eof()
        if endpoint.family == "tcp":
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert tr.get_protocol() is pr
        assert tr.is_reading()
        tr.pause_reading()
        assert not tr.is_reading()
        tr.resume_reading()
        tr.close()
        assert not tr.is_reading()
        await pr.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_half_close_client_first(loop, endpoint):
    """The client shuts down its side; the server keeps the connection open
    (eof_received returns True), still writes, then closes."""

    async def main():
        server_events = []

        class Server(asyncio.Protocol):
            def connection_made(self, tr):
                self.tr = tr
                self.buf = b""

            def data_received(self, data):
                self.buf += data

            def eof_received(self):
                server_events.append("eof")
                self.tr.write(b"got:" + self.buf)
                loop.call_later(0.05, self.late)
                return True

            def late(self):
                self.tr.write(b":bye")
                self.tr.close()

            def connection_lost(self, exc):
                server_events.append(("lost", exc))

        server = await endpoint.start_server(loop, Server)
        tr, pr = await endpoint.connect(loop, lambda: Collector(loop), server)
        tr.write(b"question")
        tr.write_eof()
        with pytest.raises(RuntimeError, match="after write_eof"):
            tr.write(b"more")
        await pr.eof
        assert bytes(pr.data) == b"got:question:bye"
        # The client's default eof_received closed the transport.
        assert await pr.lost is None
        assert server_events == ["eof", ("lost", None)]
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.loop_errors_ok
def test_half_close_server_first(loop, endpoint):
    async def main():
        class Server(asyncio.Protocol):
            def connection_made(self, tr):
                self.tr = tr
                tr.write(b"x" * 100_000)
                tr.write_eof()        # waits for the queued data, then shuts down

            def data_received(self, data):
                self.tr.write(data)   # after write_eof: asyncio raises RuntimeError

        errors = []
        reported = loop.create_future()

        def handler(lp, ctx):
            errors.append(ctx)
            if not reported.done():
                reported.set_result(None)

        loop.set_exception_handler(handler)

        server = await endpoint.start_server(loop, Server)

        class Client(Collector):
            def eof_received(self):
                super().eof_received()
                return True   # keep writing after the server's EOF

        tr, pr = await endpoint.connect(loop, lambda: Client(loop), server)
        await pr.eof
        assert bytes(pr.data) == b"x" * 100_000
        tr.write(b"ping")
        await reported
        tr.close()
        await pr.lost
        assert len(errors) == 1
        assert errors[0]["message"] == "Fatal error: protocol.data_received() call failed."
        assert isinstance(errors[0]["exception"], RuntimeError)
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_peer_reset_mid_write(loop, endpoint):
    """The peer resets while we stream to it: connection_lost gets the
    ConnectionError, no exception-handler noise, the loop keeps serving."""

    async def main():
        lost = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, tr):
                self.tr = tr
                self.keep_writing()

            def keep_writing(self):
                if self.tr.is_closing():
                    return
                self.tr.write(b"z" * 65536)
                loop.call_soon(self.keep_writing)

            def connection_lost(self, exc):
                if not lost.done():
                    lost.set_result(exc)

        server = await endpoint.start_server(loop, Server)
        raw = endpoint.raw_socket()
        raw.setblocking(False)
        await loop.sock_connect(raw, endpoint.raw_address(server))
        await loop.sock_recv(raw, 1000)
        if endpoint.family == "tcp":
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()    # TCP: RST; Unix: the peer goes away with data unread
        exc = await lost
        assert isinstance(exc, (ConnectionResetError, BrokenPipeError)), exc
        # Another client is still served.
        tr, pr = await endpoint.connect(loop, lambda: Collector(loop), server)
        await asyncio.sleep(0)
        tr.close()
        await pr.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_abort_with_pending_writes(loop, endpoint):
    async def main():
        server = await endpoint.start_server(loop, asyncio.Protocol)   # never reads
        tr, pr = await endpoint.connect(loop, lambda: Collector(loop), server)
        for _ in range(200):
            tr.write(b"q" * 65536)
        assert tr.get_write_buffer_size() > 0
        tr.abort()
        assert tr.is_closing()
        assert tr.get_write_buffer_size() == 0
        assert await pr.lost is None
        tr.write(b"after")        # dropped silently, as asyncio
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_writes_after_close_warn_after_threshold(loop, endpoint, caplog):
    async def main():
        server = await endpoint.start_server(loop, EchoProtocol)
        tr, pr = await endpoint.connect(loop, lambda: Collector(loop), server)
        tr.close()
        await pr.lost
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(8):
                tr.write(b"x")
        assert "socket.send() raised exception." in caplog.text
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_close_flushes_queued_writes(loop, endpoint):
    data = payload(8 * 1024 * 1024, seed=3)

    async def main():
        done = loop.create_future()

        class Sink(asyncio.Protocol):
            def connection_made(self, tr):
                self.h = hashlib.sha256()

            def data_received(self, d):
                self.h.update(d)

            def eof_received(self):
                done.set_result(self.h.digest())

        server = await endpoint.start_server(loop, Sink)
        tr, pr = await endpoint.connect(loop, lambda: Collector(loop), server)
        tr.write(data)
        tr.close()            # must not drop what is queued
        assert await done == hashlib.sha256(data).digest()
        await pr.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


# ---- flow control ---------------------------------------------------------------


def test_slow_reader_pauses_writing(loop, endpoint):
    total = 16 * 1024 * 1024
    block = payload(64 * 1024, seed=11)

    async def main():
        state = {"paused": 0, "resumed": 0}
        finished = loop.create_future()

        class Writer(asyncio.Protocol):
            def connection_made(self, tr):
                self.tr = tr
                self.sent = 0
                tr.set_write_buffer_limits(high=256 * 1024, low=64 * 1024)
                assert tr.get_write_buffer_limits() == (64 * 1024, 256 * 1024)
                self.pump()

            def pump(self):
                while not state["paused"] - state["resumed"] and self.sent < total:
                    self.tr.write(block)
                    self.sent += len(block)
                if self.sent >= total and not finished.done():
                    self.tr.write_eof()
                    finished.set_result(None)

            def pause_writing(self):
                assert self.tr.get_write_buffer_size() > 256 * 1024
                state["paused"] += 1

            def resume_writing(self):
                assert self.tr.get_write_buffer_size() <= 64 * 1024
                state["resumed"] += 1
                loop.call_soon(self.pump)

        server = await endpoint.start_server(loop, Writer)
        reader, writer = await endpoint.open_connection(server)
        h = hashlib.sha256()
        n = 0
        while True:
            chunk = await reader.read(16 * 1024)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
            if n % (1024 * 1024) < 16 * 1024:
                await asyncio.sleep(0.001)   # a slow reader
        await finished
        assert n == total
        assert h.digest() == hashlib.sha256(block * (total // len(block))).digest()
        assert state["paused"] >= 1 and state["resumed"] >= 1
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=60)


@pytest.mark.parametrize("buffered", [False, True], ids=["protocol", "buffered"])
def test_pause_reading_holds_data_in_flight(loop, loop_kind, endpoint, buffered):
    """Data that arrives while paused is delivered after resume, in order,
    followed by the EOF that came behind it."""
    skip_asyncio_310_pause_bug(loop_kind)
    data = payload(2 * 1024 * 1024 + 5, seed=5)

    async def main():
        received = bytearray()
        events = []
        connected = loop.create_future()
        lost = loop.create_future()

        class Base:
            def connection_made(self, tr):
                self.tr = tr
                tr.pause_reading()
                connected.set_result(tr)

            def eof_received(self):
                events.append(("eof", len(received)))

            def connection_lost(self, exc):
                lost.set_result(exc)

        class P(Base, asyncio.Protocol):
            def data_received(self, d):
                assert self.tr.is_reading()
                received.extend(d)

        class B(Base, asyncio.BufferedProtocol):
            buf = bytearray(4096)

            def get_buffer(self, hint):
                return self.buf

            def buffer_updated(self, n):
                assert self.tr.is_reading()
                received.extend(self.buf[:n])
                if len(received) % 3 == 0:      # pause mid-delivery now and then
                    self.tr.pause_reading()
                    loop.call_soon(self.tr.resume_reading)

        server = await endpoint.start_server(loop, B if buffered else P)
        reader, writer = await endpoint.open_connection(server)
        tr = await connected
        writer.write(data)
        writer.write_eof()
        await asyncio.sleep(0.2)
        assert len(received) == 0 and not events     # paused: nothing delivered
        tr.resume_reading()
        await lost
        assert bytes(received) == data
        assert events == [("eof", len(data))]
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_pause_reading_applies_backpressure(loop, loop_kind, endpoint):
    """A transport paused for good must not buffer the peer's data without
    bound: the peer's writes eventually back up."""
    skip_asyncio_310_pause_bug(loop_kind)

    async def main():
        accepted = []

        class Paused(asyncio.Protocol):
            def connection_made(self, tr):
                self.tr = tr
                accepted.append(tr)
                tr.pause_reading()

        server = await endpoint.start_server(loop, Paused)
        reader, writer = await endpoint.open_connection(server)
        writer.transport.set_write_buffer_limits(high=0)
        sent = 0
        block = b"b" * 65536
        # Keep writing until the peer's (paused) side stops taking data.
        for _ in range(2000):
            writer.write(block)
            sent += len(block)
            try:
                await asyncio.wait_for(writer.drain(), 0.3)
            except asyncio.TimeoutError:
                break
        else:
            pytest.fail(f"{sent} bytes went into a paused transport without back-pressure")
        assert sent < 64 * 1024 * 1024
        writer.transport.abort()
        for tr in accepted:
            tr.abort()     # Server.wait_closed() waits for connections from 3.12 on
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=60)


# ---- servers ---------------------------------------------------------------------


def test_server_close_keeps_connections_and_frees_port(loop, loop_kind):
    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        server.close()   # from 3.12 on wait_closed() would wait for these clients
        await asyncio.sleep(0)
        # Existing connections keep working (asyncio does not close them).
        for i, (r, w) in enumerate(clients):
            w.write(b"still %d" % i)
            assert await r.readexactly(len(b"still %d" % i)) == b"still %d" % i
        # New connections are refused and the port can be bound again at once.
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        again = await loop.create_server(EchoProtocol, "127.0.0.1", port)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"new")
        assert await r.readexactly(3) == b"new"
        for r_, w_ in clients + [(r, w)]:
            w_.close()
            await w_.wait_closed()
        again.close()
        await again.wait_closed()

    run(loop, main())


def test_server_stop_and_restart_serving(loop):
    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0, start_serving=False)
        assert not server.is_serving()
        port = server.sockets[0].getsockname()[1]
        await server.start_serving()
        await server.start_serving()   # idempotent
        assert server.is_serving()
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"abc")
        assert await r.readexactly(3) == b"abc"
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        assert not server.is_serving()

    run(loop, main())


def test_connection_burst_all_accepted(loop):
    """More pending connections than one accept would take at a time."""

    async def main():
        made = []

        class Counting(Collector):
            def connection_made(self, tr):
                super().connection_made(tr)
                made.append(tr)

        server = await loop.create_server(lambda: Counting(loop), "127.0.0.1", 0, backlog=500)
        port = server.sockets[0].getsockname()[1]
        socks = []
        for _ in range(300):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            socks.append(s)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(made) == 300:
                break
        assert len(made) == 300
        for s in socks:
            s.close()
        for tr in made:
            tr.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


# ---- bad input: asyncio's exceptions ---------------------------------------------


def test_write_rejects_non_bytes(loop, endpoint):
    async def main():
        server = await endpoint.start_server(loop, EchoProtocol)
        tr, pr = await endpoint.connect(loop, lambda: Collector(loop), server)
        for bad in ("text", 42, None, [b"x"]):
            with pytest.raises(TypeError, match="data argument must be a bytes-like object"):
                tr.write(bad)
        with pytest.raises(TypeError):
            tr.writelines(["text"])
        tr.write(memoryview(b"abcd").cast("I"))     # multi-byte items: sent as bytes
        tr.write(bytearray(b"ef"))
        tr.write(b"")
        tr.writelines([b"g", bytearray(b"h"), memoryview(b"ij")])
        await asyncio.sleep(0.05)
        tr.close()
        await pr.lost
        assert bytes(pr.data) == b"abcdefghij"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_connect_refused_and_bad_addresses(loop):
    async def main():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        with pytest.raises(OSError):
            await loop.create_connection(asyncio.Protocol, "256.1.1.1", 80)
        with pytest.raises(FileNotFoundError):
            await loop.create_unix_connection(asyncio.Protocol, "/nonexistent/dir/sock")
        with pytest.raises(ValueError, match="host and port was not specified"):
            await loop.create_connection(asyncio.Protocol)

    run(loop, main())


def test_port_in_use(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(OSError) as info:
            await loop.create_server(asyncio.Protocol, "127.0.0.1", port, reuse_address=False)
        assert info.value.errno == errno.EADDRINUSE
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.loop_errors_ok
@pytest.mark.parametrize("where", ["data_received", "eof_received", "get_buffer", "buffer_updated"])
def test_protocol_errors_are_reported_and_others_served(loop, endpoint, where):
    async def main():
        errors = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        lost = loop.create_future()

        class Bad(asyncio.BufferedProtocol if where in ("get_buffer", "buffer_updated") else asyncio.Protocol):
            buf = bytearray(100)

            def connection_made(self, tr):
                self.tr = tr

            def data_received(self, data):
                if where == "data_received":
                    raise ZeroDivisionError("boom")

            def get_buffer(self, hint):
                if where == "get_buffer":
                    raise ZeroDivisionError("boom")
                return self.buf

            def buffer_updated(self, n):
                raise ZeroDivisionError("boom")

            def eof_received(self):
                raise ZeroDivisionError("boom")

            def connection_lost(self, exc):
                lost.set_result(exc)

        server = await endpoint.start_server(loop, Bad)
        reader, writer = await endpoint.open_connection(server)
        if where == "eof_received":
            writer.write_eof()
        else:
            writer.write(b"hi")
        exc = await lost
        assert isinstance(exc, ZeroDivisionError)
        assert len(errors) == 1
        assert errors[0]["message"] == f"Fatal error: protocol.{where}() call failed."
        assert isinstance(errors[0]["exception"], ZeroDivisionError)
        try:
            # The server closed that connection (with our data unread, asyncio's
            # loop resets it; aiouring had read the data already and sends FIN).
            assert await reader.read() == b""
        except ConnectionResetError:
            pass
        writer.close()

        server2 = await endpoint.start_server(loop, EchoProtocol)
        r, w = await endpoint.open_connection(server2)
        w.write(b"alive")
        assert await r.readexactly(5) == b"alive"
        w.close()
        await w.wait_closed()
        for s in (server, server2):
            s.close()
            await s.wait_closed()

    run(loop, main())


def test_get_buffer_empty_is_an_error(loop):
    async def main():
        errors = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        lost = loop.create_future()

        class Empty(asyncio.BufferedProtocol):
            def get_buffer(self, hint):
                return bytearray()

            def buffer_updated(self, n):
                pass

            def connection_lost(self, exc):
                lost.set_result(exc)

        server = await loop.create_server(Empty, "127.0.0.1", 0)
        r, w = await asyncio.open_connection(*server.sockets[0].getsockname())
        w.write(b"x")
        exc = await lost
        assert isinstance(exc, RuntimeError) and "empty buffer" in str(exc)
        assert errors[0]["message"] == "Fatal error: protocol.get_buffer() call failed."
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_sock_recv_on_transport_socket_is_refused(loop):
    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        tr, pr = await loop.create_connection(lambda: Collector(loop), *server.sockets[0].getsockname())
        sock = tr.get_extra_info("socket")
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.add_reader(sock.fileno(), lambda: None)
        tr.close()
        await pr.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_connect_accepted_socket(loop, loop_kind):
    async def main():
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        csock = socket.create_connection(lsock.getsockname())
        conn, _ = lsock.accept()
        lsock.close()
        tr, pr = await loop.connect_accepted_socket(EchoProtocol, conn)
        native(loop_kind, tr)
        csock.setblocking(False)
        await loop.sock_sendall(csock, b"accepted")
        got = b""
        while len(got) < 8:
            got += await loop.sock_recv(csock, 100)
        assert got == b"accepted"
        csock.close()
        await asyncio.sleep(0.05)
        assert tr.is_closing()

    run(loop, main())


def test_loop_close_with_connections_still_open(loop, loop_kind):
    """Closing the loop with live connections drains the ring (no operation left,
    no re-armed receive) and leaves the sockets to the garbage collector, as
    asyncio does."""

    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        pairs = [await loop.create_connection(lambda: Collector(loop), *server.sockets[0].getsockname())
                 for _ in range(3)]
        for tr, pr in pairs:
            tr.write(b"x")
        await asyncio.sleep(0.05)
        pairs[0][0].pause_reading()
        return server

    server = run(loop, main())
    server.close()
    loop.close()
    if loop_kind == "aiouring":
        assert len(loop._ops) == 0



def test_receive_buffer_ring_exhaustion_loses_nothing(loop, loop_kind):
    """With only two receive buffers, many connections receiving at once run
    the ring dry (ENOBUFS ends their multishot receives) and must re-arm
    without losing or reordering a byte. On asyncio's loop the same traffic
    is the oracle."""
    if loop_kind == "aiouring":
        # What Loop(recv_buffers=2, recv_buffer_size=4096) sets; the fixture
        # built the loop already, and the buffer ring is made on first use.
        loop._recv_buffer_shape = (2, 4096)

    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        if loop_kind == "aiouring":
            assert loop._stream_buffers().ring.entries == 2

        async def client(i):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            data = payload(200_000 + i, seed=i)
            writer.write(data)
            got = await reader.readexactly(len(data))
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
            writer.close()
            await writer.wait_closed()

        await asyncio.gather(*(client(i) for i in range(40)))
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=60)


def test_buffered_protocol_may_resize_its_buffer(loop, endpoint):
    """The transport must not keep an export of the protocol's buffer while
    calling buffer_updated(): a protocol that grows or trims its bytearray
    there gets BufferError otherwise."""
    data = payload(300_000, seed=12)

    async def main():
        done = loop.create_future()

        class Growing(asyncio.BufferedProtocol):
            def connection_made(self, tr):
                self.buf = bytearray(1000)
                self.received = bytearray()

            def get_buffer(self, hint):
                return self.buf

            def buffer_updated(self, n):
                self.received += self.buf[:n]
                self.buf.extend(b"\0" * 10)     # resizes the buffer just filled
                del self.buf[:5]

            def eof_received(self):
                done.set_result(bytes(self.received))

        server = await endpoint.start_server(loop, Growing)
        reader, writer = await endpoint.open_connection(server)
        writer.write(data)
        writer.write_eof()
        assert await done == data
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.loop_errors_ok
def test_buffered_protocol_read_only_buffer(loop, endpoint):
    async def main():
        lost = loop.create_future()
        errors = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

        class ReadOnly(asyncio.BufferedProtocol):
            def get_buffer(self, hint):
                return b"immutable"

            def buffer_updated(self, n):
                pass

            def connection_lost(self, exc):
                lost.set_result(exc)

        server = await endpoint.start_server(loop, ReadOnly)
        reader, writer = await endpoint.open_connection(server)
        writer.write(b"data")
        exc = await lost
        assert isinstance(exc, TypeError)
        assert errors and errors[0]["message"] == "Fatal read error on socket transport"
        writer.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


_EMFILE_CHILD = r'''
import asyncio, resource, socket, sys
sys.path.insert(0, sys.argv[2])
import aiouring
loop = aiouring.Loop() if sys.argv[1] == "aiouring" else asyncio.SelectorEventLoop()
reports = []
loop.set_exception_handler(lambda lp, ctx: reports.append(ctx["message"]))

async def main():
    made = []

    class Counting(asyncio.Protocol):
        def connection_made(self, tr):
            made.append(tr)

    server = await loop.create_server(Counting, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # Fill the fd table: the next accept fails with EMFILE.
    hog = []
    try:
        while True:
            hog.append(socket.socket())
    except OSError:
        pass
    for s in hog[-4:]:
        s.close()
    del hog[-4:]
    clients = [socket.socket() for _ in range(4)]    # takes the last free fds
    for c in clients:
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
    for _ in range(100):
        await asyncio.sleep(0.01)
        if reports:
            break
    for s in hog:
        s.close()
    # After the back-off the server accepts again.
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    await asyncio.sleep(1.5)
    accepted = len(made)
    w.close()
    for c in clients:
        c.close()
    for tr in made:
        tr.close()
    server.close()
    print("REPORT", reports[0] if reports else None, "ACCEPTED", accepted)

resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
loop.run_until_complete(main())
loop.close()
'''


def test_accept_out_of_fds_backs_off_and_recovers(loop_kind):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _EMFILE_CHILD, loop_kind, root],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("REPORT socket.accept() out of system resource ACCEPTED"), (line, out.stderr)
    assert int(line.split()[-1]) >= 5     # the 4 waiting clients and the new one
