"""TLS over the ring transports: asyncio's sslproto sits on top of the socket
transport (as a BufferedProtocol on 3.11+). Echo and big transfers checked by
hash, start_tls upgrades, handshake failures and timeouts, garbage from the
peer; on aiouring and on asyncio's own loop."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import tempfile

import pytest

from tests.support import loop, loop_kind, run  # noqa: F401  (fixtures)
from tests.test_tcp import Collector, EchoProtocol, native, payload


@pytest.fixture(scope="module")
def certs():
    with tempfile.TemporaryDirectory() as d:
        key, cert = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
        try:
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                 "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"cannot make a test certificate with openssl: {exc}")
        yield key, cert


@pytest.fixture
def server_ctx(certs):
    key, cert = certs
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


@pytest.fixture
def client_ctx(certs):
    ctx = ssl.create_default_context(cafile=certs[1])
    return ctx


def test_tls_echo_protocol_and_large_transfer(loop, loop_kind, server_ctx, client_ctx):
    data = payload(16 * 1024 * 1024 + 3, seed=21)

    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(lambda: Collector(loop), "127.0.0.1", port,
                                              ssl=client_ctx, server_hostname="localhost")
        native(loop_kind, tr)
        assert tr.get_extra_info("ssl_object") is not None
        assert tr.get_extra_info("peercert")["subject"] == ((("commonName", "localhost"),),)
        assert tr.get_extra_info("cipher") is not None
        for i in range(0, len(data), 1 << 20):
            tr.write(data[i:i + (1 << 20)])
        while len(pr.data) < len(data):
            await asyncio.sleep(0.01)
        assert hashlib.sha256(pr.data).digest() == hashlib.sha256(data).digest()
        tr.close()
        assert await pr.lost is None
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=60)


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_tls_streams_echo(loop, loop_kind, server_ctx, client_ctx, family):
    async def handle(reader, writer):
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(hashlib.sha256(line).hexdigest().encode() + b"\n")
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        with tempfile.TemporaryDirectory() as d:
            if family == "tcp":
                server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", server.sockets[0].getsockname()[1], ssl=client_ctx, server_hostname="localhost")
            else:
                path = os.path.join(d, "tls.sock")
                server = await asyncio.start_unix_server(handle, path, ssl=server_ctx)
                reader, writer = await asyncio.open_unix_connection(path, ssl=client_ctx,
                                                                    server_hostname="localhost")
            native(loop_kind, writer.transport)
            for i in range(200):
                line = payload(10 + i * 97, seed=i).hex().encode() + b"\n"
                writer.write(line)
                await writer.drain()
                assert await reader.readline() == hashlib.sha256(line).hexdigest().encode() + b"\n"
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()

    run(loop, main(), timeout=60)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="StreamWriter.start_tls is 3.11+")
def test_start_tls_upgrade(loop, loop_kind, server_ctx, client_ctx):
    async def handle(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"OK\n")
        await writer.drain()
        await writer.start_tls(server_ctx)
        assert writer.get_extra_info("ssl_object") is not None
        line = await reader.readline()
        writer.write(line.upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        native(loop_kind, writer.transport)
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"OK\n"
        await writer.start_tls(client_ctx, server_hostname="localhost")
        assert writer.get_extra_info("ssl_object").version().startswith("TLS")
        writer.write(b"secret words\n")
        assert await reader.readline() == b"SECRET WORDS\n"
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_loop_start_tls_on_protocol_transport(loop, server_ctx, client_ctx):
    """loop.start_tls() directly on a (ring) transport, both sides."""

    async def main():
        upgraded = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, tr):
                self.tr = tr

            def data_received(self, data):
                assert data == b"upgrade"
                self.tr.write(b"go")
                asyncio.ensure_future(self.upgrade())

            async def upgrade(self):
                # start_tls() does not call connection_made on the new
                # protocol; data may come before it returns: echo via a future.
                proto = LateEcho(loop)
                tls = await loop.start_tls(self.tr, proto, server_ctx, server_side=True)
                proto.tr.set_result(tls)
                upgraded.set_result(tls)

        class LateEcho(asyncio.Protocol):
            def __init__(self, loop):
                self.tr = loop.create_future()

            def data_received(self, data):
                self.tr.add_done_callback(lambda f: f.result().write(data))

        server = await loop.create_server(Server, "127.0.0.1", 0)
        pr = Collector(loop)
        tr, _ = await loop.create_connection(lambda: pr, *server.sockets[0].getsockname())
        tr.write(b"upgrade")
        while bytes(pr.data) != b"go":
            await asyncio.sleep(0.01)
        pr.data.clear()
        tls = await loop.start_tls(tr, pr, client_ctx, server_hostname="localhost")
        tls.write(b"over tls")
        while bytes(pr.data) != b"over tls":
            await asyncio.sleep(0.01)
        stls = await upgraded
        tls.close()
        await pr.lost
        stls.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.loop_errors_ok
def test_handshake_failure_untrusted_and_server_keeps_serving(loop, server_ctx, client_ctx):
    async def main():
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        untrusting = ssl.create_default_context()   # system CAs only: our cert is unknown
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", port, ssl=untrusting, server_hostname="localhost")
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="wrong.example")
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                       server_hostname="localhost")
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.loop_errors_ok
def test_garbage_from_peer_and_handshake_timeout(loop, server_ctx, client_ctx):
    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0, ssl=server_ctx,
                                          ssl_handshake_timeout=0.3)
        addr = server.sockets[0].getsockname()

        async def raw_until_closed(send: bytes) -> bytes:
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, addr)
            if send:
                await loop.sock_sendall(s, send)
            got = b""
            try:
                while True:
                    chunk = await loop.sock_recv(s, 65536)
                    if not chunk:
                        break
                    got += chunk
            except ConnectionResetError:
                pass
            finally:
                s.close()
            return got

        # Not TLS at all: the server answers with an alert or nothing, then closes.
        t0 = loop.time()
        await raw_until_closed(b"GET / HTTP/1.0\r\n\r\n" * 10)
        # Silent peer: the handshake times out and the server closes.
        await raw_until_closed(b"")
        assert loop.time() - t0 < 10
        # Others are still served.
        tr, pr = await loop.create_connection(lambda: Collector(loop), *addr, ssl=client_ctx,
                                              server_hostname="localhost")
        tr.write(b"still here")
        while bytes(pr.data) != b"still here":
            await asyncio.sleep(0.01)
        tr.close()
        await pr.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ssl_shutdown_timeout is 3.11+")
def test_ssl_shutdown_timeout_with_silent_peer(loop, server_ctx, client_ctx):
    """The client closes; the peer never answers the close_notify: the
    transport still goes away after ssl_shutdown_timeout."""

    async def main():
        accepted = loop.create_future()

        class Silent(asyncio.Protocol):
            def connection_made(self, tr):
                accepted.set_result(tr)
                tr.pause_reading()    # never reads the close_notify

        server = await loop.create_server(Silent, "127.0.0.1", 0, ssl=server_ctx)
        pr = Collector(loop)
        tr, _ = await loop.create_connection(lambda: pr, *server.sockets[0].getsockname(), ssl=client_ctx,
                                             server_hostname="localhost", ssl_shutdown_timeout=0.5)
        stl = await accepted
        t0 = loop.time()
        tr.close()
        await pr.lost
        assert loop.time() - t0 < 5
        stl.abort()
        server.close()
        await server.wait_closed()

    run(loop, main())
