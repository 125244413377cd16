"""Asynchronous file I/O on the ring: the built-in ``open`` and ``os`` path
functions, awaitable.

::

    async with aiouring.open("data.txt", encoding="utf-8") as f:
        async for line in f:
            ...
    data = await aiouring.read_bytes("blob.bin")
    st = await aiouring.stat("blob.bin")

The API has the shape of aiofiles (``aiofiles.open`` -> ``aiouring.open``,
``aiofiles.os.stat`` -> ``aiouring.stat``, ...), and the semantics of the
built-in ``open``: the same modes (``r w x a``, ``b t``, ``+``), buffering,
encodings, error handlers, newline translation, positions and exceptions.

Which loop
----------
On an aiouring loop every operation is an io_uring request: opens, reads and
writes at explicit offsets, fsync, statx, close, and the path operations
(rename, unlink, mkdir, rmdir, link, symlink) where the kernel has their opcode
(``Ring.supports``); the few it lacks run in the loop's default executor.
On any other asyncio loop the same API works with every primitive in the
loop's default executor (as aiofiles does), so code and tests run unchanged
everywhere; only the speed differs. ``files.on_ring()`` says which is in use.
A file object is not tied to the loop that opened it: each operation runs on
the loop running it (aiouring's ring, or another loop's threads).

Not on the ring, on purpose: ``os.fstat`` when opening (the directory check
and block size of the built-in ``open``, and the size hint for whole-file
reads) and ``os.lseek`` (the start position at open, and ``seek`` relative to
the end or to data/holes): both only consult the open file's in-memory inode
and never wait for a disk. A custom ``opener`` is called synchronously, as the
built-in ``open`` calls it.

Differences from the built-in file, all deliberate: methods are coroutines;
``pread``/``pwrite``/``fsync``/``fdatasync``/``stat`` are extra; iteration is
``async for``. Two corners where CPython's C classes are inconsistent follow
``_pyio`` instead: in text mode a read right after a write (no flush or seek)
reads what follows the written text (the C ``TextIOWrapper`` reads past text
it has not flushed yet, then writes that text at the wrong offset), and in
``a+`` mode a read right after an append reads from the end (the C
``BufferedRandom`` keeps serving its old read buffer). Files that cannot seek (pipes, FIFOs, ttys) read and write at
the fd's own position.

Positions and cancellation
--------------------------
Streams track their position themselves and read and write at explicit
offsets (``pread``/``pwrite`` semantics); the kernel's file position of the fd
is not kept in step, so don't mix ``fileno()`` reads with the stream. A
cancelled read (binary or text) leaves the stream unchanged, as if it had not
been called; a cancelled write is either not done at all (cancelled while
waiting for its turn) or done exactly once, whole: bytes it had buffered stay
buffered and reach the file (see :mod:`aiouring._files_binary`); a cancelled
``pwrite`` may or may not have written, and ``close()`` waits for it; a
cancelled open that still produced an fd closes it; a cancelled close still
closes. Operations of several tasks on one stream run one at a time, in order.

Read-ahead
----------
On an aiouring loop, a buffered binary file read in order in pieces of
128 KiB to 2 MiB reads the next few pieces ahead, in kernel worker threads,
while the caller works on the current one (see :mod:`aiouring._files_binary`).
It changes no result: EOF, a file that grew, and errors are seen as without
it, and writes through the same file object invalidate it. Like the built-in
file's read buffer, data read ahead is a snapshot, only larger: 3 to 8 pieces
beyond the position (1 to 6 MiB). A write to that range through another fd or
process after it was read ahead is not seen until the file object drops its
read-ahead (on a seek elsewhere, a write, a read of another size).
"""

from __future__ import annotations

import asyncio
import collections
import io
import os
import shutil
import socket
import stat as _stat
import warnings
from typing import Any, Callable, Generator, Generic, Literal, Optional, TypeVar, Union, overload

from ._files_backend import file_ops
from ._files_binary import BinaryFile
from ._files_text import TextFile, check_text_encoding, resolve_encoding

__all__ = [
    "open", "BinaryFile", "TextFile", "on_ring",
    "stat", "lstat", "exists", "isfile", "isdir", "getsize",
    "rename", "replace", "unlink", "remove", "mkdir", "rmdir", "link", "symlink",
    "read_bytes", "read_text", "write_bytes", "write_text", "copyfile", "sendfile",
]

StrPath = Union[str, "os.PathLike[str]"]
BytesPath = Union[bytes, "os.PathLike[bytes]"]
FileDescriptorOrPath = Union[int, StrPath, BytesPath]
AnyPath = Union[StrPath, BytesPath]

# The modes, as typeshed spells them for builtins.open, so that mypy picks the
# file type from the mode as it does for the built-in.
_TextMode = Literal[
    "r+", "+r", "rt+", "r+t", "+rt", "tr+", "t+r", "+tr", "w+", "+w", "wt+", "w+t", "+wt", "tw+", "t+w", "+tw",
    "a+", "+a", "at+", "a+t", "+at", "ta+", "t+a", "+ta", "x+", "+x", "xt+", "x+t", "+xt", "tx+", "t+x", "+tx",
    "w", "wt", "tw", "a", "at", "ta", "x", "xt", "tx", "r", "rt", "tr",
]
_BinaryMode = Literal[
    "rb+", "r+b", "+rb", "br+", "b+r", "+br", "wb+", "w+b", "+wb", "bw+", "b+w", "+bw",
    "ab+", "a+b", "+ab", "ba+", "b+a", "+ba", "xb+", "x+b", "+xb", "bx+", "b+x", "+bx",
    "rb", "br", "wb", "bw", "ab", "ba", "xb", "bx",
]
_Opener = Callable[[str, int], int]
_F = TypeVar("_F", TextFile, BinaryFile)

# Whole-file helpers split big files into pieces of this size and keep up to
# _WINDOW of them in flight: 1 MiB pieces amortize the per-request cost, and
# 8 in flight keep the device (or io-wq, for uncached data) busy without
# holding more than 8 MiB of buffers per copy.
_PIECE = 1024 * 1024
_WINDOW = 8


def on_ring(loop: Optional[asyncio.AbstractEventLoop] = None) -> bool:
    """True when file operations on ``loop`` (default: the running loop) go
    through its io_uring, False when they run in threads."""
    return file_ops(loop).on_ring


# ---- open -------------------------------------------------------------------

def _parse_mode(mode, buffering, encoding, errors, newline):
    if not isinstance(mode, str):
        raise TypeError(f"open() argument 'mode' must be str, not {type(mode).__name__}")
    if not isinstance(buffering, int):
        raise TypeError(f"'{type(buffering).__name__}' object cannot be interpreted as an integer")
    if encoding is not None and not isinstance(encoding, str):
        raise TypeError(f"open() argument 'encoding' must be str or None, not {type(encoding).__name__}")
    if errors is not None and not isinstance(errors, str):
        raise TypeError(f"open() argument 'errors' must be str or None, not {type(errors).__name__}")
    if newline is not None and not isinstance(newline, str):
        raise TypeError(f"open() argument 'newline' must be str or None, not {type(newline).__name__}")
    modes = set(mode)
    if modes - set("axrwb+t") or len(mode) > len(modes):
        raise ValueError(f"invalid mode: '{mode}'")
    creating, reading, writing, appending = "x" in modes, "r" in modes, "w" in modes, "a" in modes
    updating, text, binary = "+" in modes, "t" in modes, "b" in modes
    if text and binary:
        raise ValueError("can't have text and binary mode at once")
    if creating + reading + writing + appending > 1:
        raise ValueError("must have exactly one of create/read/write/append mode")
    if not (creating or reading or writing or appending):
        raise ValueError("Must have exactly one of create/read/write/append mode and at most one plus")
    if binary and encoding is not None:
        raise ValueError("binary mode doesn't take an encoding argument")
    if binary and errors is not None:
        raise ValueError("binary mode doesn't take an errors argument")
    if binary and newline is not None:
        raise ValueError("binary mode doesn't take a newline argument")
    if newline not in (None, "", "\n", "\r", "\r\n"):
        raise ValueError(f"illegal newline value: {newline}")
    if binary and buffering == 1:
        warnings.warn("line buffering (buffering=1) isn't supported in binary mode, "
                      "the default buffer size will be used", RuntimeWarning, 3)
    if buffering == 0 and not binary:
        raise ValueError("can't have unbuffered text I/O")
    flags = os.O_CLOEXEC
    if creating:
        flags |= os.O_EXCL | os.O_CREAT
        raw_mode = "xb"
    elif reading:
        raw_mode = "rb"
    elif writing:
        flags |= os.O_CREAT | os.O_TRUNC
        raw_mode = "wb"
    else:
        flags |= os.O_APPEND | os.O_CREAT
        raw_mode = "ab"
    if updating:
        flags |= os.O_RDWR
        raw_mode = ("rb" if writing else raw_mode) + "+"   # FileIO calls "w+" "rb+"
    elif reading:
        flags |= os.O_RDONLY
    else:
        flags |= os.O_WRONLY
    return flags, raw_mode, binary, reading or updating, not reading or updating, appending


async def _open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None,
                closefd=True, opener=None):
    if not isinstance(file, int):
        file = os.fspath(file)
    if not isinstance(file, (str, bytes, int)):
        raise TypeError(f"invalid file: {file!r}")
    flags, raw_mode, binary, readable, writable, appending = _parse_mode(mode, buffering, encoding, errors, newline)
    if not binary:
        encoding = resolve_encoding(encoding)
        check_text_encoding(encoding)
        if errors is None:
            errors = "strict"
    ops = file_ops()
    if isinstance(file, int):
        if file < 0:
            raise ValueError("negative file descriptor")
        fd = file
    else:
        if not closefd:
            raise ValueError("Cannot use closefd=False with file name")
        if opener is None:
            fd = await ops.open(file, flags, 0o666)
        else:
            fd = opener(file, flags)
            if not isinstance(fd, int):
                raise TypeError("expected integer from opener")
            if fd < 0:
                raise ValueError(f"opener returned {fd}")
    try:
        st = os.fstat(fd)
        if _stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, os.strerror(21), file)
        line_buffering = not binary and (buffering == 1 or buffering < 0 and os.isatty(fd))
        if buffering < 0 or buffering == 1:
            # The built-in open's choice: the file system's block size.
            buffer_size = st.st_blksize if st.st_blksize > 1 else io.DEFAULT_BUFFER_SIZE
        else:
            buffer_size = buffering
        bfile = BinaryFile._create(fd, file, raw_mode if binary else mode, readable=readable,
                                   writable=writable, appending=appending, closefd=closefd,
                                   buffer_size=buffer_size)
    except BaseException:
        if closefd:
            os.close(fd)
        raise
    if binary:
        return bfile
    return TextFile._create(bfile, encoding, errors, newline, line_buffering, mode)


class _Opening(Generic[_F]):
    """What :func:`open` returns: await it for the file, or use it as an async
    context manager that closes the file on exit (as aiofiles' open). The
    opening starts when it is awaited, so an unawaited (or cancelled before
    starting) open leaves nothing behind."""

    __slots__ = ("_args", "_file")

    def __init__(self, args: tuple) -> None:
        self._args = args
        self._file: Optional[_F] = None

    def __await__(self) -> Generator[Any, None, _F]:
        return _open(*self._args).__await__()

    async def __aenter__(self) -> _F:
        self._file = await _open(*self._args)
        return self._file

    async def __aexit__(self, *exc: object) -> None:
        if self._file is not None:
            await self._file.close()


@overload
def open(file: FileDescriptorOrPath, mode: _TextMode = "r", buffering: int = -1, encoding: Optional[str] = None,
         errors: Optional[str] = None, newline: Optional[str] = None, closefd: bool = True,
         opener: Optional[_Opener] = None) -> _Opening[TextFile]: ...
@overload
def open(file: FileDescriptorOrPath, mode: _BinaryMode, buffering: int = -1, encoding: None = None,
         errors: None = None, newline: None = None, closefd: bool = True,
         opener: Optional[_Opener] = None) -> _Opening[BinaryFile]: ...
@overload
def open(file: FileDescriptorOrPath, mode: str, buffering: int = -1, encoding: Optional[str] = None,
         errors: Optional[str] = None, newline: Optional[str] = None, closefd: bool = True,
         opener: Optional[_Opener] = None) -> _Opening[Any]: ...


def open(file: FileDescriptorOrPath, mode: str = "r", buffering: int = -1, encoding: Optional[str] = None,
         errors: Optional[str] = None, newline: Optional[str] = None, closefd: bool = True,
         opener: Optional[_Opener] = None) -> _Opening[Any]:
    """Open a file, as the built-in ``open`` does, and return an awaitable
    async context manager for the :class:`TextFile` or :class:`BinaryFile`."""
    return _Opening((file, mode, buffering, encoding, errors, newline, closefd, opener))


# ---- path operations ----------------------------------------------------------

async def stat(path: Union[int, AnyPath], *, follow_symlinks: bool = True) -> os.stat_result:
    """``os.stat`` (statx on the ring). ``path`` may be an fd."""
    if not isinstance(path, int):
        path = os.fspath(path)
    return await file_ops().stat(path, follow_symlinks)


async def lstat(path: AnyPath) -> os.stat_result:
    return await stat(path, follow_symlinks=False)


async def exists(path: Union[int, AnyPath]) -> bool:
    """``os.path.exists``: False for a missing path or a broken link."""
    try:
        await stat(path)
    except (OSError, ValueError):
        return False
    return True


async def isfile(path: Union[int, AnyPath]) -> bool:
    try:
        return _stat.S_ISREG((await stat(path)).st_mode)
    except (OSError, ValueError):
        return False


async def isdir(path: Union[int, AnyPath]) -> bool:
    try:
        return _stat.S_ISDIR((await stat(path)).st_mode)
    except (OSError, ValueError):
        return False


async def getsize(path: Union[int, AnyPath]) -> int:
    return (await stat(path)).st_size


async def rename(src: AnyPath, dst: AnyPath) -> None:
    await file_ops().rename(os.fspath(src), os.fspath(dst))


async def replace(src: AnyPath, dst: AnyPath) -> None:
    await file_ops().replace(os.fspath(src), os.fspath(dst))


async def unlink(path: AnyPath) -> None:
    await file_ops().unlink(os.fspath(path))


remove = unlink


async def mkdir(path: AnyPath, mode: int = 0o777) -> None:
    await file_ops().mkdir(os.fspath(path), mode)


async def rmdir(path: AnyPath) -> None:
    await file_ops().rmdir(os.fspath(path))


async def link(src: AnyPath, dst: AnyPath, *, follow_symlinks: bool = True) -> None:
    await file_ops().link(os.fspath(src), os.fspath(dst), follow_symlinks)


async def symlink(src: AnyPath, dst: AnyPath) -> None:
    await file_ops().symlink(os.fspath(src), os.fspath(dst))


# ---- whole files ----------------------------------------------------------------

async def _read_range(ops, fd: int, start: int, length: int) -> list:
    """Read ``length`` bytes from ``start`` in pieces with up to _WINDOW in
    flight; a short piece (the file shrank) ends the range there."""
    pieces: list = []
    pending: collections.deque = collections.deque()
    off, end = start, start + length
    try:
        while off < end or pending:
            while off < end and len(pending) < _WINDOW:
                n = min(_PIECE, end - off)
                fut, cancel = ops.start_read(fd, n, off)
                pending.append((fut, cancel, n))
                off += n
            data = await pending[0][0]
            n = pending.popleft()[2]
            pieces.append(data)
            if len(data) < n:
                break
    finally:
        for _fut, cancel, _n in pending:
            cancel()    # reads have no side effects: nothing to wait for
    return pieces


async def read_bytes(path: AnyPath) -> bytes:
    """The whole file, as ``Path.read_bytes``: big files are read with several
    reads in flight."""
    ops = file_ops()
    if isinstance(path, int):
        raise TypeError("read_bytes() needs a path, not a file descriptor")
    path = os.fspath(path)
    fd = await ops.open(path, os.O_RDONLY | os.O_CLOEXEC, 0)
    try:
        st = os.fstat(fd)
        if _stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, os.strerror(21), path)
        size = st.st_size
        if size == 0 or not _stat.S_ISREG(st.st_mode):
            return await _read_to_eof(ops, fd, 0)     # no trustworthy size
        # Everything stat promised plus a probe past it, in one submission. A
        # regular file reads short only at its end, so a short read is EOF.
        pieces = await _read_range(ops, fd, 0, size + 1)
        got = sum(map(len, pieces))
        if got > size:    # the file grew meanwhile
            pieces.append(await _read_to_eof(ops, fd, got))
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)
    finally:
        # Read-only: closing can't fail in a way that matters, so the close
        # goes with the next submission instead of costing a round trip.
        ops.close_nowait(fd)


async def _read_to_eof(ops, fd: int, offset: int) -> bytes:
    pieces = []
    n = 64 * 1024
    while True:
        data = await ops.read(fd, n, offset)
        if not data:
            return b"".join(pieces)
        pieces.append(data)
        offset += len(data)
        n = _PIECE


async def read_text(path: AnyPath, encoding: Optional[str] = None, errors: Optional[str] = None,
                    newline: Optional[str] = None) -> str:
    """The whole file decoded, as ``open(path, encoding=..., errors=...,
    newline=...).read()``."""
    data = await read_bytes(path)
    encoding = resolve_encoding(encoding)
    with io.TextIOWrapper(io.BytesIO(data), encoding=encoding, errors=errors, newline=newline) as wrapper:
        return wrapper.read()


async def write_bytes(path: AnyPath, data: Any) -> int:
    """Replace the file's contents with ``data``; big data is written with
    several writes in flight."""
    view = memoryview(data).cast("B")
    total = view.nbytes
    async with open(path, "wb", buffering=0) as f:
        await _write_range(f._io, f.fileno(), bytes(view), 0)
    return total


async def _write_range(ops, fd: int, data: bytes, start: int) -> None:
    view = memoryview(data)

    async def write_piece(off: int) -> None:
        end = min(off + _PIECE, len(data))
        while off < end:
            n = await ops.write(fd, bytes(view[off:end]) if (off, end) != (0, len(data)) else data, start + off)
            if n == 0:
                raise OSError(28, os.strerror(28))
            off += n

    offsets = list(range(0, len(data), _PIECE))
    for i in range(0, len(offsets), _WINDOW):
        tasks = [asyncio.ensure_future(write_piece(off)) for off in offsets[i:i + _WINDOW]]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def write_text(path: AnyPath, data: str, encoding: Optional[str] = None, errors: Optional[str] = None,
                     newline: Optional[str] = None) -> int:
    """Replace the file's contents with ``data`` encoded as the built-in text
    file would write it; returns ``len(data)``."""
    if not isinstance(data, str):
        raise TypeError(f"data must be str, not {type(data).__name__}")
    encoding = resolve_encoding(encoding)
    buf = io.BytesIO()
    with io.TextIOWrapper(buf, encoding=encoding, errors=errors, newline=newline) as wrapper:
        wrapper.write(data)
        wrapper.flush()
        raw = buf.getvalue()
    await write_bytes(path, raw)
    return len(data)


async def copyfile(src: AnyPath, dst: AnyPath) -> int:
    """Copy ``src``'s contents to ``dst`` (created or truncated), as
    ``shutil.copyfile`` (``SameFileError`` when they are one file), in windows
    of several reads and then several writes in flight; returns the number of
    bytes copied."""
    async with open(src, "rb", buffering=0) as fin:
        src_st = os.fstat(fin.fileno())
        try:
            dst_st = await stat(dst)
        except (OSError, ValueError):
            pass
        else:
            if (dst_st.st_dev, dst_st.st_ino) == (src_st.st_dev, src_st.st_ino):
                raise shutil.SameFileError(f"{src!r} and {dst!r} are the same file")
        async with open(dst, "wb", buffering=0) as fout:
            ops = fin._io
            sfd, dfd = fin.fileno(), fout.fileno()
            offset = 0
            while True:
                # At most one window in memory, whatever the file's size.
                length = _WINDOW * _PIECE
                pieces = await _read_range(ops, sfd, offset, length)
                got = sum(map(len, pieces))
                if got:
                    await _write_range(ops, dfd, b"".join(pieces), offset)
                offset += got
                if got < length:
                    return offset


async def sendfile(sock: socket.socket, path: AnyPath, *, offset: int = 0, count: Optional[int] = None) -> int:
    """Send a file's contents over a connected non-blocking socket, reading
    the next piece while the previous one is being sent; returns bytes sent."""
    loop = asyncio.get_running_loop()
    async with open(path, "rb", buffering=0) as f:
        ops = f._io
        fd = f.fileno()
        end = None if count is None else offset + count
        sent = 0

        def next_read(off):
            n = _PIECE if end is None else min(_PIECE, end - off)
            return asyncio.ensure_future(ops.read(fd, n, off)) if n > 0 else None

        ahead = next_read(offset)
        try:
            while ahead is not None:
                data = await ahead
                ahead = None
                if not data:
                    break
                offset += len(data)
                ahead = next_read(offset)
                await loop.sock_sendall(sock, data)
                sent += len(data)
        finally:
            if ahead is not None:
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)
        return sent
