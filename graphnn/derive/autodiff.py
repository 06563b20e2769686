"""Reverse-mode autodiff over the graph: the chain rule, one adjoint rule per op.

The backward pass walks the tensors in reverse topological order.  Each tensor's cotangent is the
sum of what its consumers send it (fan-out), and each op's rule in :data:`VJP` turns the cotangent
of its output into cotangents of its inputs.  Elementwise ops share one rule: the local derivative
comes from ``graphnn.derive.screen.derivative`` (SymPy, screened for stability) and broadcasting is
undone in one place, :func:`unbroadcast`.  Nothing is scalarized: a 4096-wide layer yields the same
nodes as an 8-wide one.

>>> import graphnn as gn
>>> x = gn.input("x", (3,)); w = gn.param("w", (3, 1)); t = gn.input("t", (1,))
>>> loss = gn.mse(gn.sigmoid(x @ w), t)
>>> grads = gradients(loss, [w])
>>> grads[w].shape
(3, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sympy

from graphnn.derive.store import derivative
from graphnn.derive.structural import STRUCTURAL, no_vjp
from graphnn.errors import GraphError
from graphnn.ir import ops
from graphnn.ir.elementwise import ARGS, Y
from graphnn.ir.graph import topological_tensors
from graphnn.ir.ops import Tensor
from graphnn.ir.shapes import Shape, broadcast_axes


def unbroadcast(g: Tensor, shape: Shape) -> Tensor:
    """Sum g over the axes that broadcasting added to a value of ``shape``."""
    if g.shape == shape:
        return g
    lead, ones = broadcast_axes(shape, g.shape)
    if not ones:
        return ops.reduce_sum(g, lead, keepdims=False)
    return ops.reshape(ops.reduce_sum(g, lead + ones, keepdims=True), shape)


def _ewise_vjp(t: Tensor, g: Tensor) -> list[Tensor]:
    expr, nargs = t.attrs["expr"], len(t.inputs)
    out = []
    for i, x in enumerate(t.inputs):
        d = derivative(expr, i, nargs)
        # Local symbols a_j move to a_{j+1}; a0 is the incoming cotangent G; Y the op's output.
        shift = {ARGS[j]: ARGS[j + 1] for j in range(nargs)}
        local = d.expr.xreplace({**shift, Y: ARGS[nargs + 1]})
        args = [g, *t.inputs, t]
        fn = "d_" + t.attrs["fn"]
        label = f"d{t.label}/d{x.label}"
        contrib = ops.ewise(
            fn, ARGS[0] * local, args, label=label, of=t, cot=g, wrt=i, local=d.expr, form=d.form
        )
        out.append(unbroadcast(contrib, x.shape))
    return out


VJP: dict[str, Callable[[Tensor, Tensor], list[Tensor | None]]] = {
    "ewise": _ewise_vjp,
    **{op: rule.vjp for op, rule in STRUCTURAL.items()},
}


def _depends_on(order: Sequence[Tensor], wrt: Sequence[Tensor]) -> set[int]:
    needs = {id(w) for w in wrt}
    for t in order:
        if any(id(i) in needs for i in t.inputs):
            needs.add(id(t))
    return needs


def gradients(loss: Tensor, wrt: Sequence[Tensor]) -> dict[Tensor, Tensor]:
    """The cotangent tensor of ``loss`` with respect to each tensor in ``wrt``."""
    return backward(loss, wrt)[0]


def backward(loss: Tensor, wrt: Sequence[Tensor]) -> tuple[dict[Tensor, Tensor], dict[int, Tensor]]:
    """The gradients of ``loss`` with respect to ``wrt``, and every cotangent on the way.

    The second result maps ``id(t)`` of every tensor between ``wrt`` and the loss to its
    cotangent tensor (the δ that explanations show), as built once here.
    """
    if loss.shape != ():
        raise GraphError(f"the loss '{loss.label}' must be a scalar, but its shape is {loss.shape}")
    order = topological_tensors([loss])
    needs = _depends_on(order, wrt)
    pending: dict[int, list[Tensor]] = {id(loss): [ops.constant(1)]}
    result: dict[int, Tensor] = {}
    for t in reversed(order):
        parts = pending.pop(id(t), None)
        if parts is None or id(t) not in needs:
            continue
        g = parts[0]
        for p in parts[1:]:
            g = ops.ewise("accumulate", ARGS[0] + ARGS[1], [g, p], label=f"d{t.label}")
        result[id(t)] = g
        if t.op in ("input", "param", "const"):
            continue
        rule = VJP.get(t.op, no_vjp)
        for x, gx in zip(t.inputs, rule(t, g), strict=True):
            if id(x) not in needs:
                continue
            if gx is None:
                raise GraphError(
                    f"'{t.label}' is not differentiable with respect to input '{x.label}'"
                )
            pending.setdefault(id(x), []).append(gx)
    zero = {id(w): ops.constant(sympy.Integer(0), w.shape) for w in wrt}
    return {w: result.get(id(w), zero[id(w)]) for w in wrt}, result
