"""The chain rule of one gradient, step by step: the backpropagated signal δ at each node.

``δ(v)`` is dLoss/dv, the cotangent autodiff computes for forward node ``v``.  For a parameter, the
chain lists every forward node between it and the loss, from the loss down, with the training-graph
node holding its δ, how that δ is formed from the δ of the node's consumers (a matrix-form formula
read off the backward graph, in which the consumers' cotangents appear as ``δ(name)``), and the
local rule of each consumer: the screened SymPy derivative of an elementwise op (in terms of node
names, ``Y`` being the op's output) or the adjoint of a structural op.

>>> import graphnn as gn
>>> x = gn.input("x", (3,)); t = gn.input("t", (2,)); W = gn.param("W", (3, 2))
>>> g = gn.Graph(gn.mse(gn.sigmoid(x @ W), t))
>>> [str(s.formula) for s in chain(g, "W")][-2:]
["δ(sigmoid1) ∘ sigmoid'(matmul1)", 'x^T δ(matmul1)']
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from codegen.steps import describe
from graphnn.derive.formula import show
from graphnn.derive.matrixform import Formula, elementwise, gradient_formula, holds_constant
from graphnn.derive.readable import readable
from graphnn.derive.screen import Derivative
from graphnn.derive.store import derivative
from graphnn.ir.elementwise import ARGS, Y
from graphnn.ir.graph import Node

ADJOINTS = {
    "matmul": "matmul adjoint: δ(A B) = D gives δ(A) = D B^T, δ(B) = A^T D",
    "reduce_sum": "sum adjoint: δ repeated over the summed axes",
    "reshape": "reshape adjoint: δ reshaped back",
    "softmax": "softmax adjoint: Y ∘ (δ - rowsum(δ ∘ Y))",
    "contract": (
        "contraction adjoint: the same sum with the output and this operand swapped "
        "(δ read where the output was written, the result written where the operand was read)"
    ),
    "max_pool": "max pool adjoint: δ routed to each window's first maximum (argmax mask)",
    "softmax_ce": (
        "fused softmax cross-entropy: (softmax(z) ∘ rowsum(t) - t)/n, max-subtracted (stable)"
    ),
}


@dataclass(frozen=True)
class Local:
    """The local rule of one consumer ``node`` with respect to its input ``wrt``."""

    node: str
    wrt: str
    equation: str  # the consumer's forward equation, e.g. "relu1 = relu(add1)"
    rule: str  # "∂relu1/∂add1 = ..." or the adjoint's description
    derivative: Derivative | None = None  # elementwise ops: the screened derivative
    expr: sympy.Expr | None = None  # its chosen form in node names (Y -> the node's output)
    names: tuple[tuple[sympy.Symbol, sympy.Symbol], ...] = ()  # a_j and Y -> node names

    def named(self, expr: sympy.Expr) -> sympy.Expr:
        """A derivative expression (in a_j and Y) written with this consumer's node names."""
        return expr.xreplace(dict(self.names))


@dataclass(frozen=True)
class Step:
    """δ at one forward node of the path from the loss to the parameter."""

    node: str  # the forward node v
    delta: str | None  # the training-graph node holding δ(v); None if δ is a folded constant
    formula: Formula  # δ(v) from the consumers' δ and forward values
    locals: tuple[Local, ...]  # one per consumer on the path

    def holder(self) -> str:
        """Where δ(v) lives: a training node's name, or why there is none."""
        if self.delta:
            return self.delta
        return "the loss" if not self.locals else "a constant folded into its users"

    def nodes(self) -> set[str]:
        """Every graph node this step names."""
        names = {self.node, *(loc.node for loc in self.locals)}
        return names | ({self.delta} if self.delta else set())


def delta_symbol(name: str, node: str) -> Formula:
    """``δ(name)`` as a formula symbol; it evaluates to the value of training node ``node``."""
    tex = rf"\delta_{{{sympy.latex(sympy.Symbol(name))}}}"
    return Formula("sym", f"δ({name})", tex, run=lambda v, n: v[node])


def cotangent_nodes(graph) -> dict[str, str | sympy.Expr]:
    """Forward node name -> training node holding its δ, or δ's value where it is a constant
    folded into its users (``1`` for the loss, ``1/n`` under a mean): what autodiff recorded."""
    return graph.cotangents


def path(graph, param: str) -> list[str]:
    """Forward nodes from the loss down to ``param`` (reverse topological order)."""
    fwd, loss = graph.forward, graph.loss_name
    on = fwd.ancestors([loss]) & (fwd.descendants(param) | {param})
    return [n.name for n in reversed(graph.forward.nodes) if n.name in on]


def chain(graph, param: str) -> list[Step]:
    """The δ at each forward node from the loss down to ``param``."""
    delta = cotangent_nodes(graph)
    nodes = path(graph, param)
    on = set(nodes)
    forward = set(graph.forward.by_name)
    steps = []
    for name in nodes:
        consumers = [c for c in graph.forward.consumers(name) if c in on]
        known = {
            delta[c]: delta_symbol(c, delta[c])
            for c in consumers
            if isinstance(delta.get(c), str) and delta[c] not in forward
        }
        node = delta[name] if isinstance(delta[name], str) else None
        if node is None:
            formula = elementwise(delta[name], {})
        else:
            formula = gradient_formula(graph.training, node, forward, known)
        rules = tuple(local(graph.forward.node(c), name) for c in consumers)
        steps.append(Step(name, node, formula, rules))
    return steps


def local(consumer: Node, wrt: str) -> Local:
    """The local rule of ``consumer`` with respect to its input ``wrt``."""
    equation = f"{consumer.name} = {describe(consumer)}"
    if consumer.op == "matmul" and not (consumer.attr("ta") or consumer.attr("tb")):
        a, b = consumer.inputs
        rule = f"δ({a}) = δ({consumer.name}) {b}^T" if wrt == a else ""
        rule += ", " if a == b else ""
        rule += f"δ({b}) = {a}^T δ({consumer.name})" if wrt == b else ""
        return Local(consumer.name, wrt, equation, f"matmul adjoint: {rule}")
    if consumer.op != "ewise":
        return Local(consumer.name, wrt, equation, ADJOINTS.get(consumer.op, consumer.op))
    i = consumer.inputs.index(wrt)
    d = derivative(consumer.attr("expr"), i, len(consumer.inputs))
    names = {ARGS[j]: sympy.Symbol(x) for j, x in enumerate(consumer.inputs)}
    names[Y] = sympy.Symbol(consumer.name)
    expr = d.expr.xreplace(names)
    if holds_constant(consumer):  # sub1 = 1 - p, not sub1 = sub(p), which hides the 1
        equation = f"{consumer.name} = {show(consumer.attr('expr').xreplace(names))}"
    rule = f"∂{consumer.name}/∂{wrt} = {show(readable(expr))}"
    return Local(consumer.name, wrt, equation, rule, d, expr, tuple(names.items()))


def backward_nodes(graph, param: str) -> list[str]:
    """The training-graph nodes that compute dLoss/d(param), in evaluation order."""
    grad = graph.grad_names[param]
    needed = graph.training.ancestors([grad])
    forward = graph.forward.by_name
    return [n.name for n in graph.training.nodes if n.name in needed and n.name not in forward]
