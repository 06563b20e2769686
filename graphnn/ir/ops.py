"""Tensors, the values user code holds, and the functions that build them from the op tables.

Elementwise ops apply a row of :data:`~graphnn.ir.elementwise.ELEMENTWISE`; structural ops
(matmul, reductions, reshape, softmax and the fused softmax cross-entropy) are built by the
functions below, and their rules (adjoint, NumPy reference, display) are one stanza each in
:mod:`graphnn.derive.structural`.

>>> import graphnn as gn
>>> h = gn.relu(gn.input("x", (4,)) @ gn.param("W", (4, 3)))
>>> h.shape
(None, 3)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy

from graphnn.errors import GraphError, ShapeError
from graphnn.ir.elementwise import ARGS, BATCH, ELEMENTWISE
from graphnn.ir.rewrites import rewrite
from graphnn.ir.shapes import (
    Shape,
    broadcast_shapes,
    matmul_shape,
    normalize_axes,
    reduced_shape,
    show,
)

INITIALIZERS = ("zeros", "ones", "normal", "uniform", "he_normal", "he_uniform")
INITIALIZERS += ("glorot_normal", "glorot_uniform")


# --- the value users hold ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Tensor:
    """A symbolic value: the result of ``op`` applied to ``inputs``. Compared by identity."""

    op: str
    inputs: tuple[Tensor, ...]
    shape: Shape
    attrs: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None
    label: str = ""  # how error messages and displays refer to an unnamed tensor

    def __post_init__(self):
        if not self.label:
            object.__setattr__(self, "label", self.name or self.op)

    def named(self, name: str) -> Tensor:
        """The same value under a user-chosen node name (an identifier: generated code uses it)."""
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
            raise GraphError(f"node name {shown} must be an identifier not starting with '_'")
        return Tensor(self.op, self.inputs, self.shape, self.attrs, name, name)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"Tensor({self.label!r}, op={self.op}, shape={show(self.shape)})"

    # Operators build op nodes with the builders below.
    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)

    def __add__(self, other):
        return add(self, other)

    def __radd__(self, other):
        return add(other, self)

    def __sub__(self, other):
        return sub(self, other)

    def __rsub__(self, other):
        return sub(other, self)

    def __mul__(self, other):
        return mul(self, other)

    def __rmul__(self, other):
        return mul(other, self)

    def __truediv__(self, other):
        return div(self, other)

    def __rtruediv__(self, other):
        return div(other, self)

    def __neg__(self):
        return neg(self)

    def __pos__(self):
        return self

    def __pow__(self, exponent):
        return power(self, exponent)


def _label(fmt: str, *parts: Tensor) -> str:
    text = fmt.format(*(p.label for p in parts))
    return text if len(text) <= 60 else text[:57] + "..."


def _as_tensor(x) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x):
        return constant(x)
    raise GraphError(f"cannot use {x!r} ({type(x).__name__}) as a graph value")


# --- leaves -----------------------------------------------------------------------------------


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise GraphError(f"{what} name {name!r} must be an identifier not starting with '_'")


def _check_dims(shape, name: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in shape)
    except TypeError:
        raise ShapeError(f"'{name}': shape {shape!r} is not a tuple of ints") from None
    if any(d <= 0 for d in dims) or dims != tuple(shape):
        raise ShapeError(f"'{name}': shape {tuple(shape)!r} must hold positive ints")
    return dims


def input(name: str, shape: Sequence[int]) -> Tensor:  # noqa: A001 - the public name
    """A data input with per-sample ``shape``; the batch dimension is implicit and leads."""
    _check_name(name, "input")
    return Tensor("input", (), (None, *_check_dims(shape, name)), {}, name)


def param(name: str, shape: Sequence[int], init: str = "glorot_uniform") -> Tensor:
    """A trainable parameter with a fixed shape and an initializer from :data:`INITIALIZERS`."""
    _check_name(name, "parameter")
    if init not in INITIALIZERS:
        raise GraphError(f"parameter '{name}': unknown init {init!r}; known: {INITIALIZERS}")
    dims = _check_dims(shape, name)
    if not dims:
        # Gradients of shape () are scalars in the kernels, not arrays an update can write.
        raise ShapeError(f"parameter '{name}': shape () is not supported; use shape (1,)")
    return Tensor("param", (), dims, {"init": init}, name)


def constant(value, shape: Shape = ()) -> Tensor:
    """A constant filling ``shape``; value is a number or a SymPy expression in the batch size n."""
    label = f"{value:g}" if isinstance(value, int | float) else str(value)
    value = sympy.sympify(value) if isinstance(value, numbers.Number) else value
    return Tensor("const", (), tuple(shape), {"value": value}, None, label)


# --- elementwise --------------------------------------------------------------------------------


def ewise(fn: str, expr: sympy.Expr, inputs: Sequence, *, out_shape=None, label=None, **attrs):
    """A node applying ``expr`` (in ARGS[:len(inputs)]) elementwise with NumPy broadcasting.

    Numbers and scalar constants are substituted into the formula, repeated inputs merged and an
    identity (``a0`` of an input that already has the result's shape) returns that input.
    """
    inputs = [_as_tensor(x) for x in inputs]
    shape = broadcast_shapes(
        [i.shape for i in inputs] + ([tuple(out_shape)] if out_shape is not None else []),
        [i.label for i in inputs] + (["target"] if out_shape is not None else []),
        fn,
    )
    kept: list[Tensor] = []
    subs = {}
    for k, x in enumerate(inputs):
        if x.op == "const" and x.shape == ():
            subs[ARGS[k]] = x.attrs["value"]
        elif any(x is y for y in kept):
            subs[ARGS[k]] = ARGS[next(j for j, y in enumerate(kept) if x is y)]
        else:
            subs[ARGS[k]] = ARGS[len(kept)]
            kept.append(x)
    expr = sympy.sympify(expr).xreplace(subs)
    used = [k for k in range(len(kept)) if ARGS[k] in expr.free_symbols]
    expr = expr.xreplace({ARGS[k]: ARGS[j] for j, k in enumerate(used)})
    kept = [kept[k] for k in used]
    if not expr.free_symbols - {BATCH}:
        return constant(expr, shape)
    if expr == ARGS[0] and kept[0].shape == shape:
        return kept[0]
    label = label or _label(fn + "(" + ", ".join("{}" for _ in kept) + ")", *kept)
    # arity: the function's own argument count, more than the inputs kept when some were merged
    attrs = {"fn": fn, "expr": expr, "arity": len(inputs), **attrs}
    return Tensor("ewise", tuple(kept), shape, attrs, None, label)


def apply(name: str, *args, **params) -> Tensor:
    """Apply the elementwise op ``name`` of :data:`ELEMENTWISE` to tensors or numbers."""
    row = ELEMENTWISE[name]
    if len(args) != row.arity:
        raise GraphError(f"{name} takes {row.arity} argument(s), got {len(args)}")
    unknown = set(params) - set(row.params)
    if unknown:
        raise GraphError(f"{name} has no parameter {sorted(unknown)}; it has {list(row.params)}")
    values = {**row.params, **params}
    formula = row.formula(**{k: sympy.Float(v) for k, v in values.items()})
    return ewise(name, formula, args)


def _infix(op: str, fmt: str):
    def build(a, b) -> Tensor:
        a, b = _as_tensor(a), _as_tensor(b)
        return ewise(op, ELEMENTWISE[op].formula(), [a, b], label=_label(fmt, a, b))

    build.__name__ = op
    build.__doc__ = f"Elementwise {op} with NumPy broadcasting."
    return build


add, sub = _infix("add", "{} + {}"), _infix("sub", "{} - {}")
mul, div = _infix("mul", "{} * {}"), _infix("div", "{} / {}")


def neg(x: Tensor) -> Tensor:
    return apply("neg", x)


def power(x: Tensor, exponent: float) -> Tensor:
    """x ** exponent for a constant exponent."""
    if not isinstance(exponent, numbers.Real) or isinstance(exponent, bool):
        raise GraphError(f"power of '{x.label}': exponent must be a number, got {exponent!r}")
    c = sympy.Integer(exponent) if float(exponent).is_integer() else sympy.Float(exponent)
    return ewise("power", ARGS[0] ** c, [x], label=_label("{}**" + str(exponent), x))


def elementwise(name: str, expr: sympy.Expr, symbols: Sequence[sympy.Symbol]):
    """A user-defined elementwise function from a SymPy formula; its derivative is derived.

    Known unstable patterns are rewritten first (``log(1 + exp(z))`` becomes a stable softplus;
    :mod:`graphnn.ir.rewrites`), and a graph using a formula still NaN or Inf in float32 where
    its exact value is finite warns (:class:`~graphnn.errors.StabilityWarning`) with the rewrite
    to write.

    >>> import sympy, graphnn as gn
    >>> s = sympy.Symbol("z")
    >>> swish = gn.elementwise("swish", s / (1 + sympy.exp(-s)), [s])
    >>> swish(gn.input("x", (2,))).shape
    (None, 2)
    """
    symbols = list(symbols)
    extra = sympy.sympify(expr).free_symbols - set(symbols)
    if extra:
        raise GraphError(
            f"function '{name}': formula uses unknown symbols {sorted(map(str, extra))}"
        )
    formula = rewrite(sympy.sympify(expr).xreplace(dict(zip(symbols, ARGS, strict=False))))
    infinite = [a for a in (sympy.zoo, sympy.oo, -sympy.oo, sympy.nan) if formula.has(a)]
    if infinite:  # z / 0 is zoo*z: no printer or derivative has a meaning for it
        raise GraphError(
            f"function '{name}': the formula {expr} holds {infinite[0]} (a division by zero?); "
            "it must be finite"
        )
    names = tuple(str(s) for s in symbols)

    def build(*args) -> Tensor:
        if len(args) != len(symbols):
            raise GraphError(f"{name} takes {len(symbols)} argument(s), got {len(args)}")
        # user=...: screened when a graph is built (graphnn.inspect.audit.user_function_warnings)
        return ewise(name, formula, args, user=(formula, names))

    build.__name__ = name
    return build


# --- structural ---------------------------------------------------------------------------------


def matmul(a, b, ta: bool = False, tb: bool = False) -> Tensor:
    """op(a) @ op(b) for 2-D tensors; ``ta``/``tb`` transpose an operand (used by backward)."""
    a, b = _as_tensor(a), _as_tensor(b)
    shape = matmul_shape(a.shape, b.shape, (a.label, b.label), ta, tb)
    label = _label("{}" + ("^T" if ta else "") + " @ {}" + ("^T" if tb else ""), a, b)
    return Tensor("matmul", (a, b), shape, {"ta": ta, "tb": tb}, None, label)


def reduce_sum(x: Tensor, axes: tuple[int, ...], keepdims: bool = False) -> Tensor:
    if not axes:
        # A sum over no axes (every axis of a 0-d value) is the value itself, as in NumPy; as a
        # node it had no element to index (the CPU kernel read x[]).
        return x
    shape = reduced_shape(x.shape, axes, keepdims)
    attrs = {"axes": axes, "keepdims": keepdims}
    return Tensor("reduce_sum", (x,), shape, attrs, None, _label("sum({})", x))


def count(shape: Shape, axes: tuple[int, ...]) -> sympy.Expr:
    """How many elements the axes of shape hold; the batch dimension counts as n."""
    return sympy.Mul(*[BATCH if shape[a] is None else sympy.Integer(shape[a]) for a in axes])


def sum(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Sum over ``axis`` (an int, a tuple, or None for every axis)."""
    return reduce_sum(x, normalize_axes(axis, x.ndim, x.label), keepdims)


def mean(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Mean over ``axis``; over the batch axis it divides by the run-time batch size."""
    axes = normalize_axes(axis, x.ndim, x.label)
    total = reduce_sum(x, axes, keepdims)
    return ewise("mean", ARGS[0] / count(x.shape, axes), [total], label=_label("mean({})", x))


def reshape(x: Tensor, shape: Shape) -> Tensor:
    if np.prod([d or 1 for d in shape]) != np.prod([d or 1 for d in x.shape]):
        raise ShapeError(f"cannot reshape '{x.label}' {show(x.shape)} to {show(shape)}")
    return Tensor("reshape", (x,), tuple(shape), {"shape": tuple(shape)}, None, x.label)


def broadcast_to(g: Tensor, shape: Shape, axes: tuple[int, ...], keepdims: bool) -> Tensor:
    """g, the reduction of a tensor of ``shape`` over ``axes``, repeated back to ``shape``."""
    if not keepdims and axes != tuple(range(len(axes))):
        # Reduced axes that are not leading come back as size 1, so broadcasting aligns them.
        g = reshape(g, reduced_shape(shape, axes, True))
    return ewise("broadcast", ARGS[0], [g], out_shape=shape, label=g.label)


def _check_rows(name: str, logits: Tensor, target: Tensor) -> None:
    if logits.ndim != 2 or target.shape != logits.shape:
        raise ShapeError(
            f"{name}: logits '{logits.label}' {show(logits.shape)} and target "
            f"'{target.label}' {show(target.shape)} must be 2-D and of the same shape"
        )


def softmax(x: Tensor) -> Tensor:
    """Softmax over the last axis, computed stably (max subtracted)."""
    if x.ndim != 2:
        raise ShapeError(f"softmax: '{x.label}' {show(x.shape)} must be 2-D (batch, classes)")
    return Tensor("softmax", (x,), x.shape, {}, None, _label("softmax({})", x))


def softmax_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over the rows of -sum(target * log_softmax(logits)); fused and stable (log-sum-exp).

    As PyTorch's cross-entropy with probability targets, for any target rows: a row's loss is
    ``sum(t) * logsumexp(z) - sum(t * z)`` and its gradient ``(softmax(z) * sum(t) - t)/n``,
    so a row of zeros (padding) adds nothing and a multi-label row summing to 2 counts twice.
    For one-hot or soft labels ``sum(t)`` is 1.  The mean is over the logits' rows: the batch,
    or, for logits without a batch axis, their own row count.
    """
    _check_rows("softmax_cross_entropy", logits, target)
    label = _label("softmax_cross_entropy({}, {})", logits, target)
    return Tensor("softmax_ce", (logits, target), (), {}, None, label)


def mse(pred: Tensor, target) -> Tensor:
    """Mean squared error, the mean over all elements (PyTorch's default)."""
    return mean(power(sub(pred, target), 2))


def binary_cross_entropy_with_logits(logits: Tensor, target) -> Tensor:
    """Mean over all elements of the stable binary cross-entropy on logits."""
    return mean(apply("bce_with_logits", logits, target))


def activation(name: str):
    """The builder of the elementwise op ``name``: ``activation("relu")(x)`` is ``gn.relu(x)``."""

    def build(x, **params) -> Tensor:
        return apply(name, x, **params)

    build.__name__ = name
    build.__doc__ = f"Elementwise {name}; derivative derived by SymPy and screened for stability."
    return build


sigmoid, tanh, relu = activation("sigmoid"), activation("tanh"), activation("relu")
leaky_relu, softplus = activation("leaky_relu"), activation("softplus")
elu, gelu, silu = activation("elu"), activation("gelu"), activation("silu")
exp_, log_ = activation("exp"), activation("log")
