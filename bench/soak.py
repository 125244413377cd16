"""Soak test: thousands of connections echoing for minutes with churn, while the
server process watches its own RSS, open fds and io_uring operations in flight.

    python bench/soak.py [--loop aiouring|asyncio|uvloop] [--connections 2000]
                         [--rounds 3] [--duration 50] [--json results.json]

The server (this process) runs two echo services on the chosen loop, one
``asyncio.Protocol`` and one streams handler, and samples itself every few
seconds. In each round a client process (on asyncio's own loop, so that it is
an independent oracle) keeps ``--connections`` connections busy for
``--duration`` seconds: each sends messages of mixed sizes (16 B .. 300 KiB),
checks every echo byte for byte, then ends the connection in one of several
ways (close, reset mid-transfer, half-close, abandoning unread echo) and
reconnects. Then every client is gone and the server should be back where it
started. Not part of the normal test run.

What is reported: RSS, open fds and operations in flight when idle, and per
round after a warm-up, half-way, at the end of the load and once quiescent;
bytes echoed, connections made, verification failures, exception-handler
calls. The exit status is 1 when a check fails: any corrupted echo, any
unexpected exception-handler call, fds or operations in flight above the idle
level once quiescent, or a last round whose quiescent RSS exceeds the highest
of the rounds before by more than ``--max-rss-growth-mib`` (the first rounds
fill the heap and touch the receive buffer ring's pages as traffic first needs
them, a high-water mark; a leak raises it every round).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_PAGE = os.sysconf("SC_PAGE_SIZE")
_SIZES = (16, 512, 4096, 65536, 300_000)


# ---- server side ------------------------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) - 1   # minus the listing's own fd


class _Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        # Returning a false value closes the transport once the echo is
        # flushed: a half-closed peer still gets every byte, then our FIN.
        return None


async def _stream_echo(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except OSError:
        # Resets, and ENOTCONN from write_eof() after the peer reset between
        # our EOF and our shutdown (asyncio's own loop raises it too).
        pass
    finally:
        writer.close()


def _make_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "aiouring":
        import aiouring
        return aiouring.Loop()
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.SelectorEventLoop()


class _Sampler:
    def __init__(self, loop) -> None:
        self.loop = loop
        self.samples: list = []

    def take(self, phase: str) -> dict:
        stats = getattr(self.loop, "statistics", None)
        sample = {
            "t": round(time.monotonic(), 2),
            "phase": phase,
            "rss_mib": round(_rss_bytes() / 2 ** 20, 1),
            "open_fds": _open_fds(),
            "ops_in_flight": stats().ops_in_flight if stats is not None else None,
            "tasks": len(asyncio.all_tasks(self.loop)),
        }
        self.samples.append(sample)
        return sample


async def _serve(args, sampler: _Sampler) -> dict:
    loop = asyncio.get_running_loop()
    handler_calls: list = []
    loop.set_exception_handler(lambda _loop, ctx: handler_calls.append(
        f"{ctx.get('message')}: {ctx.get('exception')!r}"))
    proto_server = await loop.create_server(_Echo, "127.0.0.1", 0, backlog=4096)
    stream_server = await asyncio.start_server(_stream_echo, "127.0.0.1", 0, backlog=4096)
    ports = [proto_server.sockets[0].getsockname()[1], stream_server.sockets[0].getsockname()[1]]
    idle = sampler.take("idle")

    rounds = []
    for number in range(1, args.rounds + 1):
        print(f"-- round {number} of {args.rounds}", flush=True)
        rounds.append(await _one_round(args, sampler, ports, idle))
    proto_server.close()
    stream_server.close()
    await proto_server.wait_closed()
    await stream_server.wait_closed()
    return {"idle": idle, "rounds": rounds, "exception_handler_calls": handler_calls[:20],
            "exception_handler_call_count": len(handler_calls)}


async def _one_round(args, sampler: _Sampler, ports, idle: dict) -> dict:
    """One load phase (a fresh client process) followed by quiescence."""
    loop = asyncio.get_running_loop()
    client = await asyncio.create_subprocess_exec(
        sys.executable, os.path.abspath(__file__), "--client", "--ports", ",".join(map(str, ports)),
        "--connections", str(args.connections), "--duration", str(args.duration),
        stdout=asyncio.subprocess.PIPE)
    warmup = min(20.0, args.duration / 5)
    t0 = time.monotonic()
    start = mid = None
    while client.returncode is None:
        try:
            await asyncio.wait_for(asyncio.shield(client.wait()), args.sample_every)
        except asyncio.TimeoutError:
            pass
        elapsed = time.monotonic() - t0
        if client.returncode is not None:
            break
        sample = sampler.take("load")
        if start is None and elapsed >= warmup:
            start = sample
            sample["phase"] = "start"
        elif mid is None and elapsed >= args.duration / 2:
            mid = sample
            sample["phase"] = "mid"
        print(f"[{elapsed:6.1f}s] rss {sample['rss_mib']:7.1f} MiB  fds {sample['open_fds']:5d}  "
              f"in flight {sample['ops_in_flight']}  tasks {sample['tasks']}", flush=True)
    end = next((s for s in reversed(sampler.samples) if s["phase"] == "load"), start)
    if end is not None:
        end["phase"] = "end"
    client_report = json.loads((await client.stdout.read()).decode().strip().splitlines()[-1])

    # Quiescent: every client connection is gone; let the server finish closing.
    for _ in range(100):
        await asyncio.sleep(0.1)
        if len(asyncio.all_tasks(loop)) <= 1 and _open_fds() <= idle["open_fds"]:
            break
    quiet = sampler.take("quiescent")
    return {"start": start, "mid": mid, "end": end, "quiescent": quiet, "client": client_report}


def server_main(args) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = _make_loop(args.loop)
    sampler = _Sampler(loop)
    try:
        report = loop.run_until_complete(_serve(args, sampler))
    finally:
        loop.close()
    after_close = {"open_fds": _open_fds(), "rss_mib": round(_rss_bytes() / 2 ** 20, 1),
                   "ops_in_flight": loop.statistics().ops_in_flight if hasattr(loop, "statistics") else None}
    report.update(loop=args.loop, connections=args.connections, duration_s=args.duration, rounds_n=args.rounds,
                  after_loop_close=after_close, samples=sampler.samples)

    failures = []
    rounds = report["rounds"]
    totals = {key: sum(r["client"][key] for r in rounds)
              for key in ("connections_made", "messages", "bytes", "corrupt", "errors")}
    ends: dict = {}
    for r in rounds:
        for kind, count in r["client"]["ends"].items():
            ends[kind] = ends.get(kind, 0) + count
    if totals["corrupt"]:
        failures.append(f"{totals['corrupt']} echoes did not match")
    if totals["errors"]:
        failures.append(f"{totals['errors']} unexpected client errors: "
                        f"{[r['client']['error_kinds'] for r in rounds]}")
    if report["exception_handler_call_count"]:
        failures.append(f"{report['exception_handler_call_count']} exception handler calls")
    idle = report["idle"]
    for number, r in enumerate(rounds, 1):
        quiet = r["quiescent"]
        if quiet["open_fds"] > idle["open_fds"]:
            failures.append(f"round {number}: {quiet['open_fds']} fds open once quiet, {idle['open_fds']} before")
        if idle["ops_in_flight"] is not None and quiet["ops_in_flight"] > idle["ops_in_flight"]:
            failures.append(f"round {number}: {quiet['ops_in_flight']} ops in flight once quiet, "
                            f"{idle['ops_in_flight']} before")
    # The first rounds legitimately grow the heap (and its fragmentation) and
    # touch the receive buffer ring's pages (32 MiB of address space) as
    # traffic first needs them: a high-water mark that later rounds stay
    # under. A leak raises it again every round, so the last round is judged
    # against the highest before it. With one round, judge its second half.
    if len(rounds) > 1:
        earlier = max(r["quiescent"]["rss_mib"] for r in rounds[:-1])
        growth = rounds[-1]["quiescent"]["rss_mib"] - earlier
        where = f"in round {len(rounds)} above the highest quiescent RSS of the rounds before"
    else:
        r = rounds[0]
        growth = (r["end"]["rss_mib"] - r["mid"]["rss_mib"]) if r["mid"] and r["end"] else 0.0
        where = "over the second half"
    report["rss_growth_mib"] = round(growth, 1)
    if growth > args.max_rss_growth_mib:
        failures.append(f"RSS grew {growth:.1f} MiB {where}")
    report["failures"] = failures

    print()
    print(f"loop {args.loop}, {args.connections} connections, {len(rounds)} x {args.duration:.0f} s: "
          f"{totals['connections_made']} connections made, {totals['messages']} messages, "
          f"{totals['bytes'] / 2 ** 20:.0f} MiB echoed, {totals['corrupt']} corrupt, churn ends {ends}")
    print(f"{'':18s} {'RSS MiB':>8s} {'fds':>6s} {'in flight':>10s}")
    print(f"{'idle':18s} {idle['rss_mib']:8.1f} {idle['open_fds']:6d} {str(idle['ops_in_flight']):>10s}")
    for number, r in enumerate(rounds, 1):
        for name in ("start", "mid", "end", "quiescent"):
            s = r[name]
            if s:
                label = f"round {number} {name}"
                print(f"{label:18s} {s['rss_mib']:8.1f} {s['open_fds']:6d} {str(s['ops_in_flight']):>10s}")
    print("after close        " + json.dumps(after_close))
    print(f"RSS growth {where}: {growth:.1f} MiB (allowed {args.max_rss_growth_mib:.0f})")
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if failures else 0


# ---- client side (a separate process on asyncio's own loop) -----------------

async def _client_conn(i: int, ports, deadline: float, totals: dict) -> None:
    rng = random.Random(i)
    while time.monotonic() < deadline:
        port = rng.choice(ports)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        except OSError as exc:
            totals["errors"] += 1
            totals["error_kinds"][f"connect {type(exc).__name__}"] = totals["error_kinds"].get(
                f"connect {type(exc).__name__}", 0) + 1
            await asyncio.sleep(0.5)
            continue
        totals["connections_made"] += 1
        try:
            for _ in range(rng.randint(1, 40)):
                payload = rng.randbytes(rng.choice(_SIZES))
                writer.write(payload)
                got = await reader.readexactly(len(payload))
                totals["messages"] += 1
                totals["bytes"] += len(payload)
                if got != payload:
                    totals["corrupt"] += 1
                await asyncio.sleep(rng.random() * 0.05)
                if time.monotonic() >= deadline:
                    break
            fate = rng.random()
            if fate < 0.1:      # reset with the echo of a big write still in flight
                writer.write(rng.randbytes(300_000))
                await asyncio.sleep(0.001)
                _abort_with_rst(writer)
                end = "reset_mid_transfer"
            elif fate < 0.2:    # reset while idle
                _abort_with_rst(writer)
                end = "reset"
            elif fate < 0.3:    # half-close, then drain to the server's EOF
                writer.write(b"last words")
                writer.write_eof()
                rest = await reader.read()
                if rest != b"last words":
                    totals["corrupt"] += 1
                writer.close()
                end = "half_close"
            elif fate < 0.35:   # leave the echo unread and just close
                writer.write(rng.randbytes(65536))
                writer.close()
                end = "close_unread"
            else:
                writer.close()
                end = "close"
            totals["ends"][end] = totals["ends"].get(end, 0) + 1
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            totals["errors"] += 1
            kind = type(exc).__name__
            totals["error_kinds"][kind] = totals["error_kinds"].get(kind, 0) + 1
            writer.close()


def _abort_with_rst(writer) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _client(args) -> dict:
    ports = [int(p) for p in args.ports.split(",")]
    totals = {"connections_made": 0, "messages": 0, "bytes": 0, "corrupt": 0, "errors": 0,
              "error_kinds": {}, "ends": {}}
    deadline = time.monotonic() + args.duration
    # Ramp up over a few seconds rather than one SYN flood.
    tasks = []
    for i in range(args.connections):
        tasks.append(asyncio.ensure_future(_client_conn(i, ports, deadline, totals)))
        if i % 200 == 199:
            await asyncio.sleep(0.1)
    await asyncio.gather(*tasks)
    return totals


def client_main(args) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(json.dumps(asyncio.run(_client(args))), flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loop", default="aiouring", choices=("aiouring", "asyncio", "uvloop"))
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--duration", type=float, default=50.0, help="seconds of load per round")
    p.add_argument("--rounds", type=int, default=3,
                   help="load phases, each followed by quiescence (a leak keeps growing across them)")
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--max-rss-growth-mib", type=float, default=8.0,
                   help="allowed RSS growth of the last round over the highest before it")
    p.add_argument("--json")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ports", help=argparse.SUPPRESS)
    args = p.parse_args()
    return client_main(args) if args.client else server_main(args)


if __name__ == "__main__":
    sys.exit(main())
