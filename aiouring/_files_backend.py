"""The file system primitives under :mod:`aiouring.files`: one operation each,
run on the loop's ring, or in a thread where the ring cannot do it.

Facts
-----
* ``IORING_OP_READ``/``WRITE`` take an explicit offset and leave the file's
  own position (``f_pos``) alone; offset ``-1`` means "use and advance
  ``f_pos``", like read(2)/write(2). On an ``O_APPEND`` file every write goes
  to the end whatever the offset, and with ``-1`` ``f_pos`` ends up there.
* Reads of cached pages complete inline in the submitting ``io_uring_enter``;
  reads that miss the cache, ``OPENAT`` with ``O_CREAT``, ``STATX``, ``FSYNC``
  and the path operations run in the kernel's io-wq worker threads.
* Cancelling only asks: an ``OPENAT`` may still produce an fd, a read may
  still fill its buffer, a write may still have written (part of) its data.
  ``CLOSE`` cannot be cancelled in any useful sense.
* Opcodes arrived over time: OPENAT/CLOSE/STATX/READ/WRITE 5.6, RENAMEAT and
  UNLINKAT 5.11, MKDIRAT/SYMLINKAT/LINKAT 5.15, FTRUNCATE 6.9. The ring's
  probe says which this kernel has.
* Every pointer in an SQE (buffer, path, statx struct) must stay valid until
  the CQE.
* ``IOSQE_ASYNC`` makes the kernel hand a request straight to an io-wq worker
  instead of trying it inline: inline is cheaper for one read, workers let
  several large copies run on several CPUs.
* Registered buffers (``READ_FIXED``) measured slower than plain ``READ`` for
  page-cache reads here, before even copying data out of them
  (``bench/files_bench.py --only fixed``): they are not used.
* With ``SETUP_SINGLE_ISSUER`` only the loop's thread may submit; the file API
  is only ever called from coroutines on that loop.

What this means for aiouring
----------------------------
* :class:`RingFileOps` puts each primitive on the ring when the probe says the
  kernel has its opcode, and runs it in the loop's default executor when not.
  :class:`ThreadFileOps` runs everything in the executor: it is what the file
  API uses on event loops that are not aiouring's (documented in
  :mod:`aiouring.files`), so the same code works, just slower.
* The op record (:class:`~aiouring._ops.FutureOp`, ``keep=``) owns every
  buffer, path and statx struct until the CQE; a cancelled open whose fd
  arrives late closes it, in both backends.
* Reads go into memory the kernel alone writes: a fresh, uninitialized
  ``bytes`` object for large reads (returned as is when the read is full, so a
  1 MiB read costs no copy and no zeroing, as in CPython's own
  ``FileIO.read``), a cffi buffer for small ones. A large read is sent with
  ``IOSQE_ASYNC`` only when another large read is already in flight; a
  read-ahead (:meth:`RingFileOps.start_read_ahead`) always is.
  Caller memory is never handed to the kernel for writing (a cancelled read
  could still land in it later); ``readinto`` copies.
* Data to write is handed to the kernel from an immutable ``bytes`` object,
  so that a caller who reuses a mutable buffer after cancelling cannot change
  what the kernel writes.
* A read-only fd whose close result nobody needs (``read_bytes``) is closed
  with a ``CLOSE`` that rides along with the next submission, unawaited.
"""

from __future__ import annotations

import asyncio
import os
from typing import Optional

from ._ops import FutureOp
from .ring import Ring, uapi

__all__ = ["file_ops", "RingFileOps", "ThreadFileOps", "stat_result_from_statx"]

_CancelledError = asyncio.CancelledError

# Reads at least this long go straight into a fresh bytes object (no copy on
# a full read). Below it, one small cffi buffer and a copy cost less than
# zeroing and maybe slicing a bytes object.
_INPLACE_READ_MIN = 16 * 1024
# The kernel caps one read or write at MAX_RW_COUNT (2 GiB - 4 KiB) anyway.
_MAX_RW = 0x7FFFF000

_STAT_FIELDS = os.stat_result.n_fields
_IOSQE_ASYNC = uapi.IOSQE_ASYNC
_U64 = (1 << 64) - 1


try:
    import ctypes

    _new_bytes_uninitialized = ctypes.pythonapi.PyBytes_FromStringAndSize
    _new_bytes_uninitialized.restype = ctypes.py_object
    _new_bytes_uninitialized.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)

    def _fresh_bytes(n: int) -> bytes:
        # PyBytes_FromStringAndSize(NULL, n): a new bytes object whose
        # contents are uninitialized (documented C API). bytes(n) would zero
        # it first, and for large n calloc hands out fresh pages that fault
        # in one by one: together more than the read itself costs.
        return _new_bytes_uninitialized(None, n)
except (ImportError, AttributeError):   # not CPython: zeroed, correct, slower
    _fresh_bytes = bytes


# Read-ahead keeps several large buffers alive at once (the reader's, and
# those in flight), allocated and freed out of order. glibc then often finds
# two freed neighbours at the top of its heap, above its trim threshold, gives
# the memory back to the kernel and gets it again for the next buffer: every
# page of it faults in again, in the io-wq worker's copy (measured: 1 MiB
# sequential reads with three read-aheads took 174 us each instead of 59,
# with about 60 page faults per read instead of none). glibc's thresholds are
# dynamic (mallopt(3), M_MMAP_THRESHOLD): freeing a block it had mmap'ed
# raises the mmap threshold to that block's size and the trim threshold to
# twice that, up to 32 MiB. One such block, freed once per process before the
# first read-ahead, puts the trim threshold above what read-ahead keeps in
# flight. This is what glibc does by itself after any large buffer is freed
# (a whole-file read of a few MiB does the same); elsewhere it is a no-op.
_HEAP_HINT = 8 * 1024 * 1024
_heap_kept = False


def _keep_heap() -> None:
    global _heap_kept
    _heap_kept = True
    block = _fresh_bytes(_HEAP_HINT)   # untouched: mapped, never faulted in
    del block


def _encode_path(path) -> bytes:
    p = os.fsencode(path)
    if b"\0" in p:
        raise ValueError("embedded null byte")
    return p


def _with_filename(exc: OSError, filename, filename2=None) -> OSError:
    exc.filename = filename
    if filename2 is not None:
        exc.filename2 = filename2
    return exc


def stat_result_from_statx(stx) -> os.stat_result:
    """An ``os.stat_result`` equal to what ``os.stat`` returns for the same file."""
    def times(ts):
        return ts.tv_sec, ts.tv_sec + ts.tv_nsec * 1e-9, ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    a_int, a_float, a_ns = times(stx.stx_atime)
    m_int, m_float, m_ns = times(stx.stx_mtime)
    c_int, c_float, c_ns = times(stx.stx_ctime)
    fields = [
        stx.stx_mode, stx.stx_ino, os.makedev(stx.stx_dev_major, stx.stx_dev_minor), stx.stx_nlink,
        stx.stx_uid, stx.stx_gid, stx.stx_size, a_int, m_int, c_int,
        a_float, m_float, c_float, a_ns, m_ns, c_ns,
        stx.stx_blksize, stx.stx_blocks, os.makedev(stx.stx_rdev_major, stx.stx_rdev_minor),
    ]
    # Platforms/versions with extra hidden fields get None for them, as
    # os.stat_result itself does for fields a platform lacks.
    fields.extend([None] * (_STAT_FIELDS - len(fields)))
    return os.stat_result(fields[:_STAT_FIELDS])


class ThreadFileOps:
    """Every primitive in the loop's default executor (any asyncio loop)."""

    on_ring = False

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def _call(self, fn, *args, on_late=None):
        """Run ``fn(*args)`` in a thread. If the caller is cancelled after the
        thread started, ``on_late`` gets the result the thread still produces."""
        cfut = self._loop.run_in_executor(None, fn, *args)
        try:
            return await asyncio.shield(cfut)
        except _CancelledError:
            def late(f, on_late=on_late):
                # Always look at the outcome (so an error is not logged as
                # "never retrieved"); hand a late success to on_late.
                if not f.cancelled() and f.exception() is None and on_late is not None:
                    on_late(f.result())
            cfut.add_done_callback(late)
            raise

    async def open(self, path, flags: int, mode: int) -> int:
        return await self._call(os.open, path, flags, mode, on_late=os.close)

    async def read(self, fd: int, n: int, offset: int) -> bytes:
        if offset < 0:
            return await self._call(os.read, fd, min(n, _MAX_RW))
        return await self._call(os.pread, fd, min(n, _MAX_RW), offset)

    async def write(self, fd: int, data: bytes, offset: int) -> int:
        if offset < 0:
            return await self._call(os.write, fd, data)
        return await self._call(os.pwrite, fd, data, offset)

    def start_read(self, fd: int, n: int, offset: int):
        """Start a read: (future -> bytes, cancel)."""
        if offset < 0:
            fut = self._loop.run_in_executor(None, os.read, fd, min(n, _MAX_RW))
        else:
            fut = self._loop.run_in_executor(None, os.pread, fd, min(n, _MAX_RW), offset)
        return fut, fut.cancel

    def start_read_ahead(self, fd: int, n: int, offset: int, retired) -> Optional[tuple]:
        """None: no read-ahead in threads. A pread cannot be called back once
        a thread runs it, so a file closing would wait for reads nobody
        wants, and with one thread per read the hand-off costs more than
        the round trip read-ahead hides."""
        return None

    def start_write(self, fd: int, data: bytes, offset: int):
        """Start a write: (future -> count, cancel). The future completes even
        if the awaiting task is cancelled (await it shielded)."""
        if offset < 0:
            fut = self._loop.run_in_executor(None, os.write, fd, data)
        else:
            fut = self._loop.run_in_executor(None, os.pwrite, fd, data, offset)
        return fut, _no_cancel

    async def fsync(self, fd: int, datasync: bool = False) -> None:
        await self._call(os.fdatasync if datasync else os.fsync, fd)

    async def ftruncate(self, fd: int, length: int) -> None:
        await self._call(os.ftruncate, fd, length)

    async def close(self, fd: int) -> None:
        # close(2) never blocks on regular files worth a thread hop, and doing
        # it inline means a cancelled close cannot leave the fd half-owned.
        os.close(fd)

    def close_nowait(self, fd: int) -> None:
        """Close an fd whose close result nobody needs (read-only files)."""
        os.close(fd)

    async def stat(self, path, follow_symlinks: bool = True) -> os.stat_result:
        return await self._call(lambda: os.stat(path, follow_symlinks=follow_symlinks))

    async def fstat(self, fd: int) -> os.stat_result:
        return os.fstat(fd)

    async def rename(self, src, dst) -> None:
        await self._call(os.rename, src, dst)

    async def replace(self, src, dst) -> None:
        await self._call(os.replace, src, dst)

    async def unlink(self, path) -> None:
        await self._call(os.unlink, path)

    async def rmdir(self, path) -> None:
        await self._call(os.rmdir, path)

    async def mkdir(self, path, mode: int = 0o777) -> None:
        await self._call(os.mkdir, path, mode)

    async def link(self, src, dst, follow_symlinks: bool = True) -> None:
        await self._call(lambda: os.link(src, dst, follow_symlinks=follow_symlinks))

    async def symlink(self, src, dst) -> None:
        await self._call(os.symlink, src, dst)


class _BigReadOp(FutureOp):
    """A large read: its final CQE, whatever it says, takes it off the count
    of large reads in flight."""

    __slots__ = ("owner",)

    def __init__(self, owner, fut, keep, finish, on_late) -> None:
        super().__init__(fut, keep, finish, on_late)
        self.owner = owner

    def __call__(self, res: int, flags: int) -> None:
        self.owner._big_reads -= 1
        super().__call__(res, flags)


class _AheadOp(FutureOp):
    """A read nobody has asked for yet (see :meth:`RingFileOps.start_read_ahead`).
    Its final CQE, whatever it says, calls ``retired``; an error in it is
    marked as retrieved, since it only matters to a read that takes it."""

    __slots__ = ("retired",)

    def __init__(self, _owner, fut, keep, finish, retired) -> None:
        super().__init__(fut, keep, finish, None)
        self.retired = retired

    def __call__(self, res: int, flags: int) -> None:
        super().__call__(res, flags)
        fut = self.fut
        if res < 0 and not fut.cancelled():
            fut.exception()
        self.retired()


class RingFileOps(ThreadFileOps):
    """The primitives on an aiouring loop's ring; the thread versions remain
    for opcodes this kernel lacks."""

    on_ring = True

    def __init__(self, loop) -> None:
        super().__init__(loop)
        ring: Ring = loop._ring
        self._ring = ring
        self._ops = loop._ops
        self._has = ring.probe()
        self._big_reads = 0     # large reads in flight (see start_read)

    # ---- submission -------------------------------------------------------

    def _start(self, opcode: int, fd: int, addr, length: int, off: int, op_flags: int,
               keep=None, finish=None, on_late=None, addr2=None, sqe_flags: int = 0, op_class=None):
        """Queue one SQE; return (future, user_data). The SQE reaches the
        kernel with the loop's next io_uring_enter."""
        fut = self._loop.create_future()
        if op_class is None:
            ud = self._ops.register(FutureOp(fut, keep, finish, on_late))
        else:
            ud = self._ops.register(op_class(self, fut, keep, finish, on_late))
        try:
            if addr2 is None:
                self._ring.prep(opcode, fd, addr, length, off, op_flags, ud, sqe_flags)
            else:
                self._ring.prep2(opcode, fd, addr, length, addr2, op_flags, ud)
        except BaseException:
            self._ops.handlers.pop(ud, None)
            raise
        return fut, ud

    async def _run(self, opcode, fd, addr, length, off, op_flags, keep=None, finish=None,
                   on_late=None, addr2=None):
        fut, ud = self._start(opcode, fd, addr, length, off, op_flags, keep, finish, on_late, addr2)
        try:
            return await fut
        except _CancelledError:
            self._abandon(fut, ud, on_late)
            raise

    def _abandon(self, fut, ud: int, on_late=None) -> None:
        """The awaiting task was cancelled. Either the CQE has not come yet
        (ask the kernel to cancel; the op record hands a late result to
        ``on_late``), or it came and resolved ``fut`` just before the
        cancellation reached the task: then nobody will take that result, so
        it goes to ``on_late`` now (a fresh fd must not leak)."""
        if not fut.done():
            self._ops.cancel(ud)
        elif on_late is not None and not fut.cancelled() and fut.exception() is None:
            on_late(fut.result(), 0)

    async def _path_op(self, opcode, fd, path, length, op_flags, filename, path2=None, filename2=None):
        p = Ring.alloc("char[]", _encode_path(path))
        keep = (p,)
        addr2 = None
        if path2 is not None:
            p2 = Ring.alloc("char[]", _encode_path(path2))
            keep = (p, p2)
            addr2 = p2
        try:
            return await self._run(opcode, fd, p, length, 0, op_flags, keep=keep, addr2=addr2)
        except OSError as exc:
            raise _with_filename(exc, filename, filename2) from None

    # ---- file descriptors -------------------------------------------------

    async def open(self, path, flags: int, mode: int) -> int:
        if uapi.IORING_OP_OPENAT not in self._has:
            return await super().open(path, flags, mode)
        p = Ring.alloc("char[]", _encode_path(path))

        def late_fd(res, _flags):
            if res >= 0:
                os.close(res)   # the opener was cancelled: nobody owns this fd
        # OPENAT: fd = dirfd, addr = path, len = mode, op_flags = open flags.
        try:
            return await self._run(uapi.IORING_OP_OPENAT, uapi.AT_FDCWD, p, mode, 0, flags,
                                   keep=p, on_late=late_fd)
        except OSError as exc:
            raise _with_filename(exc, path) from None

    def start_read(self, fd: int, n: int, offset: int):
        """Queue a read of up to ``n`` bytes at ``offset``: (future -> bytes, cancel)."""
        fut, ud = self._start_read(fd, n, offset)

        def cancel() -> None:
            fut.cancel()
            self._ops.cancel(ud)
        return fut, cancel

    def _start_read(self, fd: int, n: int, offset: int):
        offset &= _U64     # -1: the fd's own position (pipes)
        n = min(n, _MAX_RW)
        if n >= _INPLACE_READ_MIN:
            # Several large reads at once: IOSQE_ASYNC sends them to io-wq
            # workers, so the copies run on several CPUs instead of one after
            # the other inside this thread's io_uring_enter. A lone read stays
            # inline (no thread hand-off).
            self._big_reads += 1
            sqe_flags = _IOSQE_ASYNC if self._big_reads > 1 else 0
            return self._start_read_in_place(fd, n, offset, sqe_flags, _BigReadOp)
        cbuf = Ring.alloc("char[]", n or 1)
        return self._start(uapi.IORING_OP_READ, fd, cbuf, n, offset, 0, keep=cbuf,
                           finish=(lambda res, cbuf=cbuf: Ring.unpack(cbuf, res)))

    def _start_read_in_place(self, fd: int, n: int, offset: int, sqe_flags: int, op_class, on_late=None):
        # A fresh bytes object nobody else can see until the CQE resolves the
        # future (and never, if cancelled): the kernel fills it in place, as
        # CPython's FileIO.read fills the bytes it returns.
        buf = _fresh_bytes(n)
        ptr = Ring.pointer(buf)
        return self._start(uapi.IORING_OP_READ, fd, ptr, n, offset, 0, keep=(buf, ptr),
                           finish=(lambda res, buf=buf, n=n: buf if res == n else buf[:res]),
                           on_late=on_late, sqe_flags=sqe_flags, op_class=op_class)

    def start_read_ahead(self, fd: int, n: int, offset: int, retired) -> Optional[tuple]:
        """Start a read of ``n`` bytes at ``offset`` that a file expects to be
        asked for next: (future -> bytes, cancel).

        It goes to an io-wq worker (``IOSQE_ASYNC``), so that the copy runs
        on another CPU while this thread goes on (inline, in the enter, it
        would only save loop iterations: measured no faster than no
        read-ahead), and reaches the kernel with the next iteration's enter
        (handing it over at once, with a syscall of its own, measured
        slower). Unlike :meth:`start_read`, ``cancel`` only asks the kernel:
        the future stays pending until the CQE (data, or an error such as
        ECANCELED), and ``retired()`` is called at that CQE in any case, even
        when the loop closing cancelled the future first. Until then the
        kernel may still look up ``fd``, so it must stay open."""
        if not _heap_kept:
            _keep_heap()
        fut, ud = self._start_read_in_place(fd, min(n, _MAX_RW), offset & _U64, _IOSQE_ASYNC, _AheadOp,
                                            on_late=retired)
        return fut, (lambda: self._ops.cancel(ud))

    async def read(self, fd: int, n: int, offset: int) -> bytes:
        fut, ud = self._start_read(fd, n, offset)
        try:
            return await fut
        except _CancelledError:
            self._ops.cancel(ud)
            raise

    def _start_write(self, fd: int, data: bytes, offset: int):
        ptr = Ring.pointer(data)
        # offset -1: the file position, which O_APPEND files need.
        return self._start(uapi.IORING_OP_WRITE, fd, ptr, min(len(data), _MAX_RW),
                           offset & _U64, 0, keep=(data, ptr))

    def start_write(self, fd: int, data: bytes, offset: int):
        """Queue a write of ``data`` (bytes: immutable while in flight):
        (future -> count, cancel)."""
        fut, ud = self._start_write(fd, data, offset)
        return fut, (lambda: self._ops.cancel(ud))

    async def write(self, fd: int, data: bytes, offset: int) -> int:
        fut, ud = self._start_write(fd, data, offset)
        try:
            return await fut
        except _CancelledError:
            self._ops.cancel(ud)
            raise

    async def fsync(self, fd: int, datasync: bool = False) -> None:
        await self._run(uapi.IORING_OP_FSYNC, fd, Ring.null, 0, 0,
                        uapi.IORING_FSYNC_DATASYNC if datasync else 0)

    async def ftruncate(self, fd: int, length: int) -> None:
        if uapi.IORING_OP_FTRUNCATE not in self._has:
            return await super().ftruncate(fd, length)
        if length < 0:
            raise OSError(22, os.strerror(22))   # what ftruncate(2) says; the SQE field is unsigned
        await self._run(uapi.IORING_OP_FTRUNCATE, fd, Ring.null, 0, length, 0)

    async def close(self, fd: int) -> None:
        if uapi.IORING_OP_CLOSE not in self._has:
            return await super().close(fd)
        fut, ud = self._start(uapi.IORING_OP_CLOSE, fd, Ring.null, 0, 0, 0)
        # A close cannot be taken back: a cancelled caller still gets the fd
        # closed, and the CQE is awaited only by whoever is not cancelled.
        fut.add_done_callback(_ignore_result)
        await asyncio.shield(fut)

    def close_nowait(self, fd: int) -> None:
        """Queue a CLOSE and don't wait for it: it rides along with the next
        io_uring_enter. Only for fds whose close cannot report anything
        useful (read-only regular files)."""
        if uapi.IORING_OP_CLOSE not in self._has:
            os.close(fd)
            return
        fut, _ud = self._start(uapi.IORING_OP_CLOSE, fd, Ring.null, 0, 0, 0)
        fut.add_done_callback(_ignore_result)

    # ---- metadata and paths -----------------------------------------------

    async def _statx(self, dirfd: int, path, at_flags: int, filename):
        if uapi.IORING_OP_STATX not in self._has:
            return None
        p = Ring.alloc("char[]", _encode_path(path))
        stx = Ring.alloc("struct statx *")
        try:
            # STATX: addr = path, len = mask, op_flags = AT_* flags, addr2 = statx buffer.
            await self._run(uapi.IORING_OP_STATX, dirfd, p, uapi.STATX_BASIC_STATS, 0, at_flags,
                            keep=(p, stx), addr2=stx)
        except OSError as exc:
            raise _with_filename(exc, filename) from None
        return stat_result_from_statx(stx)

    async def stat(self, path, follow_symlinks: bool = True) -> os.stat_result:
        if isinstance(path, int):
            return await self.fstat(path)
        flags = 0 if follow_symlinks else uapi.AT_SYMLINK_NOFOLLOW
        result = await self._statx(uapi.AT_FDCWD, path, flags, os.fspath(path))
        if result is None:
            return await super().stat(path, follow_symlinks)
        return result

    async def fstat(self, fd: int) -> os.stat_result:
        result = await self._statx(fd, b"", uapi.AT_EMPTY_PATH, None)
        if result is None:
            return await super().fstat(fd)
        return result

    async def rename(self, src, dst) -> None:
        if uapi.IORING_OP_RENAMEAT not in self._has:
            return await super().rename(src, dst)
        # RENAMEAT: fd = olddirfd, addr = old, len = newdirfd, addr2 = new.
        await self._path_op(uapi.IORING_OP_RENAMEAT, uapi.AT_FDCWD, src, uapi.AT_FDCWD & 0xFFFFFFFF, 0,
                            os.fspath(src), dst, os.fspath(dst))

    replace = rename   # rename(2) replaces on POSIX; os.replace is os.rename there

    async def unlink(self, path) -> None:
        if uapi.IORING_OP_UNLINKAT not in self._has:
            return await super().unlink(path)
        await self._path_op(uapi.IORING_OP_UNLINKAT, uapi.AT_FDCWD, path, 0, 0, os.fspath(path))

    async def rmdir(self, path) -> None:
        if uapi.IORING_OP_UNLINKAT not in self._has:
            return await super().rmdir(path)
        await self._path_op(uapi.IORING_OP_UNLINKAT, uapi.AT_FDCWD, path, 0, uapi.AT_REMOVEDIR, os.fspath(path))

    async def mkdir(self, path, mode: int = 0o777) -> None:
        if uapi.IORING_OP_MKDIRAT not in self._has:
            return await super().mkdir(path, mode)
        await self._path_op(uapi.IORING_OP_MKDIRAT, uapi.AT_FDCWD, path, mode, 0, os.fspath(path))

    async def link(self, src, dst, follow_symlinks: bool = True) -> None:
        if uapi.IORING_OP_LINKAT not in self._has:
            return await super().link(src, dst, follow_symlinks)
        flags = _AT_SYMLINK_FOLLOW if follow_symlinks else 0
        await self._path_op(uapi.IORING_OP_LINKAT, uapi.AT_FDCWD, src, uapi.AT_FDCWD & 0xFFFFFFFF, flags,
                            os.fspath(src), dst, os.fspath(dst))

    async def symlink(self, src, dst) -> None:
        if uapi.IORING_OP_SYMLINKAT not in self._has:
            return await super().symlink(src, dst)
        # SYMLINKAT: fd = newdirfd, addr = target, addr2 = link path.
        await self._path_op(uapi.IORING_OP_SYMLINKAT, uapi.AT_FDCWD, src, 0, 0,
                            os.fspath(src), dst, os.fspath(dst))


# linkat(2)'s flag to follow a symlink source (os.link's default); the C layer
# does not export it, and it is a stable ABI value.
_AT_SYMLINK_FOLLOW = 0x400

def _ignore_result(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()    # retrieved: no "exception was never retrieved" log


def _no_cancel() -> None:
    """A write already running in a thread cannot be taken back."""


# The primitives of a loop live on the loop (a reference cycle the garbage
# collector frees with the loop); loops that take no attributes (C loops)
# use this table, which keeps them alive: acceptable for the few of them.
_no_attr_loops: dict = {}
_ATTR = "_aiouring_file_ops"


def file_ops(loop: Optional[asyncio.AbstractEventLoop] = None) -> ThreadFileOps:
    """The primitives for ``loop`` (default: the running loop)."""
    if loop is None:
        loop = asyncio.get_running_loop()
    ops = getattr(loop, _ATTR, None) or _no_attr_loops.get(id(loop))
    if ops is None or ops._loop is not loop:
        ring = getattr(loop, "_ring", None)
        if isinstance(ring, Ring) and getattr(loop, "_ops", None) is not None:
            ops = RingFileOps(loop)
        else:
            ops = ThreadFileOps(loop)
        try:
            setattr(loop, _ATTR, ops)
        except AttributeError:
            _no_attr_loops[id(loop)] = ops
    return ops
