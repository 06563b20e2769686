"""Gradients as matrix-form formulas, assembled from the backward graph's local rules.

SymPy's matrix calculus is unreliable (DESIGN.md §2), so the formula is not derived from a matrix
expression; it is *read off* the backward graph the kernels run: a matmul node with a transposed
operand prints as ``x^T D``, the cotangent of an elementwise op as ``D ∘ relu'(add1)``, the fused
softmax cross-entropy as ``(softmax(Z) - Y)/n``.  Every formula can also be evaluated with NumPy
on the forward values, which is how the tests prove that the displayed formula is the one that
runs.  Names are graph node names; only the scalar local derivatives are SymPy expressions.

>>> import graphnn as gn
>>> x = gn.input("x", (3,)); t = gn.input("t", (2,)); W = gn.param("W", (3, 2))
>>> print(gn.Graph(gn.softmax_cross_entropy(x @ W, t)).gradient("W"))
x^T ((softmax(matmul1) - t)/n)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import sympy
from sympy.printing.latex import LatexPrinter

from codegen.numpy_ref import RULES as NUMPY_RULES
from codegen.numpy_ref import _lambdified
from graphnn.derive.screen import ARGS, BATCH, Y
from graphnn.errors import DataError
from graphnn.ir.graph import GraphIR, Node, Tensor

_ATOMIC = ("sym", "const", "call")


@dataclass(frozen=True)
class Formula:
    """A node of a matrix-form formula: ``kind`` with operands and a way to evaluate it."""

    kind: str  # sym | const | call | matmul | hadamard | scale | sum | elem
    text: str
    latex_text: str
    operands: tuple[Formula, ...] = ()
    run: Callable[[Mapping[str, np.ndarray], int], np.ndarray] = field(repr=False, default=None)
    batched: bool = field(repr=False, default=False)  # a node whose first axis is the batch

    def __str__(self) -> str:
        return self.text

    def latex(self) -> str:
        """The formula as LaTeX (math mode, without the dollar signs)."""
        return self.latex_text

    def _repr_latex_(self) -> str:
        return f"${self.latex_text}$"

    def evaluate(self, values: Mapping[str, np.ndarray], n: int | None = None) -> np.ndarray:
        """The formula's value, given the values of the graph's nodes by name, such as
        ``g.evaluate_nodes(params, data)`` returns.  ``n``, the batch size, defaults to the
        rows of the first node it reads that has a batch axis."""
        if n is None:
            n = next((len(values[s.text]) for s in self._batched() if s.text in values), None)
        if n is None:  # no such node among the values (explain's δ(v) stand-ins)
            n = next((len(v) for v in values.values() if np.ndim(v) > 1), 1)
        try:
            return self.run(values, n)
        except KeyError as exc:
            name = exc.args[0] if exc.args else None
            if not isinstance(name, str) or name in values:
                raise
            raise DataError(
                f"formula {self.text}: no value for node {name!r}; "
                "g.evaluate_nodes(params, data) gives every node's value"
            ) from None

    def _batched(self):
        """The symbols with a batch axis, depth first."""
        if self.batched:
            yield self
        for o in self.operands:
            yield from o._batched()

    def count_ops(self) -> int:
        """Operations in the formula; independent of layer widths by construction."""
        return (self.kind not in _ATOMIC) + sum(o.count_ops() for o in self.operands)


class _MathtextPrinter(LatexPrinter):
    """SymPy's LaTeX, but Piecewise without ``cases`` (matplotlib's mathtext cannot parse it)."""

    def _print_Piecewise(self, expr):
        parts = [
            self._print(e)
            + (r"\ \mathrm{otherwise}" if c == sympy.true else r"\ \mathrm{if}\ " + self._print(c))
            for e, c in expr.args
        ]
        return r"\left\{" + r",\ ".join(parts) + r"\right."


def _wrap(f: Formula) -> tuple[str, str]:
    if f.kind in _ATOMIC:
        return f.text, f.latex_text
    return f"({f.text})", rf"\left({f.latex_text}\right)"


def symbol(name: str, batched: bool = False) -> Formula:
    tex = sympy.latex(sympy.Symbol(name))
    return Formula("sym", name, tex, run=lambda v, n: v[name], batched=batched)


def elementwise(expr: sympy.Expr, operands: Mapping[sympy.Symbol, Formula]) -> Formula:
    """A scalar SymPy expression applied elementwise to matrix operands."""
    names = {s: sympy.Symbol(f"_{k}") for k, s in enumerate(operands)}
    shown = expr.xreplace(names).xreplace({BATCH: sympy.Symbol("n")})
    texts = {names[s]: sympy.Symbol(_wrap(f)[0]) for s, f in operands.items()}
    latexes = {names[s]: sympy.Symbol(_wrap(f)[1]) for s, f in operands.items()}
    text = sympy.sstr(shown.xreplace(texts))
    tex = _MathtextPrinter().doprint(shown.xreplace(latexes))
    order = list(operands)
    scalar = expr.xreplace(dict(zip(order, ARGS, strict=False)))
    kind = "const" if not operands else "elem"

    def run(v, n):
        # lambdified on first use (then cached): showing a formula needs no NumPy function, and
        # lambdify's first call costs 0.1 s of every start that builds a kernel module
        func = _lambdified(scalar, len(order))
        with np.errstate(all="ignore"):
            return func(*(f.run(v, n) for f in operands.values()), n)

    return Formula(kind, text, tex, tuple(operands.values()), run)


def call(
    fn: str,
    args: Sequence[Formula],
    expr: sympy.Expr,
    operands: Mapping[sympy.Symbol, Formula],
    wrt: int | None = None,
):
    """``fn(*args)``, or with ``wrt`` the derivative of ``fn`` by its argument ``wrt``
    (``fn'(a)``; ``fn'_1(a, b)`` for a second argument): a named function of formulas,
    computed by ``expr`` over ``operands``."""
    inner = elementwise(expr, operands)
    mark = tex_mark = ""
    if wrt is not None:
        mark = "'" if wrt == 0 else f"'_{wrt}"
        tex_mark = "'" if wrt == 0 else f"'_{{{wrt}}}"
    text = f"{fn}{mark}({', '.join(a.text for a in args)})"
    return Formula("call", text, _call_tex(fn, tex_mark, args), tuple(args), inner.run)


def _call_tex(fn: str, mark: str, args: Sequence[Formula]) -> str:
    """LaTeX of ``fn<mark>(args)``, the name set upright with its underscores escaped."""
    name = fn.replace("_", r"\_")
    return rf"\operatorname{{{name}}}{mark}\left({', '.join(a.latex_text for a in args)}\right)"


def hadamard(a: Formula, b: Formula) -> Formula:
    (ta, la), (tb, lb) = _wrap(a), _wrap(b)
    return Formula(
        "hadamard",
        f"{ta} ∘ {tb}",
        rf"{la} \circ {lb}",
        (a, b),
        lambda v, n: a.run(v, n) * b.run(v, n),
    )


def matmul(a: Formula, b: Formula, ta: bool, tb: bool) -> Formula:
    (sa, la), (sb, lb) = _wrap(a), _wrap(b)
    text = f"{sa}{'^T' if ta else ''} {sb}{'^T' if tb else ''}"
    tex = f"{la}{'^{T}' if ta else ''} {lb}{'^{T}' if tb else ''}"

    def run(v, n):
        x, y = a.run(v, n), b.run(v, n)
        return (x.T if ta else x) @ (y.T if tb else y)

    return Formula("matmul", text, tex, (a, b), run)


def column_sum(a: Formula, axes: tuple[int, ...], keepdims: bool) -> Formula:
    s, tex = _wrap(a)
    if axes == (0,):
        text, latex = f"1^T {s}", rf"\mathbf{{1}}^{{T}} {tex}"
    else:
        text, latex = f"sum_{axes}{s}", rf"\sum_{{{axes}}} {tex}"
    return Formula(
        "sum", text, latex, (a,), lambda v, n: a.run(v, n).sum(axis=axes, keepdims=keepdims)
    )


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
        if node.name in self.forward or node.op in ("input", "param"):
            return symbol(node.name, batched=bool(node.shape) and node.shape[0] is None)
        ins = [self.of(i) for i in node.inputs]
        if node.op == "const":
            return elementwise(sympy.sympify(node.attr("value")), {})
        if node.op == "matmul":
            return matmul(*ins, node.attr("ta"), node.attr("tb"))
        if node.op == "reduce_sum":
            return column_sum(ins[0], node.attr("axes"), node.attr("keepdims"))
        if node.op == "reshape":
            shape = node.shape
            return Formula(
                ins[0].kind,
                ins[0].text,
                ins[0].latex_text,
                ins[0].operands,
                lambda v, n: ins[0].run(v, n).reshape([n if d is None else d for d in shape]),
            )
        if node.op == "softmax_ce_grad":
            z, t = ins
            sm = _forward_call("softmax", node, z)
            return elementwise((ARGS[0] - ARGS[1]) / BATCH, {ARGS[0]: sm, ARGS[1]: t})
        if node.op == "ewise" and node.attr("of") is not None:
            return self._chain(node, ins)
        if node.op == "ewise":
            return elementwise(node.attr("expr"), dict(zip(ARGS, ins, strict=False)))
        if node.op == "softmax_grad":
            y, g = ins
            rule = NUMPY_RULES["softmax_grad"]
            return Formula(
                "hadamard",
                f"{_wrap(y)[0]} ∘ ({g.text} - rowsum({_wrap(g)[0]} ∘ {_wrap(y)[0]}))",
                rf"{_wrap(y)[1]} \circ \left({g.latex_text} - \operatorname{{rowsum}}"
                rf"\left({_wrap(g)[1]} \circ {_wrap(y)[1]}\right)\right)",
                (y, g),
                lambda v, n: rule(node, [y.run(v, n), g.run(v, n)], n, None),
            )
        raise KeyError(f"no display rule for op '{node.op}' ({node.name})")

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
        # relu'(add1), bce_with_logits'(logit, y): named, unless constant or repeated arguments
        # were merged away and the inputs are no longer the function's arguments in order
        if fn not in _ARITHMETIC and len(of.inputs) == of.attrs.get("arity", len(of.inputs)):
            term = call(fn, list(fwd_ins.values()), local, used, wrt=node.attr("wrt"))
            if scale is not None and scale != 1:  # a mean's 1/n: bce_with_logits'(logit, y)/n
                return elementwise(scale * ARGS[0], {ARGS[0]: term})
        elif scale is not None:  # a scalar cotangent (a mean's 1/n) folds into the formula
            return elementwise(scale * local, used)
        else:
            term = elementwise(local, used)
        if g.kind == "const" and g.text == "1":
            return term
        if term.kind == "const":
            if term.text == "1":
                return g
            return elementwise(ARGS[0] * ARGS[1], {ARGS[0]: term, ARGS[1]: g})
        return hadamard(g, term)


def _forward_call(fn: str, node: Node, *ins: Formula) -> Formula:
    rule = NUMPY_RULES[node.op] if node.op != "softmax_ce_grad" else NUMPY_RULES["softmax"]
    args = ", ".join(f.text for f in ins)
    return Formula(
        "call",
        f"{fn}({args})",
        _call_tex(fn, "", ins),
        ins,
        lambda v, n: rule(node, [f.run(v, n) for f in ins], n, None),
    )


def gradient_formula(
    training: GraphIR,
    grad_node: str,
    forward: set[str],
    known: Mapping[str, Formula] | None = None,
) -> Formula:
    """The matrix-form formula of one gradient node of a training graph.

    ``forward`` names the forward nodes: they appear as symbols and are inputs of ``evaluate``.
    ``known`` gives some nodes a formula of their own (``explain`` shows a cotangent as ``δ(v)``).
    """
    assembler = _Assembler(training, forward)
    assembler.memo.update(known or {})
    # Assemble the nodes it reads inputs-first, so a deep graph never recurses deeply.
    needed = nx.ancestors(training.dag, grad_node)
    for node in training.nodes:
        if node.name in needed:
            assembler.of(node.name)
    return assembler.of(grad_node)


# Unary ops shown through their formula (2 a0, -1, ...); every other unary op, built-in or
# user-defined, is shown by name: relu'(add1), swish'(add1).
_ARITHMETIC = ("neg", "power", "mean", "broadcast", "accumulate", "add", "sub", "mul", "div")
