"""Shape rules. A shape is a tuple of ints in which ``None`` stands for the batch dimension.

The batch dimension is only known at run time; it broadcasts against 1 and against itself, never
against a fixed size (that would silently mean two different things at different batch sizes).

>>> broadcast_shapes([(None, 128), (128,)], ["x @ W1", "b1"])
(None, 128)
>>> show((None, 64))
'(batch, 64)'
"""

from __future__ import annotations

from collections.abc import Sequence

from graphnn.errors import ShapeError

Shape = tuple[int | None, ...]


def show(shape: Shape) -> str:
    """A shape as users read it: the batch dimension spelled out."""
    dims = ["batch" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def broadcast_shapes(shapes: Sequence[Shape], labels: Sequence[str], op: str = "op") -> Shape:
    """NumPy broadcasting of several shapes; the error names every operand and its shape."""
    ndim = max((len(s) for s in shapes), default=0)
    out: list[int | None] = []
    for axis in range(ndim):
        dims = {s[axis - ndim + len(s)] for s in shapes if axis - ndim + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            described = ", ".join(
                f"'{label}' {show(s)}" for s, label in zip(shapes, labels, strict=True)
            )
            raise ShapeError(f"{op}: shapes do not broadcast: {described}")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def broadcast_axes(shape: Shape, out: Shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Axes of ``out`` that broadcasting added to ``shape``: (leading axes, size-1 axes)."""
    lead = len(out) - len(shape)
    ones = tuple(lead + i for i, d in enumerate(shape) if d == 1 and out[lead + i] != 1)
    return tuple(range(lead)), ones


def matmul_shape(a: Shape, b: Shape, labels: Sequence[str], ta=False, tb=False) -> Shape:
    """Shape of op(a) @ op(b) for 2-D operands; the error names both nodes and shapes."""
    left, right = labels
    for shape, label in ((a, left), (b, right)):
        if len(shape) != 2:
            raise ShapeError(
                f"matmul needs 2-D operands, but '{label}' has shape {show(shape)}; "
                "give vectors an explicit axis, e.g. a weight of shape (8, 1)"
            )
    (p, q) = a[::-1] if ta else a
    (q2, r) = b[::-1] if tb else b
    if q != q2:
        raise ShapeError(
            f"matmul: '{left}' {show(a)} @ '{right}' {show(b)}: inner dimensions "
            f"{'batch' if q is None else q} and {'batch' if q2 is None else q2} differ"
        )
    return (p, r)


def normalize_axes(axes, ndim: int, label: str) -> tuple[int, ...]:
    """Axes as sorted non-negative ints; None means every axis."""
    if axes is None:
        return tuple(range(ndim))
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    out = []
    for ax in axes:
        if not -ndim <= ax < ndim:
            raise ShapeError(f"axis {ax} is out of range for '{label}' with {ndim} dimensions")
        out.append(ax % ndim)
    return tuple(sorted(set(out)))


def reduced_shape(shape: Shape, axes: tuple[int, ...], keepdims: bool) -> Shape:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)
