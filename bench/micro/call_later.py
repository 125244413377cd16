"""Timers: loop.call_later with short, spread-out delays, half of them cancelled.

A batch arms 1000 timers with delays spread over 0..1 ms, cancels every
other one (as timeouts usually are), and waits until the rest have fired.
Counts armed timers per second: the heap push, cancel bookkeeping, the
wait-for-next-deadline path of the loop and firing.
"""

import sys

from _common import main

BATCH = 1000
SPREAD = 0.001  # seconds


async def batch(loop):
    done = loop.create_future()
    fired = 0
    expected = BATCH // 2

    def callback():
        nonlocal fired
        fired += 1
        if fired == expected:
            done.set_result(None)

    call_later = loop.call_later
    handles = [call_later(SPREAD * i / BATCH, callback) for i in range(BATCH)]
    for h in handles[1::2]:
        h.cancel()
    await done
    return BATCH


if __name__ == "__main__":
    sys.exit(main("call_later", batch))
