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
    """``expr`` with each ``1/(1 + exp(-u))`` written ``σ(u)``, ``exp(u) σ(-u)`` (which is
    ``exp(u)/(1 + exp(u))``) as ``σ(u)`` and ``σ(-u)`` as ``1 - σ(u)``."""
    out = expr.replace(
        lambda t: _logistic_argument(t) is not None, lambda t: Sigma(_logistic_argument(t))
    )
    out = out.replace(lambda t: t.is_Mul and _exp_times_sigma(t) is not None, _exp_times_sigma)
    return out.replace(
        lambda t: isinstance(t, Sigma) and t.args[0].could_extract_minus_sign(),
        lambda t: 1 - Sigma(-t.args[0]),
    )


def _exp_times_sigma(t: sympy.Mul) -> sympy.Expr | None:
    """``t`` with a factor pair ``exp(u) σ(-u)`` replaced by ``σ(u)``; None if it has none."""
    factors = list(t.args)
    for e in (f for f in factors if isinstance(f, sympy.exp)):
        partner = Sigma(-e.args[0])
        if partner in factors:
            factors.remove(e)
            factors.remove(partner)
            return sympy.Mul(*factors) * Sigma(e.args[0])
    return None


def _whole_floats(expr: sympy.Expr) -> sympy.Expr:
    """1.0 as 1: an elu's alpha of 1.0 reads 1*exp(z), and ``1*`` says nothing."""
    whole = {f: sympy.Integer(int(f)) for f in expr.atoms(sympy.Float) if float(f).is_integer()}
    return expr.xreplace(whole)


@functools.lru_cache(maxsize=1024)  # explain and report ask for each consumer's again
def readable(expr: sympy.Expr) -> sympy.Expr:
    """``expr`` rewritten for reading (equal to it; never used to compute): σ substituted, then
    the simplest of the expression, its factored form (each sum collected, a minus sign folded
    into the sum it makes positive) and its expansion.  A Piecewise is read branch by branch."""
    shown = _whole_floats(with_sigma(expr))
    if isinstance(shown, sympy.Piecewise):
        return sympy.Piecewise(*((readable(e), c) for e, c in shown.args))
    if shown.has(sympy.Piecewise):
        return shown
    try:
        factored = sympy.factor(shown)
        expanded = sympy.expand(shown)
    except (sympy.PolynomialError, NotImplementedError, TypeError):
        return shown
    choices = [_fold_sign(factored), shown, expanded]  # on a tie the earlier: σ(z)(1 - σ(z))
    return min(choices, key=sympy.count_ops)


def _fold_sign(factored: sympy.Expr) -> sympy.Expr:
    """A factored product with each sum collected and a leading -1 folded into the sum that
    its negation leaves with fewest minus signs: -(t - 1)(t + 1) reads (1 - t)(t + 1)."""
    factors = list(sympy.Mul.make_args(factored))
    sign = 1
    if -1 in factors:
        factors.remove(-1)
        sign = -1
    sums = [k for k, f in enumerate(factors) if f.is_Add]
    if sign == -1 and sums:
        k = min(sums, key=lambda k: _minus_signs(-factors[k]))
        factors[k] = sympy.expand(-factors[k])
        sign = 1
    parts = [
        sympy.collect(sympy.expand(f), sorted(f.free_symbols, key=str)) if f.is_Add else f
        for f in factors
    ]
    if sign == -1:
        parts.insert(0, sympy.Integer(-1))
    return sympy.Mul(*parts, evaluate=False) if len(parts) > 1 else parts[0]


def _minus_signs(f: sympy.Expr) -> int:
    return sum(term.could_extract_minus_sign() for term in sympy.Add.make_args(sympy.expand(f)))
