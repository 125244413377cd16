"""``python -m aiouring`` and ``_info.describe``, run for real.

The report is checked in a subprocess, as a person or a script would run it,
against the kernel's own answers. The unusable cases are produced for real in
that subprocess only, never machine-wide: a seccomp filter like Docker's makes
io_uring_setup fail with EPERM (or ENOSYS), and an unprivileged user with
RLIMIT_MEMLOCK 0 makes pinning the ring fail with ENOMEM.
"""

import dataclasses
import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from aiouring import _info
from aiouring import ring as ringmod
from aiouring.errors import RingClosedError
from aiouring.ring import Ring

pytestmark = pytest.mark.timeout(60)

PY = sys.executable
TOP_KEYS = {"schema", "aiouring", "python", "kernel", "usable", "error", "requested", "attempts",
            "nop_roundtrip", "ring", "huge_pages", "memlock", "io_uring_disabled", "features"}
RING_KEYS = {"backing", "fallbacks", "sq_entries", "cq_entries", "setup_flags", "features",
             "memory_bytes", "rings_bytes", "sqes_bytes", "memory_address", "page_size_kb",
             "anon_huge_kb", "huge_page_backed", "ring_fd", "ring_fd_registered", "ring_fd_mappings",
             "enabled", "opcodes", "statistics", "aiouring_features"}
ERROR_KEYS = {"errno", "errno_name", "strerror", "cause", "remedy"}


def run(*args, script=None, timeout=30):
    """Run ``python -m aiouring ARGS`` (or ``script``, which ends by calling
    ``_info.main``) and return the CompletedProcess."""
    if script is None:
        cmd = [PY, "-m", "aiouring", *args]
    else:
        cmd = [PY, "-c", script, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def run_json(*args, script=None):
    proc = run("--json", *args, script=script)
    assert proc.stderr == "", proc.stderr
    rep = json.loads(proc.stdout)
    check_schema(rep)
    assert proc.returncode == (0 if rep["usable"] else 1)
    return rep


def _is(value, *types):
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def check_schema(rep):
    """The documented schema, checked key by key and type by type."""
    assert set(rep) == TOP_KEYS
    assert rep["schema"] == 1
    assert _is(rep["aiouring"], str) and _is(rep["python"], str)
    assert rep["python"] == platform.python_version()
    assert rep["kernel"]["release"] == os.uname().release
    assert len(rep["kernel"]["version"]) == 2 and all(_is(v, int) for v in rep["kernel"]["version"])
    assert _is(rep["usable"], bool)
    if rep["error"] is not None:
        assert set(rep["error"]) == ERROR_KEYS
        assert _is(rep["error"]["errno"], int)
        assert all(_is(rep["error"][k], str) and rep["error"][k] for k in ERROR_KEYS - {"errno"})
    assert set(rep["requested"]) == {"sq_entries", "cq_entries", "backing", "huge_pages"}
    for attempt in rep["attempts"]:
        assert set(attempt) == {"backing", "error"}
        assert attempt["backing"] in ringmod.BACKINGS
    assert rep["nop_roundtrip"] in (None, True, False)
    assert set(rep["huge_pages"]) == {"hugetlb_2mb_total", "hugetlb_2mb_free", "thp_mode", "reserve_command"}
    assert "nr_hugepages" in rep["huge_pages"]["reserve_command"]
    assert set(rep["memlock"]) == {"soft_bytes", "hard_bytes", "cap_ipc_lock"}
    assert _is(rep["memlock"]["cap_ipc_lock"], bool)
    check_feature_rows(rep["features"])
    if rep["ring"] is not None:
        check_ring_schema(rep["ring"])
        assert rep["features"] == rep["ring"]["aiouring_features"]
        assert rep["attempts"][-1] == {"backing": rep["ring"]["backing"], "error": None}


def check_feature_rows(rows):
    assert rows
    for row in rows:
        assert set(row) == {"name", "min_kernel", "detected_by", "available"}
        assert row["detected_by"] in ("setup_flag", "feature", "opcode", "kernel_version")
        assert all(part.isdigit() for part in row["min_kernel"].split("."))
        assert row["available"] in (True, False, None)


def check_ring_schema(ring):
    assert set(ring) == RING_KEYS
    assert ring["backing"] in ringmod.BACKINGS
    for fb in ring["fallbacks"]:
        assert set(fb) == {"backing", "error"} and _is(fb["error"], str)
    for key in ("sq_entries", "cq_entries", "memory_bytes", "rings_bytes", "sqes_bytes",
                "memory_address", "ring_fd", "ring_fd_mappings"):
        assert _is(ring[key], int), key
    assert ring["rings_bytes"] + ring["sqes_bytes"] <= ring["memory_bytes"]
    assert all(_is(f, str) for f in ring["setup_flags"] + ring["features"])
    assert _is(ring["huge_page_backed"], bool)
    ops = ring["opcodes"]
    assert set(ops) == {"count", "supported", "unnamed"}
    assert ops["count"] == len(ops["supported"]) + len(ops["unnamed"])
    assert set(ring["statistics"]) == {f.name for f in dataclasses.fields(ringmod.RingStatistics)}
    check_feature_rows(ring["aiouring_features"])
    # What the report says about the memory must agree with itself.
    if ring["backing"] == "kernel":
        assert ring["memory_address"] == 0 and ring["ring_fd_mappings"] >= 1
    else:
        assert "NO_MMAP" in ring["setup_flags"] and ring["ring_fd_mappings"] == 0
        assert ring["memory_address"] != 0


# ---- usable -----------------------------------------------------------------

def test_text_report_for_a_person():
    proc = run()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert proc.stderr == ""
    assert os.uname().release in out
    assert "io_uring: usable" in out
    assert "ring memory:" in out and "backings tried" in out
    assert "NOP round trip: yes" in out
    assert "RLIMIT_MEMLOCK" in out
    assert "transparent huge pages:" in out
    assert "features aiouring uses" in out
    for name in ("NOP", "READ", "RECV"):
        assert f" {name} " in out or f" {name}\n" in out


def test_json_report_default():
    rep = run_json()
    assert rep["usable"] and rep["nop_roundtrip"] is True and rep["error"] is None
    ring = rep["ring"]
    assert (ring["sq_entries"], ring["cq_entries"]) == (ringmod.default_sq_entries, ringmod.default_cq_entries)
    assert {"NOP", "READ", "RECV"} <= set(ring["opcodes"]["supported"])
    # The CLI's NOP went through the ring (so a thread enabled it).
    assert ring["enabled"] and ring["statistics"]["cqes_reaped"] == 1
    # Nothing before the winner succeeded, and the winner is the first that
    # did in aiouring's order.
    order = [a["backing"] for a in rep["attempts"]]
    assert order == list(ringmod.BACKINGS[:len(order)])
    if ring["backing"] == "thp":
        assert ring["huge_page_backed"] == (ring["anon_huge_kb"] >= ring["memory_bytes"] // 1024)


def test_json_report_sizes_and_no_huge_pages():
    rep = run_json("--entries", "8", "--cq-entries", "64", "--no-huge-pages")
    assert rep["requested"] == {"sq_entries": 8, "cq_entries": 64, "backing": None, "huge_pages": False}
    ring = rep["ring"]
    assert (ring["sq_entries"], ring["cq_entries"]) == (8, 64)
    assert ring["backing"] in ("pages", "kernel")
    assert "hugetlb" not in [a["backing"] for a in rep["attempts"]]
    assert not ring["huge_page_backed"]


def test_json_report_kernel_backing_maps_the_ring_fd():
    rep = run_json("--backing", "kernel", "--entries", "3")
    ring = rep["ring"]
    assert ring["backing"] == "kernel" and ring["sq_entries"] == 4
    assert "NO_MMAP" not in ring["setup_flags"]
    assert ring["ring_fd_mappings"] == 2      # SQ/CQ rings and SQEs


def test_describe_a_live_ring_without_binding_it():
    with Ring(8) as r:
        facts = _info.describe(r)
        check_ring_schema(facts)
        # Describing must not submit: the ring is still free for whichever
        # thread runs the loop.
        assert r.owner_thread is None and not facts["enabled"]
        assert facts["statistics"]["enters"] == 0
        assert facts["sq_entries"] == 8 and facts["ring_fd"] == r.fd
        assert facts["setup_flags"] == list(r.info().setup_flags)
    with pytest.raises(RingClosedError):
        _info.describe(r)


def test_docstring_documents_every_key():
    rep = run_json("--entries", "8")
    for key in list(rep) + list(rep["ring"]):
        assert f"\n    {key} " in _info.__doc__, f"{key} is not documented in aiouring/_info.py"


@pytest.mark.parametrize("args", [
    ["--entries", "0"], ["--entries", "many"], ["--entries", "40000"], ["--cq-entries", "2"],
    ["--backing", "swap"], ["--backing", "thp", "--no-huge-pages"],
])
def test_bad_options_exit_2(args):
    proc = run(*args)
    assert proc.returncode == 2
    assert "error" in proc.stderr and proc.stdout == ""


# ---- huge pages ---------------------------------------------------------------

def test_report_with_reserved_huge_pages(reserved_huge_pages):
    rep = run_json()
    ring = rep["ring"]
    assert ring["backing"] == "hugetlb" and rep["attempts"] == [{"backing": "hugetlb", "error": None}]
    assert ring["page_size_kb"] == 2048 and ring["huge_page_backed"]
    # The pool is machine-wide: only say the report saw one, not how many
    # other processes left free.
    assert rep["huge_pages"]["hugetlb_2mb_total"] >= 1
    proc = run()
    assert proc.returncode == 0
    assert "ring memory: hugetlb" in proc.stdout and "page size 2048 kB" in proc.stdout
    assert "to give rings a reserved huge page" not in proc.stdout


def test_strict_hugetlb_without_reserved_pages_says_what_to_do():
    if ringmod.huge_page_status()["hugetlb_2mb_free"] != 0:
        pytest.skip("2 MiB huge pages are reserved on this machine")
    rep = run_json("--backing", "hugetlb")
    assert not rep["usable"] and rep["ring"] is None
    assert rep["error"]["errno_name"] == "ENOMEM"
    assert "nr_hugepages" in rep["error"]["remedy"]
    assert rep["attempts"] == [{"backing": "hugetlb", "error": "ENOMEM: Cannot allocate memory"}]
    proc = run("--backing", "hugetlb")
    assert proc.returncode == 1
    assert "NOT usable" in proc.stdout and "echo 8 > /proc/sys/vm/nr_hugepages" in proc.stdout


# ---- not usable, for real, in a child process only ----------------------------

# Installs a seccomp filter in this (child) process that fails io_uring_setup
# with the given errno, as Docker's default profile does with EPERM, then runs
# the CLI. PR_SET_NO_NEW_PRIVS makes the filter legal without privileges.
_SECCOMP = textwrap.dedent("""
    import ctypes, struct, sys
    err = int(sys.argv.pop(1))
    arch = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[__import__("platform").machine()]
    NR_IO_URING_SETUP = 425   # the same on every architecture
    def stmt(code, k, jt=0, jf=0):
        return struct.pack("HBBI", code, jt, jf, k)
    prog = b"".join([
        stmt(0x20, 4),                       # A = seccomp_data.arch
        stmt(0x15, arch, 0, 3),              # not our arch: allow
        stmt(0x20, 0),                       # A = seccomp_data.nr
        stmt(0x15, NR_IO_URING_SETUP, 0, 1), # not io_uring_setup: allow
        stmt(0x06, 0x00050000 | err),        # SECCOMP_RET_ERRNO
        stmt(0x06, 0x7FFF0000),              # SECCOMP_RET_ALLOW
    ])
    buf = ctypes.create_string_buffer(prog, len(prog))
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    ul = ctypes.c_ulong
    if libc.prctl(38, ul(1), ul(0), ul(0), ul(0)) != 0:
        sys.exit(70)
    if libc.prctl(22, ul(2), ctypes.byref(fprog), ul(0), ul(0)) != 0:
        sys.exit(71)
    from aiouring._info import main
    sys.exit(main(sys.argv[1:]))
""")


def _need_seccomp_arch():
    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("seccomp filter written for x86_64 and aarch64 only")


def test_seccomp_eperm_is_explained():
    _need_seccomp_arch()
    proc = run("1", "--json", script=_SECCOMP)
    assert proc.returncode == 1, proc.stderr
    rep = json.loads(proc.stdout)
    check_schema(rep)
    assert not rep["usable"] and rep["ring"] is None and rep["nop_roundtrip"] is None
    assert rep["error"]["errno_name"] == "EPERM"
    assert "seccomp" in rep["error"]["cause"]
    assert "seccomp" in rep["error"]["remedy"]
    # hugetlb may fail earlier, at mmap, without reaching the kernel's filter.
    assert [a["backing"] for a in rep["attempts"]] == list(ringmod.BACKINGS)
    assert all(a["error"].startswith("EPERM") for a in rep["attempts"] if a["backing"] != "hugetlb")
    # Without a ring, only version-judged features can be answered.
    for row in rep["features"]:
        assert (row["available"] is None) == (row["detected_by"] != "kernel_version")

    proc = run("1", script=_SECCOMP)
    assert proc.returncode == 1
    assert "io_uring: NOT usable" in proc.stdout and "seccomp" in proc.stdout


def test_missing_io_uring_enosys_is_explained():
    _need_seccomp_arch()
    proc = run("38", "--json", script=_SECCOMP)   # ENOSYS
    assert proc.returncode == 1, proc.stderr
    rep = json.loads(proc.stdout)
    check_schema(rep)
    assert rep["error"]["errno_name"] == "ENOSYS"
    assert "kernel" in rep["error"]["cause"]


# Drops to an unprivileged user with no locked memory allowed. Everything the
# CLI imports is imported first: the interpreter may live where that user may
# not read.
_MEMLOCK = textwrap.dedent("""
    import os, resource, sys, json, shutil, argparse
    from aiouring import _info
    _info._parser().format_help()
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    sys.exit(_info.main(sys.argv[1:]))
""")


def test_memlock_enomem_is_explained():
    if os.geteuid() != 0:
        pytest.skip("needs root to become an unprivileged user")
    proc = run("--json", script=_MEMLOCK)
    assert proc.returncode == 1, proc.stderr
    rep = json.loads(proc.stdout)
    check_schema(rep)
    assert rep["memlock"] == {"soft_bytes": 0, "hard_bytes": 0, "cap_ipc_lock": False}
    assert rep["error"]["errno_name"] == "ENOMEM"
    assert "RLIMIT_MEMLOCK" in rep["error"]["cause"]
    assert [a["backing"] for a in rep["attempts"]] == list(ringmod.BACKINGS)
    assert all(a["error"].startswith("ENOMEM") for a in rep["attempts"])
    proc = run(script=_MEMLOCK)
    assert proc.returncode == 1
    assert "ulimit -l" in proc.stdout
