"""Soak test: thousands of connections echoing for minutes with churn, while the
server process watches its own RSS, open fds and io_uring operations in flight.

    python bench/soak.py [--loop aiouring|asyncio|uvloop] [--connections 2000]
                         [--duration 150] [--json results.json]

The server (this process) runs two echo services on the chosen loop, one
``asyncio.Protocol`` and one streams handler, and samples itself every few
seconds. A client process (asyncio's own loop, so that it is an independent
oracle) keeps ``--connections`` connections busy: each sends messages of mixed
sizes (16 B .. 300 KiB), checks every echo byte for byte, then ends the
connection in one of several ways (close, reset mid-transfer, half-close,
abandoning unread echo) and reconnects. Not part of the normal test run.

What is reported: RSS, open fds and operations in flight at the start (after a
warm-up), half-way, at the end of the load, and after every client has gone (quiescent);
bytes echoed, connections made, verification failures, exception-handler
calls. The exit status is 1 when a check fails: any corrupted echo, any
unexpected exception-handler call, fds or operations in flight above their
starting level once quiescent, or RSS growth above ``--max-rss-growth-mib``
over the second half of the run (the first half fills the heap and touches
the receive buffer ring's pages as traffic first needs them).
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
    proto_server.close()
    stream_server.close()
    await proto_server.wait_closed()
    await stream_server.wait_closed()
    return {"idle": idle, "start": start, "mid": mid, "end": end, "quiescent": quiet,
            "client": client_report, "exception_handler_calls": handler_calls[:20],
            "exception_handler_call_count": len(handler_calls)}


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
    report.update(loop=args.loop, connections=args.connections, duration_s=args.duration,
                  after_loop_close=after_close, samples=sampler.samples)

    failures = []
    c = report["client"]
    if c["corrupt"]:
        failures.append(f"{c['corrupt']} echoes did not match")
    if c["errors"]:
        failures.append(f"{c['errors']} unexpected client errors: {c['error_kinds']}")
    if report["exception_handler_call_count"]:
        failures.append(f"{report['exception_handler_call_count']} exception handler calls")
    idle, mid, end, quiet = report["idle"], report["mid"], report["end"], report["quiescent"]
    if quiet["open_fds"] > idle["open_fds"]:
        failures.append(f"fds: {idle['open_fds']} before load, {quiet['open_fds']} after")
    if idle["ops_in_flight"] is not None and quiet["ops_in_flight"] > idle["ops_in_flight"]:
        failures.append(f"ops in flight: {idle['ops_in_flight']} before load, {quiet['ops_in_flight']} after")
    # Judged over the second half: the first half legitimately grows the heap
    # and touches the receive buffer ring's pages (32 MiB of address space) as
    # traffic first needs them; a leak keeps growing after that.
    if mid and end and end["rss_mib"] - mid["rss_mib"] > args.max_rss_growth_mib:
        failures.append(f"RSS grew {end['rss_mib'] - mid['rss_mib']:.1f} MiB over the second half")
    report["failures"] = failures

    print()
    print(f"loop {args.loop}: {c['connections_made']} connections, {c['messages']} messages, "
          f"{c['bytes'] / 2 ** 20:.0f} MiB echoed, {c['corrupt']} corrupt, churn ends {c['ends']}")
    print(f"{'':12s} {'RSS MiB':>8s} {'fds':>6s} {'in flight':>10s}")
    for name in ("idle", "start", "mid", "end", "quiescent"):
        s = report[name]
        if s:
            print(f"{name:12s} {s['rss_mib']:8.1f} {s['open_fds']:6d} {str(s['ops_in_flight']):>10s}")
    print("after close  " + json.dumps(after_close))
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
    p.add_argument("--duration", type=float, default=150.0, help="seconds of load")
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--max-rss-growth-mib", type=float, default=8.0,
                   help="allowed RSS growth from the middle of the run to its end")
    p.add_argument("--json")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ports", help=argparse.SUPPRESS)
    args = p.parse_args()
    return client_main(args) if args.client else server_main(args)


if __name__ == "__main__":
    sys.exit(main())
