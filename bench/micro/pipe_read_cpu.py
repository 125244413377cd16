"""Parent CPU per GiB read from a child's stdout pipe, at the protocol level.

    python bench/micro/pipe_read_cpu.py --loop aiouring [--mib 512]

Wall-clock throughput of a pipe depends on how the two processes get
scheduled (on a busy 2-core machine it swings by 2x); the reading process's
own CPU time (getrusage RUSAGE_SELF, which excludes the child) is what the
loop costs, and even that depends on the chunk sizes the race produces (a
fast reader gets many small chunks): compare CPU per chunk. Prints one JSON
line.
"""

import argparse
import asyncio
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _loops import LOOP_NAMES, LoopUnavailable, describe, new_loop  # noqa: E402


class _Count(asyncio.SubprocessProtocol):
    def __init__(self, done) -> None:
        self.received = 0
        self.chunks = 0
        self.done = done

    def pipe_data_received(self, fd, data):
        self.received += len(data)
        self.chunks += 1

    def connection_lost(self, exc):
        self.done.set_result((self.received, self.chunks))


async def _read_all(loop, nbytes: int) -> tuple:
    done = loop.create_future()
    transport, _ = await loop.subprocess_exec(lambda: _Count(done), "head", "-c", str(nbytes), "/dev/zero",
                                              stdin=None, stderr=None)
    got = await done
    transport.close()
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loop", choices=LOOP_NAMES, required=True)
    ap.add_argument("--mib", type=int, default=512)
    args = ap.parse_args()
    try:
        loop = new_loop(args.loop)
    except LoopUnavailable as exc:
        print(f"UNAVAILABLE {exc}", file=sys.stderr, flush=True)
        return 3
    nbytes = args.mib << 20
    try:
        loop.run_until_complete(_read_all(loop, 8 << 20))   # warmup
        r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        got, chunks = loop.run_until_complete(_read_all(loop, nbytes))
        r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    finally:
        loop.close()
    if got != nbytes:
        raise SystemExit(f"read {got} bytes of {nbytes}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(json.dumps({
        "bench": "pipe_read_cpu", "loop": args.loop, "loop_class": describe(loop), "mib": args.mib,
        "parent_cpu_s_per_gib": round(cpu / (nbytes / 2**30), 3),
        "chunks": chunks,
        "parent_cpu_us_per_chunk": round(cpu / chunks * 1e6, 2),
        "wall_mib_per_s": round(args.mib / (w1 - w0), 1),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
