"""User formulas: known unstable patterns rewritten to their stable forms.

A user writes softplus as ``log(1 + exp(z))``: exact, but ``exp`` overflows float32 above 88.7,
so the value is Inf there and every form of a derivative through it NaN (inf/inf).  No choice
among derivative forms can fix a forward formula, so :func:`rewrite` replaces each known pattern
by its stable form before anything is derived or screened:

* ``log(1 + exp(u))`` -> ``softplus(u)``: ``u + log(1 + exp(-u))`` for u > 0, else as written
* ``log(1/(1 + exp(u)))`` -> ``-softplus(u)``
* ``exp(u)/(1 + exp(u))`` -> ``sigmoid(u)`` = ``1/(1 + exp(-u))``

What no rewrite fixes is found when a graph is built (``graphnn.inspect.audit``'s
``user_function_warnings``): the function is screened as the float32 kernels compute it, and a
warning says where it is NaN or Inf, which ``exp`` overflows there and what to write (:data:`HINT`).

>>> import sympy
>>> z = sympy.Symbol("z", real=True)
>>> rewrite(z * sympy.tanh(sympy.log(1 + sympy.exp(z)))).has(sympy.Piecewise)
True
"""

from __future__ import annotations

import math

import sympy

EXP_LIMIT = math.log(float.fromhex("0x1.fffffep127"))  # 88.72: exp overflows float32 beyond


def softplus(u: sympy.Expr) -> sympy.Expr:
    """log(1 + exp(u)) with no exp of a positive argument (graphnn's softplus)."""
    return sympy.Piecewise(
        (u + sympy.log(1 + sympy.exp(-u)), u > 0), (sympy.log(1 + sympy.exp(u)), True)
    )


def sigmoid(u: sympy.Expr) -> sympy.Expr:
    """exp(u)/(1 + exp(u)) as 1/(1 + exp(-u)): 0, not inf/inf = NaN, where exp(-u) overflows."""
    return 1 / (1 + sympy.exp(-u))


def _one_plus_exp(e: sympy.Expr) -> sympy.Expr | None:
    """u where e is 1 + exp(u)."""
    if isinstance(e, sympy.Add) and len(e.args) == 2 and sympy.S.One in e.args:
        (other,) = (a for a in e.args if a != sympy.S.One)
        if isinstance(other, sympy.exp):
            return other.args[0]
    return None


def _log(e: sympy.Expr) -> sympy.Expr:
    arg = e.args[0]
    u = _one_plus_exp(arg)
    if u is not None:
        return softplus(u)
    if isinstance(arg, sympy.Pow) and arg.exp == -1 and _one_plus_exp(arg.base) is not None:
        return -softplus(_one_plus_exp(arg.base))
    return e


def _ratio(e: sympy.Mul) -> sympy.Expr:
    """exp(u) * (1 + exp(u))**-1 * rest -> sigmoid(u) * rest."""
    factors = list(e.args)
    for f in factors:
        if isinstance(f, sympy.Pow) and f.exp == -1:
            u = _one_plus_exp(f.base)
            if u is not None and sympy.exp(u) in factors:
                rest = [g for g in factors if g is not f and g != sympy.exp(u)]
                return sympy.Mul(sigmoid(u), *rest)
    return e


def rewrite(expr: sympy.Expr) -> sympy.Expr:
    """``expr`` with every known unstable pattern replaced by its stable form (one pass)."""
    expr = expr.replace(lambda e: isinstance(e, sympy.log), _log)
    return expr.replace(lambda e: isinstance(e, sympy.Mul), _ratio)


HINT = (
    "write it so that no exp(...) gets an argument above 88.7 where the result is finite, as "
    "softplus(u) = u + log(1 + exp(-u)) (u > 0) does for log(1 + exp(u)) and sigmoid(u) = "
    "1/(1 + exp(-u)) for exp(u)/(1 + exp(u)); in a spec formula, write softplus(u) or sigmoid(u)"
)
