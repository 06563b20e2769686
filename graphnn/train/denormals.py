"""Flush-to-zero for float arithmetic on the calling thread, while training.

Denormal numbers (below 1.2e-38 in float32) are up to 100x slower on x86; Adam's second-moment
buffers drift into that range, and a measured MLP trained 3x slower for it.  JAX flushes
denormals to zero by default; graphnn does so while ``fit`` runs (``gn.compile(...,
flush_denormals=False)`` turns it off) and restores the thread's previous floating-point state
afterwards, so the rest of the program is unaffected.  Only the thread that runs the kernels is
affected (BLAS worker threads keep their own state).  On CPUs other than x86-64 this is a no-op.

>>> with flush_denormals():
...     pass
"""

from __future__ import annotations

import contextlib
import functools
import platform

FTZ_DAZ = 0x8040  # MXCSR bits: flush-to-zero (15) and denormals-are-zero (6)


@functools.cache
def _mxcsr_swap():
    """An njit function setting MXCSR and returning its old value, or None off x86-64."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    import numpy as np
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic

    @intrinsic
    def _swap(typingctx, value):
        def codegen(context, builder, signature, args):
            i8p = ir.IntType(8).as_pointer()
            slot = builder.alloca(ir.IntType(32))
            fnty = ir.FunctionType(ir.VoidType(), [i8p])
            module = builder.module
            st = module.globals.get("llvm.x86.sse.stmxcsr")
            st = st or ir.Function(module, fnty, "llvm.x86.sse.stmxcsr")
            ld = module.globals.get("llvm.x86.sse.ldmxcsr")
            ld = ld or ir.Function(module, fnty, "llvm.x86.sse.ldmxcsr")
            builder.call(st, [builder.bitcast(slot, i8p)])
            old = builder.load(slot)
            builder.store(args[0], slot)
            builder.call(ld, [builder.bitcast(slot, i8p)])
            return old

        return types.int32(types.int32), codegen

    @njit(cache=True)
    def swap(value):
        return _swap(np.int32(value))

    return swap


@contextlib.contextmanager
def flush_denormals(enabled: bool = True):
    """Within the block, denormal inputs and results are treated as zero (x86-64 only)."""
    swap = _mxcsr_swap() if enabled else None
    if swap is None:
        yield
        return
    old = int(swap(0x1F80))  # read the current state (and briefly set the default)
    swap(old | FTZ_DAZ)
    try:
        yield
    finally:
        swap(old)
