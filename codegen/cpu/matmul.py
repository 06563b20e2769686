"""Matrix products for the CPU kernels: a call to BLAS (``np.dot``) or a generated loop nest.

A BLAS call costs a fixed 25-60 ns in Numba (argument checks, the dispatch into OpenBLAS) before
it multiplies anything; for the products of a single neuron or a toy network at batch 1 that is
nearly all of their time.  Their sizes are known when the module is generated (the batch size at
run time), so a loop nest does the same work with no call.  Beyond a few hundred multiplications
OpenBLAS wins by 5-10x (``python benchmarks/matmul_choice.py`` prints the comparison), so a
product runs as loops only while it multiplies at most :data:`LOOPS_MAX` pairs: decided when the
module is generated if no size is the batch's, else by a branch on the batch size ``n``.
``GRAPHNN_MATMUL_LOOPS_MAX`` overrides the limit (0: always BLAS).  The generated code says which
it chose and why.

Measured here (2-core AVX2, np.dot/loops time ratio): 1x8x1 5.2, 4x8x1 4.0, 1x16x4 3.4,
32x8x1 0.77, 1x64x128 0.89, 32x64x10 0.11.

>>> loop_lines("out", "a", "b", (None, 3), (3, 2), False, False, "float32")[:3]
['for r in range(n):', '    for c in range(2):', '        out[r, c] = np.float32(0.0)']
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar

from codegen.steps import indent

LOOPS_MAX = 128  # multiplications a product may do as loops; see the module docstring
_ONLY_LOOPS: ContextVar[bool] = ContextVar("only_loops", default=False)


def loops_max() -> int:
    """:data:`LOOPS_MAX`, or ``GRAPHNN_MATMUL_LOOPS_MAX`` when set to an int >= 0."""
    text = os.environ.get("GRAPHNN_MATMUL_LOOPS_MAX", "")
    return int(text) if text.isdigit() else LOOPS_MAX


@contextmanager
def only_loops(enabled: bool = True):
    """Generate every product as loops meanwhile: a module with no np.dot needs no SciPy."""
    token = _ONLY_LOOPS.set(enabled)
    try:
        yield
    finally:
        _ONLY_LOOPS.reset(token)


def blas_allowed() -> bool:
    """False inside :func:`only_loops`: the module being generated may not call np.dot."""
    return not _ONLY_LOOPS.get()


def choose(a_shape, b_shape, ta: bool, tb: bool, dim=None) -> tuple[str, str]:
    """How to compute op(a) @ op(b): ("loops" | "blas" | a run-time condition on n, why).

    A size of None is the run-time batch size n; then the product does n * (the other two
    sizes) multiplications, and loops run while that is at most the limit.  ``dim`` spells a
    size in the code (default: the number; the CPU kernels name the sizes they read from their
    arrays), in the condition and the comment.
    """
    if _ONLY_LOOPS.get():
        return "loops", "loops: every product is generated loops here (no BLAS, no SciPy)"
    rows, inner = (a_shape[1], a_shape[0]) if ta else (a_shape[0], a_shape[1])
    cols = b_shape[0] if tb else b_shape[1]
    per_n = 1
    for d in (rows, inner, cols):
        per_n *= d if d is not None else 1
    limit = loops_max()
    batched = None in (rows, inner, cols)
    # per_n as the code spells it: the number, or with ``dim`` the product of the sizes' names
    sizes = [dim(d) for d in (rows, inner, cols) if d is not None and d != 1] if dim else []
    times = " x ".join(sizes) if dim else str(per_n)
    if per_n > limit or (batched and limit == 0):
        return "blas", f"BLAS: {times or 1}{' x n' if batched else ''} multiplications > {limit}"
    if not batched:
        return (
            "loops",
            f"loops: {times or 1} multiplications <= {limit}, less than a BLAS call costs",
        )
    cond = f"n * {times.replace(' x ', ' * ')} <= {limit}" if per_n > 1 else f"n <= {limit}"
    return cond, f"loops while {cond} multiplications (a BLAS call costs more), else BLAS"


def _size(d) -> str:
    return "n" if d is None else str(d)


def loop_lines(out, a, b, a_shape, b_shape, ta: bool, tb: bool, dtype: str, dim=None) -> list[str]:
    """Lines computing ``out = op(a) @ op(b)`` into the existing array ``out``; ``dim`` spells a
    size (default: the number).

    Every case keeps the innermost loop on contiguous memory: rows of b (and of out) for
    ``a @ b`` and ``a^T @ b``; for ``a @ b^T`` the inner loop is a dot product of two rows.
    """
    # a^T @ b: p (a row of a and of b) outermost streams rows of a and b once
    row = "p" if ta and not tb else "r"
    init, per_row, count = _parts(out, a, b, a_shape, b_shape, ta, tb, dtype, dim or _size, row)
    return [*init, f"for {row} in range({count}):", *indent(per_row, 1)]


def row_parts(out, a, b, a_shape, b_shape, ta: bool, tb: bool, dtype: str, dim, row: str):
    """:func:`loop_lines` as (lines before, lines for one batch row ``row``): the same
    statements, so a loop over the batch's rows that runs several steps' rows in turn computes
    the same bits (codegen/cpu/row_loop.py).  None unless the loop of :func:`loop_lines` is over
    the batch's rows: ``a @ b`` and ``a @ b^T`` with a's rows the batch and b free of it (a
    row of the result), ``a^T @ b`` with both a's and b's rows the batch (the weight gradient:
    each row adds its part, in row order)."""
    if ta and not tb:
        fits = a_shape[0] is None and b_shape[0] is None and None not in (a_shape[1], b_shape[1])
    else:
        fits = not ta and a_shape[0] is None and a_shape[1] is not None and None not in b_shape
    if not fits:
        return None
    if not ta and not tb and b_shape[1] == 1:
        # one column: a dot product summed in a register, not through out's element in memory
        # (which LLVM may not keep in a register: out could alias a or b); the same sum in the
        # same order, so the same bits.  Only for 1, which the module's text spells as such
        # (other sizes are read from the arrays: one text serves every width)
        return [], [
            f"for c in range({dim(b_shape[1])}):",
            f"    s = np.{dtype}(0.0)",
            f"    for p in range({dim(a_shape[1])}):",
            f"        s += {a}[{row}, p] * {b}[p, c]",
            f"    {out}[{row}, c] = s",
        ]
    init, per_row, _ = _parts(out, a, b, a_shape, b_shape, ta, tb, dtype, dim, row)
    return init, per_row


def _parts(out, a, b, a_shape, b_shape, ta, tb, dtype, size, row):
    """(lines before the loop, its body, its count) of ``out = op(a) @ op(b)`` as one loop over
    ``row``: the rows of out, or for ``a^T @ b`` the rows of a and b."""
    zero = f"np.{dtype}(0.0)"
    rows = size(a_shape[1] if ta else a_shape[0])
    inner = size(a_shape[0] if ta else a_shape[1])
    if not tb:
        cols = size(b_shape[1])
        if ta:  # out[r, c] = sum_p a[p, r] b[p, c]
            init = [
                f"for r in range({rows}):",
                f"    for c in range({cols}):",
                f"        {out}[r, c] = {zero}",
            ]
            per_row = [
                f"for r in range({rows}):",
                f"    for c in range({cols}):",
                f"        {out}[r, c] += {a}[{row}, r] * {b}[{row}, c]",
            ]
            return init, per_row, inner
        per_row = [
            f"for c in range({cols}):",
            f"    {out}[{row}, c] = {zero}",
            f"for p in range({inner}):",
            f"    for c in range({cols}):",
            f"        {out}[{row}, c] += {a}[{row}, p] * {b}[p, c]",
        ]
        return [], per_row, rows
    cols = size(b_shape[0])
    a_at = f"{a}[p, {row}]" if ta else f"{a}[{row}, p]"
    per_row = [
        f"for c in range({cols}):",
        f"    s = {zero}",
        f"    for p in range({inner}):",
        f"        s += {a_at} * {b}[c, p]",
        f"    {out}[{row}, c] = s",
    ]
    return [], per_row, rows
