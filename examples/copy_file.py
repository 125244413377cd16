"""Copy a file with aiouring's asynchronous file API, and show the copy is exact.

    python examples/copy_file.py SRC DST --loop aiouring --method stream
    python examples/copy_file.py SRC DST --method copyfile --fsync

``stream`` reads and writes 1 MiB chunks through ``aiouring.open`` (the API
of the built-in ``open``, awaitable); ``copyfile`` calls ``aiouring.copyfile``,
which keeps several reads and writes in flight. On an aiouring loop each read,
write, open, fsync and close is an io_uring request; on asyncio's loop or
uvloop the same code runs with those calls in threads (``files.on_ring()``
says which). It prints ``copied N bytes sha256 DIGEST (on ring: yes|no)``,
with the digest read back from DST.
"""

from __future__ import annotations

import argparse
import hashlib

import aiouring
from aiouring import files

from _loops import add_loop_argument, run

_CHUNK = 1024 * 1024


async def copy_stream(src: str, dst: str, fsync: bool) -> int:
    copied = 0
    async with aiouring.open(src, "rb") as fin, aiouring.open(dst, "wb") as fout:
        while chunk := await fin.read(_CHUNK):
            await fout.write(chunk)
            copied += len(chunk)
        if fsync:
            await fout.flush()
            await fout.fsync()
    return copied


async def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    async with aiouring.open(path, "rb") as f:
        while chunk := await f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def copy(src: str, dst: str, method: str, fsync: bool) -> None:
    if method == "stream":
        copied = await copy_stream(src, dst, fsync)
    else:
        copied = await aiouring.copyfile(src, dst)
        if fsync:
            async with aiouring.open(dst, "rb+") as f:
                await f.fsync()
    digest = await sha256_of(dst)
    print(f"copied {copied} bytes sha256 {digest} (on ring: {'yes' if files.on_ring() else 'no'})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_loop_argument(parser)
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--method", choices=("stream", "copyfile"), default="stream")
    parser.add_argument("--fsync", action="store_true", help="make the copy durable before reporting")
    args = parser.parse_args()
    run(copy(args.src, args.dst, args.method, args.fsync), args.loop)


if __name__ == "__main__":
    main()
