"""Read-pipe throughput at the protocol level: a child writes 64 MiB of zeros
to its stdout and a ``SubprocessProtocol`` counts them. ops = MiB read.

Measures the read pipe transport itself (no StreamReader): on aiouring one
linked POLL+READ per chunk on the ring, data handed over from the CQE walk; on
asyncio a poll wake-up, a handle and an ``os.read`` per chunk. On a busy
machine compare CPU rather than wall time: /usr/bin/time -f %U+%S.
"""

import asyncio
import sys

from _common import main

MIB = 64


class _Count(asyncio.SubprocessProtocol):
    def __init__(self, done) -> None:
        self.received = 0
        self.done = done

    def pipe_data_received(self, fd, data):
        self.received += len(data)

    def connection_lost(self, exc):
        self.done.set_result(self.received)


async def batch(loop):
    done = loop.create_future()
    transport, _ = await loop.subprocess_exec(lambda: _Count(done), "head", "-c", str(MIB << 20), "/dev/zero",
                                              stdin=None, stderr=None)
    got = await done
    transport.close()
    if got != MIB << 20:
        raise RuntimeError(f"read {got} bytes of {MIB << 20}")
    return MIB


if __name__ == "__main__":
    sys.exit(main("pipe_read", batch))
