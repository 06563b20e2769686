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

import functools
import platform

FTZ_DAZ = 0x8040  # MXCSR bits: flush-to-zero (15) and denormals-are-zero (6)


@functools.cache
def _mxcsr_swap():
    """A function setting MXCSR and returning its old value, or None off x86-64.

    Seven instructions JIT-compiled by llvmlite (8 ms) and called through ctypes: as an njit
    function with an intrinsic it cost 0.3-0.4 s of every cold start, Numba's cache included.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    import ctypes

    import llvmlite.binding as llvm
    import numba  # noqa: F401  (initializes LLVM, as it does for the kernels)
    from llvmlite import ir

    i32, i8p = ir.IntType(32), ir.IntType(8).as_pointer()
    module = ir.Module(name="graphnn_mxcsr")
    fn = ir.Function(module, ir.FunctionType(i32, [i32]), "graphnn_mxcsr_swap")
    access = ir.FunctionType(ir.VoidType(), [i8p])
    store = ir.Function(module, access, "llvm.x86.sse.stmxcsr")
    load = ir.Function(module, access, "llvm.x86.sse.ldmxcsr")
    builder = ir.IRBuilder(fn.append_basic_block())
    slot = builder.alloca(i32)
    builder.call(store, [builder.bitcast(slot, i8p)])
    old = builder.load(slot)
    builder.store(fn.args[0], slot)
    builder.call(load, [builder.bitcast(slot, i8p)])
    builder.ret(old)
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    machine = llvm.Target.from_default_triple().create_target_machine()
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(str(module)), machine)
    engine.finalize_object()
    swap = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int32)(
        engine.get_function_address("graphnn_mxcsr_swap")
    )
    swap.engine = engine  # the machine code lives as long as the engine
    return swap


class flush_denormals:  # noqa: N801  (a context manager, named as the function it was)
    """Within the block, denormal inputs and results are treated as zero (x86-64 only).

    A class, not a generator: entered and left in every ``fit`` call, the generator's
    machinery cost more than the two MXCSR calls.
    """

    def __init__(self, enabled: bool = True):
        self.swap = _mxcsr_swap() if enabled else None
        self.old = None

    def __enter__(self):
        if self.swap is not None:
            old = int(self.swap(0x1F80))  # read the current state (and briefly set the default)
            self.swap(old | FTZ_DAZ)
            self.old = old
        return self

    def __exit__(self, *exc) -> None:
        if self.old is not None:
            self.swap(self.old)
            self.old = None
