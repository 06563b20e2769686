"""Structural ops, one stanza each: the adjoint rule, the NumPy reference rule and the display.

Elementwise ops need no stanza: their derivatives come from SymPy (:mod:`graphnn.derive.screen`).
A structural op (a contraction, a reduction, a reshape, the fused softmax ops) has

- ``vjp(t, g)``: the cotangents of its inputs given its own cotangent ``g``, as tensors (``None``
  where an input is not differentiable, such as a target);
- ``numpy(node, args, n, dtype)``: its value, the rule of the NumPy reference back end (the oracle
  of the tests);
- ``display(node, ins)``: how a gradient formula shows it, given its inputs' formulas.

Adding a structural op is a builder in :mod:`graphnn.ir.ops`, a stanza here, and one emitter per
compiled back end (``codegen/cpu/steps.py``, ``codegen/cuda/steps.py``).

>>> sorted(STRUCTURAL)[:3]
['matmul', 'reduce_sum', 'reshape']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from graphnn.derive import contraction
from graphnn.derive.formula import Formula, call_tex, column_sum, matmul, wrap
from graphnn.errors import GraphError
from graphnn.ir import ops
from graphnn.ir.conv import max_pool_adjoint
from graphnn.ir.dropout import dropout, keep_mask
from graphnn.ir.elementwise import ARGS
from graphnn.ir.graph import Node
from graphnn.ir.indexed import contract
from graphnn.ir.ops import Tensor


@dataclass(frozen=True)
class Structural:
    """The rules of one structural op."""

    vjp: Callable[[Tensor, Tensor], list[Tensor | None]]
    numpy: Callable[[Node, list, int, object], np.ndarray]
    display: Callable[[Node, list[Formula]], Formula]


def concrete(shape, n: int) -> tuple[int, ...]:
    """A shape with the batch dimension replaced by n."""
    return tuple(n if d is None else d for d in shape)


def no_vjp(t: Tensor, g: Tensor):
    raise GraphError(f"op '{t.op}' of node '{t.label}' has no derivative rule (second order?)")


def numpy_call(fn: str, node: Node, ins: list[Formula], rule) -> Formula:
    """``fn(ins)`` as a formula evaluated by ``rule`` (a NumPy rule of this table)."""
    text = f"{fn}({', '.join(f.text for f in ins)})"
    run = lambda v, n: rule(node, [f.run(v, n) for f in ins], n, None)  # noqa: E731
    return Formula("call", text, call_tex(fn, "", ins), tuple(ins), run)


# --- matmul: op(a) @ op(b), op a transpose when ta / tb ------------------------------------------


def _matmul_vjp(t: Tensor, g: Tensor) -> list[Tensor]:
    (a, b), ta, tb = t.inputs, t.attrs["ta"], t.attrs["tb"]
    da = ops.matmul(b, g, tb, True) if ta else ops.matmul(g, b, False, not tb)
    db = ops.matmul(g, a, True, ta) if tb else ops.matmul(a, g, not ta, False)
    return [da, db]


def _matmul_numpy(node: Node, a, n, dtype):
    return (a[0].T if node.attr("ta") else a[0]) @ (a[1].T if node.attr("tb") else a[1])


# --- contract: the indexed contraction (conv2d, pooling); graphnn.ir.indexed -------------------


def contract_adjoint(t: Tensor, g: Tensor, m: int) -> Tensor:
    """The cotangent of operand ``m`` of contraction ``t``, given ``g``, the cotangent of ``t``.

    One mechanical rule for every contraction: swap the roles of the output and operand ``m``
    (``g`` is read through the old output map, the new output is written through operand ``m``'s
    map, which the emitters invert) and keep the bounds of every index.
    """
    operands, maps = list(t.inputs), list(t.attrs["maps"])
    target, out = operands[m], maps[m]
    operands[m], maps[m] = g, t.attrs["out"]
    label = f"d{t.label}/d{target.label}"
    label = label if len(label) <= 60 else label[:57] + "..."
    fn = f"d_{t.attrs['fn']}"  # d_conv2d: named after the op it is an adjoint of
    return contract(operands, maps, out, dict(t.attrs["sizes"]), target.shape, label, fn)


def _contract_numpy(node: Node, a, n, dtype):
    attrs = {k: node.attr(k) for k in ("sizes", "maps", "out")}
    return contraction.evaluate(attrs, a, n, concrete(node.shape, n))


# --- max_pool: the window maximum; its adjoint is a contraction with the argmax mask ------------


def _windows(node: Node, x: np.ndarray) -> np.ndarray:
    """(b, oh, ow, kh, kw, c): every window of x, padding as -inf (it never wins a max)."""
    (kh, kw), (sh, sw), (ph, pw) = node.attr("size"), node.attr("stride"), node.attr("padding")
    _, oh, ow, _ = node.shape if node.op == "max_pool" else node.shape[:3] + node.shape[5:]
    padded = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=-np.inf)
    rows = sh * np.arange(oh)[:, None, None, None] + np.arange(kh)[None, None, :, None]
    cols = sw * np.arange(ow)[None, :, None, None] + np.arange(kw)[None, None, None, :]
    return padded[:, rows, cols, :]


def _max_pool_numpy(node: Node, a, n, dtype):
    return _windows(node, a[0]).max(axis=(3, 4))


def _max_pool_mask_numpy(node: Node, a, n, dtype):
    """1 at the first maximum of each window (row-major over the window), else 0."""
    win = _windows(node, a[0])
    b, oh, ow, kh, kw, c = win.shape
    flat = np.moveaxis(win, 5, 3).reshape(b, oh, ow, c, kh * kw)
    first = np.argmax(flat, axis=-1)
    onehot = np.arange(kh * kw) == first[..., None]
    return np.moveaxis(onehot.reshape(b, oh, ow, c, kh, kw), 3, 5).astype(a[0].dtype)


# --- one_hot: integer ids (held in a float tensor) to one-hot rows; NaN rows for a bad id -------


def _one_hot_numpy(node: Node, a, n, dtype):
    ids, depth = a[0], node.attr("depth")
    valid = (ids == np.floor(ids)) & (ids >= 0) & (ids < depth)
    safe = np.where(valid, ids, 0).astype(np.int64)
    out = (safe[..., None] == np.arange(depth)).astype(ids.dtype)
    return np.where(valid[..., None], out, np.nan)


# --- dropout: its mask depends only on (seed, epoch, sample, element): its adjoint is itself ---


def _dropout_numpy(node: Node, a, n, dtype, draw=(0, None)):
    """The training form for ``draw`` = (epoch key, the batch rows' sample ids, None for
    0..n-1); ``draw=None`` is the eval form (the identity)."""
    (x,) = a
    if draw is None:
        return x
    key, ids = draw
    ids = np.arange(x.shape[0]) if ids is None else ids
    rate = node.attr("rate")
    keep = keep_mask(node.attr("seed"), key, ids, x.shape, rate)
    return np.where(keep, x * x.dtype.type(1 / (1 - rate)), x.dtype.type(0))


# --- running: the batch statistic while training, the state in evaluation ----------------------


def _running_numpy(node: Node, a, n, dtype, step: int | None = 0):
    """The training form (the batch value); ``step=None`` is the eval form (the state)."""
    return a[1] if step is None else a[0]


# --- reduce_sum: a sum over axes; its adjoint repeats the cotangent back -------------------------


def _reduce_vjp(t: Tensor, g: Tensor) -> list[Tensor]:
    (x,) = t.inputs
    return [ops.broadcast_to(g, x.shape, t.attrs["axes"], t.attrs["keepdims"])]


def _reduce_numpy(node: Node, a, n, dtype):
    return a[0].sum(axis=node.attr("axes"), keepdims=node.attr("keepdims"))


# --- reshape --------------------------------------------------------------------------------


def _reshape_display(node: Node, ins: list[Formula]) -> Formula:
    shape, (x,) = node.shape, ins
    return Formula(
        x.kind,
        x.text,
        x.latex_text,
        x.operands,
        lambda v, n: x.run(v, n).reshape(concrete(shape, n)),
    )


# --- softmax over the last axis, and its adjoint y ∘ (g - rowsum(g ∘ y)) ------------------------


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_vjp(t: Tensor, g: Tensor) -> list[Tensor]:
    return [Tensor("softmax_grad", (t, g), t.shape, {}, None, f"dsoftmax({t.label})")]


def _softmax_grad_numpy(node: Node, a, n, dtype):
    y, g = a
    return y * (g - (y * g).sum(axis=-1, keepdims=True))


def _softmax_grad_display(node: Node, ins: list[Formula]) -> Formula:
    (y, (ly)), (g, lg) = wrap(ins[0]), wrap(ins[1])
    return Formula(
        "hadamard",
        f"{y} ∘ ({ins[1].text} - rowsum({g} ∘ {y}))",
        rf"{ly} \circ \left({ins[1].latex_text} - \operatorname{{rowsum}}"
        rf"\left({lg} \circ {ly}\right)\right)",
        tuple(ins),
        lambda v, n: _softmax_grad_numpy(node, [f.run(v, n) for f in ins], n, None),
    )


# --- softmax cross-entropy, fused: mean over rows of logsumexp(z) - t·z; adjoint (softmax - t)/n --


def _softmax_ce_numpy(node: Node, a, n, dtype):
    """mean over rows of sum(t) logsumexp(z) - sum(t z): -sum(t log softmax(z)) for any t."""
    z, t = a
    m = z.max(axis=-1, keepdims=True)
    lse = m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True))
    rows = t.sum(axis=-1) * lse[:, 0] - (t * z).sum(axis=-1)
    return np.asarray(rows.mean(), dtype=z.dtype)


def _softmax_ce_grad_numpy(node: Node, a, n, dtype):
    """(softmax(z) sum(t) - t) / rows: the rows of t need not sum to 1; the loss is a mean over
    the logits' rows, which are the batch only if they have its axis."""
    z, t = a
    return (softmax(z) * t.sum(axis=-1, keepdims=True) - t) / len(z)


def _softmax_ce_vjp(t: Tensor, g: Tensor) -> list[Tensor | None]:
    logits, target = t.inputs
    label = f"d{t.label}/d{logits.label}"
    local = Tensor("softmax_ce_grad", (logits, target), logits.shape, {}, None, label)
    return [ops.ewise("d_softmax_ce", ARGS[0] * ARGS[1], [g, local], label=local.label), None]


def _softmax_ce_grad_display(node: Node, ins: list[Formula]) -> Formula:
    z, t = ins
    sm = numpy_call("softmax", node, [z], lambda node, a, n, dt: softmax(a[0]))
    return ce_gradient(sm, t, node.shape[0])


def ce_gradient(softmax_z: Formula, t: Formula, rows: int | None) -> Formula:
    """``(softmax(z) ∘ rowsum(t) - t)/n``, the fused cross-entropy's gradient; rowsum(t) is 1
    for one-hot or soft-label targets, and ``n`` is the logits' row count if they have no batch
    axis."""
    (st, sl), (tt, tl) = wrap(softmax_z), wrap(t)
    n = "n" if rows is None else str(rows)
    text = f"({st} ∘ rowsum({t.text}) - {tt})/{n}"
    tex = rf"\frac{{{sl} \circ \operatorname{{rowsum}}\left({t.latex_text}\right) - {tl}}}{{{n}}}"

    def run(v, n_batch):
        z, target = softmax_z.run(v, n_batch), t.run(v, n_batch)
        return (z * target.sum(axis=-1, keepdims=True) - target) / len(z)

    return Formula("elem", text, tex, (softmax_z, t), run)


def _shown_as_call(fn: str):
    """Display of a forward op: ``fn(inputs)``, evaluated by the op's own NumPy rule."""
    return lambda node, ins: numpy_call(fn, node, ins, STRUCTURAL[node.op].numpy)


STRUCTURAL: dict[str, Structural] = {
    "matmul": Structural(
        _matmul_vjp,
        _matmul_numpy,
        lambda node, ins: matmul(*ins, node.attr("ta"), node.attr("tb")),
    ),
    "contract": Structural(
        lambda t, g: [contract_adjoint(t, g, m) for m in range(len(t.inputs))],
        _contract_numpy,
        contraction.display,
    ),
    "max_pool": Structural(
        lambda t, g: [max_pool_adjoint(t, g)], _max_pool_numpy, _shown_as_call("max_pool2d")
    ),
    "max_pool_mask": Structural(no_vjp, _max_pool_mask_numpy, _shown_as_call("argmax_mask")),
    "dropout": Structural(
        lambda t, g: [dropout(g, t.attrs["rate"], t.attrs["seed"])],
        _dropout_numpy,
        _shown_as_call("dropout"),
    ),
    # the state is no trainable parameter: no cotangent reaches it
    "running": Structural(lambda t, g: [g, None], _running_numpy, lambda node, ins: ins[0]),
    "one_hot": Structural(lambda t, g: [None], _one_hot_numpy, _shown_as_call("one_hot")),
    "reduce_sum": Structural(
        _reduce_vjp,
        _reduce_numpy,
        lambda node, ins: column_sum(ins[0], node.attr("axes"), node.attr("keepdims")),
    ),
    "reshape": Structural(
        lambda t, g: [ops.reshape(g, t.inputs[0].shape)],
        lambda node, a, n, dt: a[0].reshape(concrete(node.shape, n)),
        _reshape_display,
    ),
    "softmax": Structural(
        _softmax_vjp, lambda node, a, n, dt: softmax(a[0]), _shown_as_call("softmax")
    ),
    "softmax_grad": Structural(no_vjp, _softmax_grad_numpy, _softmax_grad_display),
    "softmax_ce": Structural(
        _softmax_ce_vjp, _softmax_ce_numpy, _shown_as_call("softmax_cross_entropy")
    ),
    "softmax_ce_grad": Structural(
        no_vjp,
        _softmax_ce_grad_numpy,
        _softmax_ce_grad_display,
    ),
}
