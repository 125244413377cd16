"""aiouring: an asyncio event loop for Linux whose I/O runs on io_uring."""

from ._version import __version__
from .errors import RingClosedError, UnsupportedOperation, UringError, UringUnavailableError
from .loop import Loop, LoopStatistics
from .runner import EventLoopPolicy, UringFallbackWarning, install, new_event_loop, run

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
]
