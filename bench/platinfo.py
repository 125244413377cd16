"""Describe the machine a benchmark ran on.

    python bench/platinfo.py                     # JSON on stdout
    python bench/platinfo.py --aiouring-backing  # one line: the ring backing aiouring got

``collect()`` returns a dict: kernel, CPU model and count, Python, versions of
the packages that matter (aiouring, uvloop, aiohttp, httptools, ...), the
tools (gcc, wrk), limits that affect io_uring (io_uring_disabled, memlock,
somaxconn), and, when aiouring is importable, the output of
``python -m aiouring --json`` (ring backing, granted flags, probe).  Every
probe tolerates failure: a missing piece becomes an "error" entry, never an
exception.
"""

import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys

PACKAGES = ("aiouring", "uvloop", "aiohttp", "httptools", "matplotlib", "cffi")


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as exc:
        return f"error: {exc}"


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _run(cmd, timeout=20):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return proc, None


def _tool_version(cmd):
    proc, err = _run(cmd)
    if err:
        return f"unavailable ({err})"
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[0] if text else f"unknown (exit {proc.returncode})"


def _versions():
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def aiouring_info(python=sys.executable):
    """Output of `python -m aiouring --json`, or {"error": why}."""
    proc, err = _run([python, "-m", "aiouring", "--json"])
    if err:
        return {"error": err}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0]}"}
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return {"error": "output is not JSON", "text": proc.stdout[:2000]}


def collect(python=sys.executable):
    memlock = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return {
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "hypervisor": "yes" if " hypervisor" in _read("/proc/cpuinfo") else "no",
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "python_executable": python,
        "packages": _versions(),
        "gcc": _tool_version(["gcc", "--version"]),
        "wrk": _tool_version(["wrk", "--version"]),
        "io_uring_disabled": _read("/proc/sys/kernel/io_uring_disabled"),
        "memlock_limit": [None if v == resource.RLIM_INFINITY else v for v in memlock],
        "somaxconn": _read("/proc/sys/net/core/somaxconn"),
        "tcp_congestion_control": _read("/proc/sys/net/ipv4/tcp_congestion_control"),
        "aiouring_info": aiouring_info(python),
    }


def backing_summary(info):
    """One line: which ring backing aiouring got, from aiouring_info()."""
    if "error" in info and "usable" not in info:
        return f"aiouring: `python -m aiouring --json` failed: {info['error']}"
    ring = info.get("ring") or {}
    if not info.get("usable") or not ring:
        return f"aiouring: io_uring is NOT usable here: {info.get('error')}"
    tried = ", ".join(f"{a.get('backing')} ({a.get('error') or 'ok'})" for a in info.get("attempts", []))
    return f"aiouring ring backing: {ring.get('backing')}" + (f"  (tried: {tried})" if tried else "")


if __name__ == "__main__":
    if sys.argv[1:] == ["--aiouring-backing"]:
        info = aiouring_info()
        print(backing_summary(info))
        sys.exit(0 if info.get("usable") else 1)
    json.dump(collect(), sys.stdout, indent=2)
    print()
