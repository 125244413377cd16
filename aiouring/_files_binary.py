"""Binary file objects: the behaviour of ``io.BufferedReader``/``Writer``/
``Random`` (and of ``io.FileIO`` when unbuffered), with every read and write an
operation on the ring at an explicit offset.

Position model
--------------
The kernel's file position is not used: reads and writes carry the offset
we track (``_pos``), so concurrent positional operations (``pread``/``pwrite``)
never disturb the stream, and a cancelled operation cannot move it. Only
``O_APPEND`` files write at offset -1 ("the file position"), because the
kernel puts every append at the end anyway, and we read the resulting position
back with ``lseek``.

Buffers: ``_rbuf[_roff:]`` holds read-ahead bytes of the file starting at
``_pos``; ``_wbuf`` holds written bytes not yet handed to the kernel, to go at
``_wstart`` (``_pos == _wstart + len(_wbuf)``). At most one of them is
non-empty.

Stream operations (everything but pread/pwrite) are serialized by a lock, so
several tasks reading one file object get consecutive, non-overlapping pieces,
as threads sharing one built-in file object do.

Read-ahead
----------
A read costs the copy (the kernel's, as for the built-in file) plus one
asyncio round trip: queue the SQE, the loop's enter, the CQE's dispatch, the
future, the task's wake-up (~20 us, a fifth of a 1 MiB read). When a file is
read in order in large pieces, the next pieces are read before they are
asked for, by io-wq workers (``IOSQE_ASYNC``) on the other CPUs while the
reader works, and a read whose piece has arrived costs no round trip at all.
It needs a CPU to spare. With other processes keeping the CPUs busy, 1 MiB
reads on 2 vCPUs ran from a tenth slower than without read-ahead to 1.8
times as fast, depending on the load (the workers take CPU time from
the loop's thread, whose wake-ups then wait for a CPU; but they also get
the process a larger share of the machine). Run inline instead, in the
loop's enter, read-aheads measured no faster than none (fewer loop
iterations, but copies into buffers that are not the one just freed, and so
not in cache, are slower); choosing between the two by timing them as they
ran was too noisy to pay (bench/RESULTS.md).

* Trigger: a full read of ``n`` bytes (``_AHEAD_MIN`` <= n <= ``_AHEAD_MAX``,
  n >= the buffer size, so the read buffer is not involved) that starts
  where the previous such read ended, or at offset 0. Then reads of ``n``
  bytes at the next offsets are kept in flight (``_AHEAD_DEPTH`` or more,
  see there), topped up each time one is used. Only on the ring backend, only on seekable files,
  and not while other large reads are in flight on the loop (many readers:
  their reads overlap anyway).
* Use: a read of exactly ``n`` bytes at exactly the first one's offset takes
  its result, if that is a full read. An empty or short result (EOF when it
  ran, but the file may have grown since), an error, or a read-ahead started
  on another loop is not used: the read is issued anew, so EOF, growth and
  errors are seen exactly as without read-ahead.
* Anything else drops them all (their ops are cancelled): a read of another
  size or offset, the other read paths (read1, peek, readline, read of
  everything), seek to another position, write, pwrite (and none starts while
  a pwrite is in flight), truncate, a cancelled read, close. ``close()``
  waits for every read-ahead's CQE before the fd is closed: one still queued
  for a worker looks the fd number up when it starts, and that number may
  belong to another file by then.
* Staleness: data read ahead is as old as the moment it was read, like the
  built-in file's read buffer, but the window is larger (up to
  ``_AHEAD_MAX_DEPTH`` pieces): a write through another fd or process to a
  range already read ahead is not seen by this file object until it drops
  them (a seek does). Writes through this file object are always seen.

Cancellation
------------
* A cancelled read leaves the position where it was: the stream is as if the
  read had never been called. The kernel may still fill the op's own buffer;
  that data is dropped, and is read again by the next read.
* A write cancelled while waiting for the stream lock has done nothing. Once
  it has put its bytes in the write buffer, they are written whole, once:
  a cancelled write or flush keeps the unwritten bytes in the write buffer.
  The kernel may still write some of them: the late completion removes exactly
  those from the buffer, and the next stream operation waits for that late
  completion first, so nothing is written twice or lost.
* ``close()`` that is cancelled still closes the fd (closing cannot be taken
  back), after handing the buffered bytes to the kernel.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import io
import os
import warnings
from typing import Any, AnyStr, Generic, Iterable, Optional, TypeVar

from ._files_backend import file_ops

_CancelledError = asyncio.CancelledError
_UnsupportedOperation = io.UnsupportedOperation
_get_running_loop = asyncio.get_running_loop

# Read-ahead (see the module docstring), for reads of _AHEAD_MIN to
# _AHEAD_MAX bytes (and at least the buffer size: smaller ones are served by
# the buffer). How many, measured on 2 vCPUs as the rate of sequential reads
# of a cached file over a synchronous loop's (bench/RESULTS.md): one read
# ahead is slower than none (the io-wq hand-off costs more than it hides),
# three are best for 1-2 MiB reads, smaller reads gain up to eight (128 KiB:
# 0.4x without, 0.6x with three, 0.78x with eight). Above 2 MiB it gained
# nothing reliable (4 MiB: about 0.9x either way), and more buffers in flight
# would outgrow what the heap keeps (see _files_backend._HEAP_HINT).
_AHEAD_MIN = 128 * 1024
_AHEAD_MAX = 2 * 1024 * 1024
_AHEAD_BYTES = 2 * 1024 * 1024     # in flight, when that is more than _AHEAD_DEPTH reads
_AHEAD_DEPTH = 3
_AHEAD_MAX_DEPTH = 8


class _Ahead:
    """One read-ahead: ``size`` bytes at ``offset``, started on ``loop``."""

    __slots__ = ("offset", "size", "fut", "cancel", "loop")


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


class _StreamLock:
    """A FIFO lock for one stream's operations, with a synchronous fast path
    (``try_acquire``) for the common uncontended case: a stream read then costs
    no extra coroutine or future when nobody else is using the stream."""

    __slots__ = ("locked", "_waiters")

    def __init__(self) -> None:
        self.locked = False
        self._waiters: collections.deque = collections.deque()

    def try_acquire(self) -> bool:
        if self.locked:
            return False
        self.locked = True
        return True

    async def acquire(self) -> None:
        if not self.locked:
            self.locked = True
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter       # release() hands the lock over by resolving it
        except _CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()   # handed over just as we were cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)   # still locked: ownership moves to the waiter
                return
        self.locked = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


_Self = TypeVar("_Self", bound="_LineReader[Any]")


class _LineReader(Generic[AnyStr]):
    """readlines() and async iteration, on top of a file's readline(): the
    same for binary and text files, as in io.IOBase."""

    def _check_closed(self) -> None:   # each file class has its own
        raise NotImplementedError

    async def readline(self, size: Optional[int] = -1) -> AnyStr:
        raise NotImplementedError

    async def readlines(self, hint: Optional[int] = -1) -> "list[AnyStr]":
        if hint is None or hint <= 0:
            hint = -1
        lines: "list[AnyStr]" = []
        total = 0
        while True:
            line = await self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __aiter__(self: _Self) -> _Self:
        self._check_closed()
        return self

    async def __anext__(self) -> AnyStr:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line


class BinaryFile(_LineReader[bytes]):
    """An open binary file. Built by :func:`aiouring.open`; not by users."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("use aiouring.open() to open files")

    @classmethod
    def _create(cls, fd: int, name, mode: str, *, readable: bool, writable: bool,
                appending: bool, closefd: bool, buffer_size: int) -> "BinaryFile":
        self = object.__new__(cls)
        self._fd = fd
        self.name = name
        self.mode = mode
        self._readable = readable
        self._writable = writable
        self._appending = appending
        self._closefd = closefd
        self._buffer_size = buffer_size      # 0: unbuffered (FileIO behaviour)
        self._closed = False
        self._pos = 0
        self._rbuf = b""
        self._roff = 0
        self._wbuf = bytearray()
        self._wstart = 0
        self._lock = _StreamLock()
        self._late_write: Optional[asyncio.Future] = None
        self._positional_writes: set = set()
        self._seekable: Optional[bool] = None
        self._ahead: collections.deque = collections.deque()   # read-aheads, in file order
        self._ahead_live: set = set()      # read-aheads whose CQE has not come yet
        self._ahead_idle: Optional[asyncio.Future] = None   # close() waiting for _ahead_live
        self._seq_end = -1                 # where the last large read ended
        if appending:
            # As FileIO does: an append stream starts at the end.
            self._pos = os.lseek(fd, 0, os.SEEK_END)
        else:
            try:
                self._pos = os.lseek(fd, 0, os.SEEK_CUR)   # an fd the caller passed in may have moved
            except OSError:
                self._pos = 0
                self._seekable = False
        self._wstart = self._pos
        # Pipes, FIFOs, sockets, ttys: no offsets; every read and write uses
        # the fd's own position (offset -1), in order.
        self._stream = self._seekable is False
        return self

    def _at(self) -> int:
        """The offset for the next stream read: our position, or -1 (the
        fd's own) for files that cannot seek."""
        return -1 if self._stream else self._pos

    @property
    def _io(self):
        """The primitives of the loop running now: a file object is not tied
        to the loop it was opened on (fds are per process; each loop's ring,
        or its threads, can use them), as aiofiles' objects are not."""
        return file_ops()

    # ---- checks -----------------------------------------------------------

    def _check_closed(self, what: str = "I/O operation on closed file") -> None:
        if self._closed:
            raise ValueError(what)

    def _check_readable(self) -> None:
        if not self._readable:
            raise _UnsupportedOperation("read")

    def _check_writable(self) -> None:
        if not self._writable:
            raise _UnsupportedOperation("write")

    # ---- introspection ----------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        self._check_closed()
        return self._fd

    def readable(self) -> bool:
        self._check_closed()
        return self._readable

    def writable(self) -> bool:
        self._check_closed()
        return self._writable

    def seekable(self) -> bool:
        self._check_closed()
        if self._seekable is None:
            try:
                os.lseek(self._fd, 0, os.SEEK_CUR)
                self._seekable = True
            except OSError:
                self._seekable = False
        return self._seekable

    def isatty(self) -> bool:
        self._check_closed()
        return os.isatty(self._fd)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        return f"<aiouring {type(self).__name__} name={self.name!r} mode={self.mode!r} {state}>"

    # ---- the write buffer -------------------------------------------------

    async def _settle(self) -> None:
        """Wait for a cancelled write's late completion (see Cancellation)."""
        late = self._late_write
        if late is not None:
            await asyncio.shield(late)

    async def _write_out(self, data: bytes, offset: int) -> int:
        """One write, with the cancellation bookkeeping for the write buffer:
        the caller consumes the returned count; if the caller is cancelled,
        whatever the kernel still writes is consumed when it says so."""
        fut, cancel = self._io.start_write(self._fd, data, offset)
        try:
            return await asyncio.shield(fut)
        except _CancelledError:
            if fut.done():
                if not fut.cancelled() and fut.exception() is None:
                    self._consumed(fut.result())   # it finished as we were cancelled
                raise
            cancel()
            self._late_write = late = asyncio.get_running_loop().create_future()
            fut.add_done_callback(lambda f: self._late_written(f, late))
            raise

    def _late_written(self, fut: asyncio.Future, late: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is None and fut.result() > 0:
            self._consumed(fut.result())
        if self._late_write is late:
            self._late_write = None
        if not late.done():
            late.set_result(None)

    def _consumed(self, n: int) -> None:
        del self._wbuf[:n]
        if self._appending:
            self._wstart = self._pos = os.lseek(self._fd, 0, os.SEEK_CUR) + len(self._wbuf)
        else:
            self._wstart += n

    async def _flush_unlocked(self) -> None:
        await self._settle()
        while self._wbuf:
            data = bytes(self._wbuf)
            n = await self._write_out(data, -1 if self._appending or self._stream else self._wstart)
            if n == 0:
                raise OSError(28, os.strerror(28))   # a regular file that takes no bytes is full
            self._consumed(n)

    # ---- read-ahead -------------------------------------------------------

    def _read_ahead(self, offset: int, size: int) -> None:
        """Keep reads of ``size`` bytes in flight from ``offset`` on (the
        position after the read being returned)."""
        ahead = self._ahead
        ops = self._io
        # Not while a pwrite may change the data, not on a closed file, and
        # not while other large reads keep the ring busy (many readers: their
        # reads already overlap, and a read-ahead at the end of each one's
        # range would be copied for nothing).
        if self._positional_writes or self._closed or getattr(ops, "_big_reads", 0):
            return
        if ahead:
            offset = ahead[-1].offset + size    # the rest are contiguous, of this size
        depth = min(_AHEAD_MAX_DEPTH, max(_AHEAD_DEPTH, _AHEAD_BYTES // size))
        try:
            while len(ahead) < depth:
                ra = _Ahead()
                ra.offset, ra.size, ra.loop = offset, size, ops._loop
                started = ops.start_read_ahead(self._fd, size, offset, lambda ra=ra: self._ahead_retired(ra))
                if started is None:
                    return     # the thread backend
                ra.fut, ra.cancel = started
                self._ahead_live.add(ra)
                ahead.append(ra)
                offset += size
        except (OSError, RuntimeError):
            self._drop_ahead()   # e.g. the ring is closing: the read itself is done; just no read-ahead

    def _ahead_retired(self, ra: _Ahead) -> None:
        """The kernel is done with ``ra`` (its CQE came): the fd may close."""
        self._ahead_live.discard(ra)
        waiter = self._ahead_idle
        if waiter is not None and waiter.get_loop() is ra.loop and not waiter.done():
            waiter.set_result(None)

    async def _take_ahead(self, offset: int, size: int) -> Optional[bytes]:
        """The data of the read-ahead at ``offset`` if it is a full read of
        ``size`` bytes; None otherwise (then a read must be issued, which
        finds EOF, growth or an error as the read-ahead cannot be trusted
        to: it may have run before the file grew)."""
        ahead = self._ahead
        ra = ahead[0]
        if ra.offset != offset or ra.size != size or ra.loop is not _get_running_loop():
            self._drop_ahead()
            return None
        ahead.popleft()
        fut = ra.fut
        try:
            if fut.cancelled():     # by the loop closing, not by our caller
                self._drop_ahead()
                return None
            data = await fut      # no suspension if it is done
        except _CancelledError:
            ra.cancel()
            self._drop_ahead()
            raise
        except Exception:
            self._drop_ahead()
            return None
        if len(data) != size:
            self._drop_ahead()
            return None
        return data

    def _drop_ahead(self) -> None:
        """Forget the read-aheads (their data may be stale, or not wanted):
        ask the kernel to cancel them. They stay in _ahead_live until their
        CQEs come; close() waits for that."""
        self._seq_end = -1
        ahead = self._ahead
        if not ahead:
            return
        running = asyncio._get_running_loop()
        for ra in ahead:
            if ra.loop is running:
                ra.cancel()
            else:
                # Only the ring's own loop may submit to it.
                try:
                    ra.loop.call_soon_threadsafe(ra.cancel)
                except RuntimeError:
                    pass    # closed: closing drained its ops
        ahead.clear()

    async def _retire_ahead(self) -> None:
        """Drop the read-aheads and wait until the kernel is done with every
        one started on this loop: a read-ahead still queued for an io-wq
        worker looks the fd up when it starts, and after close() that number
        may be another file's, maybe a pipe whose data it would take. (One
        started on another loop, not running now, cannot be waited for here:
        it is cancelled on its loop.)"""
        self._drop_ahead()
        loop = _get_running_loop()
        while any(ra.loop is loop for ra in self._ahead_live):
            self._ahead_idle = waiter = loop.create_future()
            try:
                await waiter
            finally:
                self._ahead_idle = None

    # ---- reading ----------------------------------------------------------

    async def _raw_read(self, n: int, offset: int) -> bytes:
        return await self._io.read(self._fd, n, offset)

    def _take(self, n: int) -> bytes:
        """Up to ``n`` bytes from the read buffer (all of it when n < 0)."""
        rbuf, roff = self._rbuf, self._roff
        avail = len(rbuf) - roff
        if n < 0 or n >= avail:
            data = rbuf[roff:] if roff else rbuf
            self._rbuf = b""
            self._roff = 0
            n = avail
        else:
            data = rbuf[roff:roff + n]
            self._roff = roff + n
        self._pos += n
        return data

    async def _prepare_read(self) -> None:
        self._check_readable()
        if self._ahead:
            self._drop_ahead()   # the general paths read without it
        if self._wbuf or self._late_write is not None:
            await self._flush_unlocked()

    async def read(self, size: Optional[int] = -1) -> bytes:
        """Read up to ``size`` bytes; everything to EOF when ``size`` is
        negative or None. Short only at EOF (unbuffered: one read)."""
        self._check_readable()     # before the closed check, as the built-in file
        self._check_closed("read of closed file")
        if size is None:
            size = -1
        if (size > 0 and self._buffer_size and not self._wbuf and self._late_write is None
                and self._lock.try_acquire()):
            # The common case, without the general path's layers: buffered
            # bytes, or one kernel read at the position.
            try:
                avail = len(self._rbuf) - self._roff
                if size <= avail:
                    return self._take(size)
                if avail == 0:
                    return await self._read_direct(size)
            finally:
                self._lock.release()
        async with self._lock:
            self._check_closed("read of closed file")
            await self._prepare_read()
            # A read cancelled half-way (after taking buffered bytes) leaves
            # the stream as it found it. (An error leaves it where the
            # built-in file would: past the bytes taken.)
            saved = self._pos, self._rbuf, self._roff
            try:
                return await self._read_unlocked(size)
            except _CancelledError:
                self._pos, self._rbuf, self._roff = saved
                raise

    async def _read_direct(self, size: int) -> bytes:
        """With an empty read buffer: one kernel read (of ``size`` bytes, or
        of a buffer's worth to keep the rest as read-ahead); short only at EOF,
        where the general path would also stop."""
        want = size if size >= self._buffer_size else self._buffer_size
        pos = self._pos
        data = await self._take_ahead(pos, want) if self._ahead else None
        if data is None:
            fut, cancel = self._io.start_read(self._fd, want, self._at())
            try:
                data = await fut
            except _CancelledError:
                cancel()
                raise
            # In order: where the last large read ended, or at the start
            # (as the kernel's own read-ahead assumes of a first read there).
            sequential = pos == self._seq_end or pos == 0
        else:
            sequential = True
        n = len(data)
        if want == size and _AHEAD_MIN <= size <= _AHEAD_MAX and not self._stream:
            # The file is being read in order: read on while the caller works.
            if n == want:
                self._seq_end = pos + n
                if sequential:
                    self._read_ahead(pos + n, n)
            else:
                self._seq_end = -1
        if n < want and n < size and n:
            # Short but not empty: maybe not EOF (a file growing, a pipe);
            # let the general path loop for the rest.
            start = self._pos
            self._rbuf, self._roff = data, 0
            try:
                return await self._read_unlocked(size)
            except _CancelledError:
                self._pos, self._rbuf, self._roff = start, b"", 0   # as if not called
                raise
        if n > size:
            self._rbuf, self._roff = data, size
            self._pos += size
            return data[:size]
        self._pos += n
        return data

    async def _read_unlocked(self, size: int) -> bytes:
        if size < 0:
            return await self._read_all()
        if self._buffer_size == 0:
            data = await self._raw_read(size, self._at())
            self._pos += len(data)
            return data
        avail = len(self._rbuf) - self._roff
        if size <= avail:
            return self._take(size)
        parts = [self._take(-1)] if avail else []
        got = avail
        while got < size:
            want = size - got
            if want >= self._buffer_size:
                chunk = await self._raw_read(want, self._at())
                self._pos += len(chunk)
            else:
                chunk = await self._raw_read(self._buffer_size, self._at())
                self._rbuf, self._roff = chunk, 0
                chunk = self._take(want)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _read_all(self) -> bytes:
        parts = [self._take(-1)] if len(self._rbuf) > self._roff else []
        try:
            size = os.fstat(self._fd).st_size
        except OSError:
            size = 0
        # One read of everything that is left (+1 to see EOF or growth), then
        # more only if the file is not what its size said.
        want = max(size - self._pos, 0) + 1
        chunk_size = max(want, self._buffer_size or io.DEFAULT_BUFFER_SIZE)
        while True:
            chunk = await self._raw_read(chunk_size, self._at())
            if not chunk:
                break
            self._pos += len(chunk)
            parts.append(chunk)
            chunk_size = max(chunk_size, 64 * 1024)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def read1(self, size: int = -1) -> bytes:
        """At most one read from the kernel; buffered bytes first."""
        if not self._readable:
            raise _UnsupportedOperation("read1")
        self._check_closed("read of closed file")
        async with self._lock:
            self._check_closed("read of closed file")
            await self._prepare_read()
            if size < 0:
                size = self._buffer_size or io.DEFAULT_BUFFER_SIZE
            if size == 0:
                return b""
            if len(self._rbuf) > self._roff:
                return self._take(size)
            # As the built-in BufferedReader: one kernel read of exactly
            # `size`, no read-ahead.
            data = await self._raw_read(size, self._at())
            self._pos += len(data)
            return data

    async def peek(self, size: int = 0) -> bytes:
        """Buffered bytes at the position, without consuming them (at least
        one byte unless at EOF; possibly more or fewer than ``size``)."""
        self._check_readable()
        self._check_closed("peek of closed file")
        async with self._lock:
            self._check_closed("peek of closed file")
            await self._prepare_read()
            if len(self._rbuf) == self._roff:
                self._rbuf = await self._raw_read(max(self._buffer_size, 1), self._at())
                self._roff = 0
            return self._rbuf[self._roff:]

    async def readinto(self, buffer: Any) -> int:
        """Read into a writable buffer; return the number of bytes read."""
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise TypeError(f"readinto() argument must be read-write bytes-like object, not {type(buffer).__name__}")
        data = await self.read(len(view))
        view[:len(data)] = data
        return len(data)

    async def readinto1(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise TypeError(f"readinto1() argument must be read-write bytes-like object, not {type(buffer).__name__}")
        data = await self.read1(len(view))
        view[:len(data)] = data
        return len(data)

    async def readline(self, size: Optional[int] = -1) -> bytes:
        """Read one line (up to and including b"\\n"), at most ``size`` bytes."""
        if size is None:
            size = -1
        if size == 0:
            self._check_closed("readline of closed file")
            return b""      # nothing to read: the built-in doesn't check the mode either
        self._check_readable()
        self._check_closed("readline of closed file")
        async with self._lock:
            self._check_closed("readline of closed file")
            await self._prepare_read()
            if self._stream and not self._buffer_size:
                chunk = 1     # a pipe can't give back what follows the line: FileIO reads bytewise too
            else:
                chunk = max(self._buffer_size, io.DEFAULT_BUFFER_SIZE)
            line = self._rbuf[self._roff:] if self._roff else self._rbuf
            start = 0
            offset = self._pos      # file offset of line[0]
            while True:
                nl = line.find(b"\n", start)
                if nl >= 0:
                    end = nl + 1
                    break
                if 0 <= size <= len(line):
                    end = size
                    break
                start = len(line)
                more = await self._raw_read(chunk, -1 if self._stream else offset + len(line))
                if not more:
                    end = len(line)
                    break
                line += more
            if 0 <= size < end:
                end = size
            # With explicit offsets nothing needs to be "put back": keep what
            # follows the line as read-ahead, unless unbuffered.
            self._pos = offset + end
            if self._buffer_size and end < len(line):
                self._rbuf, self._roff = line, end
            else:
                self._rbuf, self._roff = b"", 0
            return line[:end] if end < len(line) else line

    # ---- writing ----------------------------------------------------------

    async def write(self, data: Any) -> int:
        """Write ``data``. Buffered: returns ``len(data)``; the bytes reach the
        kernel when the buffer fills, on flush, seek or close. Unbuffered: one
        write, which may be short."""
        self._check_writable()
        self._check_closed("write to closed file")
        try:
            view = memoryview(data)
        except TypeError:
            raise TypeError(f"a bytes-like object is required, not '{type(data).__name__}'") from None
        async with self._lock:
            self._check_closed("write to closed file")
            self._check_writable()
            await self._settle()
            if self._ahead:
                self._drop_ahead()   # it may have read what this overwrites
            if self._rbuf:
                self._rbuf, self._roff = b"", 0   # _pos already is the logical position
            if not self._wbuf:
                self._wstart = self._pos
            n = view.nbytes
            if self._buffer_size == 0:
                await self._flush_unlocked()   # what a cancelled write left behind goes first
                self._wstart = self._pos
                self._wbuf += view
                self._pos += n
                try:
                    offset = -1 if self._appending or self._stream else self._wstart
                    written = await self._write_out(bytes(self._wbuf), offset)
                    self._consumed(written)
                except _CancelledError:
                    raise   # the late completion (or the next flush) settles the buffer
                finally:
                    if self._late_write is None:
                        # Unbuffered writes report what the kernel took; the
                        # rest of a short write is not written, as os.write.
                        self._wbuf.clear()
                        self._pos = self._wstart
                return written
            self._wbuf += view
            self._pos += n
            if len(self._wbuf) >= self._buffer_size:
                await self._flush_unlocked()
            return n

    async def writelines(self, lines: Iterable[Any]) -> None:
        for line in lines:
            await self.write(line)

    async def flush(self) -> None:
        """Hand buffered bytes to the kernel (not fsync: see :meth:`fsync`)."""
        self._check_closed("flush of closed file")
        async with self._lock:
            await self._flush_unlocked()

    # ---- positioning ------------------------------------------------------

    async def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check_closed("seek of closed file")
        if whence not in (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END, os.SEEK_DATA, os.SEEK_HOLE):
            raise ValueError(f"whence value {whence} unsupported")
        offset = offset.__index__()
        if self._stream:
            if self._buffer_size:
                raise _UnsupportedOperation("File or stream is not seekable.")   # BufferedReader's check
            os.lseek(self._fd, offset, whence)    # FileIO just tries: ESPIPE
        if (whence <= os.SEEK_CUR and not self._stream and not self._wbuf and self._late_write is None
                and not self._lock.locked):
            # Nothing to flush and nobody mid-operation: no await needed.
            target = offset + self._pos if whence == os.SEEK_CUR else offset
            if target < 0:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))   # what lseek says
            if self._ahead and target != self._pos:
                self._drop_ahead()
            self._rbuf, self._roff = b"", 0
            self._pos = self._wstart = target
            return target
        async with self._lock:
            self._check_closed("seek of closed file")
            await self._flush_unlocked()
            if whence == os.SEEK_CUR:
                offset += self._pos
                whence = os.SEEK_SET
            # lseek computes SEEK_END/DATA/HOLE and rejects what the built-in
            # file rejects (a negative result: EINVAL), with the same error.
            pos = os.lseek(self._fd, offset, whence)
            if self._ahead and pos != self._pos:
                self._drop_ahead()
            self._rbuf, self._roff = b"", 0
            self._pos = self._wstart = pos
            return pos

    async def tell(self) -> int:
        self._check_closed()
        if self._stream:
            os.lseek(self._fd, 0, os.SEEK_CUR)   # raises ESPIPE, as the built-in file's tell
        return self._pos

    async def truncate(self, size: Optional[int] = None) -> int:
        """Resize the file to ``size`` (default: the position); the position
        does not move."""
        self._check_closed("truncate of closed file")
        async with self._lock:
            self._check_closed()
            self._check_writable()
            await self._flush_unlocked()
            if size is None:
                size = self._pos
            size = size.__index__()
            self._drop_ahead()
            await self._io.ftruncate(self._fd, size)
            self._rbuf, self._roff = b"", 0
            return size

    # ---- positional I/O (not part of the stream) --------------------------

    async def pread(self, size: int, offset: int) -> bytes:
        """Read up to ``size`` bytes at ``offset`` without moving the position.
        Sees every earlier write on this file object (they are flushed first)."""
        self._check_closed("read of closed file")
        self._check_readable()
        if size < 0 or offset < 0:
            raise ValueError("size and offset must not be negative")
        if self._wbuf or self._late_write is not None:
            async with self._lock:
                await self._flush_unlocked()
        return await self._io.read(self._fd, size, offset)

    async def pwrite(self, data: Any, offset: int) -> int:
        """Write ``data`` at ``offset`` without moving the position; returns
        the number of bytes written (may be short, as os.pwrite)."""
        self._check_closed("write to closed file")
        self._check_writable()
        if offset < 0:
            raise ValueError("offset must not be negative")
        if self._wbuf or self._late_write is not None:
            async with self._lock:
                await self._flush_unlocked()
        self._rbuf, self._roff = b"", 0   # read-ahead may now be stale
        self._drop_ahead()   # (no new one starts until the write is over)
        fut, cancel = self._io.start_write(self._fd, bytes(data), offset)
        # Tracked until the write is really over, even if our caller is
        # cancelled: close() waits for it, so a write still running in a
        # thread can never land in another file that reuses the fd number.
        self._positional_writes.add(fut)
        fut.add_done_callback(self._positional_writes.discard)
        try:
            return await asyncio.shield(fut)
        except _CancelledError:
            if not fut.done():
                cancel()
                fut.add_done_callback(_retrieve)   # its -ECANCELED is nobody's error now
            raise

    async def fsync(self) -> None:
        """Flush, then make the file's data and metadata durable."""
        await self.flush()
        await self._io.fsync(self._fd, False)

    async def fdatasync(self) -> None:
        """Flush, then make the file's data durable."""
        await self.flush()
        await self._io.fsync(self._fd, True)

    async def stat(self) -> os.stat_result:
        self._check_closed()
        return await self._io.fstat(self._fd)

    # ---- closing ----------------------------------------------------------

    async def close(self) -> None:
        """Flush and close. Idempotent. The fd is closed even if flushing
        fails (the error is raised after) or the caller is cancelled."""
        if self._closed:
            return
        try:
            async with self._lock:
                if self._closed:
                    return
                try:
                    await self._flush_unlocked()
                finally:
                    await self._close_fd()
        except _CancelledError:
            if not self._closed:
                await asyncio.shield(self._close_fd())
            raise

    async def _close_fd(self) -> None:
        if self._closed:
            return
        loop = _get_running_loop()
        while True:
            while self._positional_writes:
                await asyncio.wait(list(self._positional_writes))
            await self._retire_ahead()
            # Another task may have started something meanwhile (a cancelled
            # close runs without the lock): no await from here on.
            if not self._positional_writes and not any(ra.loop is loop for ra in self._ahead_live):
                break
        self._closed = True
        self._rbuf = b""
        if self._closefd:
            await self._io.close(self._fd)

    async def __aenter__(self) -> "BinaryFile":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True) or not getattr(self, "_closefd", False):
            return
        warnings.warn(f"unclosed file {self!r}", ResourceWarning, source=self)
        # Last resort, as the built-in file's finalizer: synchronous flush and
        # close. Skipped for bytes a cancelled write may still be writing.
        self._closed = True
        try:
            if self._wbuf and self._late_write is None:
                if self._appending:
                    os.write(self._fd, self._wbuf)
                else:
                    os.pwrite(self._fd, self._wbuf, self._wstart)
        except OSError:
            pass
        finally:
            os.close(self._fd)
