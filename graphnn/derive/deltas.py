"""A deep chain as named deltas, textbook style: each shared δ defined once, gradients read them.

The matrix-form formula of a first-layer weight repeats the whole chain above it (eight levels of
parentheses for a 3-hidden-layer MLP).  Here a backward node that holds the δ of a forward node
(dLoss/dv) and is read by more than one backward node, such as a layer's pre-activation δ read by
its weight's gradient, its bias's gradient and the δ of the layer below, gets a name: ``δ1`` for
the one nearest the inputs, counting up towards the loss.  Each δ is then defined once, in terms
of the δ above it, and each gradient reads them::

    δ2 = dL/d(add2) = (softmax(add2) ∘ rowsum(y) - y)/n
    δ1 = dL/d(add1) = (δ2 W2^T) ∘ relu'(add1)
    dL/dW1 = x^T δ1

A δ symbol evaluates to the formula it names, so every named formula still evaluates to the value
the kernels compute.

>>> import graphnn as gn
>>> x = gn.input("x", (3,)); t = gn.input("t", (2,))
>>> W1, b1, W2 = gn.param("W1", (3, 4)), gn.param("b1", (4,)), gn.param("W2", (4, 2))
>>> g = gn.Graph(gn.softmax_cross_entropy(gn.relu(x @ W1 + b1) @ W2, t))
>>> print(g.backprop().text())
δ2 = dL/d(matmul2) = (softmax(matmul2) ∘ rowsum(t) - t)/n
δ1 = dL/d(add1) = (δ2 W2^T) ∘ relu'(add1)
dL/dW1 = x^T δ1
dL/db1 = 1^T δ1
dL/dW2 = relu1^T δ2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from graphnn.derive.formula import Formula
from graphnn.derive.matrixform import _Assembler
from graphnn.ir.graph import GraphIR


@dataclass(frozen=True)
class Delta:
    """``name`` = dLoss/d(``of``), held in training node ``node``; ``formula`` reads the δ above."""

    name: str
    of: str
    node: str
    formula: Formula

    def symbol(self) -> Formula:
        """The δ as a symbol of other formulas; it evaluates to its own formula."""
        k = self.name[1:]
        return Formula("sym", self.name, rf"\delta_{{{k}}}", (self.formula,), self.formula.run)


@dataclass(frozen=True)
class Backprop:
    """Named deltas, from the loss down, and each parameter's gradient in terms of them."""

    deltas: tuple[Delta, ...]
    gradients: Mapping[str, Formula]

    def text(self, loss: str = "L") -> str:
        lines = [f"{d.name} = d{loss}/d({d.of}) = {d.formula}" for d in self.deltas]
        lines += [f"d{loss}/d{p} = {f}" for p, f in self.gradients.items()]
        return "\n".join(lines)

    __str__ = text

    def latex(self, loss: str = "L") -> list[str]:
        """One LaTeX equation per δ and per gradient (math mode, no dollar signs)."""
        dl = rf"\partial {_tex(loss)}"
        lines = [
            rf"\delta_{{{d.name[1:]}}} = \frac{{{dl}}}{{\partial {_tex(d.of)}}} = "
            + d.formula.latex()
            for d in self.deltas
        ]
        lines += [
            rf"\frac{{{dl}}}{{\partial {_tex(p)}}} = {f.latex()}" for p, f in self.gradients.items()
        ]
        return lines


def _tex(name: str) -> str:
    r"""A node name set upright, as the CLI writes it: \mathrm{W1}, \mathrm{h\_1}."""
    escaped = name.replace("_", r"\_")
    return rf"\mathrm{{{escaped}}}"


def named_deltas(
    training: GraphIR,
    grad_nodes: Mapping[str, str],
    forward: set[str],
    cotangents: Mapping[str, object],
    params: Sequence[str] | None = None,
) -> Backprop:
    """The gradients of ``params`` (default: all of ``grad_nodes``, parameter -> training node)
    with their shared δ named.  Which δ are shared, and their numbers, come from every gradient,
    so one parameter's chain reads as it does among all of them.

    ``cotangents``: forward node -> the training node holding its δ (or a folded constant).
    """
    held: dict[str, str] = {}  # training node -> the latest forward node whose δ it holds
    for v in (n.name for n in training.nodes if n.name in forward):
        d = cotangents.get(v)
        if isinstance(d, str) and d not in forward:
            held[d] = v
    backward = [n for n in training.nodes if n.name not in forward]
    readers: dict[str, int] = {}
    for n in backward:
        for i in set(n.inputs):
            readers[i] = readers.get(i, 0) + 1
    gradient_nodes = set(grad_nodes.values())
    candidates = [
        n.name
        for n in backward
        if n.name in held and n.name not in gradient_nodes and readers.get(n.name, 0) > 1
    ]
    # a constant δ (a mean's -1/n) reads better as its value than as a name
    plain = _Assembler(training, forward)
    shared = [name for name in candidates if plain.of(name).value is None]
    number = {name: len(shared) - k for k, name in enumerate(shared)}
    assembler = _Assembler(training, forward)
    deltas = []
    for n in backward:  # inputs first: each δ is built from the δ above it, already named
        f = assembler.of(n.name)
        if n.name in number:
            d = Delta(f"δ{number[n.name]}", held[n.name], n.name, f)
            deltas.append(d)
            assembler.memo[n.name] = d.symbol()
    chosen = list(grad_nodes) if params is None else list(params)
    wanted = training.ancestors([grad_nodes[p] for p in chosen])
    gradients = {p: assembler.of(grad_nodes[p]) for p in chosen}
    return Backprop(tuple(d for d in deltas if d.node in wanted), gradients)
