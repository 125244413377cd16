"""File I/O benchmark: aiouring's files on the ring against aiofiles,
``asyncio.to_thread`` and (for large sequential reads) a synchronous loop.

Workloads, all on files already in the page cache (read once before timing):

* ``random4k``   random 4 KiB reads of a 64 MiB file (``--random-reads`` per run)
* ``seq1m``      1 MiB reads of the whole 64 MiB file, in order (4 passes per run)
* ``small``      many small files (1-16 KiB) read whole (``--small-files``)

each at 1 and 64 concurrent tasks. Every run of every contender is measured
``--reps`` times, interleaved (A B C A B C ...) so that machine noise hits
all alike; the table shows medians and the ratio to aiofiles (and to the
synchronous loop for seq1m). ``fixed4k``/``fixed1024k`` measure registered
buffers on a bare ring (see :func:`fixed_buffers_probe`); their ratio column is
relative to a plain ``READ`` into the same memory. aiofiles and to_thread run on asyncio's own
loop (where aiofiles users are), aiouring on aiouring's loop.

    .venv/bin/python bench/files_bench.py [--reps 7] [--json out.json]

Not a test: nothing here asserts, it reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiofiles  # noqa: E402

import aiouring  # noqa: E402

MiB = 1 << 20
BIG_SIZE = 64 * MiB
SEQ_PASSES = 4


# ---- workloads: each returns an async function run(concurrency) ------------------

def _random_offsets(n: int, seed: int) -> list:
    rng = random.Random(seed)
    return [rng.randrange(0, BIG_SIZE // 4096) * 4096 for _ in range(n)]


async def _split(concurrency: int, items: list, worker) -> None:
    shares = [items[i::concurrency] for i in range(concurrency)]
    await asyncio.gather(*(worker(share) for share in shares if share))


def random4k(kind: str, big: str, n: int):
    offsets = _random_offsets(n, 42)

    async def run(concurrency: int) -> int:
        if kind == "aiouring-pread":
            async with aiouring.open(big, "rb", buffering=0) as f:
                async def worker(share):
                    for off in share:
                        await f.pread(4096, off)
                await _split(concurrency, offsets, worker)
        elif kind == "aiouring":
            async def worker(share):
                async with aiouring.open(big, "rb") as f:
                    for off in share:
                        await f.seek(off)
                        await f.read(4096)
            await _split(concurrency, offsets, worker)
        elif kind == "aiofiles":
            async def worker(share):
                async with aiofiles.open(big, "rb") as f:
                    for off in share:
                        await f.seek(off)
                        await f.read(4096)
            await _split(concurrency, offsets, worker)
        elif kind == "to_thread":
            async def worker(share):
                with open(big, "rb") as f:
                    def read_at(off):
                        f.seek(off)
                        return f.read(4096)
                    for off in share:
                        await asyncio.to_thread(read_at, off)
            await _split(concurrency, offsets, worker)
        else:
            raise ValueError(kind)
        return len(offsets)
    return run


def seq1m(kind: str, big: str):
    # The file's 1 MiB chunks, SEQ_PASSES times; each task reads a contiguous
    # range of them in order.
    chunks = BIG_SIZE // MiB

    def ranges(concurrency):
        total = chunks * SEQ_PASSES
        per = total // concurrency
        return [(i * per, per) for i in range(concurrency)]

    async def run(concurrency: int) -> int:
        async def worker(first, count):
            if kind == "aiouring":
                async with aiouring.open(big, "rb") as f:
                    await f.seek((first % chunks) * MiB)
                    for i in range(first, first + count):
                        if i % chunks == 0:
                            await f.seek(0)
                        await f.read(MiB)
            elif kind == "aiofiles":
                async with aiofiles.open(big, "rb") as f:
                    await f.seek((first % chunks) * MiB)
                    for i in range(first, first + count):
                        if i % chunks == 0:
                            await f.seek(0)
                        await f.read(MiB)
            elif kind == "to_thread":
                with open(big, "rb") as f:
                    f.seek((first % chunks) * MiB)
                    for i in range(first, first + count):
                        if i % chunks == 0:
                            f.seek(0)
                        await asyncio.to_thread(f.read, MiB)
            elif kind == "sync":
                with open(big, "rb") as f:
                    f.seek((first % chunks) * MiB)
                    for i in range(first, first + count):
                        if i % chunks == 0:
                            f.seek(0)
                        f.read(MiB)
            else:
                raise ValueError(kind)
        await asyncio.gather(*(worker(first, count) for first, count in ranges(concurrency)))
        return chunks * SEQ_PASSES
    return run


def small(kind: str, paths: list):
    async def run(concurrency: int) -> int:
        async def worker(share):
            for p in share:
                if kind == "aiouring":
                    await aiouring.read_bytes(p)
                elif kind == "aiofiles":
                    async with aiofiles.open(p, "rb") as f:
                        await f.read()
                elif kind == "to_thread":
                    def read_whole(p=p):
                        with open(p, "rb") as f:
                            return f.read()
                    await asyncio.to_thread(read_whole)
                else:
                    raise ValueError(kind)
        await _split(concurrency, paths, worker)
        return len(paths)
    return run


# ---- registered buffers: the kernel-side difference, on a bare ring ----------------

def fixed_buffers_probe(big: str, reads: int, size: int, reps: int) -> list:
    """Time ``reads`` reads of ``size`` bytes at random offsets on a bare
    Ring (no event loop), 64 per io_uring_enter, four ways:

    * ``READ`` into a reused buffer,
    * ``READ_FIXED`` into the same memory, registered,
    * ``READ_FIXED`` plus copying the data out into ``bytes`` (what an API
      returning bytes must do with a registered buffer),
    * ``READ`` into a fresh ``bytes`` per read (what aiouring.files does for
      reads of 16 KiB and more),
    * ``READ`` into a fresh cffi buffer, then copied into ``bytes`` (what it
      does for smaller reads).
    """
    from aiouring._files_backend import _fresh_bytes
    from aiouring.ring import Ring, uapi

    batch = 64
    rng = random.Random(3)
    offsets = [rng.randrange(0, (BIG_SIZE - size) // 4096) * 4096 for _ in range(reads)]
    fd = os.open(big, os.O_RDONLY)
    ring = Ring(256)
    try:
        region = bytearray(batch * size)
        ring.register_buffers([region])
        base = Ring.pointer(region, writable=True)

        def run(way):
            t0 = time.perf_counter()
            for start in range(0, reads, batch):
                chunk = offsets[start:start + batch]
                keep = []
                for i, off in enumerate(chunk):
                    if way == "fresh_bytes":
                        buf = _fresh_bytes(size)
                        ptr = Ring.pointer(buf)
                        keep.append(buf)
                        ring.prep(uapi.IORING_OP_READ, fd, ptr, size, off, 0, i + 1)
                    elif way == "alloc+copy":
                        cbuf = Ring.alloc("char[]", size)
                        keep.append(cbuf)
                        ring.prep(uapi.IORING_OP_READ, fd, cbuf, size, off, 0, i + 1)
                    elif way == "read":
                        ring.prep(uapi.IORING_OP_READ, fd, base + i * size, size, off, 0, i + 1)
                    else:
                        ring.prep(uapi.IORING_OP_READ_FIXED, fd, base + i * size, size, off, 0, i + 1,
                                  buf_index=0)
                done = 0
                while done < len(chunk):
                    cqes = ring.submit_and_reap(None)
                    for j in range(1, len(cqes), 3):
                        assert cqes[j] == size, cqes[j]
                    done += len(cqes) // 3
                if way == "fixed+copy":
                    keep = [bytes(region[i * size:(i + 1) * size]) for i in range(len(chunk))]
                elif way == "alloc+copy":
                    keep = [Ring.unpack(cbuf, size) for cbuf in keep]
            return time.perf_counter() - t0

        ways = ["read", "fixed", "fixed+copy", "fresh_bytes", "alloc+copy"]
        times: dict = {w: [] for w in ways}
        for rep in range(reps + 1):
            for w in ways:
                dt = run(w)
                if rep:
                    times[w].append(dt)
        ring.unregister_buffers()
    finally:
        ring.close()
        os.close(fd)
    return [{"workload": f"fixed{size // 1024}k", "concurrency": batch, "contender": w,
             "median_s": statistics.median(times[w]), "unit": "reads", "count": reads,
             "rate": reads / statistics.median(times[w]), "all_s": times[w]} for w in ways]


# ---- driver -------------------------------------------------------------------------

def _make_files(root: str, small_count: int):
    big = os.path.join(root, "big.bin")
    with open(big, "wb") as f:
        for _ in range(BIG_SIZE // MiB):
            f.write(os.urandom(MiB))
    rng = random.Random(7)
    paths = []
    for i in range(small_count):
        p = os.path.join(root, f"small{i:05d}")
        with open(p, "wb") as f:
            f.write(os.urandom(rng.randint(1024, 16 * 1024)))
        paths.append(p)
    # Into the page cache before anything is timed.
    for p in [big] + paths:
        with open(p, "rb") as f:
            while f.read(MiB):
                pass
    return big, paths


def _loop_for(kind: str):
    return aiouring.Loop() if kind.startswith("aiouring") else asyncio.new_event_loop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--random-reads", type=int, default=4000)
    ap.add_argument("--small-files", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--only", choices=["random4k", "seq1m", "small", "fixed"], nargs="+")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory(prefix="aiouring-files-bench-") as root:
        big, paths = _make_files(root, args.small_files)
        workloads = {
            "random4k": ("reads", {k: random4k(k, big, args.random_reads)
                                   for k in ("aiouring-pread", "aiouring", "aiofiles", "to_thread")}),
            "seq1m": ("MiB", {k: seq1m(k, big) for k in ("aiouring", "aiofiles", "to_thread", "sync")}),
            "small": ("files", {k: small(k, paths) for k in ("aiouring", "aiofiles", "to_thread")}),
        }
        loops = {}
        try:
            for name, (unit, contenders) in workloads.items():
                if args.only and name not in args.only:
                    continue
                for conc in args.concurrency:
                    kinds = [k for k in contenders if not (k == "sync" and conc != 1)]
                    times: dict = {k: [] for k in kinds}
                    counts: dict = {}
                    for rep in range(args.reps + 1):       # rep 0: warmup, not kept
                        for kind in kinds:
                            loop = loops.get(kind) or loops.setdefault(kind, _loop_for(kind))
                            t0 = time.perf_counter()
                            counts[kind] = loop.run_until_complete(contenders[kind](conc))
                            dt = time.perf_counter() - t0
                            if rep:
                                times[kind].append(dt)
                    for kind in kinds:
                        med = statistics.median(times[kind])
                        results.append({"workload": name, "concurrency": conc, "contender": kind,
                                        "median_s": med, "unit": unit, "count": counts[kind],
                                        "rate": counts[kind] / med,
                                        "all_s": times[kind]})
        finally:
            for loop in loops.values():
                loop.close()
        if not args.only or "fixed" in args.only:
            results += fixed_buffers_probe(big, 20000, 4096, args.reps)
            results += fixed_buffers_probe(big, 1000, MiB, args.reps)

    # Ratios: rate / aiofiles rate (and / sync for seq1m).
    def rate(workload, conc, kind):
        for r in results:
            if (r["workload"], r["concurrency"], r["contender"]) == (workload, conc, kind):
                return r["rate"]
        return None

    print(f"{'workload':10} {'tasks':>5} {'contender':16} {'median':>10} {'rate':>14} {'x aiofiles':>10} {'x sync':>7}")
    for r in results:
        base = rate(r["workload"], r["concurrency"], "aiofiles") or rate(r["workload"], r["concurrency"], "read")
        sync = rate(r["workload"], 1, "sync") if r["workload"] == "seq1m" else None
        r["x_aiofiles"] = r["rate"] / base if base else None
        r["x_sync"] = r["rate"] / sync if sync else None
        print(f"{r['workload']:10} {r['concurrency']:>5} {r['contender']:16} {r['median_s'] * 1e3:>8.1f}ms "
              f"{r['rate']:>10.0f} {r['unit']}/s"
              f" {r['x_aiofiles']:>9.2f}x" + (f" {r['x_sync']:>6.2f}x" if r["x_sync"] else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reps": args.reps, "results": results, "kernel": os.uname().release,
                       "python": sys.version.split()[0]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
