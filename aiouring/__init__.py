"""aiouring: an asyncio event loop for Linux whose I/O runs on io_uring."""

from ._version import __version__
from .errors import RingClosedError, UnsupportedOperation, UringError, UringUnavailableError
from .loop import Loop, LoopStatistics
from .runner import EventLoopPolicy, UringFallbackWarning, install, new_event_loop, run
from . import files
from .files import (
    BinaryFile, TextFile, copyfile, link, lstat, mkdir, open, read_bytes, read_text, remove, rename,
    replace, rmdir, sendfile, stat, symlink, unlink, write_bytes, write_text,
)

__all__ = [
    "__version__",
    "Loop",
    "LoopStatistics",
    "new_event_loop",
    "run",
    "EventLoopPolicy",
    "install",
    "UringError",
    "UringUnavailableError",
    "UringFallbackWarning",
    "RingClosedError",
    "UnsupportedOperation",
    # asynchronous files (aiouring.files)
    "files", "open", "BinaryFile", "TextFile",
    "stat", "lstat", "rename", "replace", "unlink", "remove", "mkdir", "rmdir", "link", "symlink",
    "read_bytes", "read_text", "write_bytes", "write_text", "copyfile", "sendfile",
]
