"""A chosen derivative form as a reader would write it; display only, the kernel keeps its form.

The screen (:mod:`graphnn.derive.screen`) picks a derivative form for float32, and SymPy prints it
as it comes: silu's is ``-(-z + z/(1 + exp(-z)) - 1)/(1 + exp(-z))``.  For display, each logistic
``1/(1 + exp(-u))`` is written ``σ(u)``, the result factored and each factor's sum collected with
its sign folded in: ``(z*(1 - σ(z)) + 1)*σ(z)``.  The kernels never see this form: they compute
the screened one, which is what makes them finite at z = -100.

>>> z = sympy.Symbol("z")
>>> readable(-(-z + z/(1 + sympy.exp(-z)) - 1)/(1 + sympy.exp(-z)))
(z*(1 - σ(z)) + 1)*σ(z)
>>> readable(-sympy.Symbol("Y")*(sympy.Symbol("Y") - 1))
Y*(1 - Y)
"""

from __future__ import annotations

import functools

import sympy


class Sigma(sympy.Function):
    """σ(u) = 1/(1 + exp(-u)), the logistic function, for display; ``rewrite(sympy.exp)`` gives
    the expression back."""

    nargs = 1

    def _eval_rewrite_as_exp(self, u, **kwargs):
        return 1 / (1 + sympy.exp(-u))

    def _sympystr(self, printer):
        return f"σ({printer._print(self.args[0])})"

    def _latex(self, printer):
        return rf"\sigma\left({printer._print(self.args[0])}\right)"


def _logistic_argument(t: sympy.Expr) -> sympy.Expr | None:
    """u if ``t`` is ``1/(1 + exp(-u))``."""
    if not (t.is_Pow and t.exp == -1 and t.base.is_Add and len(t.base.args) == 2):
        return None
    one, e = sorted(t.base.args, key=lambda a: not a.is_number)
    if one != 1 or not isinstance(e, sympy.exp):
        return None
    return -e.args[0]


def with_sigma(expr: sympy.Expr) -> sympy.Expr:
    """``expr`` with each ``1/(1 + exp(-u))`` written ``σ(u)``."""
    return expr.replace(
        lambda t: _logistic_argument(t) is not None, lambda t: Sigma(_logistic_argument(t))
    )


@functools.lru_cache(maxsize=1024)  # explain and report ask for each consumer's again
def readable(expr: sympy.Expr) -> sympy.Expr:
    """``expr`` rewritten for reading (equal to it; never used to compute).  A Piecewise, or a
    form that factoring would not make simpler, is returned with only σ substituted."""
    shown = with_sigma(expr)
    if shown.has(sympy.Piecewise):
        return shown
    try:
        factored = sympy.factor(shown)
    except (sympy.PolynomialError, NotImplementedError, TypeError):
        return shown
    sign, parts = 1, []
    for f in sympy.Mul.make_args(factored):
        if f == -1:
            sign = -sign
        elif f.is_Add:
            symbols = sorted(f.free_symbols, key=str)
            parts.append(sympy.collect(sympy.expand(sign * f), symbols))
            sign = 1
        else:
            parts.append(f)
    if sign == -1:
        parts.insert(0, sympy.Integer(-1))
    out = sympy.Mul(*parts, evaluate=False) if len(parts) > 1 else parts[0]
    # grouping must not cost operations: 1 - Y**2 stays, not (-Y - 1)*(Y - 1)
    return out if sympy.count_ops(out) <= sympy.count_ops(shown) else shown
