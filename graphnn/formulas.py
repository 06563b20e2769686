"""Elementwise SymPy formulas and the choice of a numerically stable form of their derivatives.

An elementwise op is one SymPy expression in the argument symbols ``a0, a1, ...``.  Its partial
derivatives come from ``sympy.diff``; never by hand.  Because a derivative that is exact on paper
can overflow in float32 (``exp(-z)/(1 + exp(-z))**2`` is ``inf/inf`` at z = -100), every derivative
is produced in several equivalent *candidate forms*:

* ``input``: ``sympy.diff`` as it comes, in terms of the op's inputs;
* ``simplified``: the same after ``sympy.simplify``;
* ``output``: in terms of the op's output ``y`` (sigmoid' = y(1 - y), tanh' = 1 - y**2), found by
  substituting the formula's transcendental atom (``exp(-z)``, ``tanh(z)``, ...) and solving for it;
* ``sigmoid``: every ``exp(k z)`` rewritten through ``s = 1/(1 + exp(-z))``, which stays finite at
  both ends (silu' = s + z s (1 - s) instead of ``z exp(-z)/(1 + exp(-z))**2``, NaN at z = -100).

Each candidate is evaluated in float32 at extreme inputs and compared with a 50-digit reference.
The one with fewest non-finite results wins, then fewest inaccurate ones (a saturated sigmoid'
rounding 2e-9 to 0 is benign; NaN is not), then the output form (it needs no stored input), then
the shortest expression.

>>> d = derivative(1 / (1 + sympy.exp(-ARGS[0])), 0)
>>> d.form, d.expr
('output', Y*(1 - Y))
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import mpmath
import numpy as np
import sympy

ARGS = sympy.symbols("a0:8", real=True)
Y = sympy.Symbol("Y", real=True)  # the op's own output, for output-form derivatives
BATCH = sympy.Symbol("n", positive=True, integer=True)  # batch size, known only at run time

# Where every candidate derivative is screened (float32 extremes, then ordinary values).
SCREEN_POINTS = (-1e4, -88.0, -20.0, -3.0, -1.0, -1e-30, 0.0, 1e-30, 0.5, 1.0, 3.0, 20.0, 88.0, 1e4)
_TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class Candidate:
    form: str  # "input" | "simplified" | "output"
    expr: sympy.Expr
    nonfinite: tuple[float, ...] = ()  # screen points where float32 gives NaN or Inf
    inaccurate: tuple[float, ...] = ()  # screen points off by more than 1e-3 relative

    @property
    def uses_output(self) -> bool:
        return Y in self.expr.free_symbols


@dataclass(frozen=True)
class Derivative:
    """The chosen form of d(formula)/d(a_i), with every candidate and its screen result."""

    expr: sympy.Expr
    form: str
    candidates: tuple[Candidate, ...]

    @property
    def uses_output(self) -> bool:
        return Y in self.expr.free_symbols


def _atom_solutions(f: sympy.Expr, z: sympy.Symbol):
    """Yield (atom, atom expressed in Y) for each transcendental atom that determines f."""
    atoms = [a for a in f.atoms(sympy.Function, sympy.Pow) if z in a.free_symbols]
    atoms = [a for a in atoms if not (isinstance(a, sympy.Pow) and a.exp.is_Integer)]
    for atom in sorted(atoms, key=sympy.default_sort_key):
        e = sympy.Dummy("e", positive=True)
        f_e = f.subs(atom, e)
        if z in f_e.free_symbols:
            continue
        try:
            sols = sympy.solve(sympy.Eq(f_e, Y), e)
        except (NotImplementedError, ValueError):
            continue
        if len(sols) == 1:
            yield atom, sols[0]


def _in_terms_of(expr: sympy.Expr, atom: sympy.Expr, value: sympy.Expr, z: sympy.Symbol):
    """Rewrite expr with atom := value, or None when z cannot be eliminated."""
    if isinstance(atom, sympy.exp):  # exp(k z) = atom ** (k / k_atom)
        k_atom = atom.args[0] / z

        def swap(arg):
            ratio = sympy.simplify(arg / atom.args[0])
            return value**ratio if ratio.is_Rational else sympy.exp(arg)

        if not k_atom.is_number:
            return None
        out = expr.replace(sympy.exp, swap)
    else:
        out = expr.subs(atom, value)
    if z in out.free_symbols:
        return None
    return sympy.factor(sympy.simplify(out))


def _sigmoid_form(d: sympy.Expr, z: sympy.Symbol):
    """d with its exponentials written through the stable sigmoid of z, or None."""
    if not d.has(sympy.exp):
        return None
    s = sympy.Dummy("s", positive=True)
    e = sympy.exp(-z)
    out = d.replace(
        sympy.exp,
        lambda arg: (
            ((1 - s) / s) ** sympy.simplify(arg / -z)
            if sympy.simplify(arg / -z).is_Rational
            else sympy.exp(arg)
        ),
    )
    if out.has(sympy.exp):
        return None
    out = sympy.factor(sympy.simplify(out))
    return out.subs(s, 1 / (1 + e))


def _output_form(f: sympy.Expr, d: sympy.Expr, z: sympy.Symbol):
    """d written in terms of Y = f(z), or None."""
    if isinstance(f, sympy.Piecewise) and isinstance(d, sympy.Piecewise):
        return _piecewise_output_form(f, d, z)
    if z not in d.free_symbols:
        return d
    for atom, value in _atom_solutions(f, z):
        out = _in_terms_of(d, atom, value, z)
        if out is not None:
            return out
    return None


def _piecewise_output_form(f, d, z):
    """Branchwise output form; a condition z > c becomes Y > f(c) when f increases through c."""
    if len(f.args) != len(d.args):
        return None
    branches = []
    for (f_i, cond), (d_i, d_cond) in zip(f.args, d.args, strict=True):
        if cond != d_cond:
            return None
        d_y = _output_form(f_i, d_i, z) if z in d_i.free_symbols else d_i
        if d_y is None:
            return None
        if cond is sympy.true:
            branches.append((d_y, True))
            continue
        if not (isinstance(cond, sympy.StrictGreaterThan | sympy.GreaterThan) and cond.lhs == z):
            return None
        c = cond.rhs
        if not all(sympy.diff(f_i, z).subs(z, c + eps) > 0 for eps in (1e-6, 1.0)):
            return None
        branches.append((d_y, cond.func(Y, f.subs(z, c))))
    return sympy.Piecewise(*branches)


@functools.cache
def _reference(expr: sympy.Expr, args: tuple[sympy.Symbol, ...]):
    return sympy.lambdify(args, expr, modules="mpmath")


@functools.cache
def _float32(expr: sympy.Expr, args: tuple[sympy.Symbol, ...]):
    return sympy.lambdify(args, expr, modules=[{"erf": _erf32}, "numpy"])


def _erf32(x):
    import scipy.special

    return scipy.special.erf(x)


def screen(candidate: sympy.Expr, truth: sympy.Expr, f: sympy.Expr, i: int, nargs: int):
    """(non-finite, inaccurate) screen points of a candidate in float32, varying argument i."""
    args = ARGS[:nargs]
    nonfinite, inaccurate = [], []
    with np.errstate(all="ignore"), mpmath.workdps(50):
        for p in SCREEN_POINTS:
            point = [0.3] * nargs
            point[i] = p
            try:
                ref = float(_reference(truth, args)(*[mpmath.mpf(v) for v in point]))
            except (ZeroDivisionError, OverflowError, ValueError, TypeError):
                continue
            if not np.isfinite(ref) or abs(ref) > 3e38:
                continue
            x32 = [np.float32(v) for v in point]
            y32 = np.float32(_float32(f, args)(*x32))
            got = _float32(candidate, (*args, Y))(*x32, y32)
            got = float(np.asarray(got, dtype=np.float32))
            if not np.isfinite(got):
                nonfinite.append(p)
            elif abs(got - ref) > 1e-3 * abs(ref) + 1e3 * _TINY:
                inaccurate.append(p)
    return tuple(nonfinite), tuple(inaccurate)


@functools.cache
def derivative(f: sympy.Expr, i: int, nargs: int | None = None) -> Derivative:
    """The screened, stable form of df/d(a_i). f is an expression in ARGS[:nargs]."""
    nargs = (
        nargs if nargs is not None else 1 + max(ARGS.index(s) for s in f.free_symbols & set(ARGS))
    )
    z = ARGS[i]
    raw = sympy.diff(f, z)
    forms = {"input": raw}
    simple = sympy.simplify(raw)
    if simple != raw and not simple.has(sympy.cosh, sympy.sinh):
        forms["simplified"] = simple
    if nargs == 1:
        out = _output_form(f, raw, z)
        if out is not None and out != raw:
            forms["output"] = out
    sig = _sigmoid_form(raw, z)
    if sig is not None and sig != raw:
        forms["sigmoid"] = sig
    candidates = tuple(
        Candidate(name, e, *screen(e, raw, f, i, nargs)) for name, e in forms.items()
    )
    preference = {"output": 0, "input": 1, "sigmoid": 2, "simplified": 3}
    best = min(
        candidates,
        key=lambda c: (
            len(c.nonfinite),
            len(c.inaccurate),
            preference[c.form],
            sympy.count_ops(c.expr),
        ),
    )
    return Derivative(best.expr, best.form, candidates)
