"""A fix for a race in Numba's CUDA simulator, applied when graphnn runs on the simulator.

The simulator runs each thread of a block as a Python thread and allocates ``cuda.shared.array``
lazily, keyed by the calling line, with a check-then-create that holds no lock
(``numba.cuda.simulator.kernelapi.FakeCUDAShared.array``).  When the threads of a block reach
that line together (likely on a loaded machine), two of them can each create a "shared" array,
and a kernel that is correct on a GPU (our tiled matmul, our block reductions) computes garbage:
seen here as tests failing about one run in three under load.  This replaces the method with the
same logic under a lock.  It needs only numpy and numba (an exported module's test loads it by
path, without graphnn).

>>> lock_shared_arrays()  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import threading

import numpy as np


def lock_shared_arrays() -> bool:
    """Make the simulator's shared-array allocation thread-safe; True if it is (now) patched."""
    from numba import config

    if not config.ENABLE_CUDASIM:
        return False
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    shared = kernelapi.FakeCUDAShared
    if getattr(shared, "_graphnn_locked", False):
        return True
    original = shared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:
            return original(self, shape, dtype, alignment)  # these paths are not keyed by line
        caller = sys._getframe(1)  # the kernel line, as the original keys it
        key = (caller.f_code.co_filename, caller.f_lineno)
        if not isinstance(dtype, np.dtype) and not isinstance(dtype, type):
            dtype = numpy_support.as_dtype(dtype)
        with lock:
            result = self._allocations.get(key)
            if result is None:
                result = self._allocations[key] = np.empty(shape, dtype)
        return result

    shared.array = array
    shared._graphnn_locked = True
    return True
