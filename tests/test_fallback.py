"""Where io_uring is unavailable, programs still run: the entry points fall back
to asyncio's own loop with one warning naming the cause and the remedy, and
strict mode raises UringUnavailableError instead.

Every cause is produced for real, in a child process so that nothing leaks into
the test run: a seccomp filter returning EPERM (what Docker >= 25 and
containerd >= 2.0 do), ``kernel.io_uring_disabled`` = 2 and 1, a tiny
RLIMIT_MEMLOCK for an unprivileged user (root has CAP_IPC_LOCK, which bypasses
the accounting), and an exhausted hugetlb pool.
"""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import textwrap
import threading

import pytest

import aiouring

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DISABLED = "/proc/sys/kernel/io_uring_disabled"
_NOBODY = 65534

# Runs inside each child: a small TCP echo whose payload is checked by hash, so
# that "falls back" also means "the fallback loop really works".
_CHILD_PRELUDE = textwrap.dedent("""
    import asyncio, hashlib, json, os, sys, warnings
    sys.path.insert(0, %(root)r)
    import aiouring
    from aiouring import UringFallbackWarning, UringUnavailableError

    async def echo_roundtrip():
        payload = os.urandom(256 * 1024)
        async def handle(reader, writer):
            writer.write(await reader.readexactly(len(payload)))
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        got = await reader.readexactly(len(payload))
        writer.close()
        server.close()
        await server.wait_closed()
        return {"loop": type(asyncio.get_running_loop()).__module__ + "." +
                        type(asyncio.get_running_loop()).__name__,
                "echo_ok": hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()}

    def fallback_warnings(caught):
        return [str(w.message) for w in caught if issubclass(w.category, UringFallbackWarning)]

    def strict_error():
        coro = echo_roundtrip()
        try:
            aiouring.run(coro, strict=True)
        except UringUnavailableError as exc:
            return {"type": type(exc).__name__, "errno": exc.errno, "cause": exc.cause,
                    "remedy": exc.remedy, "is_oserror": isinstance(exc, OSError),
                    "coro_closed": coro.cr_frame is None}
        return None
""") % {"root": ROOT}


def _child(body: str, *, seccomp: bool = False, env: dict | None = None, timeout: float = 60) -> dict:
    """Run prelude + body in a fresh interpreter (under the io_uring-blocking
    seccomp filter if asked); the body prints one JSON line last."""
    full_env = dict(os.environ)
    full_env.pop("AIOURING_STRICT", None)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-X", "dev", "-c", _CHILD_PRELUDE + (_SECCOMP if seccomp else "") + textwrap.dedent(body)],
                          capture_output=True, text=True, env=full_env, timeout=timeout)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["stderr"] = proc.stderr
    return result


_SECCOMP = "\nfrom tests.helpers.seccomp import block_io_uring\nblock_io_uring()\n"


# ---- seccomp (Docker >= 25, containerd >= 2.0) -------------------------------

def test_seccomp_blocked_entry_points_fall_back_with_one_warning():
    res = _child(seccomp=True, body="""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = aiouring.run(echo_roundtrip())
            second = aiouring.run(echo_roundtrip())
            loop = aiouring.new_event_loop()
            direct = type(loop).__name__
            loop.close()
            asyncio.set_event_loop_policy(aiouring.EventLoopPolicy())
            via_policy = asyncio.run(echo_roundtrip())
            asyncio.set_event_loop_policy(None)
        print(json.dumps({"first": first, "second": second, "direct": direct,
                          "via_policy": via_policy, "warnings": fallback_warnings(caught)}))
    """)
    for key in ("first", "second", "via_policy"):
        assert res[key] == {"loop": "asyncio.unix_events._UnixSelectorEventLoop", "echo_ok": True}, res
    assert res["direct"] == "_UnixSelectorEventLoop"
    assert len(res["warnings"]) == 1, res["warnings"]
    message = res["warnings"][0]
    assert "seccomp" in message and "Operation not permitted" in message
    assert "io_uring_setup" in message and "AIOURING_STRICT" in message   # cause and remedy
    # A half-built loop must not complain from __del__, nor a coroutine go un-awaited.
    assert res["stderr"] == "", res["stderr"]


def test_seccomp_blocked_strict_argument_raises_documented_error():
    res = _child(seccomp=True, body="""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            err = strict_error()
            try:
                aiouring.Loop()
                direct = None
            except UringUnavailableError as exc:
                direct = exc.errno
        print(json.dumps({"err": err, "direct": direct, "warnings": fallback_warnings(caught)}))
    """)
    err = res["err"]
    assert err is not None, "strict mode did not raise"
    assert err["type"] == "UringUnavailableError" and err["is_oserror"]
    assert err["errno"] == 1 and "seccomp" in err["cause"] and "seccomp" in err["remedy"]
    assert err["coro_closed"], "the coroutine handed to run() was left un-awaited"
    assert res["direct"] == 1
    assert res["warnings"] == []   # strict never warns, it raises
    assert res["stderr"] == "", res["stderr"]


@pytest.mark.parametrize("value, strict", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_seccomp_blocked_strict_environment_variable(value, strict):
    res = _child(seccomp=True, body="""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                out = {"ran": aiouring.run(echo_roundtrip())}
            except UringUnavailableError as exc:
                out = {"raised": exc.errno}
            try:
                asyncio.set_event_loop_policy(aiouring.EventLoopPolicy())
                out["policy"] = asyncio.run(echo_roundtrip())["echo_ok"]
            except UringUnavailableError as exc:
                out["policy_raised"] = exc.errno
            finally:
                asyncio.set_event_loop_policy(None)
        out["warnings"] = len(fallback_warnings(caught))
        print(json.dumps(out))
    """, env={"AIOURING_STRICT": value})
    if strict:
        assert res.get("raised") == 1 and res.get("policy_raised") == 1, res
        assert res["warnings"] == 0
    else:
        assert res["ran"]["echo_ok"] and res["policy"], res
        assert res["warnings"] == 1


def test_explicit_strict_false_beats_the_environment():
    res = _child(seccomp=True, body="""
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            print(json.dumps(aiouring.run(echo_roundtrip(), strict=False)))
    """, env={"AIOURING_STRICT": "1"})
    assert res["echo_ok"]


def test_seccomp_blocked_after_the_loop_exists_fails_loudly_not_silently():
    # A filter installed after the ring was set up blocks io_uring_enter: the
    # loop cannot run, and says so instead of hanging or pretending.
    res = _child("""
        loop = aiouring.Loop()
        from tests.helpers.seccomp import block_io_uring
        block_io_uring()
        try:
            loop.run_until_complete(asyncio.sleep(0))
            out = {"ran": True}
        except OSError as exc:
            out = {"errno": exc.errno}
        print(json.dumps(out))
    """)
    assert res == {"errno": 1, "stderr": res["stderr"]}


# ---- kernel.io_uring_disabled ------------------------------------------------

def _need_root_sysctl():
    if os.geteuid() != 0:
        pytest.skip("changing kernel.io_uring_disabled needs root")
    if not os.path.exists(_DISABLED):
        pytest.skip("this kernel has no kernel.io_uring_disabled (older than 6.6)")


# The child gets everything ready (imports, privileges dropped), says "ready",
# waits for "go", makes the attempt and answers at once: the machine-wide sysctl
# is changed only for that short window, since other processes share it.
_HANDSHAKE = """
    import os
    drop = %(drop)r
    if drop:
        os.setgroups([]); os.setgid(%(nobody)d); os.setuid(%(nobody)d)
    print("ready", flush=True)
    sys.stdin.readline()
    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            loop = aiouring.new_event_loop(strict=True)
            out["strict"] = "no error"
            loop.close()
        except UringUnavailableError as exc:
            out["strict"] = {"errno": exc.errno, "text": str(exc)}
        loop = aiouring.new_event_loop()
    print(json.dumps(out), flush=True)
    # The attempt is over; the parent restores the sysctl, then the fallback loop runs.
    sys.stdin.readline()
    out["loop"] = type(loop).__name__
    out["echo_ok"] = loop.run_until_complete(echo_roundtrip())["echo_ok"]
    loop.close()
    out["warnings"] = fallback_warnings(caught)
    print(json.dumps(out), flush=True)
"""


def _with_io_uring_disabled(value: int, drop_privileges: bool) -> dict:
    _need_root_sysctl()
    code = _CHILD_PRELUDE + textwrap.dedent(_HANDSHAKE % {"drop": drop_privileges, "nobody": _NOBODY})
    env = dict(os.environ)
    env.pop("AIOURING_STRICT", None)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    with open(_DISABLED) as f:
        previous = f.read().strip()
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        try:
            with open(_DISABLED, "w") as f:
                f.write(str(value))
            proc.stdin.write("go\n")
            proc.stdin.flush()
            attempt = proc.stdout.readline()
        finally:
            with open(_DISABLED, "w") as f:
                f.write(previous)
        assert attempt, proc.stderr.read()
        proc.stdin.write("done\n")
        proc.stdin.flush()
        final = json.loads(proc.stdout.readline())
        stderr = proc.stderr.read()
        assert proc.wait() == 0, stderr
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with open(_DISABLED) as f:
        assert f.read().strip() == previous
    final["stderr"] = stderr
    return final


def test_io_uring_disabled_2_falls_back_and_names_the_sysctl():
    res = _with_io_uring_disabled(2, drop_privileges=False)
    assert res["strict"]["errno"] == 1
    assert "kernel.io_uring_disabled=2" in res["strict"]["text"]
    assert "sysctl -w kernel.io_uring_disabled=0" in res["strict"]["text"]
    assert res["loop"] == "_UnixSelectorEventLoop" and res["echo_ok"]
    assert len(res["warnings"]) == 1 and "io_uring_disabled=2" in res["warnings"][0]
    assert res["stderr"] == "", res["stderr"]


def test_io_uring_disabled_1_refuses_users_outside_the_group():
    res = _with_io_uring_disabled(1, drop_privileges=True)
    assert res["strict"]["errno"] == 1
    assert "io_uring_group" in res["strict"]["text"] and "io_uring_disabled=1" in res["strict"]["text"]
    assert res["loop"] == "_UnixSelectorEventLoop" and res["echo_ok"]
    assert len(res["warnings"]) == 1 and "io_uring_group" in res["warnings"][0]


def test_io_uring_disabled_1_still_allows_root():
    # CAP_SYS_ADMIN is exempt from io_uring_disabled=1: root keeps its ring.
    res = _with_io_uring_disabled(1, drop_privileges=False)
    assert res["strict"] == "no error"
    assert res["loop"] == "Loop" and res["echo_ok"] and res["warnings"] == []


# ---- RLIMIT_MEMLOCK ------------------------------------------------------------

_AS_NOBODY_WITH_MEMLOCK = """
    import resource
    limit = %(limit)d
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))
    # Root has CAP_IPC_LOCK, which skips memlock accounting: become nobody.
    # Everything is imported already (/root, where Python lives, is 0700).
    os.setgroups([]); os.setgid(%(nobody)d); os.setuid(%(nobody)d)
    out = {"strict": strict_error()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["ran"] = aiouring.run(echo_roundtrip())
    out["warnings"] = fallback_warnings(caught)
    try:
        small = aiouring.Loop(sq_entries=8)
        out["small_ring"] = small.run_until_complete(echo_roundtrip())
        small.close()
    except UringUnavailableError as exc:
        out["small_ring"] = {"errno": exc.errno}
    print(json.dumps(out))
"""


def _need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges to nobody")


def test_zero_memlock_for_an_unprivileged_user_falls_back_naming_the_limit():
    _need_root()
    res = _child(_AS_NOBODY_WITH_MEMLOCK % {"limit": 0, "nobody": _NOBODY})
    assert res["strict"]["errno"] == 12
    assert "RLIMIT_MEMLOCK is 0 KiB" in res["strict"]["cause"]
    assert "ulimit -l" in res["strict"]["remedy"]
    assert res["ran"] == {"loop": "asyncio.unix_events._UnixSelectorEventLoop", "echo_ok": True}
    assert len(res["warnings"]) == 1 and "RLIMIT_MEMLOCK" in res["warnings"][0]
    assert res["small_ring"] == {"errno": 12}


def test_container_sized_memlock_gets_a_smaller_ring_instead_of_no_ring():
    # 64 KiB is a common container default: too small for the default ring
    # (~0.5 MiB pinned). The default sizes shrink on ENOMEM until a ring fits,
    # so the program still runs on io_uring, and ring_info() says what happened.
    _need_root()
    res = _child(_AS_NOBODY_WITH_MEMLOCK % {"limit": 64 * 1024, "nobody": _NOBODY} + """
    import time
    deadline = time.monotonic() + 5
    while True:
        try:
            lp = aiouring.Loop()
            break
        except UringUnavailableError:
            # The kernel unpins a closed ring's memory in a worker, a moment
            # after close(): the loops above may still be charged.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    info = lp.ring_info()
    print(json.dumps({"sq": info.sq_entries, "cq": info.cq_entries, "fallbacks": info.fallbacks,
                      "ran": out["ran"], "warnings": out["warnings"], "small_ring": out["small_ring"]}))
    lp.close()
""")
    assert res["ran"] == {"loop": "aiouring.loop.Loop", "echo_ok": True}, res
    assert res["warnings"] == []
    assert res["small_ring"] == {"loop": "aiouring.loop.Loop", "echo_ok": True}
    assert res["sq"] < 4096 and res["cq"] >= res["sq"]
    assert any(kind == "size" and "ENOMEM" in why for kind, why in res["fallbacks"]), res["fallbacks"]


def test_explicit_sizes_are_not_shrunk_behind_the_callers_back():
    _need_root()
    res = _child(_AS_NOBODY_WITH_MEMLOCK % {"limit": 64 * 1024, "nobody": _NOBODY} + """
    try:
        aiouring.Loop(sq_entries=4096).close()
        print(json.dumps({"explicit": "ran"}))
    except UringUnavailableError as exc:
        print(json.dumps({"explicit": exc.errno}))
""")
    assert res["explicit"] == 12


# ---- huge pages ----------------------------------------------------------------

_POOL = "/sys/kernel/mm/hugepages/hugepages-2048kB/"
_MAP_HUGETLB = 0x40000
_MAP_HUGE_2MB = 21 << 26


def _exhaust_hugetlb_pool() -> list:
    """Reserve every free 2 MiB huge page in this process (without touching the
    machine-wide pool size), so that the ring cannot get one."""
    held = []
    try:
        with open(_POOL + "free_hugepages") as f:
            free = int(f.read())
    except OSError:
        return held
    for _ in range(free):
        try:
            m = mmap.mmap(-1, 2 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_HUGETLB | _MAP_HUGE_2MB)
        except OSError:
            break
        m[0] = 1   # fault it in: the page is ours now
        held.append(m)
    return held


def test_no_free_huge_pages_falls_back_to_thp_or_pages_and_reports_it():
    held = _exhaust_hugetlb_pool()
    try:
        loop = aiouring.Loop()
        try:
            info = loop.ring_info()
            assert info.backing in ("thp", "pages")
            assert info.fallbacks[0][0] == "hugetlb" and "ENOMEM" in info.fallbacks[0][1]
            assert loop.run_until_complete(_echo_in_process())
        finally:
            loop.close()
    finally:
        for m in held:
            m.close()


@pytest.mark.parametrize("backing", ["pages", "kernel"])
def test_loop_runs_on_every_non_huge_backing(backing):
    # "kernel" is what a kernel without IORING_SETUP_NO_MMAP (< 6.5) gets.
    loop = aiouring.Loop(backing=backing)
    try:
        assert loop.ring_info().backing == backing
        assert loop.run_until_complete(_echo_in_process())
    finally:
        loop.close()


async def _echo_in_process() -> bool:
    import asyncio
    import hashlib
    payload = os.urandom(128 * 1024)

    async def handle(reader, writer):
        writer.write(await reader.readexactly(len(payload)))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    writer.write(payload)
    got = await reader.readexactly(len(payload))
    writer.close()
    server.close()
    await server.wait_closed()
    return hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
