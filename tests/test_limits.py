"""Resource bounds: 10,000 concurrent connections, flow control against a slow
reader, provided-buffer exhaustion and CQ overflow under bursts without losing
a byte or a completion, and ring sizes that are bounded and validated."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import inspect
import os
import resource
import selectors
import socket
import sys
import textwrap
import time

import pytest

import aiouring
from tests.support import loop, loop_kind, run  # noqa: F401


def _sha(data) -> bytes:
    return hashlib.sha256(data).digest()


# The clients live in a child process: this machine's hard RLIMIT_NOFILE
# (20,000, and no CAP_SYS_RESOURCE to raise it) cannot hold both ends of
# 10,000 connections in one process.
_CLIENTS = textwrap.dedent("""
    import asyncio, hashlib, socket, sys
    n, port = int(sys.argv[1]), int(sys.argv[2])

    async def main():
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(512)   # bounds the SYN burst, not the number held open
        socks = []

        async def connect():
            s = socket.socket()
            s.setblocking(False)
            socks.append(s)
            async with gate:
                await loop.sock_connect(s, ("127.0.0.1", port))

        async def exchange(s, i):
            token = hashlib.sha256(i.to_bytes(4, "big")).digest()
            await loop.sock_sendall(s, token)
            got = b""
            while len(got) < 32:
                chunk = await loop.sock_recv(s, 32 - len(got))
                if not chunk:
                    return False
                got += chunk
            return got == token[::-1]

        await asyncio.gather(*(connect() for _ in range(n)))
        print("connected", flush=True)
        sys.stdin.readline()   # the server has seen all n at once
        ok = await asyncio.gather(*(exchange(s, i) for i, s in enumerate(socks)))
        for s in socks:
            s.close()
        print(sum(ok), flush=True)

    asyncio.run(main())
""")


def test_ten_thousand_concurrent_connections(loop):
    n = 10_000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 1000:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * n), hard))
        except (ValueError, OSError):
            pass
        if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < n + 1000:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low for {n} connections")
    held = {"now": 0, "peak": 0}

    async def handle(reader, writer):
        held["now"] += 1
        held["peak"] = max(held["peak"], held["now"])
        try:
            token = await reader.readexactly(32)
            writer.write(token[::-1])
            await writer.drain()
            await reader.read()   # hold the connection until the client closes
        finally:
            held["now"] -= 1
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CLIENTS, str(n), str(port),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            assert await proc.stdout.readline() == b"connected\n"
            while held["now"] < n:   # accepted on our side too
                await asyncio.sleep(0.05)
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            verified = int(await proc.stdout.readline())
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            while held["now"]:
                await asyncio.sleep(0.01)
            server.close()
            await server.wait_closed()
        return verified

    try:
        assert run(loop, main(), timeout=240) == n
        assert held["peak"] == n
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---- flow control -------------------------------------------------------------

class _GreedyWriter(asyncio.Protocol):
    """Writes as long as the transport lets it, and records how far the write
    buffer grew: flow control must stop it near the high-water mark."""

    def __init__(self, payload: bytes, chunk: int) -> None:
        self.payload = payload
        self.chunk = chunk
        self.offset = 0
        self.paused = False
        self.max_buffered = 0
        self.pauses = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=256 * 1024)
        self._pump()

    def _pump(self) -> None:
        while not self.paused and self.offset < len(self.payload):
            self.transport.write(self.payload[self.offset:self.offset + self.chunk])
            self.offset += self.chunk
            self.max_buffered = max(self.max_buffered, self.transport.get_write_buffer_size())
        if self.offset >= len(self.payload):
            self.transport.write_eof()

    def pause_writing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()


def test_slow_reader_cannot_make_the_server_buffer_without_bound(loop):
    payload = os.urandom(16 * 1024 * 1024)
    chunk = 64 * 1024

    async def main():
        protocols = []

        def factory():
            protocols.append(_GreedyWriter(payload, chunk))
            return protocols[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2], limit=64 * 1024)
        writer.transport.set_write_buffer_limits(0)
        got = bytearray()
        try:
            while True:
                data = await reader.read(16 * 1024)
                if not data:
                    break
                got += data
                if len(got) < 4 * 1024 * 1024:
                    await asyncio.sleep(0.001)   # a slow reader for the first 4 MiB
        finally:
            writer.close()
            server.close()
            await server.wait_closed()
        return protocols[0], bytes(got)

    proto, got = run(loop, main(), timeout=120)
    assert _sha(got) == _sha(payload)
    assert proto.pauses >= 1
    # Never more than the high-water mark plus the one write that crossed it.
    assert proto.max_buffered <= 256 * 1024 + chunk, proto.max_buffered


def test_streams_drain_bounds_the_buffer_against_a_slow_reader(loop):
    payload = os.urandom(8 * 1024 * 1024)
    chunk = 32 * 1024
    seen = {"max": 0}

    async def handle(reader, writer):
        for off in range(0, len(payload), chunk):
            writer.write(payload[off:off + chunk])
            seen["max"] = max(seen["max"], writer.transport.get_write_buffer_size())
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        got = bytearray()
        while True:
            data = await reader.read(8192)
            if not data:
                break
            got += data
            if len(got) < 1024 * 1024:
                await asyncio.sleep(0.001)
        writer.close()
        server.close()
        await server.wait_closed()
        return bytes(got)

    assert _sha(run(loop, main(), timeout=120)) == _sha(payload)
    # asyncio's default high-water mark is 64 KiB: drain() blocks above it.
    assert seen["max"] <= 64 * 1024 + chunk, seen["max"]


class _PausedReader(asyncio.Protocol):
    """Stops reading at the first byte, as a server whose consumer is busy;
    counts what reached it while paused."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.received = 0
        self.received_while_paused = 0
        self.paused = False
        self.paused_once = False
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.hash.update(data)
        self.received += len(data)
        if self.paused:
            self.received_while_paused += len(data)
        elif not self.paused_once:
            self.paused = self.paused_once = True
            self.transport.pause_reading()

    def eof_received(self):
        self.done.set_result(self.hash.digest())

    def resume(self):
        self.paused = False
        self.transport.resume_reading()


def test_pause_reading_bounds_what_the_server_takes_in(loop):
    # A fast sender and a server that paused reading: the server must stop
    # taking bytes in (the sender blocks on full socket buffers) instead of
    # reading them into memory; after resume_reading every byte arrives.
    payload = os.urandom(64 * 1024 * 1024)

    async def main():
        protocols = []

        def factory():
            protocols.append(_PausedReader())
            return protocols[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        sending = asyncio.ensure_future(_send_all(writer, payload))
        await asyncio.sleep(0.5)   # long enough for an unbounded reader to swallow it all
        proto = protocols[0]
        taken_while_paused = proto.received_while_paused
        assert not sending.done(), "the whole payload went through a paused reader"
        proto.resume()
        await sending
        digest = await proto.done
        writer.close()
        server.close()
        await server.wait_closed()
        return taken_while_paused, digest

    taken_while_paused, digest = run(loop, main(), timeout=120)
    assert digest == _sha(payload)
    # Held data for a paused transport is bounded (a socket buffer's worth).
    assert taken_while_paused <= 1024 * 1024, taken_while_paused


async def _send_all(writer, payload: bytes) -> None:
    for off in range(0, len(payload), 1024 * 1024):
        writer.write(payload[off:off + 1024 * 1024])
        await writer.drain()
    writer.write_eof()


# ---- bursts: provided buffers and the CQ ----------------------------------------

class _Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        # A false return closes the transport once the echo is flushed (the
        # peer still gets every byte, then EOF). Keeping it open would make
        # Server.wait_closed() wait forever on 3.12+, which waits for
        # connections too.
        return None


def test_many_connections_sending_at_once_lose_no_bytes(loop):
    # Hundreds of peers writing at the same instant is what drains a provided
    # buffer ring (ENOBUFS ends the multishot receive, which must be re-armed);
    # whatever receive path the transport uses, every byte must come back.
    n_conns, size = 200, 256 * 1024

    async def main():
        server = await loop.create_server(_Echo, "127.0.0.1", 0, backlog=1024)
        addr = server.sockets[0].getsockname()[:2]
        start = asyncio.Event()

        async def client(i):
            payload = hashlib.shake_256(i.to_bytes(4, "big")).digest(size)
            reader, writer = await asyncio.open_connection(*addr)
            await start.wait()
            writer.write(payload)
            writer.write_eof()
            got = await reader.read()
            writer.close()
            return _sha(got) == _sha(payload)

        tasks = [asyncio.ensure_future(client(i)) for i in range(n_conns)]
        await asyncio.sleep(0.05)
        start.set()
        try:
            return await asyncio.gather(*tasks)
        finally:
            server.close()
            await server.wait_closed()

    assert run(loop, main(), timeout=180) == [True] * n_conns


class _HashingSink(asyncio.Protocol):
    def __init__(self, digests: list) -> None:
        self.hash = hashlib.sha256()
        self.digests = digests

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.hash.update(data)

    def eof_received(self):
        self.digests.append(self.hash.digest())
        self.transport.close()


def _count_enobufs(monkeypatch) -> dict:
    """Evidence that the receive buffer ring really ran dry: count -ENOBUFS
    completions reaching aiouring's native stream transport, where one exists
    (selector transports have no buffer ring; then the count stays None)."""
    seen = {"enobufs": None}
    try:
        from aiouring.transports import RingSocketTransport
    except ImportError:
        return seen
    original = getattr(RingSocketTransport, "_on_recv", None)
    if original is None:
        return seen
    seen["enobufs"] = 0

    def counting(self, res, flags):
        if res == -errno.ENOBUFS:
            seen["enobufs"] += 1
        return original(self, res, flags)

    monkeypatch.setattr(RingSocketTransport, "_on_recv", counting)
    return seen


def test_provided_buffers_run_dry_under_load_and_no_byte_is_lost(loop, monkeypatch):
    # Blocking senders in a thread keep hundreds of sockets full while the loop
    # stalls now and then; when it next enters the kernel every multishot
    # receive finds data at once, more than the buffer ring holds (ENOBUFS,
    # re-armed by the transport). Every connection's bytes are hashed.
    seen = _count_enobufs(monkeypatch)
    n_conns, size = 200, 512 * 1024
    payloads = [hashlib.shake_256(i.to_bytes(4, "big")).digest(size) for i in range(n_conns)]

    def senders(addr):
        socks = [socket.create_connection(addr) for _ in range(n_conns)]
        pending = {}
        sel = selectors.DefaultSelector()
        for s, p in zip(socks, payloads):
            s.setblocking(False)
            pending[s] = memoryview(p)
            sel.register(s, selectors.EVENT_WRITE)
        while pending:
            for key, _ in sel.select(10):
                s = key.fileobj
                try:
                    pending[s] = pending[s][s.send(pending[s][:256 * 1024]):]
                except BlockingIOError:
                    continue
                if not pending[s]:
                    sel.unregister(s)
                    s.shutdown(socket.SHUT_WR)
                    del pending[s]
        sel.close()
        return socks

    async def main():
        digests: list = []
        server = await loop.create_server(lambda: _HashingSink(digests), "127.0.0.1", 0, backlog=1024)
        sending = loop.run_in_executor(None, senders, server.sockets[0].getsockname()[:2])
        try:
            while len(digests) < n_conns:
                time.sleep(0.05)        # the stall: data piles up in every socket
                await asyncio.sleep(0)
            for s in await sending:
                s.close()
        finally:
            server.close()
            await server.wait_closed()
        return sorted(digests)

    assert run(loop, main(), timeout=120) == sorted(_sha(p) for p in payloads)
    if isinstance(loop, aiouring.Loop) and seen["enobufs"] is not None:
        assert seen["enobufs"] > 0, "the buffer ring never ran dry: this test did not test ENOBUFS"


def test_cq_overflow_under_a_burst_loses_no_completion():
    # SQ 2 / CQ 4 and hundreds of operations completing in one burst: the
    # kernel holds the overflow (FEAT_NODROP) and every completion arrives.
    lp = aiouring.Loop(sq_entries=2, cq_entries=4)
    n = 300

    async def main():
        pairs = [socket.socketpair() for _ in range(n)]
        for a, b in pairs:
            a.setblocking(False)
            b.setblocking(False)
        try:
            receivers = [asyncio.ensure_future(lp.sock_recv(b, 100)) for a, b in pairs]
            timers = [lp.create_future() for _ in range(n)]
            for i, fut in enumerate(timers):
                lp.call_later(0.001, fut.set_result, i)
            await asyncio.sleep(0.02)   # every recv is in the kernel now
            for i, (a, b) in enumerate(pairs):
                a.send(_sha(i.to_bytes(4, "big")))   # all complete together
            got = await asyncio.gather(*receivers)
            assert await asyncio.gather(*timers) == list(range(n))
            sent = await asyncio.gather(*(lp.sock_sendall(a, b"x" * 1000) for a, b in pairs))
            echoed = await asyncio.gather(*(lp.sock_recv(b, 1000) for a, b in pairs))
            return got, sent, echoed
        finally:
            for a, b in pairs:
                a.close()
                b.close()

    try:
        info = lp.ring_info()
        assert (info.sq_entries, info.cq_entries) == (2, 4)
        got, sent, echoed = lp.run_until_complete(asyncio.wait_for(main(), 60))
        assert got == [_sha(i.to_bytes(4, "big")) for i in range(n)]
        assert sent == [None] * n
        assert all(e == b"x" * 1000 for e in echoed)
        stats = lp.statistics()
        assert stats.ring.sq_full_flushes > 0   # the tiny SQ really was full
    finally:
        lp.close()
    assert lp.statistics().ops_in_flight == 0


def test_tiny_ring_serves_streams_with_content_intact():
    lp = aiouring.Loop(sq_entries=2, cq_entries=4)
    payload = os.urandom(2 * 1024 * 1024)

    async def main():
        server = await lp.create_server(_Echo, "127.0.0.1", 0)
        results = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
            writer.write(payload)
            writer.write_eof()
            results.append(_sha(await reader.read()))
            writer.close()
        server.close()
        await server.wait_closed()
        return results

    try:
        assert lp.run_until_complete(asyncio.wait_for(main(), 60)) == [_sha(payload)] * 3
    finally:
        lp.close()


# ---- ring sizes ------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc", [
    ({"sq_entries": 0}, ValueError),
    ({"sq_entries": -1}, ValueError),
    ({"sq_entries": 1 << 20}, ValueError),
    ({"cq_entries": 0}, ValueError),
    ({"cq_entries": 1 << 20}, ValueError),
    ({"sq_entries": 64, "cq_entries": 8}, ValueError),
    ({"sq_entries": "8"}, TypeError),
    ({"sq_entries": 8.0}, TypeError),
    ({"sq_entries": True}, TypeError),
    ({"backing": "floppy"}, ValueError),
    ({"recv_buffers": 0}, ValueError),
    ({"recv_buffers": 3}, ValueError),
    ({"recv_buffers": 65536}, ValueError),
    ({"recv_buffers": "8"}, TypeError),
    ({"recv_buffer_size": 0}, ValueError),
    ({"recv_buffer_size": 1 << 30}, ValueError),
])
def test_invalid_ring_sizes_are_refused_by_every_entry_point(kwargs, exc):
    with pytest.raises(exc):
        aiouring.Loop(**kwargs)
    # A bad argument is the caller's bug, not an unavailable io_uring: no fallback.
    with pytest.raises(exc):
        aiouring.new_event_loop(**kwargs)

    async def main():
        return 1

    coro = main()
    with pytest.raises(exc):
        aiouring.run(coro, **kwargs)
    # run() closes the coroutine it never started: no "was never awaited".
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


@pytest.mark.parametrize("sq, cq", [(1, None), (2, 4), (8, 8), (100, 1000), (32768, 65536)])
def test_valid_ring_sizes_are_honoured_rounded_to_powers_of_two(sq, cq):
    kwargs = {"sq_entries": sq} if cq is None else {"sq_entries": sq, "cq_entries": cq}
    try:
        lp = aiouring.Loop(**kwargs)
    except aiouring.UringUnavailableError as exc:
        pytest.skip(f"the kernel refused this size here: {exc}")
    try:
        info = lp.ring_info()
        assert info.sq_entries == 1 << (sq - 1).bit_length()
        if cq is not None:
            assert info.cq_entries == 1 << (cq - 1).bit_length()
        assert lp.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        lp.close()


def test_receive_buffers_are_configurable_and_a_tiny_ring_loses_nothing():
    lp = aiouring.Loop(recv_buffers=4, recv_buffer_size=1024)
    payload = os.urandom(1 << 20)

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def main():
        server = await lp.create_server(Echo, "127.0.0.1", 0)
        assert lp._stream_buffers().ring.entries == 4
        assert lp._stream_buffers().ring.buffer_size == 1024
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.write(payload)
        got = await reader.readexactly(len(payload))
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return _sha(got)

    try:
        assert lp.run_until_complete(asyncio.wait_for(main(), 60)) == _sha(payload)
    finally:
        lp.close()
