"""The low-level socket API (loop.sock_*) on TCP, UDP and Unix sockets, on
aiouring and on asyncio's own loop (the oracle): results, EOF, resets,
cancellation at every point, many concurrent operations, and the exceptions
asyncio raises for bad input."""

import asyncio
import errno
import hashlib
import os
import random
import socket
import ssl
import sys
import tempfile
import threading

import pytest

from tests.support import loop, loop_kind, run  # noqa: F401

needs_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="added in Python 3.11")


def _nb(*socks):
    for s in socks:
        s.setblocking(False)
    return socks


def tcp_pair():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    return _nb(client, server)


def unix_pair():
    return _nb(*socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))


STREAM_PAIRS = {"tcp": tcp_pair, "unix": unix_pair}


@pytest.fixture(params=sorted(STREAM_PAIRS))
def stream_pair(request):
    a, b = STREAM_PAIRS[request.param]()
    yield a, b
    a.close()
    b.close()


def _payload(size, seed=0):
    return random.Random(seed).randbytes(size)


async def _recv_exactly(loop, sock, size):
    chunks = []
    got = 0
    while got < size:
        chunk = await loop.sock_recv(sock, min(65536, size - got))
        assert chunk, "unexpected EOF"
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# ---- data transfer -----------------------------------------------------------

def test_sendall_and_recv_large_payload(loop, stream_pair):
    a, b = stream_pair
    data = _payload(4 << 20)

    async def main():
        sender = loop.create_task(loop.sock_sendall(a, data))
        got = await _recv_exactly(loop, b, len(data))
        await sender
        return got

    got = run(loop, main())
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_recv_into_fills_caller_buffer(loop, stream_pair):
    a, b = stream_pair
    data = _payload(300_000, 1)

    async def main():
        sender = loop.create_task(loop.sock_sendall(a, data))
        buf = bytearray(70_000)
        out = bytearray()
        while len(out) < len(data):
            n = await loop.sock_recv_into(b, buf)
            assert n > 0
            out += buf[:n]
        await sender
        # A memoryview slice and an array work too.
        await loop.sock_sendall(a, b"xyz")
        view = memoryview(bytearray(10))[2:]
        n = await loop.sock_recv_into(b, view)
        return bytes(out), bytes(view[:n])

    out, tail = run(loop, main())
    assert out == data and tail == b"xyz"


def test_recv_zero_bytes(loop, stream_pair):
    a, b = stream_pair

    async def main():
        await loop.sock_sendall(a, b"abc")
        await asyncio.sleep(0.01)
        empty = await loop.sock_recv(b, 0)
        rest = await loop.sock_recv(b, 10)
        return empty, rest

    assert run(loop, main()) == (b"", b"abc")


def test_sendall_accepts_bytes_like_objects(loop, stream_pair):
    a, b = stream_pair
    import array

    async def main():
        await loop.sock_sendall(a, bytearray(b"ab"))
        await loop.sock_sendall(a, memoryview(b"xxcdxx")[2:4])
        await loop.sock_sendall(a, array.array("B", b"ef"))
        await loop.sock_sendall(a, b"")
        return await _recv_exactly(loop, b, 6)

    assert run(loop, main()) == b"abcdef"


def test_eof_returns_empty(loop, stream_pair):
    a, b = stream_pair

    async def main():
        pending = loop.create_task(loop.sock_recv(b, 100))
        await asyncio.sleep(0.01)
        await loop.sock_sendall(a, b"last words")
        a.shutdown(socket.SHUT_WR)
        first = await pending
        rest = b""
        while True:
            chunk = await loop.sock_recv(b, 100)
            if not chunk:
                break
            rest += chunk
        n = await loop.sock_recv_into(b, bytearray(10))
        return first + rest, n

    assert run(loop, main()) == (b"last words", 0)


def test_peer_reset_raises_connection_reset(loop):
    a, b = tcp_pair()
    with a, b:
        async def main():
            pending = loop.create_task(loop.sock_recv(b, 100))
            await asyncio.sleep(0.01)
            a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            a.close()
            with pytest.raises(ConnectionResetError):
                await pending

        run(loop, main())


def test_sendall_to_closed_peer_raises_broken_pipe_or_reset(loop, stream_pair):
    a, b = stream_pair

    async def main():
        b.close()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(100):
                await loop.sock_sendall(a, b"x" * 65536)

    run(loop, main())


# ---- accept and connect ------------------------------------------------------

def test_accept_and_connect_tcp(loop):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)

    async def main():
        client = socket.socket()
        client.setblocking(False)
        with client:
            accepting = loop.create_task(loop.sock_accept(listener))
            await loop.sock_connect(client, listener.getsockname())
            conn, addr = await accepting
            with conn:
                assert addr == client.getsockname()
                assert conn.gettimeout() == 0
                assert conn.family == socket.AF_INET and conn.type == socket.SOCK_STREAM
                await loop.sock_sendall(client, b"hello")
                return await _recv_exactly(loop, conn, 5)

    with listener:
        assert run(loop, main()) == b"hello"


def test_accept_and_connect_ipv6(loop):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    listener = socket.socket(socket.AF_INET6)
    try:
        listener.bind(("::1", 0))
    except OSError:
        listener.close()
        pytest.skip("no IPv6 loopback")
    listener.listen()
    listener.setblocking(False)

    async def main():
        client = socket.socket(socket.AF_INET6)
        client.setblocking(False)
        with client:
            accepting = loop.create_task(loop.sock_accept(listener))
            await loop.sock_connect(client, listener.getsockname()[:2])
            conn, addr = await accepting
            conn.close()
            return addr, client.getsockname()

    with listener:
        addr, expected = run(loop, main())
        assert addr == expected


def test_accept_and_connect_unix(loop, tmp_path):
    path = str(tmp_path / "sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    listener.setblocking(False)

    async def main():
        client = socket.socket(socket.AF_UNIX)
        client.setblocking(False)
        with client:
            accepting = loop.create_task(loop.sock_accept(listener))
            await loop.sock_connect(client, path)
            conn, addr = await accepting
            with conn:
                await loop.sock_sendall(conn, b"unix!")
                return addr, await _recv_exactly(loop, client, 5)

    with listener:
        # An unbound Unix client has the empty address, as accept() reports.
        assert run(loop, main()) == ("", b"unix!")


def test_connect_resolves_host_names(loop):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    async def main():
        client = socket.socket()
        client.setblocking(False)
        with client:
            await loop.sock_connect(client, ("localhost", listener.getsockname()[1]))
            return client.getpeername()

    with listener:
        assert run(loop, main()) == listener.getsockname()


def test_connect_refused(loop):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()   # nothing listens on this port now

    async def main():
        client = socket.socket()
        client.setblocking(False)
        with client:
            with pytest.raises(ConnectionRefusedError):
                await loop.sock_connect(client, ("127.0.0.1", port))

    run(loop, main())


def test_connect_to_missing_unix_path(loop, tmp_path):
    async def main():
        client = socket.socket(socket.AF_UNIX)
        client.setblocking(False)
        with client:
            with pytest.raises(FileNotFoundError):
                await loop.sock_connect(client, str(tmp_path / "nobody"))

    run(loop, main())


def test_many_concurrent_accepts_and_connects(loop):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    listener.setblocking(False)
    n = 200

    async def one_client(i):
        c = socket.socket()
        c.setblocking(False)
        await loop.sock_connect(c, listener.getsockname())
        await loop.sock_sendall(c, i.to_bytes(4, "big"))
        return c

    async def acceptor():
        # One accept at a time: asyncio's loop supports only one pending
        # sock_accept per socket (a second replaces the first's reader).
        return [(await loop.sock_accept(listener))[0] for _ in range(n)]

    async def main():
        accepting = loop.create_task(acceptor())
        clients = await asyncio.gather(*(one_client(i) for i in range(n)))
        conns = await accepting
        got = sorted([int.from_bytes(await _recv_exactly(loop, c, 4), "big") for c in conns])
        for s in clients + conns:
            s.close()
        return got

    with listener:
        assert run(loop, main(), timeout=60) == list(range(n))


# ---- datagrams ---------------------------------------------------------------

@needs_311
def test_udp_sendto_recvfrom(loop):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    _nb(a, b)

    async def main():
        pending = loop.create_task(loop.sock_recvfrom(b, 2048))
        await asyncio.sleep(0.01)
        sent = await loop.sock_sendto(a, b"datagram-1", b.getsockname())
        data, addr = await pending
        await loop.sock_sendto(a, memoryview(b"xdatagram-2")[1:], b.getsockname())
        buf = bytearray(100)
        n, addr2 = await loop.sock_recvfrom_into(b, buf)
        data2 = bytes(buf[:n])
        await loop.sock_sendto(a, b"123456789", b.getsockname())
        n3, _ = await loop.sock_recvfrom_into(b, buf, 4)   # truncated to nbytes
        await loop.sock_sendto(a, b"", b.getsockname())
        empty = await loop.sock_recvfrom(b, 100)
        return sent, data, addr, data2, addr2, n3, bytes(buf[:4]), empty

    with a, b:
        sent, data, addr, data2, addr2, n3, head, empty = run(loop, main())
        assert sent == 10 and data == b"datagram-1" and addr == a.getsockname()
        assert data2 == b"datagram-2" and addr2 == a.getsockname()
        assert n3 == 4 and head == b"1234"
        assert empty == (b"", a.getsockname())


@needs_311
def test_udp_recvfrom_truncates_to_bufsize(loop):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(("127.0.0.1", 0))
    _nb(a, b)

    async def main():
        await loop.sock_sendto(a, b"0123456789", b.getsockname())
        await loop.sock_sendto(a, b"next", b.getsockname())
        first, _ = await loop.sock_recvfrom(b, 3)
        second, _ = await loop.sock_recvfrom(b, 100)
        return first, second

    with a, b:
        # The rest of a datagram is discarded, never delivered later.
        assert run(loop, main()) == (b"012", b"next")


@needs_311
def test_udp_ipv6_and_unix_datagram_addresses(loop, tmp_path):
    async def roundtrip(family, addr_a, addr_b):
        a = socket.socket(family, socket.SOCK_DGRAM)
        b = socket.socket(family, socket.SOCK_DGRAM)
        with a, b:
            a.bind(addr_a)
            b.bind(addr_b)
            _nb(a, b)
            await loop.sock_sendto(a, b"dgram", b.getsockname())
            data, addr = await loop.sock_recvfrom(b, 100)
            assert data == b"dgram"
            assert addr == a.getsockname()

    async def main():
        await roundtrip(socket.AF_UNIX, str(tmp_path / "a"), str(tmp_path / "b"))
        await roundtrip(socket.AF_UNIX, b"\0aiouring-test-a-%d" % os.getpid(),
                        b"\0aiouring-test-b-%d" % os.getpid())
        if socket.has_ipv6:
            try:
                await roundtrip(socket.AF_INET6, ("::1", 0), ("::1", 0))
            except OSError as exc:
                if exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    raise

    run(loop, main())


def test_udp_connected_recv_and_sendall(loop):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(("127.0.0.1", 0))
    a.connect(b.getsockname())
    _nb(a, b)

    async def main():
        await loop.sock_sendall(a, b"one datagram")
        return await loop.sock_recv(b, 100)

    with a, b:
        assert run(loop, main()) == b"one datagram"


@needs_311
def test_sendto_resolves_and_validates_address(loop):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(("127.0.0.1", 0))
    _nb(a, b)

    async def main():
        with pytest.raises(TypeError):
            await loop.sock_sendto(a, b"x", "not an address")
        with pytest.raises(TypeError):
            await loop.sock_sendto(a, "text", b.getsockname())

    with a, b:
        run(loop, main())


# ---- sendfile ----------------------------------------------------------------

def test_sock_sendfile(loop, stream_pair, tmp_path):
    a, b = stream_pair
    data = _payload(1_000_000, 7)
    path = tmp_path / "blob"
    path.write_bytes(data)

    async def main():
        with open(path, "rb") as f:
            receiver = loop.create_task(_recv_exactly(loop, b, len(data)))
            sent = await loop.sock_sendfile(a, f)
            assert f.tell() == len(data)
            whole = await receiver
            f.seek(0)
            receiver = loop.create_task(_recv_exactly(loop, b, 1000))
            sent2 = await loop.sock_sendfile(a, f, 5000, 1000)
            part = await receiver
            assert f.tell() == 6000
            return sent, whole, sent2, part

    sent, whole, sent2, part = run(loop, main())
    assert sent == len(data) and hashlib.sha256(whole).digest() == hashlib.sha256(data).digest()
    assert sent2 == 1000 and part == data[5000:6000]


def test_sock_sendfile_bad_arguments(loop, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    a, b = tcp_pair()
    u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u1.setblocking(False)

    async def main():
        with open(path, "rb") as f, open(path, "r") as text:
            with pytest.raises(ValueError, match="SOCK_STREAM"):
                await loop.sock_sendfile(u1, f)
            with pytest.raises(ValueError, match="binary mode"):
                await loop.sock_sendfile(a, text)
            with pytest.raises(ValueError, match="offset"):
                await loop.sock_sendfile(a, f, -1)
            with pytest.raises(ValueError, match="count"):
                await loop.sock_sendfile(a, f, 0, 0)
            with pytest.raises(TypeError):
                await loop.sock_sendfile(a, f, "0")

    with a, b, u1:
        run(loop, main())


# ---- cancellation ------------------------------------------------------------

def test_cancelled_recv_loses_no_data(loop, stream_pair):
    """Regression test for the lost-data race (bpo-33694): the peer sends, then
    the receive is cancelled before the loop has run again. The kernel may have
    already copied the bytes into the cancelled receive's buffer; they must
    come out of the next receives, in order."""
    a, b = stream_pair
    rounds = 300

    async def main():
        sent = bytearray()
        received = bytearray()
        for i in range(rounds):
            chunk = f"<chunk {i}>".encode() * (1 + i % 7)
            use_into = i % 2 == 1
            if use_into:
                buf = bytearray(4096)
                task = loop.create_task(loop.sock_recv_into(b, buf))
            else:
                task = loop.create_task(loop.sock_recv(b, 4096))
            for _ in range(i % 3):   # vary how far the receive got
                await asyncio.sleep(0)
            a.send(chunk)
            sent += chunk
            if i % 5 == 4:
                await asyncio.sleep(0)
            task.cancel()
            try:
                result = await task
            except asyncio.CancelledError:
                pass
            else:
                received += buf[:result] if use_into else result
        a.shutdown(socket.SHUT_WR)
        while True:
            if len(received) % 2:
                buf = bytearray(37)
                n = await loop.sock_recv_into(b, buf)
                chunk = bytes(buf[:n])
            else:
                chunk = await loop.sock_recv(b, 53)
            if not chunk:
                break
            received += chunk
        return bytes(sent), bytes(received)

    sent, received = run(loop, main(), timeout=60)
    assert received == sent


def test_cancelled_recv_then_recv_smaller_than_stash(loop, stream_pair):
    a, b = stream_pair

    async def main():
        task = loop.create_task(loop.sock_recv(b, 1000))
        await asyncio.sleep(0)
        a.send(b"0123456789")
        await asyncio.sleep(0.01)   # let it complete, then cancel too late
        task.cancel()
        out = b""
        try:
            out += await task
        except asyncio.CancelledError:
            pass
        while len(out) < 10:
            out += await loop.sock_recv(b, 3)
        return out

    assert run(loop, main()) == b"0123456789"


def test_cancelled_recv_before_it_started(loop, stream_pair):
    a, b = stream_pair

    async def main():
        task = loop.create_task(loop.sock_recv(b, 100))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        a.send(b"intact")
        return await loop.sock_recv(b, 100)

    assert run(loop, main()) == b"intact"


def test_cancelled_accept_loses_no_fd(loop):
    """A cancelled sock_accept that the kernel completed anyway must not leak
    the connection's fd (teardown checks fds); later accepts still work."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    clients = []

    async def main():
        for i in range(20):
            task = loop.create_task(loop.sock_accept(listener))
            for _ in range(i % 3):
                await asyncio.sleep(0)
            c = socket.socket()
            c.setblocking(False)
            clients.append(c)
            try:
                c.connect(listener.getsockname())
            except BlockingIOError:
                pass
            task.cancel()
            try:
                conn, _ = await task
                conn.close()
            except asyncio.CancelledError:
                pass
        # The listener still works afterwards.
        c = socket.socket()
        c.setblocking(False)
        clients.append(c)
        accepting = loop.create_task(loop.sock_accept(listener))
        await loop.sock_connect(c, listener.getsockname())
        conn, _ = await accepting
        conn.close()
        # Drain whatever the cancelled accepts left in the backlog (asyncio's
        # loop leaves them there; aiouring may have closed them).
        while True:
            try:
                listener.accept()[0].close()
            except BlockingIOError:
                break

    with listener:
        run(loop, main())
    for c in clients:
        c.close()


def test_cancelled_sendall_and_connect(loop):
    a, b = tcp_pair()
    with a, b:
        async def main():
            task = loop.create_task(loop.sock_sendall(a, b"\0" * (32 << 20)))
            await asyncio.sleep(0.05)   # blocked: nobody reads
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # A connect that is cancelled in flight: a listener whose backlog
            # is full drops the SYN, so the connect stays pending.
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            fillers = []
            c = socket.socket()
            c.setblocking(False)
            try:
                for _ in range(8):
                    f = socket.socket()
                    f.setblocking(False)
                    fillers.append(f)
                    try:
                        f.connect(listener.getsockname())
                    except BlockingIOError:
                        pass
                task = loop.create_task(loop.sock_connect(c, listener.getsockname()))
                await asyncio.sleep(0.05)
                assert not task.done()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            finally:
                c.close()
                listener.close()
                for f in fillers:
                    f.close()

        run(loop, main())


@needs_311
def test_cancelled_recvfrom_loses_no_datagram(loop):
    """A cancelled sock_recvfrom/recvfrom_into whose datagram the kernel had
    already taken: that datagram comes out of a later receive, whole and in
    order (UDP on loopback keeps order), exactly once."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(("127.0.0.1", 0))
    _nb(a, b)
    rounds = 200

    async def main():
        got = []
        for i in range(rounds):
            into = i % 2 == 1
            if into:
                buf = bytearray(100)
                task = loop.create_task(loop.sock_recvfrom_into(b, buf))
            else:
                task = loop.create_task(loop.sock_recvfrom(b, 100))
            for _ in range(i % 3):
                await asyncio.sleep(0)
            a.sendto(b"dgram %d" % i, b.getsockname())
            if i % 5 == 4:
                await asyncio.sleep(0)
            task.cancel()
            try:
                result = await task
            except asyncio.CancelledError:
                continue
            got.append(bytes(buf[:result[0]]) if into else result[0])
        a.sendto(b"end", b.getsockname())
        while True:
            if len(got) % 2:
                buf = bytearray(100)
                n, addr = await loop.sock_recvfrom_into(b, buf)
                data = bytes(buf[:n])
            else:
                data, addr = await loop.sock_recvfrom(b, 100)
            assert addr[1] == a.getsockname()[1]
            if data == b"end":
                return got
            got.append(data)

    with a, b:
        got = run(loop, main(), timeout=60)
        assert got == [b"dgram %d" % i for i in range(rounds)]


def test_connect_errors_match_asyncio(loop, tmp_path):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()

    async def main():
        c = socket.socket()
        c.setblocking(False)
        with c:
            with pytest.raises(ConnectionRefusedError) as info:
                await loop.sock_connect(c, ("127.0.0.1", port))
            assert str(info.value) == f"[Errno {errno.ECONNREFUSED}] Connect call failed ('127.0.0.1', {port})"
        u = socket.socket(socket.AF_UNIX)
        u.setblocking(False)
        with u:
            with pytest.raises(FileNotFoundError) as info:
                await loop.sock_connect(u, str(tmp_path / "missing"))
            assert info.value.strerror == os.strerror(errno.ENOENT)
        closed = socket.socket()
        closed.close()
        with pytest.raises(OSError) as info:
            await loop.sock_connect(closed, ("127.0.0.1", port))
        assert info.value.errno == errno.EBADF
        u = socket.socket(socket.AF_UNIX)
        u.setblocking(False)
        with u:
            with pytest.raises(OSError):   # path too long, as Python's socket says
                await loop.sock_connect(u, "/" + "x" * 200)
            with pytest.raises(TypeError):
                await loop.sock_connect(u, 42)

    run(loop, main())


def test_connect_starts_when_the_coroutine_starts(loop):
    """asyncio sends the SYN before sock_connect first yields; a blocking
    accept() right after starting the task must not wait for the next loop
    iteration (CPython's test_sock_client_racing)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(5)   # a failure is a timeout, not a hung suite
    c = socket.socket()
    c.setblocking(False)

    async def main():
        task = loop.create_task(loop.sock_connect(c, listener.getsockname()))
        await asyncio.sleep(0)
        server, _ = listener.accept()
        with server:
            await task
            return c.getpeername() == listener.getsockname()

    with listener, c:
        assert run(loop, main())


def test_socket_like_mocks_get_asyncio_behaviour(loop):
    """asyncio's own tests hand the loop Mock(spec=socket.socket) objects;
    those have no fd for the kernel, so they take asyncio's path, which calls
    their connect() and sendto()."""
    from unittest import mock
    m = mock.MagicMock(socket.socket)
    m.family = socket.AF_INET
    m.type = socket.SOCK_STREAM
    m.proto = 0
    m.gettimeout.return_value = 0.0

    async def main():
        await loop.sock_connect(m, ("127.0.0.1", 80))
        m.connect.assert_called_with(("127.0.0.1", 80))
        if sys.version_info >= (3, 11):
            m.sendto.return_value = 3
            assert await loop.sock_sendto(m, b"abc", ("127.0.0.1", 80)) == 3

    run(loop, main())


def test_connect_to_already_connected_socket(loop):
    a, b = tcp_pair()
    with a, b:
        async def main():
            with pytest.raises(OSError) as info:
                await loop.sock_connect(a, b.getsockname())
            assert info.value.errno == errno.EISCONN

        run(loop, main())


@needs_311
def test_sendto_unusual_addresses_behave_as_asyncio(loop, tmp_path):
    """Host names, path-like Unix addresses and bad ports take asyncio's own
    path: same results, same errors."""
    import pathlib
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(("127.0.0.1", 0))
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ub = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ub.bind(str(tmp_path / "ub"))
    ua = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    _nb(a, b, ua, ub)

    async def main():
        assert await loop.sock_sendto(a, b"by name", ("localhost", b.getsockname()[1])) == 7
        assert (await loop.sock_recvfrom(b, 100))[0] == b"by name"
        with pytest.raises(TypeError):   # sendto takes no path-like objects
            await loop.sock_sendto(ua, b"path", pathlib.Path(tmp_path / "ub"))
        assert await loop.sock_sendto(ua, b"path", os.fsencode(tmp_path / "ub")) == 4
        assert (await loop.sock_recvfrom(ub, 100))[0] == b"path"
        with pytest.raises(OverflowError):
            await loop.sock_sendto(a, b"x", ("127.0.0.1", 70000))
        with pytest.raises(OSError):
            await loop.sock_sendto(ua, b"x", str(tmp_path / "nobody"))

    with a, b, ua, ub:
        run(loop, main())


def test_wait_for_timeout_on_recv_keeps_data(loop, stream_pair):
    a, b = stream_pair

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_recv(b, 100), 0.02)
        a.send(b"after timeout")
        return await loop.sock_recv(b, 100)

    assert run(loop, main()) == b"after timeout"


# ---- scale ---------------------------------------------------------------------

def test_thousands_of_concurrent_recvs(loop):
    n = 3000
    pairs = [_nb(*socket.socketpair()) for _ in range(n)]
    try:
        async def main():
            tasks = [loop.create_task(loop.sock_recv(b, 64)) for _, b in pairs]
            await asyncio.sleep(0.01)
            for i, (a, _) in enumerate(pairs):
                a.send(b"%d" % i)
            return await asyncio.gather(*tasks)

        got = run(loop, main(), timeout=120)
        assert got == [b"%d" % i for i in range(n)]
    finally:
        for a, b in pairs:
            a.close()
            b.close()


# ---- bad input -------------------------------------------------------------------

def test_recv_bad_sizes(loop, stream_pair):
    a, b = stream_pair

    async def main():
        with pytest.raises(ValueError, match="negative buffersize"):
            await loop.sock_recv(b, -1)
        with pytest.raises(TypeError):
            await loop.sock_recv(b, "10")
        with pytest.raises(TypeError):
            await loop.sock_recv(b, 1.5)
        with pytest.raises(TypeError):
            await loop.sock_recv_into(b, b"read-only")
        with pytest.raises(TypeError):
            await loop.sock_recv_into(b, "text")
        with pytest.raises(TypeError):
            await loop.sock_sendall(a, "text")
        with pytest.raises(TypeError):
            await loop.sock_sendall(a, 42)

    run(loop, main())


@needs_311
def test_recvfrom_bad_sizes(loop):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.setblocking(False)

    async def main():
        with pytest.raises(ValueError, match="negative buffersize"):
            await loop.sock_recvfrom(u, -1)
        with pytest.raises(ValueError):
            await loop.sock_recvfrom_into(u, bytearray(4), 10)
        with pytest.raises(ValueError):
            await loop.sock_recvfrom_into(u, bytearray(4), -1)
        with pytest.raises(TypeError):
            await loop.sock_recvfrom_into(u, b"ro")

    with u:
        run(loop, main())


def test_closed_socket_raises_ebadf(loop):
    a, b = tcp_pair()
    b.close()
    listener = socket.socket()
    listener.close()

    async def main():
        for make in (lambda: loop.sock_recv(b, 10),
                     lambda: loop.sock_recv_into(b, bytearray(10)),
                     lambda: loop.sock_sendall(b, b"x"),
                     lambda: loop.sock_accept(listener)):
            with pytest.raises(OSError) as info:
                await make()
            assert info.value.errno == errno.EBADF

    with a:
        run(loop, main())


def test_wrong_socket_kinds(loop):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    unconnected = socket.socket()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _nb(listener, unconnected, udp)

    async def main():
        with pytest.raises(OSError) as info:
            await loop.sock_recv(listener, 10)   # a listening socket
        assert info.value.errno == errno.ENOTCONN
        with pytest.raises(OSError) as info:
            await loop.sock_accept(unconnected)  # not listening
        assert info.value.errno == errno.EINVAL
        with pytest.raises(OSError) as info:
            await loop.sock_accept(udp)          # datagram socket
        assert info.value.errno == errno.EOPNOTSUPP
        with pytest.raises(OSError) as info:
            await loop.sock_sendall(unconnected, b"x")
        assert info.value.errno in (errno.EPIPE, errno.ENOTCONN)

    with listener, unconnected, udp:
        run(loop, main())


def test_non_socket_objects(loop):
    r, w = os.pipe()

    async def main():
        for bad in (r, None, "sock"):
            with pytest.raises((AttributeError, TypeError)):
                await loop.sock_recv(bad, 10)
            with pytest.raises((AttributeError, TypeError)):
                await loop.sock_sendall(bad, b"x")
            with pytest.raises((AttributeError, TypeError)):
                await loop.sock_accept(bad)

    try:
        run(loop, main())
    finally:
        os.close(r)
        os.close(w)


def test_ssl_socket_is_refused(loop):
    a, b = tcp_pair()
    ctx = ssl.create_default_context()
    wrapped = ctx.wrap_socket(a, do_handshake_on_connect=False, server_hostname="x")

    async def main():
        for make in (lambda: loop.sock_recv(wrapped, 10),
                     lambda: loop.sock_recv_into(wrapped, bytearray(4)),
                     lambda: loop.sock_sendall(wrapped, b"x"),
                     lambda: loop.sock_accept(wrapped),
                     lambda: loop.sock_connect(wrapped, ("127.0.0.1", 1))):
            with pytest.raises(TypeError, match="SSLSocket"):
                await make()

    with wrapped, b:
        run(loop, main())


def test_blocking_socket_refused_in_debug_mode(loop):
    a, b = socket.socketpair()
    loop.set_debug(True)

    async def main():
        for make in (lambda: loop.sock_recv(a, 10),
                     lambda: loop.sock_recv_into(a, bytearray(4)),
                     lambda: loop.sock_sendall(a, b"x"),
                     lambda: loop.sock_accept(a),
                     lambda: loop.sock_connect(a, ("127.0.0.1", 1))):
            with pytest.raises(ValueError, match="non-blocking"):
                await make()

    with a, b:
        run(loop, main())


def test_sock_api_from_a_running_loop_in_another_thread(loop):
    """The supported way to use the loop's socket API from another thread is
    run_coroutine_threadsafe."""
    a, b = unix_pair()

    async def main():
        def worker():
            asyncio.run_coroutine_threadsafe(loop.sock_sendall(a, b"from thread"), loop).result(10)
            return asyncio.run_coroutine_threadsafe(loop.sock_recv(b, 100), loop).result(10)

        return await loop.run_in_executor(None, worker)

    with a, b:
        assert run(loop, main()) == b"from thread"


def test_sock_api_driven_from_another_thread_raises(loop):
    """Awaiting loop.sock_*() in another thread's loop while this loop runs is
    a bug: asyncio fails it with RuntimeError (a future of a different loop).
    aiouring must fail it the same way, before a thread that does not own the
    ring queues anything on it."""
    a, b = unix_pair()

    def misuse():
        other = asyncio.new_event_loop()
        try:
            other.run_until_complete(loop.sock_recv(b, 10))
        except RuntimeError as exc:
            return exc
        finally:
            other.close()

    async def main():
        ops = getattr(loop, "_ops", None)
        in_flight = len(ops) if ops is not None else 0
        exc = await loop.run_in_executor(None, misuse)
        assert isinstance(exc, RuntimeError)
        if ops is not None:   # nothing was queued from the wrong thread
            assert len(ops) == in_flight
        # The loop is unharmed: its own receive still works.
        await loop.sock_sendall(a, b"fine")
        return await loop.sock_recv(b, 10)

    with a, b:
        assert run(loop, main()) == b"fine"


def test_recv_on_socket_used_by_transport_raises(loop):
    a, b = unix_pair()

    async def main():
        tr, _ = await loop.create_connection(asyncio.Protocol, sock=b)
        try:
            with pytest.raises(RuntimeError, match="transport"):
                await loop.sock_recv(b, 10)
        finally:
            tr.close()
        await asyncio.sleep(0)

    with a:
        run(loop, main())


def test_parallel_senders_and_receivers_on_many_threads(loop):
    """Traffic generated by other threads (blocking sockets) against the
    loop's native operations."""
    n = 20
    pairs = [unix_pair() for _ in range(n)]
    blobs = [_payload(200_000, i) for i in range(n)]

    def blocking_sender(sock, blob):
        sock.setblocking(True)
        sock.sendall(blob)
        sock.shutdown(socket.SHUT_WR)

    async def reader(sock):
        out = bytearray()
        while True:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                return bytes(out)
            out += chunk

    async def main():
        threads = [threading.Thread(target=blocking_sender, args=(a, blob))
                   for (a, _), blob in zip(pairs, blobs)]
        readers = [loop.create_task(reader(b)) for _, b in pairs]
        for t in threads:
            t.start()
        got = await asyncio.gather(*readers)
        for t in threads:
            t.join()
        return got

    try:
        got = run(loop, main(), timeout=60)
        assert [hashlib.sha256(g).digest() for g in got] == [hashlib.sha256(x).digest() for x in blobs]
    finally:
        for a, b in pairs:
            a.close()
            b.close()


@pytest.fixture
def tmp_path(tmp_path_factory):
    # Unix socket paths are limited to 108 bytes; pytest's tmp_path can be longer.
    d = tempfile.mkdtemp(prefix="aiou")
    import pathlib
    yield pathlib.Path(d)
    import shutil
    shutil.rmtree(d, ignore_errors=True)
