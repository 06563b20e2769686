"""Matrix-form formulas: values that print as text and LaTeX and evaluate with NumPy.

A :class:`Formula` is a small tree (``x^T D``, ``D ∘ relu'(add1)``, ``1^T D``) whose leaves are
graph node names.  :mod:`graphnn.derive.matrixform` assembles one per gradient from the backward
graph; :mod:`graphnn.derive.structural` says how each structural op displays.

>>> x, d = symbol("x", batched=True), symbol("D")
>>> print(matmul(x, d, True, False))
x^T D
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import sympy
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from graphnn.errors import DataError
from graphnn.ir.elementwise import ARGS, BATCH, numpy_function

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
    # a constant's SymPy value (-1/n, 2e-4), so products with it print as scalars, not as ∘
    value: sympy.Expr | None = field(repr=False, default=None, compare=False)

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


def short_float(value) -> str:
    """A float as a reader writes it: ``1e-4``, ``0.5``, ``0.0002`` (never SymPy's 15 digits)."""
    v = float(value)
    text = f"{v:.6e}" if 0 < abs(v) < 1e-3 else f"{v:.6g}"
    mantissa, e, exponent = text.partition("e")
    if e:
        mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
    return f"{mantissa}e{int(exponent)}" if e else text


def iverson(expr: sympy.Piecewise) -> sympy.Boolean | None:
    """The condition of ``Piecewise((1, c), (0, True))``, shown as the Iverson bracket ``[c]``."""
    if len(expr.args) == 2 and expr.args[1].cond == sympy.true:
        (one, cond), (zero, _) = expr.args
        if one == 1 and zero == 0:
            return cond
    return None


class _TextPrinter(StrPrinter):
    """SymPy's text, with short floats and ``[z > 0]`` for an indicator Piecewise."""

    def _print_Float(self, expr):
        return short_float(expr)

    def _print_Piecewise(self, expr):
        cond = iverson(expr)
        return f"[{self._print(cond)}]" if cond is not None else self._print_Basic(expr)


class _MathtextPrinter(LatexPrinter):
    """SymPy's LaTeX, but Piecewise without ``cases`` (matplotlib's mathtext cannot parse it),
    an indicator Piecewise as an Iverson bracket, and short floats."""

    def _print_Float(self, expr):
        mantissa, e, exponent = short_float(expr).partition("e")
        return rf"{mantissa} \cdot 10^{{{exponent}}}" if e else mantissa

    def _print_Piecewise(self, expr):
        cond = iverson(expr)
        if cond is not None:
            return rf"\left[{self._print(cond)}\right]"
        parts = [
            self._print(e)
            + (r"\ \mathrm{otherwise}" if c == sympy.true else r"\ \mathrm{if}\ " + self._print(c))
            for e, c in expr.args
        ]
        return r"\left\{" + r",\ ".join(parts) + r"\right."


def show(expr: sympy.Expr) -> str:
    """A scalar SymPy expression as display text: short floats, ``[z > 0]`` for relu'."""
    return _TextPrinter().doprint(expr)


def show_latex(expr: sympy.Expr) -> str:
    """A scalar SymPy expression as LaTeX that matplotlib's mathtext parses."""
    return _MathtextPrinter().doprint(expr)


def wrap(f: Formula) -> tuple[str, str]:
    if f.kind in _ATOMIC:
        return f.text, f.latex_text
    return f"({f.text})", rf"\left({f.latex_text}\right)"


def symbol(name: str, batched: bool = False) -> Formula:
    tex = sympy.latex(sympy.Symbol(name))
    return Formula("sym", name, tex, run=lambda v, n: v[name], batched=batched)


def elementwise(expr: sympy.Expr, operands: Mapping[sympy.Symbol, Formula]) -> Formula:
    """A scalar SymPy expression applied elementwise to matrix operands."""
    if expr in operands:  # the operand itself: no parentheses, no "(log1)"
        return operands[expr]
    names = {s: sympy.Symbol(f"_{k}") for k, s in enumerate(operands)}
    shown = expr.xreplace(names).xreplace({BATCH: sympy.Symbol("n")})
    # a plain sum (a gradient's accumulated parts) needs no parentheses around its terms
    bare = expr.is_Add and all(a in operands for a in expr.args)
    shown_as = (lambda f: (f.text, f.latex_text)) if bare else wrap
    texts = {names[s]: sympy.Symbol(shown_as(f)[0]) for s, f in operands.items()}
    latexes = {names[s]: sympy.Symbol(shown_as(f)[1]) for s, f in operands.items()}
    text = show(shown.xreplace(texts))
    tex = show_latex(shown.xreplace(latexes))
    order = list(operands)
    scalar = expr.xreplace(dict(zip(order, ARGS, strict=False)))
    kind = "const" if not operands else "elem"

    def run(v, n):
        # lambdified on first use (then cached): showing a formula needs no NumPy function, and
        # lambdify's first call costs 0.1 s of every start that builds a kernel module
        func = numpy_function(scalar, len(order))
        with np.errstate(all="ignore"):
            return func(*(f.run(v, n) for f in operands.values()), n)

    value = expr if not operands else None
    return Formula(kind, text, tex, tuple(operands.values()), run, value=value)


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
    return Formula("call", text, call_tex(fn, tex_mark, args), tuple(args), inner.run)


def call_tex(fn: str, mark: str, args: Sequence[Formula]) -> str:
    """LaTeX of ``fn<mark>(args)``, the name set upright with its underscores escaped."""
    name = fn.replace("_", r"\_")
    return rf"\operatorname{{{name}}}{mark}\left({', '.join(a.latex_text for a in args)}\right)"


def hadamard(a: Formula, b: Formula) -> Formula:
    (ta, la), (tb, lb) = wrap(a), wrap(b)
    return Formula(
        "hadamard",
        f"{ta} ∘ {tb}",
        rf"{la} \circ {lb}",
        (a, b),
        lambda v, n: a.run(v, n) * b.run(v, n),
    )


def matmul(a: Formula, b: Formula, ta: bool, tb: bool) -> Formula:
    (sa, la), (sb, lb) = wrap(a), wrap(b)
    text = f"{sa}{'^T' if ta else ''} {sb}{'^T' if tb else ''}"
    tex = f"{la}{'^{T}' if ta else ''} {lb}{'^{T}' if tb else ''}"

    def run(v, n):
        x, y = a.run(v, n), b.run(v, n)
        return (x.T if ta else x) @ (y.T if tb else y)

    return Formula("matmul", text, tex, (a, b), run)


def column_sum(a: Formula, axes: tuple[int, ...], keepdims: bool) -> Formula:
    s, tex = wrap(a)
    if axes == (0,):
        text, latex = f"1^T {s}", rf"\mathbf{{1}}^{{T}} {tex}"
    else:
        text, latex = f"sum_{axes}{s}", rf"\sum_{{{axes}}} {tex}"
    return Formula(
        "sum", text, latex, (a,), lambda v, n: a.run(v, n).sum(axis=axes, keepdims=keepdims)
    )
