"""aiouring.files against the built-in ``open`` and ``os`` on the same files.

Every test runs on both loops (``loop`` fixture): on aiouring the operations
are io_uring requests, on asyncio's loop they run in threads; the built-in
file object is the oracle for contents, positions and exceptions either way.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import os
import shutil
import socket
import warnings

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import aiouring
from aiouring import files
from tests.support import loop, loop_kind, run  # noqa: F401

# More examples for a soak run: AIOURING_HYPOTHESIS_EXAMPLES=1000 pytest tests/test_files.py
HYPO = settings(max_examples=int(os.environ.get("AIOURING_HYPOTHESIS_EXAMPLES", "40")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def outcome(fn):
    """A call's result, or its exception reduced to what must match."""
    try:
        return ("ok", fn())
    except Exception as exc:
        return ("raise", type(exc), getattr(exc, "errno", None))


async def aoutcome(coro_fn):
    try:
        return ("ok", await coro_fn())
    except Exception as exc:
        return ("raise", type(exc), getattr(exc, "errno", None))


def _read_file(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ---- the loop really uses the ring -------------------------------------------------

def test_on_ring_only_on_aiouring(loop, loop_kind, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)

    async def main():
        before = loop._ring.statistics().sqes_submitted if loop_kind == "aiouring" else 0
        async with aiouring.open(path, "rb") as f:
            data = await f.read()
        after = loop._ring.statistics().sqes_submitted if loop_kind == "aiouring" else 0
        return files.on_ring(), data, after - before

    ring, data, sqes = run(loop, main())
    assert data == b"x" * 100
    assert ring == (loop_kind == "aiouring")
    if ring:
        assert sqes >= 3     # open, read, close (at least)


# ---- open: modes and errors ----------------------------------------------------------

MODES = ["r", "rb", "w", "wb", "a", "ab", "x", "xb", "r+", "rb+", "w+", "wb+", "a+", "ab+", "x+", "xb+", "rt", "br"]


@pytest.mark.parametrize("exists", [True, False])
def test_modes_match_builtin(loop, tmp_path, exists):
    async def main():
        for mode in MODES:
            mine, theirs = tmp_path / f"a{mode}", tmp_path / f"b{mode}"
            if exists:
                for p in (mine, theirs):
                    p.write_bytes(b"line one\nline two\n")
            want = outcome(lambda: open(theirs, mode))
            got = await aoutcome(lambda: aiouring.open(mine, mode))
            if want[0] == "raise":
                assert got == want, mode
                continue
            assert got[0] == "ok", (mode, got)
            bf, af = want[1], got[1]
            assert af.mode == bf.mode, mode
            assert af.name == os.fspath(mine)
            assert (af.readable(), af.writable(), af.seekable()) == (bf.readable(), bf.writable(), bf.seekable())
            text = "b" not in mode
            payload = "new ü data\n" if text else "new ü data\n".encode()
            if bf.writable():
                assert await af.write(payload) == bf.write(payload)
            assert await af.tell() == bf.tell(), mode
            if bf.readable():
                await af.seek(0)
                bf.seek(0)
                assert await af.read() == bf.read(), mode
            await af.close()
            bf.close()
            assert af.closed
            assert _read_file(mine) == _read_file(theirs), mode

    run(loop, main())


def test_open_errors_match_builtin(loop, tmp_path):
    existing = tmp_path / "exists"
    existing.write_text("hello")
    directory = tmp_path / "dir"
    directory.mkdir()
    missing = tmp_path / "missing" / "file"
    cases = [
        ((missing,), {}),
        ((directory,), {}),
        ((directory, "w"), {}),
        ((directory, "rb"), {}),
        ((existing, "x"), {}),
        ((existing, "xb"), {}),
        ((existing, "rw"), {}),
        ((existing, "rr"), {}),
        ((existing, "q"), {}),
        ((existing, "rbt"), {}),
        ((existing, "r+a"), {}),
        ((existing, "+"), {}),
        ((existing, "rb"), {"encoding": "utf-8"}),
        ((existing, "rb"), {"errors": "strict"}),
        ((existing, "rb"), {"newline": "\n"}),
        ((existing, "r"), {"buffering": 0}),
        ((existing, "r"), {"newline": "x"}),
        ((existing, "r"), {"encoding": "no-such-codec"}),
        ((existing, "r"), {"encoding": "hex"}),
        ((existing, "r"), {"closefd": False}),
        ((existing, 5), {}),
        ((3.5,), {}),
        ((str(existing) + "\0x",), {}),
    ]

    async def main():
        for args, kwargs in cases:
            want = outcome(lambda: open(*args, **kwargs))
            if want[0] == "ok":
                want[1].close()
            got = await aoutcome(lambda: aiouring.open(*args, **kwargs))
            if got[0] == "ok":
                await got[1].close()
            assert got == want, (args, kwargs)
        # The exception carries the file name, as the built-in one does.
        with pytest.raises(FileNotFoundError) as exc_info:
            await aiouring.open(missing)
        assert exc_info.value.filename == os.fspath(missing)
        with pytest.raises(IsADirectoryError) as exc_info:
            await aiouring.open(directory, "w")
        assert exc_info.value.filename == os.fspath(directory)

    run(loop, main())


def test_closed_and_wrong_mode_errors(loop, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc\n")

    async def main():
        for mode in ("rb", "r", "wb", "w"):
            bf = open(path, mode)
            af = await aiouring.open(path, mode)
            calls = [("read",), ("readline",), ("write", b"x" if "b" in mode else "x"), ("seek", 0), ("tell",),
                     ("truncate",), ("flush",)]
            for name, *args in calls:
                want = outcome(lambda: getattr(bf, name)(*args))
                got = await aoutcome(lambda: getattr(af, name)(*args))
                assert got[0] == want[0] and (got[0] == "ok" or got[1:] == want[1:]), (mode, name, got, want)
            bf.close()
            await af.close()
            await af.close()     # idempotent, as the built-in
            for name, *args in calls[:-1]:
                want = outcome(lambda: getattr(bf, name)(*args))
                got = await aoutcome(lambda: getattr(af, name)(*args))
                assert got == want, (mode, name, got, want)
            assert outcome(af.fileno) == outcome(bf.fileno)

    run(loop, main())


def test_open_fd_and_opener(loop, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")

    async def main():
        fd = os.open(path, os.O_RDONLY)
        os.lseek(fd, 4, os.SEEK_SET)
        async with aiouring.open(fd, "rb", closefd=False) as f:
            assert f.name == fd
            assert await f.read() == b"456789"
        os.fstat(fd)                       # still open: closefd=False
        os.close(fd)
        calls = []

        def opener(p, flags):
            calls.append(flags)
            return os.open(p, flags)
        async with aiouring.open(path, "rb", opener=opener) as f:
            assert await f.read() == b"0123456789"
        assert calls and calls[0] & os.O_CLOEXEC
        # Awaiting without a context manager, aiofiles style.
        f = await aiouring.open(path)
        assert await f.read() == "0123456789"
        await f.close()

    run(loop, main())


# ---- binary streams: random operation sequences against the built-in file ---------

_binary_op = st.one_of(
    st.tuples(st.just("read"), st.integers(-1, 9000)),
    st.tuples(st.just("read1"), st.integers(-1, 9000)),
    st.tuples(st.just("readline"), st.integers(-1, 100)),
    st.tuples(st.just("readinto"), st.integers(0, 5000)),
    st.tuples(st.just("write"), st.binary(max_size=6000)),
    st.tuples(st.just("writeline"), st.integers(0, 200)),
    st.tuples(st.just("seek"), st.integers(-100, 20000), st.sampled_from([0, 1, 2])),
    st.tuples(st.just("tell")),
    st.tuples(st.just("truncate"), st.one_of(st.none(), st.integers(0, 20000))),
    st.tuples(st.just("flush")),
    st.tuples(st.just("readlines")),
)


def _initial_content(seed: int) -> bytes:
    lines = [bytes([65 + (seed + i) % 26]) * ((seed * 7 + i * 13) % 300) for i in range(60)]
    return b"\n".join(lines)


async def _apply_binary(af, bf, op):
    name = op[0]
    if name == "read":
        return await aoutcome(lambda: af.read(op[1])), outcome(lambda: bf.read(op[1]))
    if name == "read1":
        # read1 may return fewer bytes than the built-in; compare what it
        # returns with the built-in's read of the same length from the same spot.
        got = await aoutcome(lambda: af.read1(op[1]))
        if got[0] == "ok" and op[1] != 0:
            want = outcome(lambda: bf.read(len(got[1])))
            assert len(got[1]) > 0 or want == ("ok", b"")
            return got, want
        # Unbuffered built-in files (FileIO) have no read1: their read is one read.
        return got, outcome(lambda: getattr(bf, "read1", bf.read)(op[1]))
    if name == "readline":
        return await aoutcome(lambda: af.readline(op[1])), outcome(lambda: bf.readline(op[1]))
    if name == "readinto":
        a, b = bytearray(op[1]), bytearray(op[1])
        got = await aoutcome(lambda: af.readinto(a))
        want = outcome(lambda: bf.readinto(b))
        return (got, bytes(a)), (want, bytes(b))
    if name == "write":
        return await aoutcome(lambda: af.write(op[1])), outcome(lambda: bf.write(op[1]))
    if name == "writeline":
        data = b"w" * op[1] + b"\n"
        return await aoutcome(lambda: af.write(data)), outcome(lambda: bf.write(data))
    if name == "seek":
        return await aoutcome(lambda: af.seek(op[1], op[2])), outcome(lambda: bf.seek(op[1], op[2]))
    if name == "tell":
        return await aoutcome(af.tell), outcome(bf.tell)
    if name == "truncate":
        return await aoutcome(lambda: af.truncate(op[1])), outcome(lambda: bf.truncate(op[1]))
    if name == "flush":
        return await aoutcome(af.flush), outcome(bf.flush)
    if name == "readlines":
        return await aoutcome(af.readlines), outcome(bf.readlines)
    raise AssertionError(name)


@HYPO
@given(mode=st.sampled_from(["rb", "rb+", "wb+", "ab+", "wb", "ab"]),
       buffering=st.sampled_from([-1, 0, 7, 64, 4096]),
       seed=st.integers(0, 1000),
       ops=st.lists(_binary_op, max_size=25))
def test_binary_ops_match_builtin(loop, tmp_path, mode, buffering, seed, ops):
    initial = _initial_content(seed)
    mine, theirs = tmp_path / f"mine{seed}", tmp_path / f"theirs{seed}"
    mine.write_bytes(initial)
    theirs.write_bytes(initial)

    async def main():
        bf = open(theirs, mode, buffering=buffering)
        af = await aiouring.open(mine, mode, buffering=buffering)
        try:
            for i, op in enumerate(ops):
                got, want = await _apply_binary(af, bf, op)
                assert got == want, (i, op, got, want)
                if mode.startswith("a") and op[0] in ("write", "writeline"):
                    # Appended bytes go to the end, but the built-in
                    # BufferedRandom keeps serving reads from its old buffer
                    # at the pre-append position until a flush or seek says
                    # where it really is (the end): flush, to compare
                    # defined behaviour only.
                    await af.flush()
                    bf.flush()
        finally:
            bf.close()
            await af.close()
        assert digest(_read_file(mine)) == digest(_read_file(theirs))

    run(loop, main())


def test_readline_readlines_iteration(loop, tmp_path):
    path = tmp_path / "lines"
    content = b"".join(b"%d " % i * (i % 50) + b"\n" for i in range(2000)) + b"no newline at end"
    path.write_bytes(content)

    async def main():
        with open(path, "rb") as bf:
            want = bf.readlines()
        async with aiouring.open(path, "rb") as f:
            assert [line async for line in f] == want
        async with aiouring.open(path, "rb") as f:
            assert await f.readlines() == want
        async with aiouring.open(path, "rb") as f:
            assert await f.readlines(5000) == open(path, "rb").readlines(5000)
        async with aiouring.open(path, "r") as f:
            assert [line async for line in f] == [line.decode() for line in want]

    run(loop, main())


# ---- text -----------------------------------------------------------------------------

TEXT_SAMPLES = [
    "plain ascii\nsecond line\n",
    "mixed\r\nendings\rhere\nand\r\r\n\n\rend",
    ("é" * 4095 + "\r") + ("\n" + "€" * 3000 + "\r\n") * 3,   # \r\n and multi-byte chars across 8 KiB chunks
    "".join(chr(0x1F600 + i % 80) + ("\n" if i % 37 == 0 else "") for i in range(9000)),
    "",
]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-8-sig", "latin-1", "utf-32-le", "shift_jis"])
@pytest.mark.parametrize("newline", [None, "", "\n", "\r", "\r\n"])
def test_text_read_matches_builtin(loop, tmp_path, encoding, newline):
    async def main():
        for n, sample in enumerate(TEXT_SAMPLES):
            path = tmp_path / f"t{n}"
            path.write_bytes(sample.encode(encoding, errors="replace"))
            with open(path, encoding=encoding, newline=newline) as bf:
                whole = bf.read()
            async with aiouring.open(path, encoding=encoding, newline=newline) as af:
                assert await af.read() == whole
                assert af.newlines == bf.newlines
            # Line by line, with tell() after every line, and seek back to
            # every told position.
            with open(path, encoding=encoding, newline=newline) as bf:
                want_lines, want_tells = [], []
                while True:
                    line = bf.readline()
                    want_lines.append(line)
                    want_tells.append(bf.tell())
                    if not line:
                        break
            async with aiouring.open(path, encoding=encoding, newline=newline) as af:
                lines, tells = [], []
                while True:
                    line = await af.readline()
                    lines.append(line)
                    tells.append(await af.tell())
                    if not line:
                        break
                assert lines == want_lines
                assert tells == want_tells
                for i in range(0, len(tells), max(1, len(tells) // 7)):
                    assert await af.seek(tells[i]) == tells[i]
                    assert await af.read() == "".join(want_lines[i + 1:])
            # Odd-sized reads.
            with open(path, encoding=encoding, newline=newline) as bf:
                async with aiouring.open(path, encoding=encoding, newline=newline) as af:
                    for size in (1, 7, 4096, 3, 8193, 0, 100000):
                        assert await af.read(size) == bf.read(size)
                        assert await af.tell() == bf.tell()
                    assert await af.readline(5) == bf.readline(5)

    run(loop, main())


@pytest.mark.parametrize("errors", ["replace", "ignore", "backslashreplace", "surrogateescape", "strict"])
def test_text_decode_errors(loop, tmp_path, errors):
    path = tmp_path / "bad"
    # Invalid bytes, and a valid 3-byte character split by the 8 KiB chunk boundary.
    path.write_bytes(b"ok\xff\xfe line\n" + b"a" * 8180 + "€".encode() + b"\xc3(\n" * 5 + b"\xe2\x82")

    async def main():
        want = outcome(lambda: open(path, encoding="utf-8", errors=errors).read())
        async with aiouring.open(path, encoding="utf-8", errors=errors) as af:
            got = await aoutcome(af.read)
        assert got == want
        if errors != "strict":
            want_lines = open(path, encoding="utf-8", errors=errors).readlines()
            async with aiouring.open(path, encoding="utf-8", errors=errors) as af:
                assert await af.readlines() == want_lines

    run(loop, main())


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-8-sig", "cp1252"])
@pytest.mark.parametrize("newline", [None, "", "\n", "\r", "\r\n"])
def test_text_write_matches_builtin(loop, tmp_path, encoding, newline):
    chunks = ["first\n", "two\r\nthree\r", "", "ünïcödé\n" * 500, "tail"]

    async def main():
        for mode in ("w", "a", "w+", "a+", "x"):
            mine, theirs = tmp_path / f"m{mode}", tmp_path / f"t{mode}"
            if mode != "x":
                for p in (mine, theirs):
                    p.write_bytes("existing\n".encode(encoding))
            with open(theirs, mode, encoding=encoding, newline=newline) as bf:
                async with aiouring.open(mine, mode, encoding=encoding, newline=newline) as af:
                    for chunk in chunks:
                        assert await af.write(chunk) == bf.write(chunk)
                        assert await af.tell() == bf.tell()
                    await af.writelines(["x\n", "y\n"])
                    bf.writelines(["x\n", "y\n"])
            assert _read_file(mine) == _read_file(theirs), mode

    run(loop, main())


def test_text_line_buffering_flushes(loop, tmp_path):
    path = tmp_path / "lb"

    async def main():
        async with aiouring.open(path, "w", buffering=1) as f:
            await f.write("no newline yet")
            assert _read_file(path) == b""
            await f.write(" now\n")
            assert _read_file(path) == b"no newline yet now\n"

    run(loop, main())


def test_text_seek_tell_errors_match_builtin(loop, tmp_path):
    path = tmp_path / "t"
    path.write_text("abc\ndef\n")

    async def main():
        bf = open(path)
        af = await aiouring.open(path)
        for args in [(1, 1), (1, 2), (0, 1), (0, 2), (-1,), (3, 0), (0, 5)]:
            assert await aoutcome(lambda: af.seek(*args)) == outcome(lambda: bf.seek(*args)), args
        bf.close()
        await af.close()

    run(loop, main())


# ---- large offsets and sparse files ---------------------------------------------------

def test_offsets_beyond_2gib_sparse(loop, tmp_path):
    path = tmp_path / "sparse"
    g = 1 << 30
    marks = [(3 * g - 5, b"across-3GiB"), (5 * g, b"at-5GiB"), (2 * g + 17, os.urandom(100000))]

    async def main():
        async with aiouring.open(path, "wb+") as f:
            for off, data in marks:
                assert await f.pwrite(data, off) == len(data)
            for off, data in marks:
                assert await f.pread(len(data), off) == data
            assert await f.seek(4 * g) == 4 * g
            assert await f.read(10) == b"\0" * 10
            await f.seek(3 * g - 5)
            assert await f.read(11) == b"across-3GiB"
            assert await f.tell() == 3 * g + 6
            end = await f.seek(0, os.SEEK_END)
            assert end == 5 * g + len(b"at-5GiB")
            await f.write(b"appended")
            await f.truncate(6 * g)
            st = await f.stat()
        assert st.st_size == os.stat(path).st_size == 6 * g
        with open(path, "rb") as bf:
            for off, data in marks:
                bf.seek(off)
                assert bf.read(len(data)) == data
            bf.seek(5 * g + 7)
            assert bf.read(8) == b"appended"

    run(loop, main())


# ---- concurrency ----------------------------------------------------------------------

def test_concurrent_reads_one_file_object(loop, tmp_path):
    path = tmp_path / "c"
    content = os.urandom(4096 * 64 + 123)
    path.write_bytes(content)

    async def main():
        async with aiouring.open(path, "rb") as f:
            parts = await asyncio.gather(*(f.read(4096) for _ in range(70)))
        # Each read got its own consecutive piece: together, the file, once.
        assert b"".join(parts) == content
        assert sorted(len(p) for p in parts).count(4096) == 64
        async with aiouring.open(path, "rb") as f:
            offsets = list(range(0, len(content), 4096))
            got = await asyncio.gather(*(f.pread(4096, off) for off in offsets))
        assert b"".join(got) == content

    run(loop, main())


def test_concurrent_writes_and_reads(loop, tmp_path):
    path = tmp_path / "w"
    blocks = [os.urandom(1000 + i) for i in range(50)]

    async def main():
        async with aiouring.open(path, "wb+", buffering=0) as f:
            await asyncio.gather(*(f.write(b) for b in blocks))
            await f.seek(0)
            data = await f.read()
        # Writes were serialized: every block whole and exactly once.
        assert len(data) == sum(map(len, blocks))
        pos = 0
        seen = set()
        by_len = {len(b): b for b in blocks}
        while pos < len(data):
            n = len(data)   # find which block starts here: lengths are unique
            for length, b in by_len.items():
                if data[pos:pos + length] == b and length not in seen:
                    n = length
                    break
            assert n in by_len, pos
            seen.add(n)
            pos += n
        assert len(seen) == len(blocks)
        # Positional writers and readers at once on one file.
        async with aiouring.open(path, "wb+") as f:
            size = 4096
            writes = [f.pwrite(bytes([i]) * size, i * size) for i in range(40)]
            await asyncio.gather(*writes)
            reads = await asyncio.gather(*(f.pread(size, i * size) for i in range(40)))
        assert reads == [bytes([i]) * size for i in range(40)]

    run(loop, main())


# ---- cancellation -------------------------------------------------------------------------

async def _cancel_soon(coro, steps: int):
    task = asyncio.ensure_future(coro)
    for _ in range(steps):
        await asyncio.sleep(0)
    task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return None


@pytest.mark.parametrize("steps", [0, 1, 2, 3])
def test_cancelled_read_keeps_position(loop, tmp_path, steps):
    path = tmp_path / "r"
    content = os.urandom(300000)
    path.write_bytes(content)

    async def main():
        for buffering in (-1, 0):
            async with aiouring.open(path, "rb", buffering=buffering) as f:
                await f.read(10)
                result = await _cancel_soon(f.read(100000), steps)
                pos = await f.tell()
                if result is None:
                    assert pos == 10       # as if the read had not been called
                else:
                    assert result == content[10:100010] and pos == 100010
                assert await f.read() == content[pos:]

    run(loop, main())


@pytest.mark.parametrize("steps", [0, 1, 2, 3])
@pytest.mark.parametrize("buffering", [-1, 0])
def test_cancelled_write_is_written_exactly_once(loop, tmp_path, steps, buffering):
    path = tmp_path / "w"
    first, second, third = os.urandom(50000), os.urandom(70000), b"tail"

    async def main():
        for mode in ("wb", "ab"):
            if path.exists():
                path.unlink()
            async with aiouring.open(path, mode, buffering=buffering) as f:
                await f.write(first)
                await _cancel_soon(f.write(second), steps)
                await f.write(third)
            data = _read_file(path)
            # The cancelled write either never happened or happened once, whole.
            assert data in (first + third, first + second + third), (mode, len(data))

    run(loop, main())


def test_cancelled_open_closes_late_fd(loop, tmp_path):
    async def main():
        for i in range(30):
            result = await _cancel_soon(aiouring.open(tmp_path / f"o{i}", "w"), i % 4)
            if result is not None:
                await result.close()
        for _ in range(5):
            await asyncio.sleep(0.01)   # let late opens land (and be closed)

    run(loop, main())   # the fixture fails the test on a leaked fd


def test_unclosed_file_warns_and_flushes(loop, tmp_path):
    path = tmp_path / "u"

    async def main():
        f = await aiouring.open(path, "wb")
        await f.write(b"buffered only")
        return f

    f = run(loop, main())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del f
        import gc
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    assert _read_file(path) == b"buffered only"


# ---- fsync, truncate, stat ----------------------------------------------------------------

def test_fsync_fdatasync_truncate_stat(loop, tmp_path):
    path = tmp_path / "s"

    async def main():
        async with aiouring.open(path, "w+b") as f:
            await f.write(b"0123456789")
            await f.fsync()
            assert _read_file(path) == b"0123456789"
            await f.write(b"abc")
            await f.fdatasync()
            assert await f.truncate(5) == 5
            assert await f.tell() == 13
            assert (await f.stat()).st_size == 5
            assert await f.truncate() == 13
        assert _read_file(path) == b"01234" + b"\0" * 8

    run(loop, main())


STAT_FIELDS = ["st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size", "st_mtime",
               "st_ctime", "st_mtime_ns", "st_ctime_ns", "st_blksize", "st_blocks", "st_rdev"]


def test_stat_matches_os(loop, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 12345)
    os.utime(path, ns=(1_600_000_000_123_456_789, 1_650_000_000_987_654_321))
    link = tmp_path / "link"
    os.symlink(path, link)

    async def main():
        for target, kwargs, oracle in [
            (path, {}, os.stat(path)),
            (link, {}, os.stat(link)),
            (link, {"follow_symlinks": False}, os.lstat(link)),
            ("/dev/null", {}, os.stat("/dev/null")),
            (str(tmp_path).encode(), {}, os.stat(tmp_path)),
        ]:
            st = await aiouring.stat(target, **kwargs)
            assert isinstance(st, os.stat_result)
            # (Following a symlink updates the link's atime: not compared.)
            for field in STAT_FIELDS + (["st_atime_ns"] if target == path else []):
                assert getattr(st, field) == getattr(oracle, field), (target, field)
            assert tuple(st)[:7] == tuple(oracle)[:7]
        assert (await aiouring.lstat(link)).st_ino == os.lstat(link).st_ino
        fd = os.open(path, os.O_RDONLY)
        try:
            assert (await aiouring.stat(fd)).st_ino == os.stat(path).st_ino
        finally:
            os.close(fd)

    run(loop, main())


def _os_error(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return type(exc), exc.errno, exc.filename, exc.filename2
    return None


async def _aio_error(fn, *args, **kwargs):
    try:
        await fn(*args, **kwargs)
    except OSError as exc:
        return type(exc), exc.errno, exc.filename, exc.filename2
    return None


def test_path_operations_match_os(loop, tmp_path):
    async def main():
        a, b = str(tmp_path / "a"), str(tmp_path / "b")
        await aiouring.mkdir(a)
        assert os.path.isdir(a)
        await aiouring.write_bytes(os.path.join(a, "f"), b"data")
        await aiouring.rename(a, b)
        assert not os.path.exists(a) and os.path.isfile(os.path.join(b, "f"))
        await aiouring.link(os.path.join(b, "f"), os.path.join(b, "hard"))
        assert os.stat(os.path.join(b, "hard")).st_nlink == 2
        await aiouring.symlink("f", os.path.join(b, "soft"))
        assert os.readlink(os.path.join(b, "soft")) == "f"
        await aiouring.write_bytes(os.path.join(b, "g"), b"new")
        await aiouring.replace(os.path.join(b, "g"), os.path.join(b, "f"))
        assert _read_file(os.path.join(b, "f")) == b"new"
        assert _read_file(os.path.join(b, "hard")) == b"data"
        for name in ("f", "soft", "hard"):
            await aiouring.unlink(os.path.join(b, name))
        await aiouring.rmdir(b)
        assert not os.path.exists(b)
        await aiouring.mkdir(a, 0o700)
        assert os.stat(a).st_mode & 0o777 == 0o700 & ~_umask()

        # The errors os raises, with the same errno and file names.
        os.makedirs(os.path.join(a, "sub"))
        open(os.path.join(a, "file"), "w").close()
        missing = os.path.join(a, "missing")
        cases = [
            ("stat", (missing,)), ("stat", (os.path.join(a, "file", "x"),)),
            ("rename", (missing, b)), ("replace", (missing, b)),
            ("unlink", (missing,)), ("unlink", (a,)), ("remove", (missing,)),
            ("rmdir", (a,)), ("rmdir", (missing,)), ("rmdir", (os.path.join(a, "file"),)),
            ("mkdir", (a,)), ("mkdir", (os.path.join(missing, "x"),)),
            ("link", (missing, b)), ("link", (os.path.join(a, "file"), os.path.join(a, "sub"))),
            ("symlink", ("x", os.path.join(a, "file"))),
        ]
        for name, args in cases:
            want = _os_error(getattr(os, name), *args)
            got = await _aio_error(getattr(aiouring, name), *args)
            assert want is not None and got == want, (name, args, got, want)
        for bad in ("x\0y", b"x\0y"):
            with pytest.raises(ValueError):
                await aiouring.stat(bad)
            with pytest.raises(ValueError):
                await aiouring.unlink(bad)

    run(loop, main())


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


# ---- whole-file helpers ---------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 4095, 65536, (1 << 20) + 1, (5 << 20) + 3])
def test_read_write_bytes(loop, tmp_path, size):
    path = tmp_path / "whole"
    data = os.urandom(size)

    async def main():
        assert await aiouring.write_bytes(path, data) == size
        assert digest(_read_file(path)) == digest(data)
        assert digest(await aiouring.read_bytes(path)) == digest(data)
        # Shorter data replaces, never leaves a tail behind.
        assert await aiouring.write_bytes(path, bytearray(b"short")) == 5
        assert await aiouring.read_bytes(path) == b"short"

    run(loop, main())


def test_read_bytes_special_files(loop):
    async def main():
        proc = await aiouring.read_bytes("/proc/self/status")   # st_size 0, content non-empty
        assert proc.startswith(b"Name:")
        assert await aiouring.read_bytes("/dev/null") == b""

    run(loop, main())


@pytest.mark.parametrize("encoding,errors,newline", [
    (None, None, None), ("utf-16", None, None), ("ascii", "replace", None), ("utf-8", None, ""),
    ("utf-8", None, "\r\n"), ("latin-1", "strict", "\r"),
])
def test_read_write_text_match_pathlib(loop, tmp_path, encoding, errors, newline):
    text = "a\nb\r\nc\rd ü € \U0001F600\n" * 1000

    async def main():
        mine, theirs = tmp_path / "m", tmp_path / "t"
        want = outcome(lambda: theirs.write_text(text, encoding=encoding, errors=errors, newline=newline))
        got = await aoutcome(lambda: aiouring.write_text(mine, text, encoding=encoding, errors=errors,
                                                         newline=newline))
        assert got[0] == want[0]
        if want[0] == "raise":
            assert got[1:] == want[1:]
            return
        assert _read_file(mine) == _read_file(theirs)
        for nl in (None, "", "\n"):
            want_text = open(theirs, encoding=encoding, errors=errors, newline=nl).read()
            assert await aiouring.read_text(mine, encoding=encoding, errors=errors, newline=nl) == want_text

    run(loop, main())


@pytest.mark.parametrize("size", [0, 100, (3 << 20) + 7])
def test_copyfile(loop, tmp_path, size):
    src, dst = tmp_path / "src", tmp_path / "dst"
    data = os.urandom(size)
    src.write_bytes(data)
    dst.write_bytes(b"old content that must go" * 100000)

    async def main():
        assert await aiouring.copyfile(src, dst) == size
        assert digest(_read_file(dst)) == digest(data)

    run(loop, main())


def test_sendfile_to_socket(loop, tmp_path):
    path = tmp_path / "payload"
    data = os.urandom((4 << 20) + 11)
    path.write_bytes(data)

    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        with a, b:
            async def receive(n):
                chunks, got = [], 0
                while got < n:
                    chunk = await loop.sock_recv(b, 1 << 20)
                    assert chunk
                    chunks.append(chunk)
                    got += len(chunk)
                return b"".join(chunks)
            sent, received = await asyncio.gather(aiouring.sendfile(a, path), receive(len(data)))
            assert sent == len(data)
            assert digest(received) == digest(data)
            sent, received = await asyncio.gather(aiouring.sendfile(a, path, offset=1000, count=5000),
                                                  receive(5000))
            assert sent == 5000 and received == data[1000:6000]

    run(loop, main())


def test_public_names():
    for name in ("open", "stat", "lstat", "rename", "replace", "unlink", "remove", "mkdir", "rmdir", "link",
                 "symlink", "read_bytes", "read_text", "write_bytes", "write_text", "copyfile", "sendfile",
                 "BinaryFile", "TextFile"):
        assert name in aiouring.__all__ and getattr(aiouring, name) is getattr(files, name)
    with pytest.raises(TypeError):
        files.BinaryFile()
    with pytest.raises(TypeError):
        files.TextFile()


# ---- files that cannot seek -------------------------------------------------------------

@pytest.mark.parametrize("buffering", [-1, 0])
def test_pipe_streams(loop, tmp_path, buffering):
    payload = b"".join(b"line %d\n" % i for i in range(20000))

    async def main():
        r, w = os.pipe()
        writer = asyncio.ensure_future(loop.run_in_executor(None, _write_and_close, w, payload))
        async with aiouring.open(r, "rb", buffering=buffering) as f:
            assert not f.seekable()
            with open(os.dup(r), "rb", buffering=buffering) as bf:
                for call, args in (("tell", ()), ("seek", (0,)), ("seek", (5, 1)), ("seek", (0, 2))):
                    want = outcome(lambda: getattr(bf, call)(*args))
                    assert await aoutcome(lambda: getattr(f, call)(*args)) == want, call
                    assert want[0] == "raise"
            first = await f.readline()
            second = await f.read(5)
            rest = await f.read()
        await writer
        assert first + second + rest == payload
        assert first == b"line 0\n"
        # Writing into a pipe, text mode, read back by a thread.
        r, w = os.pipe()
        reader = loop.run_in_executor(None, _read_all_and_close, r)
        async with aiouring.open(w, "w", buffering=1 if buffering else -1) as f:
            for i in range(3000):
                await f.write(f"ü{i}\n")
            with pytest.raises(io.UnsupportedOperation):
                await f.tell()
        assert await reader == "".join(f"ü{i}\n" for i in range(3000)).encode()

    run(loop, main())


def _write_and_close(fd: int, data: bytes) -> None:
    with open(fd, "wb") as f:
        f.write(data)


def _read_all_and_close(fd: int) -> bytes:
    with open(fd, "rb") as f:
        return f.read()


# ---- text streams: random operation sequences against the built-in file -------------

_text_op = st.one_of(
    st.tuples(st.just("read"), st.integers(-1, 9000)),
    st.tuples(st.just("readline"), st.integers(-1, 50)),
    st.tuples(st.just("write"), st.text(alphabet="ab\n\r€😀é", max_size=3000)),
    st.tuples(st.just("tell")),
    st.tuples(st.just("seek_told"), st.integers(0, 50)),
    st.tuples(st.just("seek_end")),
    st.tuples(st.just("flush")),
)


@HYPO
@given(mode=st.sampled_from(["r", "r+", "w+", "a+"]),
       encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]),
       newline=st.sampled_from([None, "", "\r\n"]),
       seed=st.integers(0, 1000),
       ops=st.lists(_text_op, max_size=20))
def test_text_ops_match_builtin(loop, tmp_path, mode, encoding, newline, seed, ops):
    initial = "".join(f"line {i} {'é€' * (i % 7)}{chr(10) if i % 3 else chr(13) + chr(10)}"
                      for i in range(seed % 900)).encode(encoding, errors="replace")
    mine, theirs = tmp_path / f"m{seed}", tmp_path / f"t{seed}"
    mine.write_bytes(initial)
    theirs.write_bytes(initial)

    async def main():
        kw = dict(encoding=encoding, newline=newline, errors="replace")
        bf = open(theirs, mode, **kw)
        af = await aiouring.open(mine, mode, **kw)
        told = [0]
        try:
            for i, op in enumerate(ops):
                name = op[0]
                if name == "write" and encoding == "latin-1":
                    op = ("write", op[1].encode("latin-1", "replace").decode("latin-1"))
                if name == "seek_told":
                    cookie = told[op[1] % len(told)]
                    got, want = await aoutcome(lambda: af.seek(cookie)), outcome(lambda: bf.seek(cookie))
                elif name == "seek_end":
                    got, want = await aoutcome(lambda: af.seek(0, 2)), outcome(lambda: bf.seek(0, 2))
                elif name in ("tell", "flush"):
                    got, want = await aoutcome(getattr(af, name)), outcome(getattr(bf, name))
                    if name == "tell" and want[0] == "ok":
                        told.append(want[1])
                else:
                    got = await aoutcome(lambda: getattr(af, name)(*op[1:]))
                    want = outcome(lambda: getattr(bf, name)(*op[1:]))
                    if name == "write":
                        # CPython's C BufferedRandom.read1 reads past bytes
                        # still in its write buffer, and writes them later at
                        # the wrong offset (_pyio and aiouring read after them,
                        # at the right one). Flushing makes both well defined.
                        await af.flush()
                        bf.flush()
                assert got == want, (i, op, got, want)
        finally:
            bf.close()
            await af.close()
        assert digest(_read_file(mine)) == digest(_read_file(theirs))

    run(loop, main())


def test_registered_buffers_read_fixed(tmp_path):
    """Ring.register_buffers + READ_FIXED (used by bench/files_bench.py to
    measure whether registered buffers pay off for file reads)."""
    from aiouring.ring import Ring, uapi
    path = tmp_path / "fixed"
    data = os.urandom(3 * 4096)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    ring = Ring(8)
    try:
        if not ring.supports(uapi.IORING_OP_READ_FIXED):
            pytest.skip("no READ_FIXED on this kernel")
        region = bytearray(2 * 4096)
        ring.register_buffers([region])
        base = Ring.pointer(region, writable=True)
        ring.prep(uapi.IORING_OP_READ_FIXED, fd, base, 4096, 4096, 0, 1, buf_index=0)
        ring.prep(uapi.IORING_OP_READ_FIXED, fd, base + 4096, 4096, 8192, 0, 2, buf_index=0)
        cqes = []
        while len(cqes) < 6:
            cqes += ring.submit_and_reap(1.0)
        assert sorted(zip(cqes[0::3], cqes[1::3])) == [(1, 4096), (2, 4096)]
        assert bytes(region) == data[4096:]
        # Outside the registered region: the kernel refuses (EFAULT).
        outside = Ring.alloc("char[]", 4096)
        ring.prep(uapi.IORING_OP_READ_FIXED, fd, outside, 4096, 0, 0, 3, buf_index=0)
        cqe = ring.submit_and_reap(1.0)
        assert cqe[0] == 3 and cqe[1] < 0
        ring.unregister_buffers()
    finally:
        ring.close()
        os.close(fd)


def test_peek_and_path_predicates(loop, tmp_path):
    path = tmp_path / "p"
    path.write_bytes(b"0123456789" * 1000)
    os.symlink(tmp_path / "nowhere", tmp_path / "broken")

    async def main():
        with open(path, "rb") as bf:
            async with aiouring.open(path, "rb") as af:
                await af.read(3)
                bf.read(3)
                peeked = await af.peek()
                assert peeked and bf.peek().startswith(peeked[:1]) and peeked[:7] == b"3456789"
                assert await af.read(4) == bf.read(4)      # peek consumed nothing
        for p in (path, tmp_path, tmp_path / "missing", tmp_path / "broken", "x\0y"):
            assert await files.exists(p) == os.path.exists(p)
            assert await files.isfile(p) == os.path.isfile(p)
            assert await files.isdir(p) == os.path.isdir(p)
        assert await files.getsize(path) == os.path.getsize(path)

    run(loop, main())


@pytest.mark.parametrize("steps", [0, 1, 2])
def test_cancelled_pwrite_then_close(loop, tmp_path, steps):
    path = tmp_path / "pw"
    data = os.urandom(1 << 20)

    async def main():
        async with aiouring.open(path, "wb") as f:
            await f.pwrite(b"x", 0)
            await _cancel_soon(f.pwrite(data, 4096), steps)
        content = _read_file(path)
        # Closing waited for the write: it is either all there or not at all.
        assert content in (b"x", b"x" + b"\0" * 4095 + data)

    run(loop, main())


@pytest.mark.parametrize("steps", [0, 1, 2, 3, 5, 8])
def test_cancelled_text_read_loses_nothing(loop, tmp_path, steps):
    path = tmp_path / "t"
    text = "".join(f"{i} ünï€ {'x' * (i % 97)}\r\n" for i in range(3000))
    path.write_text(text, encoding="utf-8", newline="")

    async def main():
        expected = open(path, encoding="utf-8").read()
        async with aiouring.open(path, encoding="utf-8") as f:
            first = await f.read(10)
            got = await _cancel_soon(f.read(50000), steps)
            got2 = await _cancel_soon(f.readline(), steps)
            rest = await f.read()
            assert first + (got or "") + (got2 or "") + rest == expected

    run(loop, main())


def test_concurrent_text_readers_share_lines(loop, tmp_path):
    path = tmp_path / "lines"
    lines = [f"line {i} é\n" for i in range(5000)]
    path.write_text("".join(lines), encoding="utf-8")

    async def main():
        async with aiouring.open(path, encoding="utf-8") as f:
            async def reader():
                got = []
                while True:
                    line = await f.readline()
                    if not line:
                        return got
                    got.append(line)
            parts = await asyncio.gather(*(reader() for _ in range(8)))
        # Every line exactly once, each reader's lines in file order.
        assert sorted(sum(parts, []), key=lambda s: int(s.split()[1])) == lines
        for part in parts:
            assert part == sorted(part, key=lambda s: int(s.split()[1]))

    run(loop, main())


def test_kernel_without_file_opcodes_falls_back_to_threads(tmp_path):
    """On a ring whose probe lacks an opcode, that one operation runs in a
    thread; results are the same (the probe answer is narrowed, nothing else)."""
    from aiouring import _files_backend
    lp = aiouring.Loop()
    try:
        ops = _files_backend.file_ops(lp)
        assert ops.on_ring
        ops._has = frozenset({aiouring.ring.uapi.IORING_OP_READ})   # only READ "exists"
        path = tmp_path / "f"

        async def main():
            assert lp._default_executor is None
            async with aiouring.open(path, "w+b") as f:
                await f.write(b"hello world")
                await f.flush()
                await f.truncate(5)
                await f.seek(0)
                assert await f.read() == b"hello"
                assert (await f.stat()).st_size == 5
            await aiouring.mkdir(tmp_path / "d")
            await aiouring.rename(path, tmp_path / "d" / "g")
            await aiouring.symlink("g", tmp_path / "d" / "s")
            await aiouring.link(tmp_path / "d" / "g", tmp_path / "d" / "h")
            assert (await aiouring.stat(tmp_path / "d" / "s")).st_nlink == 2
            for name in ("g", "s", "h"):
                await aiouring.unlink(tmp_path / "d" / name)
            await aiouring.rmdir(tmp_path / "d")
            with pytest.raises(FileNotFoundError):
                await aiouring.stat(tmp_path / "d")

        lp.run_until_complete(main())
        assert lp._default_executor is not None     # the missing opcodes ran in threads
        assert not os.path.exists(tmp_path / "d")
    finally:
        lp.close()


def test_odd_paths(loop, tmp_path):
    names = ["ünïcödé €.txt", "with space", "x" * 255, "\udcff-undecodable"]

    async def main():
        for name in names:
            path = os.path.join(str(tmp_path), name)
            await aiouring.write_bytes(path, name.encode("utf-8", "surrogateescape"))
            async with aiouring.open(os.fsencode(path), "rb") as f:     # a bytes path
                assert await f.read() == name.encode("utf-8", "surrogateescape")
            assert (await aiouring.stat(os.fsencode(path))).st_size == os.stat(path).st_size
        too_long = os.path.join(str(tmp_path), "y" * 256)
        want = _os_error(os.stat, too_long)
        assert await _aio_error(aiouring.stat, too_long) == want
        assert want[0] is OSError and want[1] == errno.ENAMETOOLONG
        with pytest.raises(OSError) as exc_info:
            await aiouring.open(too_long, "w")
        assert exc_info.value.errno == errno.ENAMETOOLONG

    run(loop, main())


def test_copyfile_same_file_and_errors(loop, tmp_path):
    src = tmp_path / "s"
    src.write_bytes(b"precious")
    os.link(src, tmp_path / "hard")

    async def main():
        for dst in (src, tmp_path / "hard"):
            with pytest.raises(shutil.SameFileError):
                await aiouring.copyfile(src, dst)
        assert src.read_bytes() == b"precious"
        with pytest.raises(FileNotFoundError):
            await aiouring.copyfile(tmp_path / "missing", tmp_path / "x")
        assert not (tmp_path / "x").exists()
        with pytest.raises(IsADirectoryError):
            await aiouring.copyfile(src, tmp_path)

    run(loop, main())


@pytest.mark.parametrize("newline", [None, "", "\n", "\r", "\r\n"])
def test_line_endings_and_characters_split_at_chunk_boundaries(loop, tmp_path, newline):
    """\\r\\n pairs and multi-byte characters that straddle the 8 KiB chunk
    boundary (and the 4 KiB buffer boundary), every alignment around it."""
    async def main():
        for k in range(8185, 8194):
            for middle in ("\r\n", "€\r\n", "\r€\n", "\r", "é\r"):
                text = "a" * k + middle + "b" * 10 + "\r\n" + "c€" * 3000 + "\r"
                path = tmp_path / "edge"
                path.write_bytes(text.encode("utf-8"))
                with open(path, encoding="utf-8", newline=newline) as bf:
                    want_lines, want_tells = [], []
                    for line in iter(bf.readline, ""):
                        want_lines.append(line)
                        want_tells.append(bf.tell())
                async with aiouring.open(path, encoding="utf-8", newline=newline) as af:
                    lines, tells = [], []
                    while line := await af.readline():
                        lines.append(line)
                        tells.append(await af.tell())
                assert (lines, tells) == (want_lines, want_tells), (k, middle)

    run(loop, main())


def test_file_api_does_not_keep_loops_alive(tmp_path):
    import gc
    import weakref
    path = tmp_path / "f"
    refs = []
    for make in (aiouring.Loop, asyncio.new_event_loop):
        lp = make()

        async def main():
            await aiouring.write_bytes(path, b"x")
            return await aiouring.read_bytes(path)
        assert lp.run_until_complete(main()) == b"x"
        # Let the executor's threads finish (they hold callbacks into the loop).
        lp.run_until_complete(lp.shutdown_default_executor())
        lp.close()
        refs.append(weakref.ref(lp))
        del lp
    for _ in range(3):
        gc.collect()
    assert [r() for r in refs] == [None, None]


def test_file_object_moves_between_loops(tmp_path):
    """Opened on one loop, used on others (aiouring's and asyncio's), as
    aiofiles objects can be: each operation runs on the loop running it."""
    path = tmp_path / "m"
    path.write_bytes(b"0123456789" * 1000)
    loops = [aiouring.Loop(), asyncio.new_event_loop(), aiouring.Loop()]
    try:
        f = loops[0].run_until_complete(aiouring.open(path, "r+b"))
        assert loops[1].run_until_complete(f.read(5)) == b"01234"
        loops[2].run_until_complete(f.write(b"abc"))
        assert loops[0].run_until_complete(f.read(2)) == b"89"
        assert loops[1].run_until_complete(f.pread(10, 0)) == b"01234abc89"
        loops[2].run_until_complete(f.close())
        assert f.closed
    finally:
        for lp in loops:
            lp.close()
