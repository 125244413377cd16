"""Exceptions aiouring raises itself.

Kernel errors are not wrapped: they surface as the ``OSError`` subclass that
CPython picks for the errno (``ConnectionResetError``, ``FileNotFoundError``,
...), exactly as the same failure would from a blocking call or from asyncio.
"""

__all__ = ["UringError", "UringUnavailableError", "RingClosedError", "UnsupportedOperation"]


class UringError(Exception):
    """Base class of aiouring's own exceptions."""


class UringUnavailableError(UringError, OSError):
    """io_uring cannot be used here (seccomp, kernel.io_uring_disabled,
    RLIMIT_MEMLOCK, an old kernel, ...). ``errno`` and ``strerror`` say what the
    kernel answered; ``cause`` says what that means and ``remedy`` what to do."""

    def __init__(self, errno: int, strerror: str, cause: str, remedy: str) -> None:
        super().__init__(errno, strerror)
        self.cause = cause
        self.remedy = remedy

    def __str__(self) -> str:
        return f"io_uring is unavailable: {self.cause} [errno {self.errno}: {self.strerror}]. {self.remedy}"


class RingClosedError(UringError, RuntimeError):
    """An operation was attempted on a closed ring (or one inherited across fork)."""


class UnsupportedOperation(UringError, NotImplementedError):
    """The running kernel's io_uring lacks an operation aiouring needs for this call."""
