"""Block io_uring in the calling process with a seccomp filter, as the default
profiles of Docker >= 25 and containerd >= 2.0 do.

Facts
-----
* A seccomp filter is a classic-BPF program over ``struct seccomp_data``
  (``nr`` at offset 0, ``arch`` at offset 4). ``SECCOMP_RET_ERRNO | e`` makes
  the syscall fail with ``-e`` without running it; ``SECCOMP_RET_ALLOW`` runs it.
* An unprivileged process may only install one after
  ``prctl(PR_SET_NO_NEW_PRIVS, 1)``; the filter is inherited by every child and
  cannot be removed, so install it only in a process made for the purpose.
* ``io_uring_setup``/``enter``/``register`` are 425/426/427 on every
  architecture (they were added after the syscall tables were unified).

What this means for the tests
-----------------------------
Run :func:`block_io_uring` first thing in a child process (``python -c`` or a
forked child), then exercise aiouring's entry points there: the kernel answers
EPERM exactly as it does inside a default container.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

__all__ = ["block_io_uring", "IO_URING_SYSCALLS"]

IO_URING_SYSCALLS = (425, 426, 427)   # io_uring_setup, io_uring_enter, io_uring_register

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000

# classic BPF opcodes
_BPF_LD_W_ABS = 0x20      # BPF_LD | BPF_W | BPF_ABS
_BPF_JEQ_K = 0x15         # BPF_JMP | BPF_JEQ | BPF_K
_BPF_RET_K = 0x06         # BPF_RET | BPF_K

_AUDIT_ARCH = {
    "x86_64": 0xC000003E,
    "aarch64": 0xC00000B7,
}


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _program(err: int) -> bytes:
    arch = _AUDIT_ARCH.get(platform.machine())
    if arch is None:
        raise OSError(errno.ENOTSUP, f"no seccomp arch constant for {platform.machine()}")
    n = len(IO_URING_SYSCALLS)
    insns = [
        _insn(_BPF_LD_W_ABS, 0, 0, 4),                        # A = arch
        _insn(_BPF_JEQ_K, 1, 0, arch),                        # native arch: go on
        _insn(_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),          # (compat syscalls: leave alone)
        _insn(_BPF_LD_W_ABS, 0, 0, 0),                        # A = nr
    ]
    for i, nr in enumerate(IO_URING_SYSCALLS):
        # On a match jump over the remaining compares and the ALLOW to the ERRNO return.
        insns.append(_insn(_BPF_JEQ_K, n - i, 0, nr))
    insns.append(_insn(_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
    insns.append(_insn(_BPF_RET_K, 0, 0, _SECCOMP_RET_ERRNO | (err & 0xFFFF)))
    return b"".join(insns)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def block_io_uring(err: int = errno.EPERM) -> None:
    """Make io_uring_setup/enter/register fail with ``err`` in this process and
    its future children, for good."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    code = _program(err)
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.addressof(buf))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "prctl(PR_SET_SECCOMP)")
