"""The ring: one io_uring, its memory, and the three syscalls, with no asyncio in it.

How io_uring behaves, as far as this module is concerned
--------------------------------------------------------
* The SQ and CQ are shared memory. With ``IORING_SETUP_NO_MMAP`` (Linux 6.5)
  the application allocates it and passes its address at setup; the kernel pins
  it. 6.5-6.9 need physically contiguous memory (one page or one huge page);
  from 6.10 any pages do. Older kernels allocate the rings themselves and we
  ``mmap`` the ring fd.
* A 2 MiB huge page can only come from the hugetlb pool, which is usually
  empty, or from transparent huge pages, which ``madvise`` asks for and the
  kernel may or may not grant.
* ``SINGLE_ISSUER``/``DEFER_TASKRUN`` make completions run only in the thread
  that submits, and only inside ``io_uring_enter(GETEVENTS)``; with
  ``R_DISABLED`` that thread is the one that enables the ring. asyncio loops are
  often built in one thread and run in another, so we enable lazily, from the
  first thread that submits.
* With ``FEAT_NODROP`` a full CQ never loses a completion: the kernel holds it
  and sets ``IORING_SQ_CQ_OVERFLOW`` until an enter flushes it.
* Kernel failures come back as ``-errno``: from setup, from enter, and in each
  CQE's ``res``.

What this means for aiouring
----------------------------
* Setup tries backings in a fixed order (hugetlb, THP, plain pages, kernel) and
  setup flags from the richest set down, and records which it got and why the
  others failed. A caller can demand one backing (``backing=``) or forbid huge
  pages (``huge_pages=False``).
* The C layer does a whole iteration's kernel work in one call
  (``submit_and_reap``): publish SQEs, one ``io_uring_enter``, copy every CQE
  into a flat list ``[user_data, res, flags, ...]``. Python never walks the CQ.
* ``-errno`` becomes an ``OSError`` in exactly one place, :func:`check`.
* A forked child never touches the parent's ring: the memory is
  ``MADV_DONTFORK`` and an at-fork hook disowns every ring in the child.
"""

from __future__ import annotations

import errno as _errno
import os
import resource
import threading
import types
import weakref
from dataclasses import dataclass, field
from typing import Iterable, Optional

from . import _version
from ._ring import ffi, lib
from .errors import RingClosedError, UnsupportedOperation, UringUnavailableError

if lib.aiou_version() != ffi.NULL and ffi.string(lib.aiou_version()).decode() != _version.__version__:
    raise ImportError(
        "aiouring's compiled module aiouring._ring was built for version "
        f"{ffi.string(lib.aiou_version()).decode()} but the package is {_version.__version__}: "
        "reinstall aiouring (pip install --force-reinstall --no-cache-dir aiouring)"
    )

__all__ = [
    "Ring", "BufferRing", "uapi", "RingInfo", "RingStatistics", "check", "BACKINGS",
    "default_sq_entries", "default_cq_entries", "huge_page_status",
]

# ---- tunables -------------------------------------------------------------
# 4096 SQEs: a loop queues at most a few SQEs per ready socket per iteration,
# and a full SQ only costs an extra enter. CQ 16384: one iteration's burst of
# multishot completions from a few thousand connections fits without overflow.
# Rings (16384*16 + 64, + 4096*4) and SQEs (4096*64) take ~0.5 MiB: one huge page.
default_sq_entries = 4096
default_cq_entries = 16384
# How many CQEs one reap copies out. More simply stay in the CQ for the next
# iteration, which then does not wait.
_REAP_BATCH = 4096
_KERNEL_MAX_SQ = 32768
# When the default-sized ring cannot be pinned (ENOMEM: RLIMIT_MEMLOCK, 64 KiB
# in many containers), halve it down to this before giving up: 64 SQEs only
# mean more flushes per iteration, which beats no io_uring at all.
_MIN_SQ_ON_ENOMEM = 64
# Ring()'s default SQ size, told apart from an explicit default_sq_entries.
_DEFAULT_SQ = object()
_KERNEL_MAX_CQ = 65536

BACKINGS = ("hugetlb", "thp", "pages", "kernel")
_BACKING_CODE = {
    "hugetlb": lib.AIOU_BACKING_HUGETLB,
    "thp": lib.AIOU_BACKING_THP,
    "pages": lib.AIOU_BACKING_PAGES,
    "kernel": lib.AIOU_BACKING_KERNEL,
}

_FLAG_NAMES = {
    lib.IORING_SETUP_CQSIZE: "CQSIZE",
    lib.IORING_SETUP_R_DISABLED: "R_DISABLED",
    lib.IORING_SETUP_SUBMIT_ALL: "SUBMIT_ALL",
    lib.IORING_SETUP_COOP_TASKRUN: "COOP_TASKRUN",
    lib.IORING_SETUP_TASKRUN_FLAG: "TASKRUN_FLAG",
    lib.IORING_SETUP_SINGLE_ISSUER: "SINGLE_ISSUER",
    lib.IORING_SETUP_DEFER_TASKRUN: "DEFER_TASKRUN",
    lib.IORING_SETUP_NO_MMAP: "NO_MMAP",
    lib.IORING_SETUP_NO_SQARRAY: "NO_SQARRAY",
}
_FEATURE_NAMES = {
    lib.IORING_FEAT_SINGLE_MMAP: "SINGLE_MMAP",
    lib.IORING_FEAT_NODROP: "NODROP",
    lib.IORING_FEAT_SUBMIT_STABLE: "SUBMIT_STABLE",
    lib.IORING_FEAT_FAST_POLL: "FAST_POLL",
    lib.IORING_FEAT_EXT_ARG: "EXT_ARG",
    lib.IORING_FEAT_NATIVE_WORKERS: "NATIVE_WORKERS",
    lib.IORING_FEAT_CQE_SKIP: "CQE_SKIP",
    lib.IORING_FEAT_REG_REG_RING: "REG_REG_RING",
    lib.IORING_FEAT_RECVSEND_BUNDLE: "RECVSEND_BUNDLE",
    lib.IORING_FEAT_MIN_TIMEOUT: "MIN_TIMEOUT",
}

# Setup flags, richest first. On EINVAL (an older kernel) we drop the last
# optional flag and try again; the order drops the newest features first.
_BASE_FLAGS = lib.IORING_SETUP_CQSIZE
_OPTIONAL_FLAGS = (
    lib.IORING_SETUP_SUBMIT_ALL,                                   # 5.18
    lib.IORING_SETUP_COOP_TASKRUN | lib.IORING_SETUP_TASKRUN_FLAG,  # 5.19
    lib.IORING_SETUP_SINGLE_ISSUER | lib.IORING_SETUP_R_DISABLED,   # 6.0
    lib.IORING_SETUP_DEFER_TASKRUN,                                # 6.1
    lib.IORING_SETUP_NO_SQARRAY,                                   # 6.6
)

OPCODE_NAMES = {
    getattr(lib, name): name[len("IORING_OP_"):]
    for name in dir(lib)
    if name.startswith("IORING_OP_") and name != "IORING_OP_LAST_KNOWN"
}

# The kernel's (and libc's) constants, as compiled into the C layer, for the
# modules above: they never hard-code an IORING_* number.
uapi = types.SimpleNamespace(**{name: getattr(lib, name) for name in dir(lib) if name.isupper()})

_strerror = os.strerror
# Bound once: these run on every loop iteration.
_submit_and_reap = lib.aiou_submit_and_reap
_unpack = ffi.unpack
_pbuf_recycle = lib.aiou_pbuf_recycle
_U64_MASK = (1 << 64) - 1


def check(res: int) -> int:
    """Return ``res`` if it is not a negative errno, else raise the OSError for it.

    The one place where the C layer's and the kernel's ``-errno`` becomes a
    Python exception; CPython picks the subclass from the errno.
    """
    if res < 0:
        raise OSError(-res, _strerror(-res))
    return res


def error_from_result(res: int) -> OSError:
    """The OSError for a negative CQE result (for futures that want an instance)."""
    return OSError(-res, _strerror(-res))


@dataclass(frozen=True)
class RingInfo:
    """What the kernel gave us. ``fallbacks`` lists the backings that were tried
    first and why each failed, as ``(backing, "ERRNO: message")``."""

    backing: str
    sq_entries: int
    cq_entries: int
    setup_flags: tuple
    features: tuple
    memory_bytes: int
    rings_bytes: int
    sqes_bytes: int
    ring_fd: int
    ring_fd_registered: bool
    fallbacks: tuple = field(default=())

    def as_dict(self) -> dict:
        return {
            "backing": self.backing,
            "sq_entries": self.sq_entries,
            "cq_entries": self.cq_entries,
            "setup_flags": list(self.setup_flags),
            "features": list(self.features),
            "memory_bytes": self.memory_bytes,
            "rings_bytes": self.rings_bytes,
            "sqes_bytes": self.sqes_bytes,
            "ring_fd": self.ring_fd,
            "ring_fd_registered": self.ring_fd_registered,
            "fallbacks": [list(f) for f in self.fallbacks],
        }


@dataclass(frozen=True)
class RingStatistics:
    enters: int
    sqes_submitted: int
    cqes_reaped: int
    overflow_flushes: int
    sq_full_flushes: int
    sq_pending: int
    cq_ready: int


def _flag_names(flags: int, table: dict) -> tuple:
    return tuple(name for bit, name in table.items() if flags & bit)


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def huge_page_status() -> dict:
    """The machine's huge page situation, for reports: the hugetlb pool
    (2 MiB pages) and the THP mode."""
    base = "/sys/kernel/mm/hugepages/hugepages-2048kB/"
    thp_mode = None
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
        thp_mode = text[text.index("[") + 1:text.index("]")]
    except (OSError, ValueError):
        pass
    return {
        "hugetlb_2mb_total": _read_int(base + "nr_hugepages"),
        "hugetlb_2mb_free": _read_int(base + "free_hugepages"),
        "thp_mode": thp_mode,
    }


def explain_unavailable(err: int) -> UringUnavailableError:
    """Turn the errno io_uring_setup failed with into a cause and a remedy."""
    disabled = _read_int("/proc/sys/kernel/io_uring_disabled")
    if err == _errno.EPERM:
        if disabled == 2:
            cause = "the kernel has io_uring disabled (sysctl kernel.io_uring_disabled=2)"
            remedy = "Set kernel.io_uring_disabled=0 (sysctl -w kernel.io_uring_disabled=0) to use aiouring."
        elif disabled == 1:
            cause = ("io_uring is restricted to members of kernel.io_uring_group "
                     "(sysctl kernel.io_uring_disabled=1)")
            remedy = "Run as a member of that group, or set kernel.io_uring_disabled=0."
        else:
            cause = ("io_uring_setup is blocked, most likely by a seccomp filter "
                     "(the default profiles of Docker >= 25 and containerd >= 2.0 block it)")
            remedy = ("Allow the io_uring_setup, io_uring_enter and io_uring_register syscalls "
                      "in the container's seccomp profile (e.g. docker run --security-opt seccomp=...).")
    elif err == _errno.ENOSYS:
        cause = "this kernel has no io_uring (built without CONFIG_IO_URING, or older than 5.1)"
        remedy = "Use a kernel with io_uring (5.11 or newer; 6.5+ for NO_MMAP rings)."
    elif err == _errno.ENOMEM:
        soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft // 1024} KiB"
        cause = f"the kernel could not pin the ring's memory (RLIMIT_MEMLOCK is {limit})"
        remedy = "Raise the locked-memory limit (ulimit -l, or LimitMEMLOCK= in systemd), or ask for a smaller ring."
    else:
        cause = "io_uring_setup failed"
        remedy = "Run `python -m aiouring` for a diagnosis."
    return UringUnavailableError(err, _strerror(err), cause, remedy)


# Rings alive in this process, so that a forked child can disown them.
_live_rings: "weakref.WeakSet[Ring]" = weakref.WeakSet()


def _disown_rings_after_fork() -> None:
    for ring in list(_live_rings):
        ring._forget_after_fork()


os.register_at_fork(after_in_child=_disown_rings_after_fork)


def _check_entries(name: str, value, limit: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 1 <= value <= limit:
        raise ValueError(f"{name} must be between 1 and {limit}, got {value}")


class Ring:
    """One io_uring instance.

    ``sq_entries``/``cq_entries`` are rounded up to powers of two by the kernel.
    ``backing`` forces one of :data:`BACKINGS` (and fails rather than fall
    back); ``huge_pages=False`` skips the hugetlb and THP attempts.
    """

    def __init__(
        self,
        sq_entries: int = _DEFAULT_SQ,   # type: ignore[assignment]
        cq_entries: Optional[int] = None,
        *,
        backing: Optional[str] = None,
        huge_pages: bool = True,
    ) -> None:
        # Only sizes the caller left to us may shrink on ENOMEM.
        may_shrink = sq_entries is _DEFAULT_SQ and cq_entries is None
        if sq_entries is _DEFAULT_SQ:
            sq_entries = default_sq_entries
        _check_entries("sq_entries", sq_entries, _KERNEL_MAX_SQ)
        if cq_entries is None:
            # 4x the SQ, but never past the kernel's CQ limit: SQ 32768 (its
            # own maximum) would otherwise ask for an impossible CQ of 131072.
            cq_entries = (max(default_cq_entries, 2 * sq_entries) if sq_entries == default_sq_entries
                          else min(4 * sq_entries, _KERNEL_MAX_CQ))
        _check_entries("cq_entries", cq_entries, _KERNEL_MAX_CQ)
        if cq_entries < sq_entries:
            raise ValueError(f"cq_entries ({cq_entries}) must be at least sq_entries ({sq_entries})")
        if backing is not None and backing not in _BACKING_CODE:
            raise ValueError(f"backing must be one of {', '.join(BACKINGS)}, not {backing!r}")

        self._r = ffi.new("struct aiou_ring *")
        self._r.fd = -1
        self._closed = True
        self._forked = False
        self._owner: Optional[int] = None
        self._out = ffi.new("int64_t[]", 3 * _REAP_BATCH)
        self._buffer_rings: dict = {}
        self._probe: Optional[frozenset] = None
        self._fallbacks: list = []

        if backing is not None:
            order: Iterable[str] = (backing,)
        elif huge_pages:
            order = BACKINGS
        else:
            order = ("pages", "kernel")
        self._setup(sq_entries, cq_entries, tuple(order), may_shrink)
        self._closed = False
        _live_rings.add(self)

    # ---- setup ------------------------------------------------------------

    def _setup(self, sq_entries: int, cq_entries: int, order: tuple, may_shrink: bool = False) -> None:
        while True:
            try:
                return self._setup_sized(sq_entries, cq_entries, order)
            except OSError as exc:
                if not (may_shrink and exc.errno == _errno.ENOMEM and sq_entries > _MIN_SQ_ON_ENOMEM):
                    raise
            self._fallbacks.append(("size", f"ENOMEM: SQ {sq_entries} / CQ {cq_entries} could not be "
                                            "pinned (RLIMIT_MEMLOCK?); trying half"))
            sq_entries //= 2
            cq_entries //= 2

    def _setup_sized(self, sq_entries: int, cq_entries: int, order: tuple) -> None:
        last_err = 0
        for backing in order:
            optional = list(_OPTIONAL_FLAGS)
            while True:
                flags = _BASE_FLAGS
                for f in optional:
                    flags |= f
                rc = lib.aiou_ring_init(self._r, sq_entries, cq_entries, flags, _BACKING_CODE[backing])
                if rc == 0:
                    self._backing = backing
                    return
                if rc == -_errno.EINVAL and optional:
                    optional.pop()   # an older kernel: drop the newest flag
                    continue
                break
            last_err = -rc
            self._fallbacks.append((backing, f"{_errno.errorcode.get(-rc, -rc)}: {_strerror(-rc)}"))
            if -rc in (_errno.EPERM, _errno.ENOSYS, _errno.EACCES):
                break   # io_uring itself is refused: no backing will help
        if len(order) == 1 and last_err not in (_errno.EPERM, _errno.ENOSYS, _errno.EACCES):
            raise OSError(last_err, f"cannot set up an io_uring with {order[0]} backing: {_strerror(last_err)}")
        raise explain_unavailable(last_err)

    def _enable(self) -> None:
        """Enable the ring in this thread, which becomes its only submitter.

        The ring fd is deliberately not registered (REGISTER_RING_FDS): the
        registration lives in this thread's io_uring context and holds a
        reference that only this thread can drop, so a close() from any other
        thread would leave the ring, its pinned memory and its in-flight
        operations alive until this thread exits. An fd lookup per enter is
        the cheaper price."""
        check(lib.aiou_enable(self._r, 0))
        self._owner = threading.get_ident()

    def _ensure_usable(self) -> None:
        if self._forked:
            raise RingClosedError(
                "this io_uring belongs to the parent process (the process forked); "
                "create a new event loop in the child")
        if self._closed:
            raise RingClosedError("the ring is closed")

    def _forget_after_fork(self) -> None:
        if not self._closed:
            lib.aiou_ring_forget(self._r)
            for br in self._buffer_rings.values():
                br._forget()
            self._forked = True
            self._closed = True

    # ---- introspection ----------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def fd(self) -> int:
        return self._r.fd

    @property
    def owner_thread(self) -> Optional[int]:
        return self._owner

    def info(self) -> RingInfo:
        r = self._r
        return RingInfo(
            backing=self._backing,
            sq_entries=r.sq_entries,
            cq_entries=r.cq_entries,
            setup_flags=_flag_names(r.setup_flags, _FLAG_NAMES),
            features=_flag_names(r.features, _FEATURE_NAMES),
            memory_bytes=r.mem_size,
            rings_bytes=r.rings_size,
            sqes_bytes=r.sqes_size,
            ring_fd=r.fd,
            ring_fd_registered=bool(r.enter_flags),
            fallbacks=tuple(self._fallbacks),
        )

    def statistics(self) -> RingStatistics:
        r = self._r
        live = not self._closed
        return RingStatistics(
            enters=r.enters,
            sqes_submitted=r.sqes_submitted,
            cqes_reaped=r.cqes_reaped,
            overflow_flushes=r.overflow_flushes,
            sq_full_flushes=r.sq_full_flushes,
            sq_pending=lib.aiou_sq_pending(r) if live else 0,
            cq_ready=lib.aiou_cq_ready(r) if live else 0,
        )

    def memory_address(self) -> int:
        """Start address of the ring memory we allocated (0 for kernel-backed rings)."""
        return int(ffi.cast("uintptr_t", self._r.mem))

    def probe(self) -> frozenset:
        """Opcodes this kernel supports (``IORING_REGISTER_PROBE``, asked once)."""
        if self._probe is None:
            self._ensure_usable()
            table = ffi.new("uint8_t[]", lib.IORING_OP_LAST_KNOWN)
            rc = lib.aiou_probe(self._r, table, lib.IORING_OP_LAST_KNOWN)
            if rc < 0:
                self._probe = frozenset()
            else:
                self._probe = frozenset(i for i in range(lib.IORING_OP_LAST_KNOWN) if table[i])
        return self._probe

    def supports(self, opcode: int) -> bool:
        return opcode in self.probe()

    def require(self, opcode: int) -> None:
        if opcode not in self.probe():
            raise UnsupportedOperation(
                f"this kernel's io_uring does not support IORING_OP_{OPCODE_NAMES.get(opcode, opcode)}")

    def __repr__(self) -> str:
        if getattr(self, "_closed", True):   # also a Ring whose __init__ raised
            return f"<Ring closed{' (forked)' if getattr(self, '_forked', False) else ''}>"
        r = self._r
        return (f"<Ring fd={r.fd} backing={self._backing} sq={r.sq_entries} cq={r.cq_entries} "
                f"pending={lib.aiou_sq_pending(r)}>")

    # ---- submission -------------------------------------------------------

    def prep(self, opcode: int, fd: int, addr, length: int, off: int, op_flags: int, user_data: int,
             sqe_flags: int = 0, buf_index: int = 0, ioprio: int = 0, file_index: int = 0) -> None:
        """Queue one SQE. ``addr`` is a cdata pointer (see :meth:`pointer`) or
        ``ffi.NULL``. The caller keeps whatever ``addr`` points to alive until
        the operation's final CQE. A full SQ is flushed to the kernel first.
        ``user_data`` is a signed 64-bit int, the range reaping hands back
        (OverflowError outside it)."""
        rc = lib.aiou_prep(self._r, opcode, fd, addr, length, off, op_flags, user_data, sqe_flags,
                           buf_index, ioprio, file_index)
        if rc:
            self._sq_full(rc)
            check(lib.aiou_prep(self._r, opcode, fd, addr, length, off, op_flags, user_data, sqe_flags,
                                buf_index, ioprio, file_index))

    def prep2(self, opcode: int, fd: int, addr, length: int, addr2, op_flags: int, user_data: int,
              sqe_flags: int = 0, file_index: int = 0) -> None:
        """Like :meth:`prep` for operations with a second pointer in ``addr2``."""
        rc = lib.aiou_prep2(self._r, opcode, fd, addr, length, addr2, op_flags, user_data, sqe_flags, file_index)
        if rc:
            self._sq_full(rc)
            check(lib.aiou_prep2(self._r, opcode, fd, addr, length, addr2, op_flags, user_data, sqe_flags, file_index))

    def prep_cancel(self, target_user_data: int, user_data: int, cancel_flags: int = 0) -> None:
        """Ask the kernel to cancel the operation with ``target_user_data``."""
        # user_data is a signed 64-bit value (what reaping returns); the
        # kernel matches the raw 64 bits, which the C side takes unsigned.
        target_user_data &= _U64_MASK
        rc = lib.aiou_prep_u64(self._r, lib.IORING_OP_ASYNC_CANCEL, -1, target_user_data, 0, 0,
                               cancel_flags, user_data, 0)
        if rc:
            self._sq_full(rc)
            check(lib.aiou_prep_u64(self._r, lib.IORING_OP_ASYNC_CANCEL, -1, target_user_data, 0, 0,
                                    cancel_flags, user_data, 0))

    def prep_cancel_fd(self, fd: int, user_data: int) -> None:
        """Cancel every operation pending on ``fd``."""
        flags = lib.IORING_ASYNC_CANCEL_FD | lib.IORING_ASYNC_CANCEL_ALL
        rc = lib.aiou_prep_u64(self._r, lib.IORING_OP_ASYNC_CANCEL, fd, 0, 0, 0, flags, user_data, 0)
        if rc:
            self._sq_full(rc)
            check(lib.aiou_prep_u64(self._r, lib.IORING_OP_ASYNC_CANCEL, fd, 0, 0, 0, flags, user_data, 0))

    def prep_cancel_everything(self, user_data: int) -> None:
        """Cancel every operation in flight on this ring (used when closing)."""
        flags = lib.IORING_ASYNC_CANCEL_ANY | lib.IORING_ASYNC_CANCEL_ALL
        rc = lib.aiou_prep_u64(self._r, lib.IORING_OP_ASYNC_CANCEL, -1, 0, 0, 0, flags, user_data, 0)
        if rc:
            self._sq_full(rc)
            check(lib.aiou_prep_u64(self._r, lib.IORING_OP_ASYNC_CANCEL, -1, 0, 0, 0, flags, user_data, 0))

    def prep_poll_remove(self, target_user_data: int, user_data: int) -> None:
        target_user_data &= _U64_MASK
        rc = lib.aiou_prep_u64(self._r, lib.IORING_OP_POLL_REMOVE, -1, target_user_data, 0, 0, 0, user_data, 0)
        if rc:
            self._sq_full(rc)
            check(lib.aiou_prep_u64(self._r, lib.IORING_OP_POLL_REMOVE, -1, target_user_data, 0, 0, 0, user_data, 0))

    def prep_timeout(self, seconds: float, user_data: int) -> None:
        """A relative timeout that completes with ``-ETIME`` after ``seconds``."""
        ns = max(0, int(seconds * 1e9))
        rc = lib.aiou_prep_timeout(self._r, ns, user_data, 0)
        if rc:
            self._sq_full(rc)
            check(lib.aiou_prep_timeout(self._r, ns, user_data, 0))

    def _sq_full(self, rc: int) -> None:
        if rc == -_errno.EBUSY:
            # Counted here, not in C: only this path is a flush forced by a
            # full SQ; a caller's own submit() is not.
            self._r.sq_full_flushes += 1
            self.submit()   # make room: hand what is queued to the kernel
            return
        self._ensure_usable()
        check(rc)

    def _enter_failed(self, rc: int):
        if self._owner is None and rc == -_errno.EBADFD:
            return   # disabled ring: the caller enables and retries
        self._ensure_usable()
        if rc == -_errno.EEXIST:
            raise RuntimeError(
                "this io_uring was set up for single-thread use and is owned by thread "
                f"{self._owner}; it cannot be driven from thread {threading.get_ident()}")
        check(rc)

    def submit(self) -> int:
        """Hand every queued SQE to the kernel without waiting."""
        if self._owner is None:
            self._ensure_usable()
            self._enable()
        rc = lib.aiou_submit(self._r)
        if rc < 0:
            self._enter_failed(rc)
            return 0
        return rc

    def submit_and_reap(self, timeout: Optional[float]) -> list:
        """Submit what is queued, wait up to ``timeout`` seconds (``None``:
        forever, ``0``: not at all) for at least one completion, and return
        every ready completion as a flat list ``[user_data, res, flags, ...]``.
        """
        if self._owner is None:
            self._ensure_usable()
            self._enable()
        if timeout is None:
            n = _submit_and_reap(self._r, 1, -1, self._out, _REAP_BATCH)
        elif timeout <= 0:
            n = _submit_and_reap(self._r, 0, 0, self._out, _REAP_BATCH)
        else:
            n = _submit_and_reap(self._r, 1, int(timeout * 1e9), self._out, _REAP_BATCH)
        if n > 0:
            return _unpack(self._out, 3 * n)
        if n < 0:
            self._enter_failed(n)
        return []

    def pending(self) -> int:
        """SQEs queued but not yet consumed by the kernel."""
        return lib.aiou_sq_pending(self._r) if not self._closed else 0

    # ---- memory the kernel reads or writes --------------------------------

    @staticmethod
    def pointer(buf, writable: bool = False):
        """A cdata pointer into a bytes-like object, keeping it alive while the
        cdata lives. The op record must hold the cdata until the final CQE."""
        return ffi.from_buffer(buf, require_writable=writable)

    @staticmethod
    def alloc(ctype: str, init=None):
        return ffi.new(ctype, init)

    # ``unpack(ptr, length) -> bytes`` and ``cbuffer(ptr, length)``: cffi's
    # own functions, not Python wrappers: every received byte passes through
    # unpack, and the wrapper's frame was measurable per receive.
    unpack = staticmethod(ffi.unpack)
    cbuffer = staticmethod(ffi.buffer)

    @staticmethod
    def child_status(info) -> tuple:
        """``(pid, si_code, si_status)`` from a ``siginfo_t`` that
        ``IORING_OP_WAITID`` filled (its fields are unions; C reads them)."""
        out = ffi.new("int[3]")
        lib.aiou_siginfo_child(info, out, out + 1, out + 2)
        return out[0], out[1], out[2]

    null = ffi.NULL
    cast = staticmethod(ffi.cast)
    sizeof = staticmethod(ffi.sizeof)
    string = staticmethod(ffi.string)
    # Ends a pointer()'s hold on its buffer now rather than when the cdata is
    # collected: a memoryview still exported when the cycle collector clears
    # it makes CPython refuse ("memoryview has 1 exported buffer") and the
    # later release crashes. Only once the kernel is done with the memory.
    release = staticmethod(ffi.release)

    def buffer_ring(self, group_id: int, entries: int, buffer_size: int, *,
                    provide: bool = True) -> "BufferRing":
        """Register a provided-buffer ring (``IORING_REGISTER_PBUF_RING``, 5.19).
        With ``provide=False`` its buffers are not ours: see
        :meth:`BufferRing.native_provide`."""
        self._ensure_usable()
        if group_id in self._buffer_rings:
            raise ValueError(f"buffer group {group_id} is already registered")
        br = BufferRing(self, group_id, entries, buffer_size, provide=provide)
        self._buffer_rings[group_id] = br
        return br

    def register_buffers(self, buffers) -> None:
        """Register writable buffers for ``READ_FIXED``/``WRITE_FIXED``
        (``IORING_REGISTER_BUFFERS``): SQE ``buf_index`` i means ``buffers[i]``.
        The kernel pins their pages until :meth:`unregister_buffers` or close;
        the ring keeps them alive that long."""
        self._ensure_usable()
        ptrs = [ffi.from_buffer(b, require_writable=True) for b in buffers]
        iovs = ffi.new("struct iovec[]", len(ptrs))
        for iov, ptr in zip(iovs, ptrs):
            iov.iov_base = ptr
            iov.iov_len = len(ptr)
        check(lib.aiou_register_buffers(self._r, iovs, len(ptrs)))
        self._registered_buffers = (ptrs, iovs)

    def unregister_buffers(self) -> None:
        self._ensure_usable()
        check(lib.aiou_unregister_buffers(self._r))
        self._registered_buffers = None

    # ---- teardown ---------------------------------------------------------

    def close(self) -> None:
        """Release the ring. Callers drain their operations first (loop.close
        does); the kernel cancels whatever is still in flight."""
        if self._closed:
            return
        for br in list(self._buffer_rings.values()):
            br.close()
        self._closed = True
        lib.aiou_ring_free(self._r)
        _live_rings.discard(self)

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and not getattr(self, "_forked", False):
            self.close()

    def __enter__(self) -> "Ring":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BufferRing:
    """A provided-buffer ring: receive operations with ``IOSQE_BUFFER_SELECT``
    pick a buffer from it, and the CQE says which (``flags >> 16``). The kernel
    owns a buffer from the moment it is in the ring until its CQE; we own it
    after, copy the data out, and give it back with :meth:`recycle`."""

    def __init__(self, ring: Ring, group_id: int, entries: int, buffer_size: int, *,
                 provide: bool = True) -> None:
        if entries < 1 or entries > 32768 or entries & (entries - 1):
            raise ValueError(f"entries must be a power of two between 1 and 32768, got {entries}")
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be positive, got {buffer_size}")
        self._ring = ring
        self._pb = ffi.new("struct aiou_pbuf *")
        check(lib.aiou_pbuf_setup(ring._r, self._pb, group_id, entries, buffer_size, int(provide)))
        self.provides_buffers = provide
        self.group_id = group_id
        self.entries = entries
        self.buffer_size = buffer_size
        self._base = self._pb.base
        self._closed = False

    # A late CQE may name a buffer after its ring is gone (closed, or left
    # behind in the parent by fork), and a wrong bid would point the kernel at
    # memory that is no buffer: each is a crash or silent corruption, so each
    # access is checked. The checks are a few comparisons per receive.

    def recycle(self, bid: int) -> None:
        """Give buffer ``bid`` back to the kernel."""
        if _pbuf_recycle(self._pb, bid):
            self._check_access(bid, 0)
            raise RuntimeError("aiouring internal error: buffer recycle refused; please report")

    def read(self, bid: int, length: int) -> bytes:
        """Copy ``length`` bytes out of buffer ``bid``."""
        self._check_access(bid, length)
        return ffi.unpack(self._base + bid * self.buffer_size, length)

    def native_provide(self) -> "tuple[int, int]":
        """``(address of aiou_pbuf_provide, address of this ring's state)``
        for :class:`aiouring._hotpath.BufferTaker`, which owns the buffers of
        a ring set up with ``provide=False`` (bytes objects it hands to the
        kernel, and then to protocols without a copy). The taker keeps this
        object alive; the C function refuses a closed ring or a bad bid."""
        if self.provides_buffers:
            raise ValueError("this buffer ring has its own buffers (set it up with provide=False)")
        provide = ffi.cast("uintptr_t", ffi.addressof(lib, "aiou_pbuf_provide"))
        return int(provide), int(ffi.cast("uintptr_t", self._pb))

    def view(self, bid: int, length: int):
        """A buffer object over buffer ``bid`` (valid only until it is recycled)."""
        self._check_access(bid, length)
        return ffi.buffer(self._base + bid * self.buffer_size, length)

    def _check_access(self, bid: int, length: int) -> None:
        if self._closed:
            raise RingClosedError(f"buffer ring {self.group_id} is closed")
        if not self.provides_buffers:
            raise ValueError(f"buffer ring {self.group_id}'s buffers are owned by its BufferTaker")
        if not 0 <= bid < self.entries:
            raise ValueError(f"buffer id {bid} is not in this ring (0..{self.entries - 1})")
        if not 0 <= length <= self.buffer_size:
            raise ValueError(f"length {length} does not fit a {self.buffer_size}-byte buffer")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        lib.aiou_pbuf_free(self._ring._r, self._pb)
        self._ring._buffer_rings.pop(self.group_id, None)

    def _forget(self) -> None:
        lib.aiou_pbuf_forget(self._pb)
        self._closed = True
