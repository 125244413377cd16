"""The readiness API (add_reader/remove_reader/add_writer/remove_writer) with
asyncio's level-triggered semantics, on aiouring (ring polls) and on asyncio's
own loop (epoll) alike."""

import asyncio
import errno
import os
import socket
import sys
import tempfile
import threading
import time

import pytest

from tests.support import loop, loop_kind, run  # noqa: F401


def _pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def test_reader_is_level_triggered(loop):
    """While data stays unread the callback runs on every iteration."""
    a, b = _pair()
    with a, b:
        calls = []

        async def main():
            loop.add_reader(b, calls.append, 1)
            a.send(b"x")
            for _ in range(10):
                await asyncio.sleep(0)
            loop.remove_reader(b)
            n = len(calls)
            b.recv(10)
            a.send(b"y")   # no reader now: nothing more
            for _ in range(5):
                await asyncio.sleep(0)
            return n

        n = run(loop, main())
        assert n >= 5
        assert len(calls) == n


def test_reader_stops_when_drained_and_fires_again_on_new_data(loop):
    a, b = _pair()
    with a, b:
        got = []

        async def main():
            done = loop.create_future()

            def on_readable():
                data = b.recv(100)
                got.append(data)
                if b"".join(got) == b"onetwo":
                    done.set_result(None)

            loop.add_reader(b.fileno(), on_readable)
            a.send(b"one")
            await asyncio.sleep(0.02)
            assert got == [b"one"]   # drained: not called again with nothing to read
            a.send(b"two")
            await done
            loop.remove_reader(b.fileno())

        run(loop, main())
        assert b"".join(got) == b"onetwo"


def test_writer_is_level_triggered_and_removable(loop):
    a, b = _pair()
    with a, b:
        calls = []

        async def main():
            loop.add_writer(a, calls.append, 1)
            for _ in range(5):
                await asyncio.sleep(0)
            assert loop.remove_writer(a) is True
            assert loop.remove_writer(a) is False
            n = len(calls)
            for _ in range(3):
                await asyncio.sleep(0)
            return n

        n = run(loop, main())
        assert n >= 3 and len(calls) == n


def test_writer_waits_until_buffer_drains(loop):
    a, b = _pair()
    with a, b:
        async def main():
            try:
                while True:
                    a.send(b"\0" * 65536)
            except BlockingIOError:
                pass
            fired = loop.create_future()
            loop.add_writer(a, lambda: fired.done() or fired.set_result(True))
            await asyncio.sleep(0.02)
            assert not fired.done()   # still full
            total = 0
            while True:
                try:
                    total += len(b.recv(1 << 20))
                except BlockingIOError:
                    break
            await asyncio.wait_for(fired, 10)
            loop.remove_writer(a)
            return total

        assert run(loop, main()) > 0


def test_reader_and_writer_on_same_fd(loop):
    a, b = _pair()
    with a, b:
        seen = set()

        async def main():
            done = loop.create_future()

            def mark(what):
                seen.add(what)
                if seen == {"r", "w"} and not done.done():
                    done.set_result(None)

            loop.add_writer(b, mark, "w")
            loop.add_reader(b, mark, "r")
            a.send(b"z")
            await done
            assert loop.remove_reader(b) and loop.remove_writer(b)

        run(loop, main())


def test_add_reader_replaces_callback(loop):
    a, b = _pair()
    with a, b:
        got = []

        async def main():
            loop.add_reader(b, got.append, "old")
            loop.add_reader(b, got.append, "new")
            a.send(b"x")
            await asyncio.sleep(0.02)
            loop.remove_reader(b)

        run(loop, main())
        assert got and set(got) == {"new"}


def test_remove_reader_return_values(loop):
    a, b = _pair()
    with a, b:
        assert loop.remove_reader(b) is False
        loop.add_reader(b, lambda: None)
        assert loop.remove_reader(b) is True
        assert loop.remove_reader(b) is False
        assert loop.remove_writer(b) is False


def test_eof_makes_reader_fire(loop):
    a, b = _pair()
    with b:
        async def main():
            done = loop.create_future()
            loop.add_reader(b, lambda: done.done() or done.set_result(b.recv(10)))
            a.close()
            data = await done
            loop.remove_reader(b)
            return data

        assert run(loop, main()) == b""


def test_pipe_reader_and_writer(loop):
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    try:
        async def main():
            got = loop.create_future()
            loop.add_reader(r, lambda: got.done() or got.set_result(os.read(r, 100)))
            writable = loop.create_future()
            loop.add_writer(w, lambda: writable.done() or writable.set_result(True))
            await writable
            loop.remove_writer(w)
            os.write(w, b"through the pipe")
            data = await got
            loop.remove_reader(r)
            return data

        assert run(loop, main()) == b"through the pipe"
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.loop_errors_ok
def test_reader_callback_exception_goes_to_handler(loop):
    a, b = _pair()
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    with a, b:
        async def main():
            def boom():
                b.recv(10)
                raise ValueError("reader failed")

            loop.add_reader(b, boom)
            a.send(b"x")
            await asyncio.sleep(0.02)
            loop.remove_reader(b)

        run(loop, main())
    assert [type(c["exception"]) for c in errors] == [ValueError]


def test_bad_file_descriptors(loop):
    with pytest.raises(ValueError):
        loop.add_reader(-1, lambda: None)
    with pytest.raises(ValueError):
        loop.add_writer(-5, lambda: None)
    with pytest.raises((TypeError, ValueError)):
        loop.add_reader("not a file", lambda: None)
    with pytest.raises((TypeError, ValueError)):
        loop.add_reader(object(), lambda: None)


def test_add_reader_on_regular_file_is_refused(loop):
    """epoll refuses regular files (EPERM); asyncio surfaces PermissionError.
    A ring poll would accept them and report "ready" forever."""
    with tempfile.TemporaryFile() as f:
        with pytest.raises(PermissionError) as info:
            loop.add_reader(f.fileno(), lambda: None)
        assert info.value.errno == errno.EPERM
        assert loop.remove_reader(f.fileno()) is False


def test_add_reader_on_closed_fd_raises(loop):
    a, b = _pair()
    fd = b.fileno()
    a.close()
    b.close()
    with pytest.raises(OSError) as info:
        loop.add_reader(fd, lambda: None)
    assert info.value.errno == errno.EBADF


def test_reader_on_fd_owned_by_transport_raises(loop):
    a, b = _pair()
    with a:
        async def main():
            tr, _ = await loop.create_connection(asyncio.Protocol, sock=b)
            try:
                with pytest.raises(RuntimeError, match="transport"):
                    loop.add_reader(b.fileno(), lambda: None)
            finally:
                tr.close()
            await asyncio.sleep(0)

        run(loop, main())


def test_removed_listener_is_really_closed(loop):
    """remove_reader() then close(): the socket must be gone at once, so a new
    connection is refused (CPython's test_events.test_server_close). A poll
    that is still in flight holds the kernel's reference to the file."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]

    async def main():
        loop.add_reader(listener, lambda: None)
        await asyncio.sleep(0.01)   # the poll is in the kernel now

    run(loop, main())
    loop.remove_reader(listener)
    listener.close()
    client = socket.socket()
    with client:
        with pytest.raises(ConnectionRefusedError):
            client.connect(("127.0.0.1", port))


def test_server_close_refuses_new_connections(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        client = socket.socket()
        with client:
            with pytest.raises(ConnectionRefusedError):
                client.connect(("127.0.0.1", port))
        await server.wait_closed()

    run(loop, main())


def test_many_readers(loop):
    pairs = [_pair() for _ in range(300)]
    try:
        async def main():
            got = {}
            done = loop.create_future()

            def on_readable(i, sock):
                got[i] = sock.recv(100)
                loop.remove_reader(sock)
                if len(got) == len(pairs) and not done.done():
                    done.set_result(None)

            for i, (_, b) in enumerate(pairs):
                loop.add_reader(b, on_readable, i, b)
            for i, (a, _) in enumerate(pairs):
                a.send(str(i).encode())
            await done
            return got

        got = run(loop, main())
        assert got == {i: str(i).encode() for i in range(len(pairs))}
    finally:
        for a, b in pairs:
            a.close()
            b.close()


@pytest.mark.skipif(sys.version_info < (3, 13), reason="asyncio removes the socket file from 3.13")
def test_unix_server_close_removes_its_socket_file(loop):
    """CPython 3.13's UnixServerCleanupTests: closing a Unix server unlinks
    the path it listened on (asyncio's unix _stop_serving does it)."""
    async def main():
        path = os.path.join(tempfile.mkdtemp(prefix="aiou"), "srv")
        try:
            server = await asyncio.start_unix_server(lambda r, w: None, path)
            assert os.path.exists(path)
            server.close()
            assert not os.path.exists(path)
            await server.wait_closed()
        finally:
            if os.path.exists(path):
                os.unlink(path)
            os.rmdir(os.path.dirname(path))

    run(loop, main())


def test_add_and_remove_reader_from_another_thread(loop):
    """asyncio lets another thread add a reader to a running loop (epoll_ctl
    is thread-safe and wakes nothing, but the blocked epoll_wait sees the fd).
    On the ring the poll must be queued by the loop's own thread, and the
    loop, asleep with no timer, must be woken to do it."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    got = []
    result = []

    def from_thread():
        time.sleep(0.05)   # the loop is asleep in the kernel by now
        loop.add_reader(r, lambda: (got.append(os.read(r, 100)), loop.remove_reader(r), loop.stop()))
        time.sleep(0.05)
        os.write(w, b"ping")

    t = threading.Thread(target=from_thread)
    watchdog = threading.Timer(20, lambda: loop.call_soon_threadsafe(loop.stop))
    watchdog.start()
    t.start()
    try:
        loop.run_forever()   # no timers: only the reader can stop it
        result.append(list(got))
        # And removing from another thread while the loop sleeps.
        loop.add_reader(r, got.append, "must not run")
        remover = threading.Thread(target=lambda: (time.sleep(0.05), loop.remove_reader(r),
                                                   os.write(w, b"late"),
                                                   loop.call_soon_threadsafe(loop.call_later, 0.05, loop.stop)))
        remover.start()
        loop.run_forever()
        remover.join()
    finally:
        watchdog.cancel()
        t.join()
        os.close(r)
        os.close(w)
    assert result == [[b"ping"]]
    assert "must not run" not in got
