"""A shell-style pipeline driven by the event loop: data -> gzip -> gunzip -> back.

    python examples/subprocess_pipeline.py --loop aiouring --size 50000000

The program generates ``--size`` bytes, streams them into ``gzip -c``, pumps
gzip's output into ``gzip -dc`` and reads the result back, all concurrently
through the loop's pipe transports with ``drain()`` back-pressure (memory stays
bounded whatever the size). It checks that the SHA-256 of what came back equals
that of what went in, prints ``ok SIZE SHA256`` and exits 0, or exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
from typing import Iterator, Tuple

from _loops import add_loop_argument, run

_CHUNK = 64 * 1024


def _chunks(size: int, seed: int) -> Iterator[bytes]:
    # Compressible but not trivial: words from a small vocabulary.
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(512)]
    produced = 0
    while produced < size:
        chunk = b" ".join(rng.choices(words, k=_CHUNK // 5))[: min(_CHUNK, size - produced)]
        produced += len(chunk)
        yield chunk


async def _feed(size: int, seed: int, sink: asyncio.StreamWriter) -> str:
    digest = hashlib.sha256()
    for chunk in _chunks(size, seed):
        digest.update(chunk)
        sink.write(chunk)
        await sink.drain()
    sink.close()
    await sink.wait_closed()
    return digest.hexdigest()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while chunk := await source.read(_CHUNK):
        sink.write(chunk)
        await sink.drain()
    sink.close()
    await sink.wait_closed()


async def _digest(source: asyncio.StreamReader) -> Tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while chunk := await source.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


async def pipeline(size: int, seed: int) -> bool:
    pipe = asyncio.subprocess.PIPE
    gzip = await asyncio.create_subprocess_exec("gzip", "-c", stdin=pipe, stdout=pipe)
    gunzip = await asyncio.create_subprocess_exec("gzip", "-dc", stdin=pipe, stdout=pipe)
    assert gzip.stdin and gzip.stdout and gunzip.stdin and gunzip.stdout
    sent, _, (received_size, received) = await asyncio.gather(
        _feed(size, seed, gzip.stdin),
        _pump(gzip.stdout, gunzip.stdin),
        _digest(gunzip.stdout),
    )
    codes = (await gzip.wait(), await gunzip.wait())
    ok = codes == (0, 0) and received_size == size and received == sent
    print(f"{'ok' if ok else 'MISMATCH'} {received_size} {received} (sent {size} {sent}, exit codes {codes})",
          flush=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_loop_argument(parser)
    parser.add_argument("--size", type=int, default=10_000_000, help="bytes to send through")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    raise SystemExit(0 if run(pipeline(args.size, args.seed), args.loop) else 1)


if __name__ == "__main__":
    main()
