"""Ctrl-C during ``fit``: finish the epoch in progress, then stop cleanly.

A compiled epoch is one call into Numba code, which cannot be interrupted safely: a
KeyboardInterrupt raised as it returns surfaced as ``SystemError: CPUDispatcher(...) returned a
result with an exception set``, with the parameters half-updated.  While :class:`DeferredInterrupt`
is active (main thread, Python's own SIGINT handler in place), the first Ctrl-C only sets
``requested``; ``fit`` stops after the epoch, writes a checkpoint and raises KeyboardInterrupt.
A second Ctrl-C raises at once, and ``fit`` rolls the interrupted epoch back.
"""

from __future__ import annotations

# The C module under ``signal``: its functions do what ``signal.signal`` / ``signal.getsignal``
# do, without their conversion of numbers and handlers to enums, which cost 9 us of every fit
# call (installing and restoring the handler now costs 0.6 us).
import _signal
import sys
import threading


class DeferredInterrupt:
    """Defer SIGINT to the end of the epoch while the block runs (if ``enabled`` and possible)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.requested = False
        self._old = None

    def __enter__(self) -> DeferredInterrupt:
        self.requested = False
        usable = threading.current_thread() is threading.main_thread()
        if (
            self.enabled
            and usable
            and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler
        ):
            self._old = _signal.signal(_signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # the second Ctrl-C: at once
            raise KeyboardInterrupt
        self.requested = True
        print(
            "graphnn: interrupted: stopping after this epoch (Ctrl-C again stops at once)",
            file=sys.stderr,
        )

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            _signal.signal(_signal.SIGINT, self._old)
            self._old = None


def is_interrupt(exc: BaseException) -> bool:
    """A KeyboardInterrupt, or the SystemError Numba raises when one lands in a compiled call."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    cause = exc.__cause__ or exc.__context__  # CPython's _PyErr_FormatFromCause sets both
    return isinstance(exc, SystemError) and isinstance(cause, KeyboardInterrupt)
