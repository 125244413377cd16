"""Read-ahead in buffered binary files: sequential large reads start the
next read before it is asked for. Invisible by design, so each test compares
with the built-in ``open`` (or the file's bytes) and also checks, on
aiouring's loop, that a read-ahead really was in flight when the interesting
thing happened. On asyncio's loop (threads) there is no read-ahead; the same
tests check that the behaviour is the same there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random

import pytest
from hypothesis import given, strategies as st

import aiouring
from aiouring import _files_backend, _files_binary
from tests.support import loop, loop_kind, run  # noqa: F401
from tests.test_files import HYPO, _apply_binary, _binary_op, _cancel_soon, _read_file, aoutcome, digest, outcome

MiB = 1 << 20
CHUNK = 256 * 1024          # at least _AHEAD_MIN: reads of this size are read ahead


def _ahead(f) -> list:
    """(offset, size) of the read-aheads a file object holds."""
    return [(a.offset, a.size) for a in f._ahead]


def _expect_ahead(f, loop_kind: str, offset: int, size: int = CHUNK) -> None:
    if loop_kind == "aiouring":
        assert _ahead(f)[:1] == [(offset, size)], _ahead(f)
    else:
        assert _ahead(f) == []


@contextlib.contextmanager
def _ahead_min(n: int):
    """Read ahead from reads of ``n`` bytes on (tests with small files)."""
    old = _files_binary._AHEAD_MIN
    _files_binary._AHEAD_MIN = n
    try:
        yield
    finally:
        _files_binary._AHEAD_MIN = old


def test_sequential_reads_are_the_file(loop, loop_kind, tmp_path):
    path = tmp_path / "seq"
    content = os.urandom(5 * MiB + 12345)
    path.write_bytes(content)

    async def main():
        for size in (CHUNK, MiB, 3 * CHUNK + 7):
            async with aiouring.open(path, "rb") as f:
                got = []
                while True:
                    data = await f.read(size)
                    got.append(data)
                    assert await f.tell() == sum(map(len, got))
                    if len(got) == 2:
                        _expect_ahead(f, loop_kind, 2 * size, size)
                    if not data:
                        break
                assert b"".join(got) == content
                assert [len(g) for g in got[:-2]] == [size] * (len(got) - 2)
                assert await f.read(size) == b"" and await f.read() == b""
                assert await f.tell() == len(content)

    run(loop, main())


def test_what_starts_read_ahead(loop, loop_kind, tmp_path):
    """A read at offset 0, or one where the last one ended; not a single
    read elsewhere, nor reads smaller than _AHEAD_MIN or larger than
    _AHEAD_MAX, nor reads smaller than the buffer."""
    path = tmp_path / "s"
    content = os.urandom(8 * MiB)
    path.write_bytes(content)
    on_ring = loop_kind == "aiouring"

    async def main():
        async with aiouring.open(path, "rb") as f:
            assert await f.read(CHUNK) == content[:CHUNK]
            assert bool(_ahead(f)) == on_ring
            await f.seek(3 * CHUNK)
            assert await f.read(CHUNK) == content[3 * CHUNK:4 * CHUNK]
            assert _ahead(f) == []
            assert await f.read(CHUNK) == content[4 * CHUNK:5 * CHUNK]
            assert bool(_ahead(f)) == on_ring
            await f.seek(0)
            assert await f.read(_files_binary._AHEAD_MIN - 1) == content[:_files_binary._AHEAD_MIN - 1]
            assert _ahead(f) == []
            await f.seek(0)
            big = _files_binary._AHEAD_MAX * 2
            assert await f.read(big) == content[:big]
            assert await f.read(big) == content[big:2 * big]
            assert _ahead(f) == []
        async with aiouring.open(path, "rb", buffering=2 * CHUNK) as f:
            assert await f.read(CHUNK) == content[:CHUNK]
            assert await f.read(CHUNK) == content[CHUNK:2 * CHUNK]
            assert await f.read(CHUNK) == content[2 * CHUNK:3 * CHUNK]
            assert _ahead(f) == []

    run(loop, main())


def test_mixed_sizes_and_small_reads_in_between(loop, tmp_path):
    path = tmp_path / "mixed"
    content = os.urandom(4 * MiB)
    path.write_bytes(content)
    sizes = [CHUNK, CHUNK, CHUNK, 100, CHUNK, CHUNK, MiB, MiB, 5000, 1, CHUNK, -1]

    async def main():
        with open(path, "rb") as bf:
            async with aiouring.open(path, "rb") as af:
                for size in sizes:
                    assert await af.read(size) == bf.read(size), size
                    assert await af.tell() == bf.tell()

    run(loop, main())


async def _two_reads(f, content, at=0):
    """Two sequential chunk reads from ``at``: a read-ahead is now in flight."""
    await f.seek(at)
    assert await f.read(CHUNK) == content[at:at + CHUNK]
    assert await f.read(CHUNK) == content[at + CHUNK:at + 2 * CHUNK]


@pytest.mark.parametrize("what", ["seek_back", "seek_forward", "seek_same", "seek_end", "write", "write_elsewhere",
                                  "pwrite", "pwrite_elsewhere", "truncate", "truncate_grow", "read1", "peek",
                                  "readline", "readinto", "small_read", "other_size", "pread"])
def test_read_ahead_then(loop, loop_kind, tmp_path, what):
    """After two sequential reads (a read-ahead of the third chunk in flight),
    every other operation, then more reads: the same as the built-in file."""
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    content = os.urandom(2 * MiB)
    mine.write_bytes(content)
    theirs.write_bytes(content)
    patch = b"P" * 5000

    async def both(af, bf):
        p = 2 * CHUNK     # the position, and the read-ahead's offset
        if what == "seek_back":
            return await af.seek(CHUNK), bf.seek(CHUNK)
        if what == "seek_forward":
            return await af.seek(5 * CHUNK + 3), bf.seek(5 * CHUNK + 3)
        if what == "seek_same":
            return await af.seek(p), bf.seek(p)
        if what == "seek_end":
            return await af.seek(-CHUNK, os.SEEK_END), bf.seek(-CHUNK, os.SEEK_END)
        if what == "write":       # overwrites what the read-ahead read
            return await af.write(patch), bf.write(patch)
        if what == "write_elsewhere":
            got = (await af.seek(0), await af.write(patch), await af.seek(p))
            return got, (bf.seek(0), bf.write(patch), bf.seek(p))
        if what == "pwrite":
            bf.flush()
            return await af.pwrite(patch, p + 100), os.pwrite(bf.fileno(), patch, p + 100)
        if what == "pwrite_elsewhere":
            bf.flush()
            return await af.pwrite(patch, 0), os.pwrite(bf.fileno(), patch, 0)
        if what == "truncate":
            return await af.truncate(p + 1000), bf.truncate(p + 1000)
        if what == "truncate_grow":
            return await af.truncate(3 * MiB), bf.truncate(3 * MiB)
        if what == "read1":
            return await af.read1(1000), bf.read1(1000)
        if what == "peek":
            return (await af.peek(10))[:10], bf.peek(10)[:10]
        if what == "readline":
            return await af.readline(), bf.readline()
        if what == "readinto":
            a, b = bytearray(CHUNK), bytearray(CHUNK)
            return (await af.readinto(a), bytes(a)), (bf.readinto(b), bytes(b))
        if what == "small_read":
            return await af.read(10), bf.read(10)
        if what == "other_size":
            return await af.read(CHUNK + 1), bf.read(CHUNK + 1)
        if what == "pread":
            return await af.pread(10, p), os.pread(bf.fileno(), 10, p)
        raise AssertionError(what)

    async def main():
        with open(theirs, "rb+") as bf:
            async with aiouring.open(mine, "rb+") as af:
                await _two_reads(af, content)
                bf.seek(2 * CHUNK)
                _expect_ahead(af, loop_kind, 2 * CHUNK)
                got, want = await both(af, bf)
                assert got == want
                for size in (CHUNK, CHUNK, 1000, CHUNK, CHUNK, -1):
                    assert await af.tell() == bf.tell()
                    assert await af.read(size) == bf.read(size), size
                bf.flush()
        assert digest(_read_file(mine)) == digest(_read_file(theirs))

    run(loop, main())


@pytest.mark.parametrize("wait", [False, True])
def test_close_with_read_ahead_in_flight(loop, loop_kind, tmp_path, wait):
    """The fixture fails the test on a leaked fd, an operation left on the
    ring, or a logged "exception was never retrieved"."""
    path = tmp_path / "c"
    content = os.urandom(2 * MiB)
    path.write_bytes(content)

    async def main():
        for i in range(20):
            f = await aiouring.open(path, "rb")
            await _two_reads(f, content, at=(i % 4) * CHUNK)
            if wait:
                await asyncio.sleep(0.002)   # the read-ahead has (probably) completed
            await f.close()
            assert f.closed and _ahead(f) == [] and not f._ahead_live
            with pytest.raises(ValueError):
                await f.read(CHUNK)

    run(loop, main())


def test_close_waits_for_read_ahead_before_closing_fd(loop, loop_kind, tmp_path):
    """The fd number must not be reused while a read-ahead may still use it:
    a read-ahead that started late would read from whatever was opened next
    under that number (a pipe would lose data)."""
    path = tmp_path / "c"
    content = os.urandom(2 * MiB)
    path.write_bytes(content)

    async def main():
        for _ in range(20):
            f = await aiouring.open(path, "rb")
            await _two_reads(f, content)
            ops = f._io
            live = list(f._ahead)
            await f.close()
            if loop_kind == "aiouring":
                # Every read-ahead op is off the ring before close returns.
                assert live and not f._ahead_live
                assert all(a.fut.done() for a in live)
                assert not [h for h in loop._ops.handlers.values() if isinstance(h, _files_backend._AheadOp)]
            del ops

    run(loop, main())


@pytest.mark.parametrize("tail", [0, 1000, CHUNK - 1])
@pytest.mark.parametrize("settle", [False, True])
def test_file_grows_after_read_ahead_at_eof(loop, loop_kind, tmp_path, tail, settle):
    """A read-ahead that found EOF (empty or short) is not trusted later: the
    file may have grown by then."""
    path = tmp_path / "g"
    content = os.urandom(3 * CHUNK + tail)
    path.write_bytes(content)
    more = os.urandom(2 * CHUNK)

    async def main():
        with open(path, "rb") as bf:
            async with aiouring.open(path, "rb") as af:
                for _ in range(3):
                    assert await af.read(CHUNK) == bf.read(CHUNK)
                _expect_ahead(af, loop_kind, 3 * CHUNK)     # it reads `tail` bytes or nothing
                if settle:
                    await asyncio.sleep(0.01)
                if not tail:
                    # EOF now, as the built-in file says.
                    assert await af.read(CHUNK) == bf.read(CHUNK) == b""
                with open(path, "ab") as other:
                    other.write(more)
                for size in (CHUNK, CHUNK, CHUNK, CHUNK):
                    assert await af.read(size) == bf.read(size)
                    assert await af.tell() == bf.tell()
        assert _read_file(path) == content + more

    run(loop, main())


@pytest.mark.parametrize("steps", [0, 1, 2, 3, 5])
def test_cancelled_read_while_reading_ahead(loop, loop_kind, tmp_path, steps):
    path = tmp_path / "x"
    content = os.urandom(3 * MiB)
    path.write_bytes(content)

    async def main():
        for round_ in range(8):
            async with aiouring.open(path, "rb") as f:
                await _two_reads(f, content)
                pos = 2 * CHUNK
                if round_ % 2:
                    await asyncio.sleep(0.002)   # the read-ahead has (probably) completed
                result = await _cancel_soon(f.read(CHUNK), steps)
                if result is None:
                    assert await f.tell() == pos      # as if the read had not been called
                else:
                    assert result == content[pos:pos + CHUNK]
                    pos += CHUNK
                    assert await f.tell() == pos
                while pos < len(content):
                    data = await f.read(CHUNK)
                    assert data == content[pos:pos + CHUNK]
                    pos += len(data)
                assert await f.read(CHUNK) == b""

    run(loop, main())


def test_failed_read_ahead_is_not_an_error(loop, loop_kind, tmp_path, monkeypatch):
    """A read-ahead that fails (here: EBADF, sent to a bad fd) raises nothing:
    the read that wanted its data reads again, and would raise what that
    read says. Its error is retrieved (the fixture checks for the log)."""
    path = tmp_path / "e"
    content = os.urandom(2 * MiB)
    path.write_bytes(content)
    started = []
    original = _files_backend.RingFileOps.start_read_ahead

    def broken(self, fd, n, offset, retired):
        started.append(offset)
        return original(self, 1 << 20, n, offset, retired)
    monkeypatch.setattr(_files_backend.RingFileOps, "start_read_ahead", broken)

    async def main():
        async with aiouring.open(path, "rb") as f:
            got = []
            while data := await f.read(CHUNK):
                got.append(data)
            assert b"".join(got) == content
            f2 = await aiouring.open(path, "rb")
            await _two_reads(f2, content)
            await f2.close()      # a failed read-ahead nobody asked for
        assert bool(started) == (loop_kind == "aiouring")

    run(loop, main())


def test_concurrent_readers_share_one_file_object(loop, tmp_path):
    path = tmp_path / "cc"
    content = os.urandom(4 * MiB)
    path.write_bytes(content)

    async def main():
        async with aiouring.open(path, "rb") as f:
            await _two_reads(f, content)
            parts = await asyncio.gather(*(f.read(CHUNK) for _ in range(16)))
        assert b"".join(parts) == content[2 * CHUNK:]

    run(loop, main())


def test_file_moves_between_loops_with_read_ahead(tmp_path):
    path = tmp_path / "m"
    content = os.urandom(2 * MiB)
    path.write_bytes(content)
    loops = [aiouring.Loop(), asyncio.new_event_loop(), aiouring.Loop()]
    try:
        f = loops[0].run_until_complete(aiouring.open(path, "rb"))
        loops[0].run_until_complete(_two_reads(f, content))
        assert _ahead(f)
        # Another loop's read does not touch loop 0's future: it reads anew.
        assert loops[1].run_until_complete(f.read(CHUNK)) == content[2 * CHUNK:3 * CHUNK]
        assert loops[2].run_until_complete(f.read(CHUNK)) == content[3 * CHUNK:4 * CHUNK]
        assert loops[2].run_until_complete(f.read(CHUNK)) == content[4 * CHUNK:5 * CHUNK]
        assert loops[0].run_until_complete(f.read(CHUNK)) == content[5 * CHUNK:6 * CHUNK]
        loops[0].run_until_complete(f.close())
    finally:
        for lp in loops:
            lp.close()
        for lp in loops[::2]:
            assert len(lp._ops) == 0


# ---- random operation sequences with read-ahead from small reads on ------------------

def _with_grow(path):
    return open(path, "ab", buffering=0)


_ahead_size = st.sampled_from([7, 64, 100, 512, 4096, 4096, 8192])
_ahead_op = st.one_of(
    _binary_op,
    st.tuples(st.just("read"), _ahead_size),
    st.tuples(st.just("reads"), _ahead_size, st.integers(2, 8)),    # twice: runs of reads are the point
    st.tuples(st.just("reads"), _ahead_size, st.integers(2, 8)),
    st.tuples(st.just("seek"), st.integers(0, 20000), st.just(0)),
    st.tuples(st.just("pwrite"), st.binary(min_size=1, max_size=300), st.integers(0, 20000)),
    st.tuples(st.just("grow"), st.binary(min_size=1, max_size=3000)),
    st.tuples(st.just("settle")),
)


async def _apply_ahead(af, bf, op, mine, theirs):
    """One operation on both files: (got, want), or None for steps that
    have nothing to compare."""
    name = op[0]
    if name == "reads":
        got = [await aoutcome(lambda: af.read(op[1])) for _ in range(op[2])]
        return got, [outcome(lambda: bf.read(op[1])) for _ in range(op[2])]
    if name == "pwrite":
        if not bf.writable():
            return None
        bf.flush()
        got = await aoutcome(lambda: af.pwrite(op[1], op[2]))
        want = outcome(lambda: os.pwrite(bf.fileno(), op[1], op[2]))
        bf.seek(bf.tell())    # the built-in's read buffer may be stale: drop it, as pwrite does
        return got, want
    if name == "grow":
        # Appended through another fd; flushed first so the files agree on
        # where the end is.
        await af.flush()
        bf.flush()
        for p in (mine, theirs):
            with _with_grow(p) as g:
                g.write(op[1])
        bf.seek(bf.tell())    # drop the built-in's read buffer (it may end at the old EOF)
        return None
    if name == "settle":
        await asyncio.sleep(0.001)    # read-aheads complete: their futures are done when taken
        return None
    return await _apply_binary(af, bf, op)


def _check_ops(loop, tmp_path, mode, buffering, ahead_min, seed, ops):
    from tests.test_files import _initial_content
    initial = _initial_content(seed)
    mine, theirs = tmp_path / f"mine{seed}", tmp_path / f"theirs{seed}"
    mine.write_bytes(initial)
    theirs.write_bytes(initial)

    async def main():
        bf = open(theirs, mode, buffering=buffering)
        af = await aiouring.open(mine, mode, buffering=buffering)
        try:
            for i, op in enumerate(ops):
                result = await _apply_ahead(af, bf, op, mine, theirs)
                if result is not None:
                    got, want = result
                    assert got == want, (i, op, got, want)
                if mode.startswith("a") and op[0] in ("write", "writeline"):
                    await af.flush()
                    bf.flush()
        finally:
            bf.close()
            await af.close()
        assert digest(_read_file(mine)) == digest(_read_file(theirs))

    with _ahead_min(ahead_min):
        run(loop, main())


@HYPO
@given(mode=st.sampled_from(["rb", "rb+", "wb+", "ab+"]),
       buffering=st.sampled_from([-1, 7, 64, 512, 4096]),
       ahead_min=st.sampled_from([1, 1, 64, 4096]),
       seed=st.integers(0, 1000),
       ops=st.lists(_ahead_op, max_size=30))
def test_ops_with_read_ahead_match_builtin(loop, tmp_path, mode, buffering, ahead_min, seed, ops):
    """The op-sequence property of test_files, with read-ahead switched on for
    small reads so that it happens in files of a few KiB, plus runs of
    sequential reads, positional writes and growth through another fd."""
    _check_ops(loop, tmp_path, mode, buffering, ahead_min, seed, ops)


def _random_ops(rng: random.Random) -> list:
    """Mostly runs of equal reads (what starts and uses read-ahead), with the
    operations that must drop it in between."""
    size = rng.choice([7, 64, 100, 512, 4096])
    ops: list = []
    for _ in range(rng.randint(5, 25)):
        r = rng.random()
        if r < 0.45:
            ops.append(("reads", size if rng.random() < 0.8 else rng.choice([64, 512, 4096]), rng.randint(2, 10)))
        elif r < 0.55:
            ops.append(("settle",))
        elif r < 0.65:
            ops.append(("seek", rng.randrange(0, 20000), 0))
        elif r < 0.72:
            ops.append(("write", rng.randbytes(rng.randint(1, 600))))
        elif r < 0.79:
            ops.append(("pwrite", rng.randbytes(rng.randint(1, 300)), rng.randrange(0, 20000)))
        elif r < 0.85:
            ops.append(("grow", rng.randbytes(rng.randint(1, 3000))))
        elif r < 0.90:
            ops.append(("truncate", rng.randrange(0, 20000)))
        else:
            ops.append(rng.choice([("read1", 100), ("readline", -1), ("readinto", 700), ("tell",), ("flush",),
                                   ("read", -1)]))
    return ops


@pytest.mark.parametrize("seed", range(30))
def test_random_runs_of_reads_match_builtin(loop, tmp_path, seed):
    """Seeded sequences that, unlike hypothesis' first examples, always
    start and use read-aheads (in files of a few KiB, from reads of 7 bytes
    up), and drop them in every way."""
    rng = random.Random(seed)
    for k in range(6):
        mode = rng.choice(["rb", "rb+", "wb+", "ab+"])
        buffering = rng.choice([-1, 7, 64, 512])
        (tmp_path / f"{k}").mkdir()
        _check_ops(loop, tmp_path / f"{k}", mode, buffering, 1, seed * 10 + k, _random_ops(rng))


@pytest.mark.parametrize("size", [1000, 5000])
def test_growth_without_seek_small_read_ahead(loop, tmp_path, size):
    """Growth through another fd with nothing in between (no seek): the
    built-in file reads what was appended; so must we, whatever our
    read-ahead found at the old end."""
    path = tmp_path / "gg"
    content = os.urandom(3 * size)
    path.write_bytes(content)

    async def main():
        with _ahead_min(1):
            with open(path, "rb") as bf:
                async with aiouring.open(path, "rb", buffering=size) as af:
                    for _ in range(4):
                        assert await af.read(size) == bf.read(size)
                    for n in (1, 10, size, 3 * size):
                        with open(path, "ab") as other:
                            other.write(os.urandom(n))
                        await asyncio.sleep(0.001)
                        for _ in range(3):
                            assert await af.read(size) == bf.read(size)
                            assert await af.tell() == bf.tell()

    run(loop, main())
