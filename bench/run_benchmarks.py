"""Benchmark matrix: aiouring vs asyncio's own loop vs uvloop.

    python bench/run_benchmarks.py --quick              # ~1 minute subset
    python bench/run_benchmarks.py                      # full matrix (~15-25 min)
    python bench/run_benchmarks.py --filter 'proto-1K' --rounds 5 --duration 3
    python bench/run_benchmarks.py --list               # show the cases

Method (see bench/RESULTS.md for the reasoning):
  * Every case runs R rounds.  In each round every available loop gets a
    fresh server process, one after the other; the order rotates each round
    so that no loop always runs first or last (thermal/noise drift).
  * The server is pinned to CPU 0 (`taskset -c 0`), the load generator to
    CPU 1.  Echo load: bench/echo_client.c (built here into bench/build/),
    which verifies every echoed byte.  HTTP load: wrk.  Micro-benchmarks:
    bench/micro/*.py, in the server's place on CPU 0.
  * Before measuring, each server is WARMED with one connection that
    exchanges a few messages and closes (asyncio's loop runs ~3x slower
    until its first connection has closed), then a short unmeasured load
    (--warmup), then the measured load (--duration).
  * Per round we compute aiouring/asyncio and aiouring/uvloop (and, for
    reference, uvloop/asyncio) ratios of requests/s; the report shows the
    median of each loop's values and the median of the per-round ratios.
  * A loop whose import or startup fails is "unavailable": the reason is
    printed and recorded, and the other loops still run.

Output: a console table, bench/results/<stamp>.json (all runs, platform info),
bench/results/<stamp>.md (the table in Markdown) and bench/results/<stamp>.png
(chart of the ratios, if matplotlib is installed).
"""

import argparse
import datetime
import json
import math
import os
import re
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import platinfo  # noqa: E402
from _loops import LOOP_NAMES  # noqa: E402

BUILD_DIR = os.path.join(HERE, "build")
CLIENT_SRC = os.path.join(HERE, "echo_client.c")
CLIENT_BIN = os.path.join(BUILD_DIR, "echo_client")
REF_SRC = os.path.join(HERE, "ref_echo_server.c")
REF_BIN = os.path.join(BUILD_DIR, "ref_echo_server")
NATIVE = "native"  # pseudo-loop: ref_echo_server.c, the setup's ceiling (--ceiling)
SERVERS = os.path.join(HERE, "servers.py")
MICRO_DIR = os.path.join(HERE, "micro")
RESULTS_DIR = os.path.join(HERE, "results")

SERVER_CPU = "0"
CLIENT_CPU = "1"
CLIENT_CPU_WARN = 0.90     # warn when the load generator used more of its core than this
SPREAD_WARN = 0.10         # warn when a loop's rounds differ by more than this (max-min)/median
SERVER_START_TIMEOUT = 30  # seconds to wait for "READY <port>"
# Other processes on the machine (a test suite, a build) distort results and
# cause multi-millisecond stalls.  Each run measures the CPU used by
# processes other than the server and the load generator ("foreign" CPU, in
# cores, from /proc/stat); a run above FOREIGN_RETRY is repeated (up to
# --retries times), and before each run we wait (up to --quiet-wait s)
# until the machine is below QUIET_BUSY.
FOREIGN_RETRY = 0.10
QUIET_BUSY = 0.10
HELLO = b"Hello, World!"

ECHO_MODES = ("sockets", "proto", "buffered", "streams")
ECHO_SIZES = (1024, 16 * 1024, 64 * 1024)
ECHO_CONNS = (10, 100, 1000)
HTTP_MODES = ("aiohttp", "httptools")
HTTP_CONNS = (50, 500)
MICRO = ("call_soon", "call_later", "task_switch", "futures")

QUICK = (
    "echo-proto-1K-c10",
    "echo-proto-64K-c10",
    "echo-buffered-1K-c10",
    "echo-streams-1K-c10",
    "echo-sockets-1K-c10",
    "http-aiohttp-c50",
)

# (numerator, denominator) ratios reported per case
RATIOS = (("aiouring", "asyncio"), ("aiouring", "uvloop"), ("uvloop", "asyncio"))


# ---- cases ---------------------------------------------------------------------


def _size_label(n):
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


class Case:
    def __init__(self, kind, mode, size=None, conns=None):
        self.kind, self.mode, self.size, self.conns = kind, mode, size, conns
        if kind == "echo":
            self.name = f"echo-{mode}-{_size_label(size)}-c{conns}"
        elif kind == "http":
            self.name = f"http-{mode}-c{conns}"
        else:
            self.name = f"micro-{mode}"
        self.unit = "ops/s" if kind == "micro" else "req/s"

    def params(self):
        return {"kind": self.kind, "mode": self.mode, "size": self.size, "conns": self.conns}


def all_cases():
    cases = []
    for mode in ECHO_MODES:
        for size in ECHO_SIZES:
            for conns in ECHO_CONNS:
                cases.append(Case("echo", mode, size, conns))
    for mode in HTTP_MODES:
        for conns in HTTP_CONNS:
            cases.append(Case("http", mode, conns=conns))
    for name in MICRO:
        cases.append(Case("micro", name))
    return cases


def select_cases(quick, filters):
    cases = all_cases()
    if quick:
        cases = [c for c in cases if c.name in QUICK]
    if filters:
        pats = [re.compile(f) for f in filters]
        cases = [c for c in cases if any(p.search(c.name) for p in pats)]
    return cases


# ---- tools -----------------------------------------------------------------------


def log(msg=""):
    print(msg, flush=True)


def build_c(src, binary):
    """Build bench/build/<binary> with gcc if it is missing or older than its source.

    Returns None on success, else why it could not be built.
    """
    if os.path.exists(binary) and os.path.getmtime(binary) >= os.path.getmtime(src):
        return None
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return "no C compiler: install gcc (apt-get install gcc)"
    os.makedirs(BUILD_DIR, exist_ok=True)
    cmd = [cc, "-O2", "-Wall", "-o", binary, src]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"building {os.path.basename(binary)} failed: {shlex.join(cmd)}\n{proc.stderr}"
    log(f"built {os.path.relpath(binary)}")
    return None


def ensure_wrk(allow_install):
    """Return None if wrk is usable, else why not (after trying apt-get as root)."""
    if shutil.which("wrk"):
        return None
    how = "install it with: sudo apt-get install wrk"
    if not allow_install:
        return f"wrk not found; {how}"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"wrk not found and this is not root with apt-get; {how}"
    log("wrk not found: installing it with apt-get ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "install", "-y", "-q", "wrk"],
                ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "wrk"]):
        if shutil.which("wrk"):
            break
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, timeout=600)
    return None if shutil.which("wrk") else f"apt-get could not install wrk; {how}"


def pinning():
    """Prefixes that pin (server, client) to different CPUs, or empty ones if impossible."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", SERVER_CPU], ["taskset", "-c", CLIENT_CPU], None
    return [], [], "cannot pin (need taskset and 2 CPUs): server and load generator share CPUs"


def proc_cpu_seconds(pid):
    """utime+stime of a live process, from /proc (clock-tick resolution)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run_with_rusage(cmd, timeout):
    """Run cmd, return (returncode, stdout, stderr, wall_seconds).

    Once it has been reaped, its CPU time is in this process's
    RUSAGE_CHILDREN (see children_cpu()); taskset execs the real program, so
    that is the load generator's own CPU time.
    """
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err = (err or "") + f"\n(killed after {timeout:.0f} s timeout)"
    wall = time.monotonic() - t0
    return proc.returncode, out, err, wall


def machine_busy():
    """(busy CPU seconds of user+nice+system over all CPUs, monotonic time) from /proc/stat.

    irq/softirq time is left out: with IRQ time accounting it is not charged
    to any process, and loopback TCP puts most of the benchmark's own kernel
    work there.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        ticks = int(fields[1]) + int(fields[2]) + int(fields[3])
        return ticks / os.sysconf("SC_CLK_TCK"), time.monotonic()
    except (OSError, IndexError, ValueError):
        return None, time.monotonic()


def wait_quiet(max_wait):
    """Wait until the machine is (nearly) idle, at most max_wait seconds; return seconds waited."""
    t_start = time.monotonic()
    while True:
        b0, t0 = machine_busy()
        time.sleep(0.1)
        b1, t1 = machine_busy()
        if b0 is None or (b1 - b0) / (t1 - t0) < QUIET_BUSY or t1 - t_start >= max_wait:
            return t1 - t_start - (t1 - t0)


def children_cpu():
    ru = os.times()
    return ru.children_user + ru.children_system


# ---- servers -------------------------------------------------------------------


class Server:
    """A bench/servers.py process; start() returns the port or raises RuntimeError."""

    def __init__(self, python, loop, mode, pin):
        if loop == NATIVE:
            self.cmd = pin + [REF_BIN]
        else:
            self.cmd = pin + [python, SERVERS, "--loop", loop, "--mode", mode]
        self.proc = None
        self.errfile = None
        self.loop_class = None

    def start(self):
        # stderr goes to a file, not a pipe: a server that logs a lot (say, a
        # traceback per connection) must not block on a full pipe mid-run.
        self.errfile = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self.errfile)
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        pending = b""
        # Raw reads, so that no line sits unseen in a Python-level buffer.
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                line = line.decode(errors="replace")
                if line.startswith("LOOP "):
                    self.loop_class = line.split(None, 1)[1].strip()
                elif line.startswith("READY "):
                    return int(line.split()[1])
        self.stop()
        raise RuntimeError(_why(self.stderr_tail(), self.proc.returncode, "server did not print READY"))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stderr_tail(self, max_chars=4000):
        """What the server wrote to stderr so far (the last max_chars)."""
        if self.errfile is None:
            return ""
        try:
            self.errfile.seek(0)
            return self.errfile.read().decode(errors="replace")[-max_chars:]
        except (OSError, ValueError):
            return ""


def _why(stderr, returncode, default):
    lines = [ln for ln in (stderr or "").strip().splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("UNAVAILABLE "):
            return ln[len("UNAVAILABLE "):]
    if lines:
        return f"{default} (exit {returncode}): {lines[-1].strip()}"
    return f"{default} (exit {returncode})"


def check_loop(python, loop, pin):
    """Return (ok, loop_class_or_reason)."""
    try:
        proc = subprocess.run(pin + [python, SERVERS, "--loop", loop, "--check"],
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False, "self-check timed out after 60 s"
    loop_class = None
    for ln in proc.stdout.splitlines():
        if ln.startswith("LOOP "):
            loop_class = ln.split(None, 1)[1].strip()
    if proc.returncode != 0:
        return False, _why(proc.stderr, proc.returncode, "self-check failed")
    return True, loop_class


# ---- warming -------------------------------------------------------------------


def warm_echo(port, size, messages=4):
    """One connection, a few verified echoes of `size` bytes, then close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for i in range(messages):
            msg = bytes((i * 7 + j) & 0xFF for j in range(256)) * (size // 256) + bytes(size % 256)
            s.sendall(msg)
            got = bytearray()
            while len(got) < len(msg):
                chunk = s.recv(len(msg) - len(got))
                if not chunk:
                    raise RuntimeError("warm-up: server closed the connection")
                got += chunk
            if got != msg:
                raise RuntimeError("warm-up: echoed bytes differ from the sent ones")


def warm_http(port, requests=3):
    """One keep-alive connection, a few GET / requests with checked bodies, then close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        buf = b""
        for _ in range(requests):
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("warm-up: server closed the connection")
                buf += chunk
            head, buf = buf.split(b"\r\n\r\n", 1)
            status = head.split(b"\r\n", 1)[0]
            if b" 200 " not in status + b" ":
                raise RuntimeError(f"warm-up: unexpected status {status!r}")
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if not m:
                raise RuntimeError("warm-up: response without Content-Length")
            n = int(m.group(1))
            while len(buf) < n:
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("warm-up: server closed the connection")
                buf += chunk
            body, buf = buf[:n], buf[n:]
            if body != HELLO:
                raise RuntimeError(f"warm-up: unexpected body {body[:40]!r}")


# ---- loads -------------------------------------------------------------------------


def run_echo_load(case, port, args, pin):
    cmd = pin + [CLIENT_BIN, "--port", str(port), "--conns", str(case.conns), "--size", str(case.size),
                 "--warmup", str(args.warmup), "--duration", str(args.duration),
                 "--connect-timeout", "10", "--request-timeout", "5"]
    rc, out, err, wall = run_with_rusage(cmd, timeout=args.warmup + args.duration + 60)
    try:
        data = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"echo_client failed (exit {rc}): {(err or out).strip()[-300:]}") from None
    if not data.get("ok"):
        raise RuntimeError(f"echo_client: {data.get('error')}: {data.get('first_error')}")
    lat = data["latency_us"]
    return {
        "value": data["rps"],
        "p50_ms": lat["p50"] / 1e3,
        "p99_ms": lat["p99"] / 1e3,
        "max_ms": lat["max"] / 1e3,
        "errors": data["errors"],
        "first_error": data.get("first_error") or None,
        "client_cpu": data["cpu_fraction"],
        "mib_per_s": data["mib_per_s"],
        "load_wall_s": wall,
        "client": data,
    }


_WRK_TIME = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _wrk_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _WRK_TIME[m.group(2)] if m else None


def parse_wrk(out):
    res = {}
    m = re.search(r"Requests/sec:\s*([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else None
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s*{pct}%\s+(\S+)", out, re.M)
        res[f"p{pct}_ms"] = _wrk_ms(m.group(1)) if m else None
    m = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    res["max_ms"] = _wrk_ms(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else None
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    res["errors"] = errors
    return res


def run_http_load(case, port, args, pin):
    url = f"http://127.0.0.1:{port}/"
    base = pin + ["wrk", "-t1", f"-c{case.conns}", "--timeout", "5s"]
    if args.warmup > 0:
        # wrk takes whole seconds only
        run_with_rusage(base + [f"-d{max(1, math.ceil(args.warmup))}s", url], timeout=args.warmup + 60)
    dur = max(1, round(args.duration))
    cpu0 = children_cpu()
    rc, out, err, wall = run_with_rusage(base + ["--latency", f"-d{dur}s", url], timeout=dur + 60)
    cpu = children_cpu() - cpu0
    res = parse_wrk(out)
    if rc != 0 or res["rps"] is None:
        raise RuntimeError(f"wrk failed (exit {rc}): {(err or out).strip()[-300:]}")
    return {
        "value": res["rps"],
        "p50_ms": res["p50_ms"],
        "p99_ms": res["p99_ms"],
        "max_ms": res["max_ms"],
        "errors": res["errors"],
        "first_error": None,
        "client_cpu": cpu / wall if wall > 0 else None,
        "load_wall_s": wall,
        "client": {"wrk_output": out},
    }


def run_micro(case, loop, args, python, pin):
    script = os.path.join(MICRO_DIR, f"{case.mode}.py")
    cmd = pin + [python, script, "--loop", loop, "--duration", str(args.duration),
                 "--warmup", str(min(args.warmup, 0.5))]
    rc, out, err, wall = run_with_rusage(cmd, timeout=args.duration + 60)
    if rc != 0:
        raise RuntimeError(_why(err, rc, "micro-benchmark failed"))
    data = json.loads(out.strip().splitlines()[-1])
    return {"value": data["ops_per_s"], "errors": 0, "micro": data}


def run_one(case, loop, args, python, server_pin, client_pin):
    """One measurement of one loop on one case; returns a result dict (never raises)."""
    res = {"loop": loop, "value": None}
    try:
        if case.kind == "micro":
            res.update(run_micro(case, loop, args, python, server_pin))
            return res
        server = Server(python, loop, case.mode, server_pin)
        try:
            port = server.start()
            res["loop_class"] = server.loop_class
            if case.kind == "echo":
                warm_echo(port, case.size)
            else:
                warm_http(port)
            busy0, _ = machine_busy()
            kids0 = children_cpu()
            cpu0, t0 = proc_cpu_seconds(server.proc.pid), time.monotonic()
            if case.kind == "echo":
                res.update(run_echo_load(case, port, args, client_pin))
            else:
                res.update(run_http_load(case, port, args, client_pin))
            cpu1, t1 = proc_cpu_seconds(server.proc.pid), time.monotonic()
            busy1, _ = machine_busy()
            kids = children_cpu() - kids0
            if cpu0 is not None and cpu1 is not None:
                res["server_cpu"] = (cpu1 - cpu0) / (t1 - t0)
                if busy0 is not None:
                    foreign = (busy1 - busy0) - (cpu1 - cpu0) - kids
                    res["foreign_cpu"] = max(0.0, foreign / (t1 - t0))
            if not server.alive():
                raise RuntimeError(_why(server.stderr_tail(), server.proc.returncode, "server died during the load"))
        finally:
            server.stop()
            logged = server.stderr_tail()
            if logged.strip():
                res["server_stderr"] = logged
    except Exception as exc:  # a failed run is recorded, the matrix goes on
        res["value"] = None
        res["error"] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, RuntimeError) else str(exc)
    return res


# ---- summary -------------------------------------------------------------------------


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(case, runs, loops):
    """runs: list of per-round dicts {loop: result}."""
    summary = {"values": {}, "p50_ms": {}, "p99_ms": {}, "ratios": {}, "warnings": []}
    for loop in loops:
        vals = [r[loop]["value"] for r in runs if loop in r]
        ok = [v for v in vals if v is not None]
        summary["values"][loop] = _median(ok)
        summary["p50_ms"][loop] = _median([r[loop].get("p50_ms") for r in runs if loop in r])
        summary["p99_ms"][loop] = _median([r[loop].get("p99_ms") for r in runs if loop in r])
        if ok and len(ok) > 1:
            spread = (max(ok) - min(ok)) / statistics.median(ok)
            if spread > SPREAD_WARN:
                summary["warnings"].append(f"{loop}: rounds spread {spread:.0%} (max-min)/median")
        logged = [r[loop]["server_stderr"] for r in runs if loop in r and r[loop].get("server_stderr")]
        if logged:
            last = logged[0].strip().splitlines()[-1]
            summary["warnings"].append(f"{loop}: the server wrote to stderr in {len(logged)} round(s) "
                                       f"(see the JSON); last line: {last[:160]}")
        failed = [r[loop].get("error") for r in runs if loop in r and r[loop].get("error")]
        if failed:
            summary["warnings"].append(f"{loop}: {len(failed)} failed round(s): {failed[0]}")
        errs = sum(r[loop].get("errors") or 0 for r in runs if loop in r)
        if errs:
            first = next((r[loop].get("first_error") for r in runs if loop in r and r[loop].get("first_error")), None)
            summary["warnings"].append(f"{loop}: {errs} client-side errors" + (f" (first: {first})" if first else ""))
        foreign = [r[loop].get("foreign_cpu") for r in runs if loop in r and r[loop].get("foreign_cpu") is not None]
        if foreign and max(foreign) > FOREIGN_RETRY:
            summary["warnings"].append(
                f"{loop}: other processes used up to {max(foreign):.0%} of a CPU during a round (noisy)")
        cpus = [r[loop].get("client_cpu") for r in runs if loop in r and r[loop].get("client_cpu") is not None]
        if cpus and max(cpus) > CLIENT_CPU_WARN and loop != NATIVE:
            summary["warnings"].append(
                f"{loop}: load generator used {max(cpus):.0%} of its CPU: the client may be the bottleneck")
    for num, den in RATIOS:
        per_round = []
        for r in runs:
            a, b = r.get(num, {}).get("value"), r.get(den, {}).get("value")
            if a is not None and b:
                per_round.append(a / b)
        summary["ratios"][f"{num}/{den}"] = {"median": _median(per_round), "per_round": per_round}
    ceiling = summary["values"].get(NATIVE)
    if ceiling:
        for loop in loops:
            v = summary["values"].get(loop)
            if loop != NATIVE and v and v > 0.85 * ceiling:
                summary["warnings"].append(
                    f"{loop}: {v / ceiling:.0%} of the native ceiling: limited by the client, not the loop")
    return summary


def _fmt_value(v):
    if v is None:
        return "n/a"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def _fmt_ratio(r):
    return "n/a" if r is None else f"{r:.2f}"


def _fmt_ms(v):
    return "-" if v is None else (f"{v:.2f}" if v < 10 else f"{v:.1f}")


def table_rows(results, loops):
    header = (["case"] + loops + [f"{n}/{d}" for n, d in RATIOS]
              + [f"p99 ms {lp}" for lp in loops if lp != NATIVE])
    rows = []
    for item in results:
        s = item["summary"]
        row = [item["case"]]
        row += [_fmt_value(s["values"].get(lp)) if lp in s["values"] else "-" for lp in loops]
        row += [_fmt_ratio(s["ratios"][f"{n}/{d}"]["median"]) for n, d in RATIOS]
        row += [_fmt_ms(s["p99_ms"].get(lp)) for lp in loops if lp != NATIVE]
        rows.append(row)
    return header, rows


def print_table(results, loops, unavailable):
    header, rows = table_rows(results, loops)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))
    log(line)
    log("-" * len(line))
    for row in rows:
        log("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    log("values: median req/s (echo, http) or ops/s (micro); ratios: median of per-round ratios")
    if NATIVE in loops:
        log(f"{NATIVE}: a C epoll echo server (ref_echo_server.c): the ceiling of this client on this machine")
    for loop, why in unavailable.items():
        log(f"{loop}: n/a -- unavailable: {why}")
    warned = [(item["case"], w) for item in results for w in item["summary"]["warnings"]]
    if warned:
        log("warnings:")
        for case, w in warned:
            log(f"  {case}: {w}")


def markdown_table(results, loops, unavailable):
    header, rows = table_rows(results, loops)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        out.append("| " + " | ".join(row) + " |")
    for loop, why in unavailable.items():
        out.append("")
        out.append(f"{loop}: n/a -- {why}")
    return "\n".join(out) + "\n"


def write_chart(path, results):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart"
    names = [item["case"] for item in results]
    series = [(f"{n}/{d}", [item["summary"]["ratios"][f"{n}/{d}"]["median"] for item in results])
              for n, d in RATIOS]
    series = [(label, vals) for label, vals in series if any(v is not None for v in vals)]
    if not series:
        return "no ratios to plot"
    fig_h = max(3.0, 0.32 * len(names) * max(1, len(series)) + 1.5)
    fig, ax = plt.subplots(figsize=(9, fig_h))
    bar_h = 0.8 / len(series)
    for k, (label, vals) in enumerate(series):
        ys = [i + (k - (len(series) - 1) / 2) * bar_h for i in range(len(names))]
        ax.barh(ys, [v if v is not None else 0 for v in vals], height=bar_h, label=label)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("throughput ratio (median of per-round ratios; >1 = numerator faster)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("aiouring vs asyncio vs uvloop")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ---- main -------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small subset, short runs (about a minute)")
    ap.add_argument("--filter", action="append", default=[], metavar="REGEX",
                    help="only cases whose name matches (repeatable; see --list)")
    ap.add_argument("--loops", default=",".join(LOOP_NAMES), help="comma-separated loops to compare")
    ap.add_argument("--rounds", type=int, help="rounds per case (default 3)")
    ap.add_argument("--duration", type=float, help="measured seconds per run (default 2, --quick 0.7)")
    ap.add_argument("--warmup", type=float, help="unmeasured load seconds before it (default 0.5, --quick 0.3)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for servers (default: this one)")
    ap.add_argument("--out", default=RESULTS_DIR, help="directory for JSON/Markdown/PNG results")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install wrk if missing")
    ap.add_argument("--ceiling", action="store_true",
                    help="also run echo cases against a native C echo server (ref_echo_server.c): "
                         "the most this client can measure here")
    ap.add_argument("--retries", type=int,
                    help="repeat a run disturbed by other processes up to this many times (default 2, --quick 1)")
    ap.add_argument("--quiet-wait", type=float,
                    help="before each run wait up to this many seconds for an idle machine (default 5, --quick 1)")
    ap.add_argument("--list", action="store_true", help="list the selected cases and exit")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or 3
    args.duration = args.duration or (0.7 if args.quick else 2.0)
    if args.retries is None:
        args.retries = 1 if args.quick else 2
    if args.quiet_wait is None:
        args.quiet_wait = 1.0 if args.quick else 5.0
    if args.warmup is None:
        args.warmup = 0.3 if args.quick else 0.5
    return args


def main(argv=None):
    args = parse_args(argv)
    cases = select_cases(args.quick, args.filter)
    if args.list or not cases:
        for c in cases:
            log(c.name)
        if not cases:
            log("no case matches")
            return 1
        return 0
    loops = [lp.strip() for lp in args.loops.split(",") if lp.strip()]
    for lp in loops:
        if lp not in LOOP_NAMES:
            log(f"unknown loop {lp!r}; choose from {', '.join(LOOP_NAMES)}")
            return 2

    started = datetime.datetime.now()
    command = shlex.join([os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else "python",
                          os.path.relpath(os.path.abspath(__file__))] + (sys.argv[1:] if argv is None else argv))
    server_pin, client_pin, pin_warning = pinning()
    if pin_warning:
        log(f"WARNING: {pin_warning}")

    # Which loops work here?
    available, unavailable, loop_classes = [], {}, {}
    for lp in loops:
        ok, info = check_loop(args.python, lp, server_pin)
        if ok:
            available.append(lp)
            loop_classes[lp] = info
            log(f"loop {lp}: {info}")
        else:
            unavailable[lp] = info
            log(f"loop {lp}: UNAVAILABLE -- {info}")
    if not available:
        log("no loop is available")
        return 1

    skipped = {}
    if any(c.kind == "echo" for c in cases):
        why = build_c(CLIENT_SRC, CLIENT_BIN)
        if why:
            skipped["echo"] = why
        elif args.ceiling:
            why = build_c(REF_SRC, REF_BIN)
            if why:
                log(f"no ceiling measurements: {why}")
                args.ceiling = False
    if any(c.kind == "http" for c in cases):
        why = ensure_wrk(not args.no_install)
        if why:
            skipped["http"] = why
    for kind, why in skipped.items():
        log(f"skipping {kind} cases: {why}")
    cases = [c for c in cases if c.kind not in skipped]

    est = 0.0
    for c in cases:
        if c.kind == "http":  # wrk runs whole seconds
            per_run = max(1, round(args.duration)) + (max(1, math.ceil(args.warmup)) if args.warmup else 0) + 0.9
        elif c.kind == "echo":
            per_run = args.duration + args.warmup + 0.5
        else:
            per_run = args.duration + min(args.warmup, 0.5) + 0.3
        n_loops = len(available) + (1 if args.ceiling and c.kind == "echo" else 0)
        est += n_loops * args.rounds * per_run
    b0, t0 = machine_busy()
    time.sleep(0.5)
    b1, t1 = machine_busy()
    if b0 is not None and (b1 - b0) / (t1 - t0) > QUIET_BUSY:
        log(f"WARNING: other processes are using {(b1 - b0) / (t1 - t0):.0%} of a CPU right now: "
            f"expect noisy numbers (runs disturbed are repeated up to {args.retries} time(s))")
    log(f"{len(cases)} case(s) x {len(available)} loop(s) x {args.rounds} round(s), "
        f"{args.duration:g} s measured + {args.warmup:g} s warmup each: about {est / 60:.1f} min")
    log()

    results = []
    try:
        for case in cases:
            runs = []
            case_loops = available + ([NATIVE] if args.ceiling and case.kind == "echo" else [])
            for rnd in range(args.rounds):
                k = rnd % len(case_loops)
                order = case_loops[k:] + case_loops[:k]
                this_round = {}
                for lp in order:
                    for attempt in range(args.retries + 1):
                        waited = wait_quiet(args.quiet_wait)
                        if waited > 0.5:
                            log(f"(waited {waited:.1f} s for other processes to calm down)")
                        res = run_one(case, lp, args, args.python, server_pin, client_pin)
                        res["attempt"] = attempt
                        if (res.get("foreign_cpu") or 0) <= FOREIGN_RETRY or attempt == args.retries:
                            break
                        _log_run(case, rnd, args.rounds, res)
                        log(f"  -> other processes used {res['foreign_cpu']:.0%} of a CPU: measuring again")
                    res["round"] = rnd
                    res["order"] = order.index(lp)
                    this_round[lp] = res
                    _log_run(case, rnd, args.rounds, res)
                runs.append(this_round)
            results.append({
                "case": case.name,
                "params": case.params(),
                "unit": case.unit,
                "runs": [r[lp] for r in runs for lp in case_loops if lp in r],
                "summary": summarize(case, runs, case_loops),
            })
    except KeyboardInterrupt:
        log("\ninterrupted: reporting what has been measured")

    finished = datetime.datetime.now()
    if args.ceiling:
        loops = loops + [NATIVE]
    log()
    print_table(results, loops, unavailable)

    os.makedirs(args.out, exist_ok=True)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    base = os.path.join(args.out, stamp)
    doc = {
        "command": command,
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "settings": {"rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
                     "ceiling": args.ceiling,
                     "quick": args.quick, "filters": args.filter, "server_cpu": SERVER_CPU,
                     "client_cpu": CLIENT_CPU, "pinned": not pin_warning},
        "loops": {lp: ({"available": True, "loop_class": loop_classes[lp]} if lp in loop_classes
                       else {"available": False, "reason": unavailable.get(lp)}) for lp in loops},
        "skipped": skipped,
        "platform": platinfo.collect(args.python),
        "cases": results,
    }
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(f"Command: `{command}`  \n{started:%Y-%m-%d %H:%M} -- {finished:%H:%M}, "
                f"{args.rounds} rounds, {args.duration:g} s measured, {args.warmup:g} s warmup\n\n")
        f.write(markdown_table(results, loops, unavailable))
    why = write_chart(base + ".png", results)
    log()
    log(f"results: {os.path.relpath(base)}.json, .md" + ("" if why else ", .png"))
    if why:
        log(f"chart: {why}")
    for name in ("latest.json", "latest.md", "latest.png"):
        src = base + name[len("latest"):]
        dst = os.path.join(args.out, name)
        if os.path.exists(src):
            shutil.copyfile(src, dst)
    return 0


def _log_run(case, rnd, rounds, res):
    head = f"[{case.name}] round {rnd + 1}/{rounds} {res['loop']:<8}"
    if res.get("value") is None:
        log(f"{head} FAILED: {res.get('error')}")
        return
    parts = [f"{_fmt_value(res['value'])} {case.unit}"]
    if res.get("p99_ms") is not None:
        parts.append(f"p50 {_fmt_ms(res.get('p50_ms'))} ms p99 {_fmt_ms(res['p99_ms'])} ms")
    if res.get("client_cpu") is not None:
        parts.append(f"client cpu {res['client_cpu']:.0%}")
    if res.get("server_cpu") is not None:
        parts.append(f"server cpu {res['server_cpu']:.0%}")
    if res.get("foreign_cpu") is not None and res["foreign_cpu"] >= 0.05:
        parts.append(f"OTHER PROCESSES {res['foreign_cpu']:.0%} cpu")
    if res.get("errors"):
        parts.append(f"ERRORS {res['errors']}")
    log(f"{head} " + ", ".join(parts))


if __name__ == "__main__":
    sys.exit(main())
