"""Operations in flight: ``user_data`` -> the record that owns them.

Facts
-----
* The kernel only knows an operation by the 64-bit ``user_data`` we put in its
  SQE and gets back in each CQE. Until the final CQE (for multishot requests,
  the one without ``IORING_CQE_F_MORE``) it may read or write every buffer,
  iovec and sockaddr the SQE points at.
* ``IORING_OP_ASYNC_CANCEL`` only asks. The target may already have completed
  (its CQE is on the way, with data or with a new fd) or may complete anyway.

What this means for aiouring
----------------------------
* ``user_data`` is a plain int key into :attr:`OpTable.handlers`; never a
  pointer to a Python object. Key 0 is reserved for operations whose CQE we
  ignore (cancel requests, fire-and-forget closes).
* The handler stored under the key *is* the op record: it holds the buffers
  (``keep``) and whatever it needs to finish. The table drops it when the final
  CQE arrives, and only then can the buffers go.
* A record whose future was cancelled is *ignored*, not removed: it stays in
  the table until its CQE, and then hands a late result to ``on_late`` (which
  keeps late data for the next read, or closes a late fd).

States of a :class:`FutureOp` (derived, not stored):
``SUBMITTED`` (in the table, future pending) -> ``COMPLETED`` (CQE arrived,
future resolved, record gone) or ``IGNORED`` (future cancelled first; record
waits in the table for its CQE, which goes to ``on_late``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from .ring import Ring, error_from_result

__all__ = ["OpTable", "FutureRecord", "FutureOp", "UD_IGNORE"]

UD_IGNORE = 0


class FutureRecord:
    """Base of op records whose CQE resolves a future: closing the loop
    abandons them, and their late result then takes the cancelled path."""

    __slots__ = ("fut",)

    def abandon(self) -> None:
        """Stop caring about the result (loop closing): late results go to
        the record's cancelled-future path."""
        if not self.fut.done():
            self.fut.cancel()


class FutureOp(FutureRecord):
    """An operation whose single CQE resolves a future.

    ``finish(res)`` turns a successful result into the future's value;
    ``on_late(res, flags)`` receives the result if the future was cancelled.
    """

    __slots__ = ("keep", "finish", "on_late")

    def __init__(self, fut, keep: Any = None, finish: Optional[Callable] = None,
                 on_late: Optional[Callable] = None) -> None:
        self.fut = fut
        self.keep = keep
        self.finish = finish
        self.on_late = on_late

    def __call__(self, res: int, flags: int) -> None:
        fut = self.fut
        if fut.done():
            if self.on_late is not None:
                self.on_late(res, flags)
            return
        if res < 0:
            fut.set_exception(error_from_result(res))
        elif self.finish is None:
            fut.set_result(res)
        else:
            try:
                value = self.finish(res)
            except BaseException as exc:   # finish() converts; its errors belong to the awaiting task
                fut.set_exception(exc)
            else:
                fut.set_result(value)


class OpTable:
    """The table of operations in flight on one ring."""

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self.handlers: dict = {}
        self._next_ud = 1

    def __len__(self) -> int:
        return len(self.handlers)

    def register(self, handler: Callable[[int, int], None]) -> int:
        """Store ``handler`` and return the ``user_data`` key for its SQE(s)."""
        ud = self._next_ud
        self._next_ud = ud + 1
        self.handlers[ud] = handler
        return ud

    def cancel(self, ud: int) -> None:
        """Ask the kernel to cancel ``ud``. Its record stays until its CQE."""
        if ud in self.handlers:
            self.ring.prep_cancel(ud, UD_IGNORE)

    def abandon_all(self) -> None:
        for handler in list(self.handlers.values()):
            abandon = getattr(handler, "abandon", None)
            if abandon is not None:
                abandon()
