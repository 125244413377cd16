"""``python -m aiouring``: what io_uring gives aiouring on this machine, and why.

Facts this report is built on
-----------------------------
* io_uring can be refused outright: ``EPERM`` from a seccomp filter (the
  default profiles of Docker >= 25 and containerd >= 2.0) or from
  ``kernel.io_uring_disabled``, ``ENOSYS`` on kernels without it, ``ENOMEM``
  when the ring's memory cannot be pinned under ``RLIMIT_MEMLOCK``.
* The ring's memory may come from a reserved 2 MiB hugetlb page, a
  transparent huge page, plain pages, or the kernel itself; which one a ring
  got, and why the better ones failed, is only known after trying.
* ``madvise(MADV_HUGEPAGE)`` is a request: whether the kernel really backed the
  ring with a huge page shows only in ``/proc/self/smaps`` (``AnonHugePages``).
* Which operations exist is answered by the kernel's probe, not by its version
  (distributions backport); some features have no probe, and for those the
  version is all we have.

What this means for the tool
----------------------------
It sets up a real ring with the options given, sends one NOP through it, and
reports what it observed. It never changes the machine: reserving huge pages is
printed as a command for a person to run.

``describe(ring)`` returns the ring part of the report for any live ring
without submitting anything (so it does not bind a not-yet-enabled ring to the
calling thread).

JSON schema (``--json``; ``schema`` is bumped on any incompatible change)
------------------------------------------------------------------------
Top level::

    schema          int, 1
    aiouring        str, package version
    python          str, e.g. "3.11.9"
    kernel          {"release": str (uname -r), "version": [major, minor]}
    usable          bool; the exit status is 0 when true, 1 when false
    error           null, or {"errno": int, "errno_name": str, "strerror": str,
                              "cause": str, "remedy": str}
    requested       {"sq_entries": int, "cq_entries": int|null,
                     "backing": str|null, "huge_pages": bool}
    attempts        [{"backing": str, "error": str|null}]: each backing tried
                    in order, error null for the one that worked
    nop_roundtrip   bool|null: a NOP went through the ring and came back
    ring            null, or describe(ring) (below)
    huge_pages      {"hugetlb_2mb_total": int|null, "hugetlb_2mb_free": int|null,
                     "thp_mode": str|null, "reserve_command": str}
    memlock         {"soft_bytes": int|null, "hard_bytes": int|null  (null: unlimited),
                     "cap_ipc_lock": bool  (true: the limit does not apply)}
    io_uring_disabled  int|null: the kernel.io_uring_disabled sysctl
    features        the aiouring_features table (below); without a ring,
                    "available" is judged from the kernel version or is null

``describe(ring)``::

    backing            "hugetlb" | "thp" | "pages" | "kernel"
    fallbacks          [{"backing": str, "error": str}]: tried first, failed
    sq_entries         int, as granted (a power of two)
    cq_entries         int, as granted (a power of two)
    setup_flags        [str]: IORING_SETUP_* granted, without the prefix
    features           [str]: IORING_FEAT_* reported, without the prefix
    memory_bytes       int: all ring memory (ours, or the kernel's mappings)
    rings_bytes        int: the rings region (header, CQEs, SQ array) in it
    sqes_bytes         int: the SQE array in it
    memory_address     int: start of our memory (0 for kernel-backed rings)
    page_size_kb       int|null: KernelPageSize of that memory (2048: hugetlb)
    anon_huge_kb       int|null: AnonHugePages of that memory (THP granted)
    huge_page_backed   bool: every byte of ring memory sits in 2 MiB pages
    ring_fd            int
    ring_fd_registered bool (IORING_REGISTER_RING_FDS, after first use)
    ring_fd_mappings   int: mappings of the ring fd (0 with NO_MMAP)
    enabled            bool: a thread has started using (and owns) the ring
    opcodes            {"count": int, "supported": [str], "unnamed": [int]}:
                       names for the operations aiouring knows, numbers for
                       the rest the kernel supports
    statistics         Ring.statistics() as a dict
    aiouring_features  [{"name": str, "min_kernel": str, "detected_by":
                        "setup_flag"|"feature"|"opcode"|"kernel_version",
                        "available": bool|null}]
"""

from __future__ import annotations

import argparse
import dataclasses
import errno as _errno
import json
import os
import platform
import resource
import sys
from typing import Optional

from . import _version
from . import ring as _ring
from .errors import RingClosedError, UringUnavailableError

__all__ = ["describe", "report", "main", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1

RESERVE_COMMAND = "echo 8 > /proc/sys/vm/nr_hugepages"
_HUGE_KB = 2048
_OPCODES_BY_NAME = {name: code for code, name in _ring.OPCODE_NAMES.items()}
_CAP_IPC_LOCK = 14

# The features aiouring relies on, the first mainline kernel with each, and
# how we can tell on this machine. Versions from the kernel's io_uring history
# as summarised in DESIGN.md.
_FEATURE_TABLE = (
    ("CQ overflow kept, not dropped (FEAT_NODROP)", "5.5", "feature", "NODROP"),
    ("fast poll for sockets (FEAT_FAST_POLL)", "5.7", "feature", "FAST_POLL"),
    ("wait with a timeout, no SQE (FEAT_EXT_ARG)", "5.11", "feature", "EXT_ARG"),
    ("SETUP_SUBMIT_ALL", "5.18", "setup_flag", "SUBMIT_ALL"),
    ("registered ring fd (REGISTER_RING_FDS)", "5.18", "kernel_version", None),
    ("SETUP_COOP_TASKRUN + TASKRUN_FLAG", "5.19", "setup_flag", "COOP_TASKRUN"),
    ("provided buffer rings (REGISTER_PBUF_RING)", "5.19", "kernel_version", None),
    ("multishot accept", "5.19", "kernel_version", None),
    ("SOCKET", "5.19", "opcode", "SOCKET"),
    ("SETUP_SINGLE_ISSUER + R_DISABLED", "6.0", "setup_flag", "SINGLE_ISSUER"),
    ("multishot recv", "6.0", "kernel_version", None),
    ("SEND_ZC", "6.0", "opcode", "SEND_ZC"),
    ("SETUP_DEFER_TASKRUN", "6.1", "setup_flag", "DEFER_TASKRUN"),
    ("our own ring memory (SETUP_NO_MMAP)", "6.5", "setup_flag", "NO_MMAP"),
    ("SETUP_NO_SQARRAY", "6.6", "setup_flag", "NO_SQARRAY"),
    ("WAITID (child exit on the ring)", "6.7", "opcode", "WAITID"),
    ("FTRUNCATE", "6.9", "opcode", "FTRUNCATE"),
    ("NO_MMAP rings in plain 4 KiB pages", "6.10", "kernel_version", None),
    ("recv/send bundles (FEAT_RECVSEND_BUNDLE)", "6.10", "feature", "RECVSEND_BUNDLE"),
    ("wait with a minimum timeout (FEAT_MIN_TIMEOUT)", "6.12", "feature", "MIN_TIMEOUT"),
)


# ---- machine facts -----------------------------------------------------------

def _kernel() -> dict:
    release = os.uname().release
    nums = []
    for piece in release.split("-")[0].split(".")[:2]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        nums.append(int(digits or 0))
    while len(nums) < 2:
        nums.append(0)
    return {"release": release, "version": nums}


def _version_tuple(text: str) -> tuple:
    return tuple(int(x) for x in text.split("."))


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _has_cap_ipc_lock() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_IPC_LOCK & 1)
    except (OSError, ValueError):
        pass
    return False


def _memlock() -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    inf = resource.RLIM_INFINITY
    return {
        "soft_bytes": None if soft == inf else soft,
        "hard_bytes": None if hard == inf else hard,
        "cap_ipc_lock": _has_cap_ipc_lock(),
    }


def _huge_pages() -> dict:
    status = dict(_ring.huge_page_status())
    status["reserve_command"] = RESERVE_COMMAND
    return status


# ---- the process's view of ring memory -------------------------------------

def _smaps():
    """Yield (start, end, inode, path, fields in kB) for each mapping."""
    current = None
    try:
        f = open("/proc/self/smaps")
    except OSError:
        return
    with f:
        for line in f:
            head = line.split(" ", 1)[0]
            if "-" in head and not head.endswith(":"):
                if current is not None:
                    yield current
                parts = line.split(None, 5)
                lo, hi = parts[0].split("-")
                path = parts[5].strip() if len(parts) > 5 else ""
                current = (int(lo, 16), int(hi, 16), int(parts[4]), path, {})
            elif current is not None and line.rstrip().endswith(" kB"):
                key, _, rest = line.partition(":")
                current[4][key] = int(rest.split()[0])
    if current is not None:
        yield current


def _memory_facts(ring: _ring.Ring) -> dict:
    address = ring.memory_address()
    try:
        inode = os.fstat(ring.fd).st_ino
    except OSError:
        inode = None
    page_kb = anon_huge_kb = None
    fd_mappings = 0
    huge_kb = 0
    covered_kb = 0
    for lo, hi, ino, path, kb in _smaps():
        if address and lo <= address < hi:
            page_kb = kb.get("KernelPageSize")
            anon_huge_kb = kb.get("AnonHugePages", 0)
            covered_kb = (hi - lo) // 1024
            if page_kb == _HUGE_KB:
                huge_kb = covered_kb
            else:
                huge_kb = anon_huge_kb
        if inode is not None and ino == inode and "io_uring" in path:
            fd_mappings += 1
            if not address and page_kb is None:
                page_kb = kb.get("KernelPageSize")
    return {
        "memory_address": address,
        "page_size_kb": page_kb,
        "anon_huge_kb": anon_huge_kb,
        "huge_page_backed": bool(covered_kb) and huge_kb >= covered_kb,
        "ring_fd_mappings": fd_mappings,
    }


# ---- the report --------------------------------------------------------------

def _feature_table(kernel: dict, info=None, opcodes: Optional[frozenset] = None) -> list:
    have = tuple(kernel["version"])
    rows = []
    for name, min_kernel, kind, key in _FEATURE_TABLE:
        if kind == "kernel_version":
            available = have >= _version_tuple(min_kernel)
        elif info is None:
            available = None
        elif kind == "setup_flag":
            available = key in info.setup_flags
        elif kind == "feature":
            available = key in info.features
        else:
            code = _OPCODES_BY_NAME.get(key or "")
            available = None if opcodes is None or code is None else code in opcodes
        rows.append({"name": name, "min_kernel": min_kernel, "detected_by": kind, "available": available})
    return rows


def describe(ring: _ring.Ring) -> dict:
    """The report's facts about one live ring (see the module docstring for
    the keys). Submits nothing, so it may be called from any thread."""
    if ring.closed:
        raise RingClosedError("cannot describe a closed ring")
    info = ring.info()
    opcodes = ring.probe()
    named = sorted(_ring.OPCODE_NAMES[o] for o in opcodes if o in _ring.OPCODE_NAMES)
    unnamed = sorted(o for o in opcodes if o not in _ring.OPCODE_NAMES)
    facts = {
        "backing": info.backing,
        "fallbacks": [{"backing": b, "error": e} for b, e in info.fallbacks],
        "sq_entries": info.sq_entries,
        "cq_entries": info.cq_entries,
        "setup_flags": list(info.setup_flags),
        "features": list(info.features),
        "memory_bytes": info.memory_bytes,
        "rings_bytes": info.rings_bytes,
        "sqes_bytes": info.sqes_bytes,
    }
    facts.update(_memory_facts(ring))
    facts.update({
        "ring_fd": info.ring_fd,
        "ring_fd_registered": info.ring_fd_registered,
        "enabled": ring.owner_thread is not None,
        "opcodes": {"count": len(opcodes), "supported": named, "unnamed": unnamed},
        "statistics": dataclasses.asdict(ring.statistics()),
        "aiouring_features": _feature_table(_kernel(), info, opcodes),
    })
    # Key order is part of the documented schema only by name; keep it stable
    # anyway so that diffs of two machines' reports line up.
    return {k: facts[k] for k in (
        "backing", "fallbacks", "sq_entries", "cq_entries", "setup_flags", "features",
        "memory_bytes", "rings_bytes", "sqes_bytes", "memory_address", "page_size_kb",
        "anon_huge_kb", "huge_page_backed", "ring_fd", "ring_fd_registered", "ring_fd_mappings",
        "enabled", "opcodes", "statistics", "aiouring_features")}


def _error_dict(exc: OSError, cause: str, remedy: str) -> dict:
    err = exc.errno or 0
    return {
        "errno": err,
        "errno_name": _errno.errorcode.get(err, str(err)),
        "strerror": os.strerror(err) if err else str(exc),
        "cause": cause,
        "remedy": remedy,
    }


def _backing_error(backing: str, exc: OSError, kernel: dict) -> dict:
    """Cause and remedy when a backing the user insisted on fails."""
    err = exc.errno
    if backing == "hugetlb" and err == _errno.ENOMEM:
        cause = "no free 2 MiB hugetlb page could be had (the pool is usually empty)"
        remedy = f"Reserve huge pages as root: {RESERVE_COMMAND}"
    elif err == _errno.ENOMEM:
        return _error_dict(exc, *_unavailable_text(_ring.explain_unavailable(err)))
    elif err == _errno.EINVAL and backing in ("hugetlb", "thp", "pages"):
        need = "6.10" if backing == "pages" else "6.5"
        cause = f"this kernel refused a ring in {backing} memory (IORING_SETUP_NO_MMAP needs Linux {need})"
        remedy = "Let aiouring choose (no --backing), or use --backing kernel."
    else:
        cause = f"the {backing} backing could not be set up"
        remedy = "Let aiouring choose the backing (no --backing)."
    return _error_dict(exc, cause, remedy)


def _unavailable_text(exc: UringUnavailableError) -> tuple:
    return exc.cause, exc.remedy


def _attempt_each(order, sq: int, cq: Optional[int]) -> list:
    """When no backing worked, find out why each one failed, one at a time."""
    attempts = []
    for backing in order:
        try:
            _ring.Ring(sq, cq, backing=backing).close()
            attempts.append({"backing": backing, "error": None})
        except OSError as exc:
            name = _errno.errorcode.get(exc.errno or 0, str(exc.errno))
            attempts.append({"backing": backing, "error": f"{name}: {os.strerror(exc.errno or 0)}"})
    return attempts


def report(sq_entries: int = _ring.default_sq_entries, cq_entries: Optional[int] = None,
           backing: Optional[str] = None, huge_pages: bool = True) -> dict:
    """Set up a ring as asked, send a NOP through it, and return the whole
    report (schema in the module docstring). Raises ValueError/TypeError for
    impossible sizes, like Ring itself."""
    kernel = _kernel()
    out: dict = {
        "schema": SCHEMA_VERSION,
        "aiouring": _version.__version__,
        "python": platform.python_version(),
        "kernel": kernel,
        "usable": False,
        "error": None,
        "requested": {"sq_entries": sq_entries, "cq_entries": cq_entries,
                      "backing": backing, "huge_pages": huge_pages},
        "attempts": [],
        "nop_roundtrip": None,
        "ring": None,
        "huge_pages": _huge_pages(),
        "memlock": _memlock(),
        "io_uring_disabled": _read_int("/proc/sys/kernel/io_uring_disabled"),
        "features": _feature_table(kernel),
    }
    order: tuple
    if backing is not None:
        order = (backing,)
    else:
        order = _ring.BACKINGS if huge_pages else ("pages", "kernel")
    try:
        ring = _ring.Ring(sq_entries, cq_entries, backing=backing, huge_pages=huge_pages)
    except UringUnavailableError as exc:
        out["error"] = _error_dict(exc, exc.cause, exc.remedy)
        out["attempts"] = _attempt_each(order, sq_entries, cq_entries)
        return out
    except OSError as exc:          # a backing the user insisted on
        out["error"] = _backing_error(backing or "", exc, kernel)
        out["attempts"] = _attempt_each(order, sq_entries, cq_entries)
        return out
    try:
        info = ring.info()
        out["attempts"] = [{"backing": b, "error": e} for b, e in info.fallbacks]
        out["attempts"].append({"backing": info.backing, "error": None})
        try:
            out["nop_roundtrip"] = _nop_roundtrip(ring)
        except OSError as exc:
            out["nop_roundtrip"] = False
            out["error"] = _error_dict(exc, "the ring was set up but a NOP could not go through it",
                                       "Report this with the output of `python -m aiouring --json`.")
        out["ring"] = describe(ring)
        out["features"] = out["ring"]["aiouring_features"]
        out["usable"] = bool(out["nop_roundtrip"])
    finally:
        ring.close()
    return out


def _nop_roundtrip(ring: _ring.Ring) -> bool:
    marker = 0x6169_6F75   # any key: nothing else is in flight on this ring
    nop = _OPCODES_BY_NAME["NOP"]
    ring.prep(nop, -1, ring.null, 0, 0, 0, marker)
    # Bounded: a NOP completes inline, so a second of waiting is already a fault.
    for _ in range(10):
        got = ring.submit_and_reap(0.1)
        if got:
            return got[0] == marker and got[1] == 0
    return False


# ---- text for people -----------------------------------------------------

def _kib(n: Optional[int]) -> str:
    if n is None:
        return "unlimited"
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MiB"
    if n < 1024:
        return f"{n} bytes"
    return f"{n / 1024:g} KiB"


def _yes(flag) -> str:
    return {True: "yes", False: "no", None: "?"}[flag]


def _wrap(words, indent: str, width: int = 78) -> list:
    lines, line = [], indent
    for w in words:
        if len(line) + len(w) + 1 > width and line.strip():
            lines.append(line.rstrip())
            line = indent
        line += w + " "
    if line.strip():
        lines.append(line.rstrip())
    return lines


def format_text(rep: dict) -> str:
    k = rep["kernel"]
    lines = [f"aiouring {rep['aiouring']} on Linux {k['release']} ({platform.machine()}), "
             f"Python {rep['python']}", ""]
    ring = rep["ring"]
    if rep["usable"]:
        lines.append("io_uring: usable")
    else:
        lines.append("io_uring: NOT usable")
    err = rep["error"]
    if err:
        lines.append(f"  cause:      {err['cause']}")
        lines.append(f"  kernel said: {err['errno_name']} ({err['strerror']})")
        lines.append(f"  what to do: {err['remedy']}")
    if rep["attempts"]:
        tried = ", ".join(f"{a['backing']} ({'ok' if a['error'] is None else a['error']})"
                          for a in rep["attempts"])
        lines.append(f"  backings tried, in order: {tried}")
    if ring:
        backing = ring["backing"]
        detail = {
            "hugetlb": "a reserved 2 MiB hugetlb page",
            "thp": "a transparent huge page",
            "pages": "plain pages",
            "kernel": "memory the kernel allocated, mapped through the ring fd",
        }[backing]
        lines.append(f"  ring memory: {backing} ({detail})")
        if backing == "thp":
            if ring["huge_page_backed"]:
                lines.append(f"    the kernel did back it with a huge page (AnonHugePages {ring['anon_huge_kb']} kB)")
            else:
                lines.append(f"    but the kernel used small pages (AnonHugePages {ring['anon_huge_kb']} kB): "
                             "THP is off or memory is fragmented")
        elif backing == "hugetlb":
            lines.append(f"    page size {ring['page_size_kb']} kB")
        lines.append(f"  sizes: SQ {ring['sq_entries']}, CQ {ring['cq_entries']}; rings {_kib(ring['rings_bytes'])}"
                     f" + SQEs {_kib(ring['sqes_bytes'])} in {_kib(ring['memory_bytes'])}")
        lines.append(f"  mappings of the ring fd: {ring['ring_fd_mappings']}"
                     f"{' (NO_MMAP: none expected)' if 'NO_MMAP' in ring['setup_flags'] else ''};"
                     f" ring fd registered: {_yes(ring['ring_fd_registered'])}")
        lines.append("  setup flags granted:")
        lines.extend(_wrap(ring["setup_flags"], "    "))
        lines.append("  kernel features:")
        lines.extend(_wrap(ring["features"], "    "))
        lines.append(f"  NOP round trip: {_yes(rep['nop_roundtrip'])}")
    lines.append("")

    hp = rep["huge_pages"]
    lines.append("huge pages")
    lines.append(f"  hugetlb 2 MiB pool: {hp['hugetlb_2mb_total']} pages, {hp['hugetlb_2mb_free']} free")
    lines.append(f"  transparent huge pages: {hp['thp_mode']}")
    if not hp["hugetlb_2mb_free"]:
        lines.append(f"  to give rings a reserved huge page, as root: {hp['reserve_command']}")
    lines.append("")

    ml = rep["memlock"]
    note = " (CAP_IPC_LOCK: the limit does not apply to this process)" if ml["cap_ipc_lock"] else ""
    lines.append(f"locked memory (RLIMIT_MEMLOCK): {_kib(ml['soft_bytes'])} soft, {_kib(ml['hard_bytes'])} hard{note}")
    if rep["io_uring_disabled"] is not None:
        lines.append(f"kernel.io_uring_disabled: {rep['io_uring_disabled']}")
    lines.append("")

    if ring:
        ops = ring["opcodes"]
        lines.append(f"operations the kernel supports: {ops['count']}")
        lines.extend(_wrap(ops["supported"], "  "))
        if ops["unnamed"]:
            lines.extend(_wrap(["and opcodes aiouring has no name for:"] + [str(o) for o in ops["unnamed"]], "  "))
        lines.append("")

    lines.append("features aiouring uses")
    lines.append(f"  {'feature':<50} {'since':>6}  here")
    for row in rep["features"]:
        how = " (by version)" if row["detected_by"] == "kernel_version" else ""
        lines.append(f"  {row['name']:<50} {row['min_kernel']:>6}  {_yes(row['available'])}{how}")
    return "\n".join(lines) + "\n"


# ---- command line ------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m aiouring",
        description="Report whether io_uring is usable here and what aiouring's ring gets: "
                    "backing memory, flags, sizes, supported operations.",
        epilog="Exit status: 0 when io_uring is usable with these options, 1 when not.")
    p.add_argument("--json", action="store_true", help="print the report as JSON (schema in aiouring/_info.py)")
    p.add_argument("--entries", type=int, default=_ring.default_sq_entries, metavar="N",
                   help=f"SQ entries (default {_ring.default_sq_entries})")
    p.add_argument("--cq-entries", type=int, default=None, metavar="N",
                   help="CQ entries (default: aiouring's choice for the SQ size)")
    p.add_argument("--backing", choices=_ring.BACKINGS, default=None,
                   help="require this ring memory and fail rather than fall back")
    p.add_argument("--no-huge-pages", action="store_true", help="do not try hugetlb or THP")
    return p


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.backing in ("hugetlb", "thp") and args.no_huge_pages:
        parser.error(f"--backing {args.backing} contradicts --no-huge-pages")
    try:
        rep = report(args.entries, args.cq_entries, backing=args.backing, huge_pages=not args.no_huge_pages)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    text = json.dumps(rep, indent=2) + "\n" if args.json else format_text(rep)
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # `python -m aiouring | head`: the reader left; that is not our error.
        # Point stdout at /dev/null so that the interpreter's final flush
        # does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0 if rep["usable"] else 1
