"""Shared driver for the loop-overhead micro-benchmarks in this folder.

Each micro-benchmark module defines ``async def batch(loop) -> int``: one
bounded unit of work that returns how many operations it did.  ``main()``
runs batches on the requested loop for a short unmeasured warmup, then for
``--duration`` seconds, and prints one JSON line:

    {"bench": ..., "loop": ..., "loop_class": ..., "ops": N, "seconds": S, "ops_per_s": R}

If the loop cannot be created it prints "UNAVAILABLE <reason>" to stderr and
exits with status 3, like bench/servers.py.
"""

import argparse
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _loops import LOOP_NAMES, LoopUnavailable, describe, new_loop  # noqa: E402


async def _drive(loop, batch, seconds):
    ops = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        ops += await batch(loop)
        t = time.perf_counter()
        if t >= deadline:
            return ops, t - t0


def main(name, batch, argv=None):
    ap = argparse.ArgumentParser(description=f"micro-benchmark: {name}")
    ap.add_argument("--loop", choices=LOOP_NAMES, required=True)
    ap.add_argument("--duration", type=float, default=1.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=0.2, help="unmeasured seconds first")
    args = ap.parse_args(argv)

    try:
        loop = new_loop(args.loop)
    except LoopUnavailable as exc:
        print(f"UNAVAILABLE {exc}", file=sys.stderr, flush=True)
        return 3
    try:
        if args.warmup > 0:
            loop.run_until_complete(_drive(loop, batch, args.warmup))
        gc.collect()
        ops, secs = loop.run_until_complete(_drive(loop, batch, args.duration))
    finally:
        loop.close()
    print(json.dumps({
        "bench": name,
        "loop": args.loop,
        "loop_class": describe(loop),
        "ops": ops,
        "seconds": round(secs, 6),
        "ops_per_s": round(ops / secs, 1),
    }), flush=True)
    return 0
