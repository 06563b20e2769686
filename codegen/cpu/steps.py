"""CPU source text for each kind of plan step: one emitter per op, all sharing a :class:`Scope`.

Emitters return lines of Python (without indentation of the enclosing function).  Elementwise
formulas are printed by :mod:`codegen.printer` only; this module decides loops, indexing and
storage for ``numba.njit`` (NumPy calls allowed, BLAS through ``np.dot``).
"""

from __future__ import annotations

from collections.abc import Callable

import sympy

from codegen.cpu import matmul
from codegen.plan import Step
from codegen.steps import Scope, comment, extent, indent, loop_header
from graphnn.ir.elementwise import ARGS
from graphnn.ir.graph import Node


def emit_group(step: Step, scope: Scope) -> list[str]:
    """One loop nest computing every node of a fused elementwise group (and its reductions)."""
    shape = step.shape
    index = [f"i{k}" for k in range(len(shape))]
    members = {n.name for n in step.nodes}
    consts = dict.fromkeys(i for n in step.nodes for i in n.inputs if i in scope.plan.inlined)
    lines = [comment(scope.ir.node(c)) + "  (inlined)" for c in consts]
    lines += [comment(n) for n in [*step.nodes, *step.reductions]]
    stored = [n for n in step.nodes if n.name in scope.plan.stored]
    if shape:
        lines += [line for n in stored for line in scope.empty(n.name, shape)]
    lines += [line for r in step.reductions for line in scope.empty(r.name, r.shape, "zeros")]
    body: list[str] = []
    read_in_group = {i for n in [*step.nodes, *step.reductions] for i in n.inputs if i in members}
    scalar = {
        n.name: n.name + "_v" if n.name in scope.plan.stored and shape else n.name
        for n in step.nodes
    }
    for node in step.nodes:
        subs = {
            ARGS[k]: sympy.Symbol(scalar[i]) if i in members else scope.value(i, shape, index)
            for k, i in enumerate(node.inputs)
        }
        text = scope.expr(node.attr("expr").xreplace(subs))
        store = f"{node.name}[{', '.join(index)}]"
        if scalar[node.name] == node.name:
            body.append(f"{node.name} = {text}")
        elif node.name in read_in_group:
            body += [f"{scalar[node.name]} = {text}", f"{store} = {scalar[node.name]}"]
        else:
            body.append(f"{store} = {text}")
    body += [f"{_reduce_target(r, index)} += {scalar[r.inputs[0]]}" for r in step.reductions]
    if not shape:
        return lines + body
    return lines + loop_header(shape, index) + indent(body, len(shape))


def _reduce_target(node: Node, index: list[str]) -> str:
    """The accumulator element that element ``index`` of a reduce_sum's input adds to."""
    axes, keep = node.attr("axes"), node.attr("keepdims")
    out = [("0" if keep else None) if k in axes else i for k, i in enumerate(index)]
    out = [i for i in out if i is not None]
    return f"{node.name}[{', '.join(out)}]" if out else node.name


def emit_matmul(step: Step, scope: Scope) -> list[str]:
    node = step.node
    a, b = node.inputs
    ta, tb = bool(node.attr("ta")), bool(node.attr("tb"))
    a_shape, b_shape = scope.ir.node(a).shape, scope.ir.node(b).shape
    how, why = matmul.choose(a_shape, b_shape, ta, tb)
    head = [comment(node), f"# {why}"]
    dot = f"np.dot({a}{'.T' if ta else ''}, {b}{'.T' if tb else ''}"
    if how == "blas":
        view = scope.buffer(node.name, node.shape)
        if view is None:
            return [*head, f"{node.name} = {dot})"]
        return [*head, f"{node.name} = {view}", f"{dot}, {node.name})"]
    lines = head + scope.empty(node.name, node.shape)
    loops = matmul.loop_lines(node.name, a, b, a_shape, b_shape, ta, tb, scope.dtype)
    if how == "loops":
        return lines + loops
    return lines + [f"if {how}:", *indent(loops, 1), "else:", f"    {dot}, {node.name})"]


def emit_reduce_sum(step: Step, scope: Scope) -> list[str]:
    node = step.node
    (x,) = node.inputs
    src = scope.ir.node(x).shape
    index = [f"i{k}" for k in range(len(src))]
    lines = [comment(node), *scope.empty(node.name, node.shape, "zeros")]
    lines += loop_header(src, index)
    lines += indent([f"{_reduce_target(node, index)} += {x}[{', '.join(index)}]"], len(src))
    return lines


def emit_reshape(step: Step, scope: Scope) -> list[str]:
    node = step.node
    return [comment(node), f"{node.name} = {node.inputs[0]}.reshape({scope.dims(node.shape)})"]


def emit_const(step: Step, scope: Scope) -> list[str]:
    node = step.node
    value = scope.expr(sympy.sympify(node.attr("value")))
    if not node.shape:
        return [comment(node), f"{node.name} = {value}"]
    return [comment(node), f"{node.name} = np.full({scope.dims(node.shape)}, {value})"]


def _row_stats(z: str, k: int, scope: Scope, keep: str | None = None) -> list[str]:
    """Lines computing the row max ``m`` and ``s = sum(exp(z - m))`` of row i0 of z.

    With ``keep``, each ``exp(z - m)`` is also stored in row i0 of that array, so a softmax or
    its gradient divides by ``s`` without calling exp a second time.
    """
    lines = [
        f"m = {z}[i0, 0]",
        f"for j in range(1, {k}):",
        f"    m = max(m, {z}[i0, j])",
        f"s = {scope.literal(0)}",
        f"for j in range({k}):",
    ]
    if keep is None:
        return lines + [f"    s += np.exp({z}[i0, j] - m)"]
    return lines + [f"    {keep}[i0, j] = np.exp({z}[i0, j] - m)", f"    s += {keep}[i0, j]"]


def emit_softmax(step: Step, scope: Scope) -> list[str]:
    node = step.node
    (z,), k = node.inputs, node.shape[-1]
    body = _row_stats(z, k, scope, keep=node.name) + [
        f"for j in range({k}):",
        f"    {node.name}[i0, j] = {node.name}[i0, j] / s",
    ]
    lines = [comment(node), *scope.empty(node.name, node.shape)]
    return lines + _over_rows(node.shape, body)


def _over_rows(shape, body: list[str]) -> list[str]:
    """body once per row i0 of a 2-D value: its own rows, which are the batch only when its
    first dimension is (a softmax of a parameter has as many rows as the parameter)."""
    return [f"for i0 in range({extent(shape[0])}):", *indent(body, 1)]


def emit_softmax_grad(step: Step, scope: Scope) -> list[str]:
    node = step.node
    (y, g), k = node.inputs, node.shape[-1]
    body = [
        f"d = {scope.literal(0)}",
        f"for j in range({k}):",
        f"    d += {g}[i0, j] * {y}[i0, j]",
        f"for j in range({k}):",
        f"    {node.name}[i0, j] = {y}[i0, j] * ({g}[i0, j] - d)",
    ]
    return [comment(node), *scope.empty(node.name, node.shape)] + _over_rows(node.shape, body)


def _ce_partner(step: Step, scope: Scope, op: str) -> Node | None:
    for other in scope.plan.steps:
        if other.kind == op and other.node.inputs == step.node.inputs:
            return other.node
    return None


def emit_softmax_ce(step: Step, scope: Scope) -> list[str]:
    """Loss (and, when the plan also needs it, its gradient) in one pass over the rows."""
    node = step.node
    if node.name in scope.done:
        return []
    loss, grad = (node, _ce_partner(step, scope, "softmax_ce_grad"))
    if node.op == "softmax_ce_grad":
        loss, grad = _ce_partner(step, scope, "softmax_ce"), node
    (z, t) = node.inputs
    shape = scope.ir.node(z).shape
    k = shape[-1]
    # the mean over the logits' rows: the batch only when they have a batch axis
    rows = "nf" if shape[0] is None else scope.literal(shape[0])
    lines, body = [], _row_stats(z, k, scope, keep=grad.name if grad is not None else None)
    # A row's loss is tsum logsumexp(z) - sum(t z), tsum = sum(t): -sum(t log softmax(z)) also
    # for target rows that do not sum to 1 (padding rows of zeros, multi-label rows), as in torch.
    body += [f"tsum = {scope.literal(0)}", f"for j in range({k}):", f"    tsum += {t}[i0, j]"]
    if loss is not None:
        lines += [comment(loss), f"{loss.name} = {scope.literal(0)}"]
        body += [
            f"d = {scope.literal(0)}",
            f"for j in range({k}):",
            f"    d += {t}[i0, j] * {z}[i0, j]",
        ]
        body += [f"{loss.name} += tsum * (m + np.log(s)) - d"]
    if grad is not None:
        lines += [comment(grad), *scope.empty(grad.name, grad.shape)]
        body += [
            f"for j in range({k}):",
            f"    {grad.name}[i0, j] = ({grad.name}[i0, j] / s * tsum - {t}[i0, j]) / {rows}",
        ]
    scope.done.update(n.name for n in (loss, grad) if n is not None)
    lines += _over_rows(shape, body)
    if loss is not None:
        lines.append(f"{loss.name} = {loss.name} / {rows}")
    return lines


EMITTERS: dict[str, Callable[[Step, Scope], list[str]]] = {
    "group": emit_group,
    "matmul": emit_matmul,
    "reduce_sum": emit_reduce_sum,
    "reshape": emit_reshape,
    "const": emit_const,
    "softmax": emit_softmax,
    "softmax_grad": emit_softmax_grad,
    "softmax_ce": emit_softmax_ce,
    "softmax_ce_grad": emit_softmax_ce,
}
