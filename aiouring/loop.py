"""The event loop: asyncio's contract on one io_uring.

How it fits together
--------------------
``Loop`` is asyncio's Unix selector loop with two things replaced:

* its selector is a :class:`~aiouring._selector.RingSelector`, so every
  ``io_uring_enter`` of an iteration (the loop's only blocking call) submits the
  queued SQEs, waits for a completion or the next timer, and dispatches the CQE
  batch. Readers, writers, the self-pipe (``call_soon_threadsafe`` and signal
  wake-ups), pipes and child watchers keep working unchanged on top of it,
  woken by ring polls;
* the hot operations run natively on the ring instead of "wait for readiness,
  then make the syscall": ``sock_recv``, ``sock_recv_into``, ``sock_sendall``,
  ``sock_accept`` (and, in their own modules: ``sock_connect``,
  ``sock_recvfrom``, ``sock_recvfrom_into``, ``sock_sendto`` in
  ``_sockets.py``; socket transports; files).

Cancellation of a native operation
----------------------------------
Cancelling the awaiting task sends ``IORING_OP_ASYNC_CANCEL`` and nothing
else; the op record stays in the table until the kernel answers. A receive
that had already taken bytes off the socket delivers them late: they are kept
(per socket) and returned by the next ``sock_recv``/``sock_recv_into``, which
first waits for any such late answer so that bytes never change order. A
cancelled accept that still produced a connection closes that fd.
"""

from __future__ import annotations

import asyncio
import collections
import operator
import os
import socket
import sys
import threading
import weakref
from asyncio import base_events
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

from ._ops import FutureOp, FutureRecord, OpTable
from ._process import ChildProcessMixin
from ._scheduler import RunOnceMixin
from ._selector import RingSelector
from ._sockets import SocketOpsMixin
from .transports import DEFAULT_RECV_BUFFER_SIZE, DEFAULT_RECV_BUFFERS, RingTransportsMixin
from .ring import Ring, RingInfo, RingStatistics, error_from_result, uapi
from . import _sockaddr

__all__ = ["Loop", "LoopStatistics"]

_OP_RECV = uapi.IORING_OP_RECV
_OP_SEND = uapi.IORING_OP_SEND
_OP_ACCEPT = uapi.IORING_OP_ACCEPT
_MSG_NOSIGNAL = socket.MSG_NOSIGNAL
_ACCEPT_FLAGS = socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
_CancelledError = asyncio.CancelledError
# The most one read or write moves on Linux (MAX_RW_COUNT: INT_MAX rounded down
# to a page). io_uring answers EINVAL above it, and the SQE's length is 32 bits:
# asking for less is always allowed (a receive returns what is queued), so
# receives and sends are clamped to it instead of failing as asyncio does not.
_MAX_RW = 0x7FFFF000
_SSIZE_MAX = sys.maxsize
_check_ssl_socket = base_events._check_ssl_socket
# _EAGER: the sock_* methods first make the non-blocking syscall, as asyncio
# does, and go to the ring only when it would block. A ring operation always
# costs a loop iteration (an io_uring_enter and a dispatch) even when the data
# is already there; request/response traffic on sock_* was 3x slower than
# asyncio's loop without this (bench/micro/sock_pingpong.py: 17 k vs 51 k
# round trips/s). The ring then does the waiting, with no poll re-arming.


@dataclass(frozen=True)
class LoopStatistics:
    ops_in_flight: int
    fds_polled: int
    ring: RingStatistics


class _RecvOp(FutureRecord):
    """A native receive into our own buffer. ``into`` is the caller's buffer
    for sock_recv_into; the kernel never writes into caller memory, so a late
    completion after cancellation cannot clobber it."""

    __slots__ = ("buf", "sock", "loop", "into")

    def __init__(self, fut, buf, sock, loop, into=None) -> None:
        self.fut = fut
        self.buf = buf
        self.sock = sock
        self.loop = loop
        self.into = into

    def __call__(self, res: int, flags: int) -> None:
        fut = self.fut
        if fut.done():
            self.loop._late_read(self.sock, self.buf, res)
        elif res < 0:
            fut.set_exception(error_from_result(res))
        elif self.into is None:
            fut.set_result(Ring.unpack(self.buf, res))
        else:
            self.into[:res] = Ring.cbuffer(self.buf, res)
            fut.set_result(res)


class _AcceptOp(FutureRecord):
    __slots__ = ("sock", "addr", "addrlen")

    def __init__(self, fut, sock, addr, addrlen) -> None:
        self.fut = fut
        self.sock = sock
        self.addr = addr
        self.addrlen = addrlen

    def __call__(self, res: int, flags: int) -> None:
        fut = self.fut
        if fut.done():
            if res >= 0:
                os.close(res)   # nobody will receive this connection
            return
        if res < 0:
            fut.set_exception(error_from_result(res))
            return
        sock = self.sock
        try:
            conn = socket.socket(sock.family, sock.type, sock.proto, fileno=res)
        except BaseException as exc:
            os.close(res)
            fut.set_exception(exc)
            return
        conn.setblocking(False)
        raw = Ring.unpack(Ring.cast("char *", self.addr), self.addrlen[0])
        try:
            address = _sockaddr.decode(sock.family, raw)
        except (OSError, ValueError):
            try:
                address = conn.getpeername()
            except OSError:
                address = None
        fut.set_result((conn, address))


def _recv_buffer_shape(count: Optional[int], size: Optional[int]) -> tuple:
    """(count, size) of the socket transports' provided receive buffers."""
    count = DEFAULT_RECV_BUFFERS if count is None else count
    size = DEFAULT_RECV_BUFFER_SIZE if size is None else size
    for name, value in (("recv_buffers", count), ("recv_buffer_size", size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 1 <= count <= 32768 or count & (count - 1):
        raise ValueError(f"recv_buffers must be a power of two between 1 and 32768, got {count}")
    if not 1 <= size <= 1 << 24:
        raise ValueError(f"recv_buffer_size must be between 1 and {1 << 24}, got {size}")
    return count, size


class Loop(SocketOpsMixin, RunOnceMixin, RingTransportsMixin, ChildProcessMixin, asyncio.SelectorEventLoop):  # type: ignore[misc,valid-type]
    """An asyncio event loop whose I/O runs on io_uring.

    Ring options: ``sq_entries``, ``cq_entries`` (rounded up to powers of two),
    ``backing`` (force one of ``hugetlb``, ``thp``, ``pages``, ``kernel``) and
    ``huge_pages=False`` (skip the huge page attempts).
    """

    # A Loop whose ring could not be set up never reaches BaseEventLoop.__init__;
    # _hotpath.LoopCore starts every loop as closed, so BaseEventLoop.__del__
    # sees it that way instead of failing with AttributeError on stderr every
    # time the entry points fall back.

    def __init__(self, *, sq_entries: Optional[int] = None, cq_entries: Optional[int] = None,
                 backing: Optional[str] = None, huge_pages: bool = True,
                 recv_buffers: Optional[int] = None, recv_buffer_size: Optional[int] = None) -> None:
        # Validated before the ring exists, so bad options leave nothing to close.
        self._recv_buffer_shape = _recv_buffer_shape(recv_buffers, recv_buffer_size)
        ring_kwargs: dict = {"backing": backing, "huge_pages": huge_pages}
        if sq_entries is not None:
            ring_kwargs["sq_entries"] = sq_entries
        if cq_entries is not None:
            ring_kwargs["cq_entries"] = cq_entries
        ring = Ring(**ring_kwargs)
        ops = OpTable(ring)
        selector = RingSelector(ring, ops)
        self._ring = ring
        self._ops = ops
        self._prep = ring.prep
        self._prep2 = ring.prep2
        self._register_op = ops.register
        # Bytes a cancelled receive took off a socket, for the next receive.
        self._read_stash: "weakref.WeakKeyDictionary[socket.socket, bytes]" = weakref.WeakKeyDictionary()
        # Sockets with cancelled receives still in flight ->
        # [how many, future set when the last of them lands].
        self._late_reads: "weakref.WeakKeyDictionary[socket.socket, list]" = weakref.WeakKeyDictionary()
        # CQE batches whose dispatch waits behind callbacks that were ready
        # before their poll (see _scheduler); close() delivers what is left.
        self._undispatched: collections.deque = collections.deque()
        super().__init__(selector)
        selector.on_handler_error = self._on_handler_error
        selector.wake_owner = self._write_to_self

    # ---- introspection ----------------------------------------------------

    def ring_info(self) -> RingInfo:
        """Backing, sizes, setup flags and features of this loop's ring."""
        return self._ring.info()

    def statistics(self) -> LoopStatistics:
        return LoopStatistics(
            ops_in_flight=len(self._ops),
            fds_polled=len(self._selector._arms) if self._selector is not None else 0,
            ring=self._ring.statistics(),
        )

    def __repr__(self) -> str:
        return (f"<{self.__class__.__name__} running={self.is_running()} "
                f"closed={self.is_closed()} debug={self.get_debug()} in_flight={len(self._ops)}>")

    def _on_handler_error(self, exc: BaseException, handler: Any) -> None:
        self.call_exception_handler({
            "message": "aiouring: unexpected error while completing an I/O operation",
            "exception": exc,
            "handler": handler,
        })

    # ---- lifecycle --------------------------------------------------------

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        # Let the kernel answer for every operation while futures can still be
        # resolved; BaseEventLoop.close() below forbids scheduling callbacks.
        selector = self._selector
        if self._undispatched and not self._ring.closed:
            # Completions an interrupt left undelivered: their ops are done in
            # the kernel, so drain() would wait for them in vain.
            self._dispatch_deferred()
        if selector is not None and not self._ring.closed:
            try:
                selector.drain()
            except RuntimeError:
                pass   # another thread owns the ring: selector.close() leaves the rest to the kernel
        super().close()

    def _check_not_forked(self) -> None:
        if self._ring._forked:
            raise RuntimeError(
                "this aiouring event loop was created in the parent process; "
                "a forked child must create its own event loop")

    def _check_owner_thread(self) -> None:
        # A SINGLE_ISSUER ring belongs to the first thread that ran the loop.
        # Refuse up front: otherwise another thread would run callbacks until
        # its first io_uring_enter failed, halfway through an iteration.
        owner = self._ring.owner_thread
        if owner is None or owner == threading.get_ident():
            return
        if "SINGLE_ISSUER" in self._ring.info().setup_flags:
            raise RuntimeError(
                "this io_uring was set up for single-thread use and is owned by thread "
                f"{owner}; it cannot be driven from thread {threading.get_ident()} "
                "(an aiouring loop belongs to the first thread that runs it; "
                "create one loop per thread)")

    def run_forever(self) -> None:
        self._check_not_forked()
        self._check_owner_thread()
        super().run_forever()

    # ---- native socket operations ----------------------------------------

    def _late_read(self, sock, buf, res: int) -> None:
        if res > 0:
            data = Ring.unpack(buf, res)
            self._read_stash[sock] = self._read_stash.get(sock, b"") + data
        self._settle_late_read(sock)

    def _settle_late_read(self, sock) -> None:
        """One cancelled receive on ``sock`` has landed."""
        late = self._late_reads.get(sock)
        if late is None:
            return   # completed before the task even saw its cancellation
        late[0] -= 1
        if late[0] == 0:
            del self._late_reads[sock]
            if not late[1].done():
                late[1].set_result(None)

    def _count_late_read(self, sock) -> None:
        """One more cancelled receive is in flight on ``sock``. Several may
        be; the next receive waits for all of them so that bytes never
        change order."""
        late = self._late_reads.get(sock)
        if late is None:
            self._late_reads[sock] = [1, self.create_future()]
        else:
            late[0] += 1

    def _abandon_read(self, ud: int, sock, fut, buf) -> None:
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            # The receive had completed, but the task was cancelled before it
            # resumed (Task.cancel() on a task whose future is already done
            # throws CancelledError in instead of the result). The bytes came
            # before anything stashed since, so they go in front.
            res = fut.result()
            data = res if res.__class__ is bytes else Ring.unpack(buf, res)
            if data:
                self._read_stash[sock] = data + self._read_stash.get(sock, b"")
            return
        if ud not in self._ops.handlers:
            # The CQE came in the same batch that woke the cancelled task:
            # its bytes (if any) are already stashed. Waiting for it would
            # block every later receive on this socket forever.
            return
        self._ops.cancel(ud)
        self._count_late_read(sock)

    async def _wait_late_read(self, sock) -> None:
        late = self._late_reads.get(sock)
        if late is not None:
            await asyncio.shield(late[1])

    def _take_stash(self, sock, n: int) -> Optional[bytes]:
        data = self._read_stash.pop(sock, None)
        if data is None:
            return None
        if len(data) > n:
            self._read_stash[sock] = data[n:]
            data = data[:n]
        return data

    def _check_ring_thread(self) -> None:
        """Only the thread running the loop may queue on its ring: a prep from
        another thread races the loop's own on the SQ. asyncio fails the same
        misuse with RuntimeError too (a future attached to a different loop),
        just later."""
        owner = self._thread_id
        if owner is not None and owner != threading.get_ident():
            raise RuntimeError("Non-thread-safe operation invoked on an event loop other "
                               "than the current one")

    def _check_sock(self, sock) -> None:
        _check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")

    async def _ring_recv(self, sock: socket.socket, n: int, into: Optional[memoryview]) -> Any:
        """Wait on the ring for data: one RECV into a buffer of ours (see
        _RecvOp), copied into ``into`` for sock_recv_into."""
        self._check_ring_thread()
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        fut = self.create_future()
        if n > _MAX_RW:
            n = _MAX_RW
        buf = Ring.alloc("char[]", n or 1)
        ud = self._register_op(_RecvOp(fut, buf, sock, self, into))
        self._prep(_OP_RECV, fd, buf, n, 0, 0, ud)
        try:
            return await fut
        except _CancelledError:
            self._abandon_read(ud, sock, fut, buf)
            raise

    async def sock_recv(self, sock: socket.socket, n: int) -> bytes:
        """Receive up to ``n`` bytes from ``sock`` (a non-blocking socket)."""
        self._check_sock(sock)
        if n.__class__ is not int:
            n = operator.index(n)
        if n < 0:
            raise ValueError("negative buffersize in recv")
        if n > _SSIZE_MAX:   # what socket.recv says for it
            raise OverflowError("Python int too large to convert to C ssize_t")
        if self._late_reads:
            await self._wait_late_read(sock)
        if self._read_stash:
            data = self._take_stash(sock, n)
            if data is not None:
                return data
        try:
            return sock.recv(n)   # see _EAGER at the top
        except (BlockingIOError, InterruptedError):
            pass
        return await self._ring_recv(sock, n, None)

    async def sock_recv_into(self, sock: socket.socket, buf: WriteableBuffer) -> int:
        """Receive into the writable buffer ``buf``; return the byte count."""
        self._check_sock(sock)
        view = memoryview(buf).cast("B")
        if view.readonly:
            raise TypeError(f"recv_into() argument 'buffer' must be read-write bytes-like object, not {type(buf).__name__}")
        n = view.nbytes
        if self._late_reads:
            await self._wait_late_read(sock)
        if self._read_stash:
            data = self._take_stash(sock, n)
            if data is not None:
                view[:len(data)] = data
                return len(data)
        try:
            return sock.recv_into(view)   # see _EAGER at the top
        except (BlockingIOError, InterruptedError):
            pass
        return await self._ring_recv(sock, n, view)

    async def sock_sendall(self, sock: socket.socket, data: ReadableBuffer) -> None:
        """Send all of ``data``; partial sends continue where they stopped."""
        self._check_sock(sock)
        try:
            view = memoryview(data).cast("B")
        except TypeError:
            raise TypeError(f"a bytes-like object is required, not '{type(data).__name__}'") from None
        total = view.nbytes
        if total == 0:
            return
        try:
            sent = sock.send(view)   # see _EAGER at the top
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == total:
            return
        self._check_ring_thread()
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        ptr = Ring.pointer(view)
        try:
            while sent < total:
                fut = self.create_future()
                ud = self._register_op(FutureOp(fut, ptr))
                self._prep(_OP_SEND, fd, ptr + sent, min(total - sent, _MAX_RW), 0, _MSG_NOSIGNAL, ud)
                try:
                    sent += await fut
                except _CancelledError:
                    self._ops.cancel(ud)
                    ptr = None   # the op record keeps it until the kernel lets go
                    raise
        finally:
            # A failed send's exception -> traceback -> this frame -> the view
            # is a cycle; the view must not still be exported when the cycle
            # collector clears it (a crash), so let go of it now.
            if ptr is not None:
                Ring.release(ptr)

    async def sock_accept(self, sock: socket.socket) -> tuple[socket.socket, Any]:
        """Accept a connection: ``(conn, address)``, ``conn`` non-blocking."""
        self._check_sock(sock)
        try:
            conn, address = sock.accept()   # see _EAGER at the top
        except (BlockingIOError, InterruptedError):
            pass
        else:
            conn.setblocking(False)
            return conn, address
        self._check_ring_thread()
        fd = sock.fileno()
        fut = self.create_future()
        addr = Ring.alloc("struct sockaddr_storage *")
        addrlen = Ring.alloc("socklen_t *", Ring.sizeof("struct sockaddr_storage"))
        ud = self._register_op(_AcceptOp(fut, sock, addr, addrlen))
        self._prep2(_OP_ACCEPT, fd, addr, 0, addrlen, _ACCEPT_FLAGS, ud)
        try:
            return await fut
        except _CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                fut.result()[0].close()   # accepted, but nobody will take it
            self._ops.cancel(ud)
            raise
