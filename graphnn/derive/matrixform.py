"""Gradients as matrix-form formulas, assembled from the backward graph's local rules.

SymPy's matrix calculus is unreliable (DESIGN.md §2), so the formula is not derived from a matrix
expression; it is *read off* the backward graph the kernels run: a matmul node with a transposed
operand prints as ``x^T D``, the cotangent of an elementwise op as ``D ∘ relu'(add1)``, the fused
softmax cross-entropy as ``(softmax(Z) ∘ rowsum(Y) - Y)/n``.  Every formula can also be evaluated
with NumPy on the forward values, which is how the tests prove that the displayed formula is the
one that runs.  Names are graph node names; only the scalar local derivatives are SymPy expressions.

>>> import graphnn as gn
>>> x = gn.input("x", (3,)); t = gn.input("t", (2,)); W = gn.param("W", (3, 2))
>>> print(gn.Graph(gn.softmax_cross_entropy(x @ W, t)).gradient("W"))
x^T ((softmax(matmul1) ∘ rowsum(t) - t)/n)
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy

from graphnn.derive.formula import Formula, call, elementwise, hadamard, symbol
from graphnn.derive.structural import STRUCTURAL
from graphnn.ir.elementwise import ARGS, Y
from graphnn.ir.graph import GraphIR, Node
from graphnn.ir.ops import Tensor


class _Assembler:
    """Builds the formula of a backward node by walking to the forward nodes it reads."""

    def __init__(self, ir: GraphIR, forward: set[str]):
        self.ir = ir
        self.forward = forward  # forward nodes display as their names
        self.memo: dict[str, Formula] = {}

    def of_tensor(self, t: Tensor) -> Formula:
        return self.of(self.ir.name_of(t))

    def of(self, name: str) -> Formula:
        if name not in self.memo:
            self.memo[name] = self._build(self.ir.node(name))
        return self.memo[name]

    def _build(self, node: Node) -> Formula:
        if node.name in self.forward and holds_constant(node) and self._unnamed(node):
            # 1 - p, not sub1; a node the user named keeps its name
            ins = {ARGS[j]: self.of(i) for j, i in enumerate(node.inputs)}
            return elementwise(node.attr("expr"), ins)
        if node.name in self.forward or node.op in ("input", "param"):
            return symbol(node.name, batched=bool(node.shape) and node.shape[0] is None)
        ins = [self.of(i) for i in node.inputs]
        if node.op == "const":
            return elementwise(sympy.sympify(node.attr("value")), {})
        if node.op == "ewise" and node.attr("of") is not None:
            return self._chain(node, ins)
        if node.op == "ewise":
            return elementwise(node.attr("expr"), dict(zip(ARGS, ins, strict=False)))
        if node.op in STRUCTURAL:
            return STRUCTURAL[node.op].display(node, ins)
        raise KeyError(f"no display rule for op '{node.op}' ({node.name})")

    def _unnamed(self, node: Node) -> bool:
        t = self.ir.tensor_by_name.get(node.name)
        return t is not None and t.name is None

    def _chain(self, node: Node, ins: list[Formula]) -> Formula:
        """cotangent ∘ local derivative; the local derivative is named if it is an activation."""
        of: Tensor = node.attr("of")
        cot = node.attr("cot")
        scale = sympy.sympify(cot.attrs["value"]) if cot.op == "const" else None
        g = self.of_tensor(cot) if scale is None else elementwise(scale, {})
        fwd_ins = {ARGS[j]: self.of_tensor(x) for j, x in enumerate(of.inputs)}
        local: sympy.Expr = node.attr("local")
        used = {s: f for s, f in fwd_ins.items() if s in local.free_symbols}
        if Y in local.free_symbols:
            used[Y] = self.of_tensor(of)
        fn = of.attrs["fn"]
        k = scale if scale is not None else g.value  # a constant cotangent: a scalar factor
        # relu'(add1), bce_with_logits'(logit, y): named, unless constant or repeated arguments
        # were merged away and the inputs are no longer the function's arguments in order
        if fn not in _ARITHMETIC and len(of.inputs) == of.attrs.get("arity", len(of.inputs)):
            term = call(fn, list(fwd_ins.values()), local, used, wrt=node.attr("wrt"))
        elif k is not None:  # a scalar cotangent (a mean's 1/n) folds into the formula
            return elementwise(k * local, used)
        else:
            term = elementwise(local, used)
        if k is not None:
            return term if k == 1 else elementwise(k * ARGS[0], {ARGS[0]: term})
        if term.value is not None:  # a constant local derivative: -δ, not δ ∘ -1
            return g if term.value == 1 else elementwise(term.value * ARGS[0], {ARGS[0]: g})
        return hadamard(g, term)


def gradient_formula(
    training: GraphIR,
    grad_node: str,
    forward: set[str],
    known: Mapping[str, Formula] | None = None,
    memo: dict[str, Formula] | None = None,
) -> Formula:
    """The matrix-form formula of one gradient node of a training graph.

    ``forward`` names the forward nodes: they appear as symbols and are inputs of ``evaluate``.
    ``known`` gives some nodes a formula of their own (``explain`` shows a cotangent as ``δ(v)``).
    ``memo``: formulas already assembled for this training graph and ``forward`` (node name ->
    formula), filled in as nodes are assembled.  Sharing it between the gradients of one graph
    assembles each cotangent once: the gradients of a deep MLP all read the same chain, and
    assembling it again for each of a 30-layer MLP's 62 parameters took 0.7 s of every start.
    """
    assembler = _Assembler(training, forward)
    if memo is not None:
        assembler.memo = memo
    assembler.memo.update(known or {})
    # Assemble the nodes it reads inputs-first, so a deep graph never recurses deeply.
    needed = training.ancestors([grad_node]) - {grad_node}
    for node in training.nodes:
        if node.name in needed:
            assembler.of(node.name)
    return assembler.of(grad_node)


def holds_constant(node: Node) -> bool:
    """A forward arithmetic op into which a constant was merged (``sub1 = 1 - p``,
    ``mul2 = 1e-4*reduce_sum1``): shown as its expression, so the constant is seen."""
    if node.op != "ewise" or node.attr("fn") not in _ARITHMETIC:
        return False
    return len(node.inputs) != node.attr("arity", len(node.inputs))


# Unary ops shown through their formula (2 a0, -1, ...); every other unary op, built-in or
# user-defined, is shown by name: relu'(add1), swish'(add1).
_ARITHMETIC = ("neg", "power", "mean", "broadcast", "accumulate", "add", "sub", "mul", "div")
