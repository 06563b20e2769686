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
import threading
from contextlib import contextmanager


class DeadlineExceeded(BaseException):
    """Raised inside a :func:`deadline` block whose time ran out.

    A BaseException, as KeyboardInterrupt is: SymPy's simplify and solve catch ``Exception`` in
    places and carry on, which swallowed the first request and let the block run for minutes.
    """


@contextmanager
def deadline(seconds: float):
    """Run the block; raise DeadlineExceeded in it after ``seconds`` (wall clock).

    The request is repeated every 0.1 s until the block ends: SymPy has bare ``except:``
    clauses that swallow one.  Ending the block withdraws a pending request, retrying if one
    lands while it does.
    """
    thread = ctypes.c_ulong(threading.get_ident())
    lock = threading.Lock()
    state = {"done": False, "fired": False}
    ended = threading.Event()

    def fire():
        while not ended.wait(0.1 if state["fired"] else seconds):
            with lock:
                if state["done"]:
                    return
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    thread, ctypes.py_object(DeadlineExceeded)
                )

    timer = threading.Thread(target=fire, daemon=True)
    timer.start()
    try:
        yield
    finally:
        while True:
            try:
                with lock:
                    state["done"] = True
                    if state["fired"]:  # asked for, perhaps not yet delivered: withdraw it
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(thread, None)
                ended.set()
                break
            except DeadlineExceeded:  # delivered while ending: the block still ends here
                continue


def restore_defaults() -> None:
    """SymPy's evaluation flags and mpmath's precision as graphnn expects them."""
    import mpmath
    from sympy.core.parameters import global_parameters

    global_parameters.evaluate = True
    global_parameters.distribute = True
    mpmath.mp.dps = 15
