"""A time budget for a block of pure-Python work (SymPy, mpmath) that offers no timeout itself.

``sympy.solve`` on ``tanh`` nested 5 deep, or mpmath evaluating ``exp(exp(exp(z)))`` at
z = 1e4, runs for minutes or for ever.  :func:`deadline` asks CPython to raise
:class:`DeadlineExceeded` in the thread running the block once ``seconds`` have passed
(``PyThreadState_SetAsyncExc``: delivered between two bytecodes, in any thread, without
touching the process's signal handlers).  A request that arrives as the block ends is
withdrawn under a lock, so the exception never escapes into code after the block.

Interrupting SymPy or mpmath at an arbitrary bytecode may skip the restoring half of a context
manager of theirs; :func:`restore_defaults` puts back the global settings graphnn relies on.

>>> import time
>>> try:
...     with deadline(0.05):
...         while True:
...             time.sleep(0.001)
... except DeadlineExceeded:
...     print("stopped")
stopped
"""

from __future__ import annotations

import ctypes
import sys
import threading


class DeadlineExceeded(BaseException):
    """Raised inside a :func:`deadline` block whose time ran out.

    A BaseException, as KeyboardInterrupt is: SymPy's simplify and solve catch ``Exception`` in
    places and carry on, which swallowed the first request and let the block run for minutes.
    """


class deadline:  # noqa: N801 - used as a function: ``with deadline(seconds):``
    """Run the block; raise DeadlineExceeded in it after ``seconds`` (wall clock).

    The request is repeated every second (at most :data:`REPEATS` times) while the block runs:
    SymPy has bare ``except:`` clauses that swallow one.  A request is made only while the
    frame that entered the block is still running, and ending the block withdraws a pending
    one, so none lands in code after it.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self):
        self._thread = threading.get_ident()
        self._frame = sys._getframe(1)  # the frame running the block
        self._lock = threading.Lock()
        self._done, self._fired = False, 0
        self._ended = threading.Event()
        threading.Thread(target=self._fire, daemon=True).start()
        return self

    def _inside(self) -> bool:
        frame = sys._current_frames().get(self._thread)
        while frame is not None and frame is not self._frame:
            frame = frame.f_back
        return frame is not None

    def _fire(self) -> None:
        wait = self.seconds
        while not self._ended.wait(wait) and self._fired < REPEATS:
            with self._lock:
                if self._done or not self._inside():
                    return
                self._fired += 1
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._thread), ctypes.py_object(DeadlineExceeded)
                )
            wait = REPEAT_SECONDS

    def __exit__(self, *exc_info) -> bool:
        for _ in range(REPEATS + 1):  # a request landing while this runs: end again
            try:
                with self._lock:
                    self._done = True
                    if self._fired:  # asked for, perhaps not yet delivered: withdraw it
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(
                            ctypes.c_ulong(self._thread), None
                        )
                self._ended.set()
                break
            except DeadlineExceeded:
                continue
        self._frame = None
        return False


REPEATS = 20
# A second request waits this long: the frame that got the first one, if it ended the block
# without reaching __exit__'s bookkeeping, has returned by then (it only catches and reports).
REPEAT_SECONDS = 1.0


def restore_defaults() -> None:
    """SymPy's evaluation flags and mpmath's precision as graphnn expects them."""
    import mpmath
    from sympy.core.parameters import global_parameters

    global_parameters.evaluate = True
    global_parameters.distribute = True
    mpmath.mp.dps = 15
