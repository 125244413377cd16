"""Pipe transports on both loops (asyncio's own loop is the oracle):
``connect_read_pipe``/``connect_write_pipe`` on pipes, FIFOs and character
devices (a pty, /dev/null), with flow control, EOF, broken pipes and fds
closed under a transport.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sys
import threading
import tty

import pytest

from tests.support import loop, loop_kind, run  # noqa: F401  (fixtures)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Recorder(asyncio.Protocol):
    """Records what a read pipe transport delivers, in order."""

    def __init__(self, loop) -> None:
        self.chunks: list = []
        self.events: list = []
        self.lost = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        self.chunks.append(data)

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append(("lost", type(exc).__name__ if exc else None))
        self.lost.set_result(exc)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class WriteRecorder(asyncio.Protocol):
    def __init__(self, loop) -> None:
        self.events: list = []
        self.lost = loop.create_future()
        self.resumed = None

    def connection_made(self, transport):
        self.events.append("made")

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.events.append(("lost", type(exc).__name__ if exc else None))
        self.lost.set_result(exc)


def writer_thread(fd: int, data: bytes, chunk: int = 65536) -> threading.Thread:
    def write_all():
        with open(fd, "wb", buffering=0, closefd=True) as f:
            view = memoryview(data)
            for i in range(0, len(view), chunk):
                f.write(view[i:i + chunk])

    t = threading.Thread(target=write_all, daemon=True)   # a failed test must not hang the exit
    t.start()
    return t


def reader_thread(fd: int, out: list, delay: float = 0.0) -> threading.Thread:
    def read_all():
        import time
        if delay:
            time.sleep(delay)
        with open(fd, "rb", buffering=0, closefd=True) as f:
            while True:
                b = f.read(1 << 16)
                if not b:
                    break
                out.append(b)

    t = threading.Thread(target=read_all, daemon=True)
    t.start()
    return t


# ---- read pipes -----------------------------------------------------------

def test_read_pipe_hash_checked_then_eof(loop):
    data = random.Random(3).randbytes(8 * 1024 * 1024 + 3)

    async def main():
        r, w = os.pipe()
        proto = Recorder(loop)
        transport, _ = await loop.connect_read_pipe(lambda: proto, open(r, "rb", buffering=0))
        t = writer_thread(w, data)
        await proto.lost
        t.join()
        transport.close()
        return proto

    proto = run(loop, main(), timeout=60)
    assert sha(proto.data) == sha(data)
    assert proto.events == ["made", "eof", ("lost", None)]


def test_read_pipe_pause_and_resume_lose_nothing(loop):
    data = random.Random(4).randbytes(2 * 1024 * 1024)

    async def main():
        r, w = os.pipe()
        proto = Recorder(loop)
        transport, _ = await loop.connect_read_pipe(lambda: proto, open(r, "rb", buffering=0))
        t = writer_thread(w, data)
        for _ in range(20):
            transport.pause_reading()
            before = len(proto.data)
            await asyncio.sleep(0.01)
            assert len(proto.data) == before   # paused means paused
            transport.resume_reading()
            await asyncio.sleep(0.005)
        await proto.lost
        t.join()
        return proto

    proto = run(loop, main(), timeout=60)
    assert sha(proto.data) == sha(data)
    assert proto.events[-1] == ("lost", None)


def test_stream_reader_over_read_pipe(loop):
    async def main():
        r, w = os.pipe()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    open(r, "rb", buffering=0))
        os.write(w, b"first line\nsecond")
        os.close(w)
        lines = [await reader.readline(), await reader.readline(), await reader.readline()]
        transport.close()
        return lines

    assert run(loop, main()) == [b"first line\n", b"second", b""]


def test_read_pipe_close_before_eof(loop):
    async def main():
        r, w = os.pipe()
        proto = Recorder(loop)
        transport, _ = await loop.connect_read_pipe(lambda: proto, open(r, "rb", buffering=0))
        os.write(w, b"abc")
        await asyncio.sleep(0.05)
        transport.close()
        exc = await proto.lost
        os.close(w)
        return proto.data, exc, transport.is_closing()

    assert run(loop, main()) == (b"abc", None, True)


def test_read_pipe_fd_closed_under_the_transport(loop):
    """The user closes the pipe's file object while the transport reads it:
    closing the transport afterwards neither hangs nor fails."""
    async def main():
        r, w = os.pipe()
        pipe = open(r, "rb", buffering=0)
        proto = Recorder(loop)
        transport, _ = await loop.connect_read_pipe(lambda: proto, pipe)
        await asyncio.sleep(0.01)
        pipe.close()
        await asyncio.sleep(0.05)
        transport.close()
        exc = await proto.lost
        os.close(w)
        return exc

    assert run(loop, main()) is None


def test_read_pipe_rejects_regular_files(loop, tmp_path):
    path = tmp_path / "regular"
    path.write_bytes(b"not a pipe")

    async def main():
        with open(path, "rb", buffering=0) as f:
            with pytest.raises(ValueError, match="Pipe transport is for pipes/sockets only"):
                await loop.connect_read_pipe(asyncio.Protocol, f)
            with pytest.raises(ValueError, match="Pipe transport is only for pipes, sockets and character devices"):
                await loop.connect_write_pipe(asyncio.Protocol, open(path, "wb", buffering=0))

    run(loop, main())


# ---- write pipes ----------------------------------------------------------

def test_write_pipe_flow_control_hash_checked(loop):
    data = random.Random(6).randbytes(6 * 1024 * 1024)

    async def main():
        r, w = os.pipe()
        proto = WriteRecorder(loop)
        transport, _ = await loop.connect_write_pipe(lambda: proto, open(w, "wb", buffering=0))
        transport.set_write_buffer_limits(high=256 * 1024)
        got: list = []
        t = reader_thread(r, got, delay=0.1)   # the reader starts late: the buffer fills
        view = memoryview(data)
        for i in range(0, len(view), 1 << 20):
            transport.write(view[i:i + (1 << 20)])
        assert "pause" in proto.events and transport.get_write_buffer_size() > 0
        transport.close()   # flushes what is buffered, then closes
        await proto.lost
        t.join()
        return b"".join(got), proto.events

    out, events = run(loop, main(), timeout=60)
    assert sha(out) == sha(data)
    assert events[0] == "made" and events[-1] == ("lost", None)
    assert events.count("pause") == 1


class FlowControlled(asyncio.streams.FlowControlMixin):
    """asyncio's documented pairing for a write pipe StreamWriter, plus the
    close waiter StreamWriter.wait_closed() asks its protocol for."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc):
        super().connection_lost(exc)
        self.closed.set_result(exc)

    def _get_close_waiter(self, stream):
        return self.closed


def test_stream_writer_drain_over_write_pipe(loop):
    data = random.Random(7).randbytes(4 * 1024 * 1024)

    async def main():
        r, w = os.pipe()
        transport, protocol = await loop.connect_write_pipe(FlowControlled, open(w, "wb", buffering=0))
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        got: list = []
        t = reader_thread(r, got, delay=0.05)
        for i in range(0, len(data), 100_000):
            writer.write(data[i:i + 100_000])
            await writer.drain()
        writer.close()
        await writer.wait_closed()
        t.join()
        return b"".join(got)

    assert sha(run(loop, main(), timeout=60)) == sha(data)


def test_write_pipe_reader_closes_while_idle(loop):
    """The read end goes away while nothing is buffered: the transport notices
    (it watches the write end for readability) and closes without an error."""
    async def main():
        r, w = os.pipe()
        proto = WriteRecorder(loop)
        transport, _ = await loop.connect_write_pipe(lambda: proto, open(w, "wb", buffering=0))
        transport.write(b"hello")
        assert os.read(r, 5) == b"hello"
        os.close(r)
        exc = await asyncio.wait_for(proto.lost, 10)
        return type(exc).__name__ if exc else None, transport.is_closing()

    assert run(loop, main()) == (None, True)


@pytest.mark.loop_errors_ok
def test_write_pipe_reader_closes_with_data_buffered(loop):
    async def main():
        r, w = os.pipe()
        proto = WriteRecorder(loop)
        transport, _ = await loop.connect_write_pipe(lambda: proto, open(w, "wb", buffering=0))
        transport.write(b"x" * (4 * 1024 * 1024))   # more than the pipe holds
        assert transport.get_write_buffer_size() > 0
        os.close(r)
        exc = await asyncio.wait_for(proto.lost, 10)
        return type(exc).__name__

    assert run(loop, main()) == "BrokenPipeError"


def test_write_after_broken_pipe(loop):
    async def main():
        r, w = os.pipe()
        os.close(r)
        proto = WriteRecorder(loop)
        transport, _ = await loop.connect_write_pipe(lambda: proto, open(w, "wb", buffering=0))
        exc = await asyncio.wait_for(proto.lost, 10)   # noticed through the read event
        transport.write(b"after close")                # ignored, as in asyncio
        return type(exc).__name__ if exc else None, transport.is_closing()

    assert run(loop, main()) == (None, True)


def test_write_eof_and_abort(loop):
    async def main():
        r, w = os.pipe()
        proto = WriteRecorder(loop)
        transport, _ = await loop.connect_write_pipe(lambda: proto, open(w, "wb", buffering=0))
        assert transport.can_write_eof()
        transport.write(b"before eof")
        transport.write_eof()
        await proto.lost
        first = os.read(r, 100), os.read(r, 100)
        os.close(r)

        r, w = os.pipe()
        proto2 = WriteRecorder(loop)
        transport2, _ = await loop.connect_write_pipe(lambda: proto2, open(w, "wb", buffering=0))
        transport2.set_write_buffer_limits(high=0)
        transport2.write(b"y" * (1024 * 1024))
        transport2.abort()
        await proto2.lost
        drained = 0
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            drained += len(chunk)
        os.close(r)
        return first, drained < 1024 * 1024

    assert run(loop, main()) == ((b"before eof", b""), True)


# ---- FIFOs and character devices ------------------------------------------

def test_fifo_both_directions(loop, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    data = random.Random(8).randbytes(3 * 1024 * 1024)

    async def main():
        rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        wfd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        rproto = Recorder(loop)
        wproto = WriteRecorder(loop)
        await loop.connect_read_pipe(lambda: rproto, open(rfd, "rb", buffering=0))
        wtransport, _ = await loop.connect_write_pipe(lambda: wproto, open(wfd, "wb", buffering=0))
        wtransport.write(data)
        wtransport.close()
        await wproto.lost
        await rproto.lost
        return rproto

    proto = run(loop, main(), timeout=60)
    assert sha(proto.data) == sha(data)
    assert proto.events == ["made", "eof", ("lost", None)]


def test_pty_character_device(loop):
    async def main():
        master, slave = os.openpty()
        tty.setraw(slave)
        proto = Recorder(loop)
        transport, _ = await loop.connect_read_pipe(lambda: proto, open(master, "rb", buffering=0))
        wproto = WriteRecorder(loop)
        wtransport, _ = await loop.connect_write_pipe(lambda: wproto, open(slave, "wb", buffering=0))
        payload = bytes(range(256)) * 16
        wtransport.write(payload)
        while len(proto.data) < len(payload):
            await asyncio.sleep(0.01)
        wtransport.close()
        await wproto.lost
        transport.close()
        await proto.lost
        return proto.data == payload

    assert run(loop, main()) is True


def test_dev_null(loop, loop_kind):
    if loop_kind == "asyncio":
        # epoll refuses /dev/null (EPERM), so asyncio's loop cannot watch it at
        # all; a ring poll can, and reports it readable (EOF) and writable.
        pytest.skip("epoll cannot poll /dev/null")
    async def main():
        rproto = Recorder(loop)
        await loop.connect_read_pipe(lambda: rproto, open("/dev/null", "rb", buffering=0))
        await rproto.lost
        wproto = WriteRecorder(loop)
        wtransport, _ = await loop.connect_write_pipe(lambda: wproto, open("/dev/null", "wb", buffering=0))
        wtransport.write(b"z" * 100_000)
        wtransport.close()
        await wproto.lost
        return rproto.events, rproto.data, wproto.events

    events, data, wevents = run(loop, main())
    assert (events, data) == (["made", "eof", ("lost", None)], b"")
    assert wevents == ["made", ("lost", None)]


# ---- the finer points of the read transport contract ----------------------

def test_eof_while_paused_waits_for_resume(loop):
    async def main():
        r, w = os.pipe()
        proto = Recorder(loop)
        transport, _ = await loop.connect_read_pipe(lambda: proto, open(r, "rb", buffering=0))
        await asyncio.sleep(0.01)
        transport.pause_reading()
        os.write(w, b"last words")
        os.close(w)
        await asyncio.sleep(0.1)
        seen_while_paused = (proto.data, list(proto.events))
        transport.resume_reading()
        await asyncio.wait_for(proto.lost, 10)
        return seen_while_paused, proto.data, proto.events

    paused, data, events = run(loop, main())
    assert paused == (b"", ["made"])
    assert data == b"last words" and events == ["made", "eof", ("lost", None)]


def test_protocol_runs_in_the_context_of_the_transport_creation(loop):
    import contextvars
    var = contextvars.ContextVar("var", default="unset")

    class Proto(Recorder):
        def data_received(self, data):
            self.events.append(("data ctx", var.get()))
            super().data_received(data)

        def eof_received(self):
            self.events.append(("eof ctx", var.get()))

    async def main():
        r, w = os.pipe()
        proto = Proto(loop)
        var.set("at creation")
        transport, _ = await loop.connect_read_pipe(lambda: proto, open(r, "rb", buffering=0))
        var.set("later")
        os.write(w, b"x")
        os.close(w)
        await proto.lost
        return proto.events

    assert run(loop, main()) == ["made", ("data ctx", "at creation"), ("eof ctx", "at creation"), ("lost", None)]


@pytest.mark.loop_errors_ok
def test_data_received_raising_keeps_reading(loop):
    errors = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx.get("exception")))

    class Proto(Recorder):
        def data_received(self, data):
            super().data_received(data)
            if len(self.chunks) == 1:
                raise ZeroDivisionError("from the protocol")

    async def main():
        r, w = os.pipe()
        proto = Proto(loop)
        await loop.connect_read_pipe(lambda: proto, open(r, "rb", buffering=0))
        os.write(w, b"one")
        await asyncio.sleep(0.05)
        os.write(w, b"two")
        os.close(w)
        await proto.lost
        return proto.data

    assert run(loop, main()) == b"onetwo"
    assert [type(e) for e in errors] == [ZeroDivisionError]


def test_pty_slave_closed_gives_eio(loop):
    """Reading a pty master whose slave is gone fails with EIO, which asyncio
    treats as the end of the stream (no exception handler call)."""
    async def main():
        master, slave = os.openpty()
        proto = Recorder(loop)
        await loop.connect_read_pipe(lambda: proto, open(master, "rb", buffering=0))
        os.write(slave, b"bye\n")
        await asyncio.sleep(0.05)
        os.close(slave)
        exc = await asyncio.wait_for(proto.lost, 10)
        return proto.data, type(exc).__name__, getattr(exc, "errno", None)

    data, exc_type, err = run(loop, main())
    assert data.replace(b"\r\n", b"\n") == b"bye\n"
    assert (exc_type, err) == ("OSError", __import__("errno").EIO)


def test_transport_state_and_repr(loop, loop_kind):
    if loop_kind == "asyncio" and sys.version_info < (3, 11):
        pytest.skip("asyncio 3.10's read pipe transport has no is_reading()")

    async def main():
        r, w = os.pipe()
        proto = Recorder(loop)
        transport, _ = await loop.connect_read_pipe(lambda: proto, open(r, "rb", buffering=0))
        await asyncio.sleep(0.01)
        states = [(transport.is_reading(), transport.is_closing(), "polling" in repr(transport))]
        transport.pause_reading()
        states.append((transport.is_reading(), transport.is_closing()))
        transport.resume_reading()
        transport.close()
        states.append((transport.is_reading(), transport.is_closing()))
        await proto.lost
        os.close(w)
        return states, repr(transport).endswith("closed>")

    assert run(loop, main()) == ([(True, False, True), (False, False), (False, True)], True)


def test_repr_of_an_open_transport_after_loop_close(loop):
    # CPython's test_unclosed_pipe_transport (uvloop issue #314): repr must
    # work, and say "open", once the loop under the transport has closed.
    async def main():
        r, w = os.pipe()
        transport, _ = await loop.connect_read_pipe(asyncio.Protocol, open(r, "rb", buffering=0))
        return transport, w

    transport, w = run(loop, main())
    loop.close()
    text = repr(transport)
    transport._pipe.close()
    transport._pipe = None
    os.close(w)
    assert "open" in text


def test_read_pipe_on_a_socket(loop):
    import socket
    data = random.Random(10).randbytes(1024 * 1024)

    async def main():
        a, b = socket.socketpair()
        proto = Recorder(loop)
        await loop.connect_read_pipe(lambda: proto, a.makefile("rb", buffering=0))
        a.close()   # the file object keeps the socket open
        t = threading.Thread(target=lambda: (b.sendall(data), b.close()), daemon=True)
        t.start()
        await asyncio.wait_for(proto.lost, 30)
        t.join()
        return proto

    proto = run(loop, main())
    assert sha(proto.data) == sha(data) and proto.events == ["made", "eof", ("lost", None)]


@pytest.mark.parametrize("sq_entries", [1, 2])
def test_read_pipes_on_a_tiny_ring(sq_entries):
    """With a 1-entry SQ every linked POLL+READ pair is cut by a forced submit
    (with 2 entries, some are): the read then runs unlinked, and on kernels
    that honour O_NONBLOCK sees EAGAIN on an empty pipe. Nothing may be lost
    or reordered."""
    import aiouring
    fds_before = set(os.listdir("/proc/self/fd"))
    loop = aiouring.Loop(sq_entries=sq_entries, cq_entries=4 * sq_entries)
    payloads = [random.Random(20 + i).randbytes(512 * 1024 + i) for i in range(5)]

    async def one(payload):
        r, w = os.pipe()
        proto = Recorder(loop)
        await loop.connect_read_pipe(lambda: proto, open(r, "rb", buffering=0))
        await asyncio.sleep(0.01)   # the first read now waits on an empty pipe
        t = writer_thread(w, payload, chunk=4096)
        await proto.lost
        t.join()
        return proto.data

    async def main():
        return await asyncio.gather(*(one(p) for p in payloads))

    try:
        got = run(loop, main(), timeout=60)
    finally:
        loop.close()
    assert [sha(g) for g in got] == [sha(p) for p in payloads]
    assert loop._ring.statistics().sq_full_flushes > 0   # chains were cut
    assert len(loop._ops) == 0
    leaked = {fd for fd in set(os.listdir("/proc/self/fd")) - fds_before if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked


def test_read_buffer_is_the_pipe_capacity(loop, loop_kind):
    """A ring read buffer lives as long as its transport; it must not be
    asyncio's 256 KiB per pipe (many children's pipes would pin that much
    each). Reads of a grown pipe still deliver everything, in order."""
    import fcntl
    if loop_kind == "asyncio":
        pytest.skip("asyncio allocates per read")
    data = random.Random(11).randbytes(3 * 1024 * 1024)

    async def main():
        r, w = os.pipe()
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1024 * 1024)   # a 1 MiB pipe: the buffer caps at max_size
        proto = Recorder(loop)
        transport, _ = await loop.connect_read_pipe(lambda: proto, open(r, "rb", buffering=0))
        size = transport._buf_size
        r2, w2 = os.pipe()
        other, _ = await loop.connect_read_pipe(asyncio.Protocol, open(r2, "rb", buffering=0))
        default_size = other._buf_size, min(256 * 1024, fcntl.fcntl(r2, fcntl.F_GETPIPE_SZ))
        other.close()
        os.close(w2)
        t = writer_thread(w, data, chunk=512 * 1024)
        await proto.lost
        t.join()
        return size, default_size, proto

    size, default_size, proto = run(loop, main(), timeout=60)
    assert size == 256 * 1024                    # a 1 MiB pipe: capped at asyncio's max_size
    assert default_size[0] == default_size[1]    # otherwise the pipe's capacity (64 KiB on 4 KiB pages)
    assert sha(proto.data) == sha(data)
    assert max(map(len, proto.chunks)) <= 256 * 1024
