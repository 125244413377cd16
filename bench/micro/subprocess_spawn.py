"""Child processes per second: spawn ``/bin/true`` with 32 in flight and wait
for each exit.

Measures the subprocess path end to end: Popen (fork/exec), transport setup,
and how the exit reaches the loop (aiouring: one IORING_OP_WAITID per child;
asyncio 3.11: a ThreadedChildWatcher thread per child; uvloop: libuv's
SIGCHLD handling). Exec dominates, so differences are modest.
"""

import asyncio
import sys

from _common import main

BATCH = 64
IN_FLIGHT = 32


async def batch(loop):
    sem = asyncio.Semaphore(IN_FLIGHT)

    async def one():
        async with sem:
            proc = await asyncio.create_subprocess_exec("/bin/true")
            if await proc.wait() != 0:
                raise RuntimeError("/bin/true failed")

    await asyncio.gather(*(one() for _ in range(BATCH)))
    return BATCH


if __name__ == "__main__":
    sys.exit(main("subprocess_spawn", batch))
