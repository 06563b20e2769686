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

Each candidate is evaluated in float32 at extreme inputs and compared with a 50-digit reference
(``sympy.diff``'s form; where that cannot be evaluated even at 50 digits, e.g. ``1 - 1/(1 + e^-z)``
is 0/0 at z = 1e4, the simplest other candidate that can).
The one with fewest non-finite results wins, then fewest inaccurate ones (a saturated sigmoid'
rounding 2e-9 to 0 is benign; NaN is not), then the output form (it needs no stored input), then
the shortest expression.

>>> d = derive_form(1 / (1 + sympy.exp(-ARGS[0])), 0, 1)
>>> d.form, d.expr
('output', -Y*(Y - 1))
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from dataclasses import dataclass

import mpmath
import numpy as np
import sympy

from graphnn.errors import GraphnnWarning
from graphnn.ir.elementwise import ARGS, Y, numpy_lambdify


def _code_digest() -> str | None:
    """This module's text as imported; the derivative store keys stored forms on it."""
    try:
        return hashlib.sha256(__loader__.get_data(__file__)).hexdigest()
    except Exception:  # noqa: BLE001 - no loader or no file: the store stays off
        return None


CODE_DIGEST = _code_digest()

# Where every candidate derivative is screened (float32 extremes, then ordinary values).
SCREEN_POINTS = (-1e4, -89.0, -88.0, -20.0, -3.0, -1.0, -1e-30, 0.0, 1e-30, 0.5, 1.0, 3.0, 20.0)
SCREEN_POINTS += (88.0, 89.0, 1e4)  # exp overflows float32 between 88 and 89
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
    references: tuple[sympy.Expr, ...] = ()  # the screen's 50-digit references, in order of use
    over_budget: bool = False  # the screen ran out of time: sympy.diff's form, unscreened

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
        return _piecewise_output_form(f, d, z) or _one_function_output_form(f, d, z)
    if z not in d.free_symbols:
        return d
    for atom, value in _atom_solutions(f, z):
        out = _in_terms_of(d, atom, value, z)
        if out is not None:
            return out
    return None


def _one_function_output_form(f, d, z):
    """When every branch of f is the same function (softplus' branches are two ways to compute
    log(1 + e^z)), the output form of any one branch holds everywhere: 1 - exp(-Y)."""
    if len(f.args) != len(d.args):
        return None
    if any(c != dc for (_, c), (_, dc) in zip(f.args, d.args, strict=True)):
        return None
    first = f.args[0].expr
    if any(sympy.simplify(f_i - first) != 0 for f_i, _ in f.args[1:]):
        return None
    for (f_i, _), (d_i, _) in zip(f.args, d.args, strict=True):
        out = _output_form(f_i, d_i, z)
        if out is not None and z not in out.free_symbols:
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
    return sympy.lambdify((*args, Y), expr, modules=[{"Phi": mpmath.ncdf}, "mpmath"])


@functools.cache
def _float32(expr: sympy.Expr, args: tuple[sympy.Symbol, ...]):
    return numpy_lambdify(args, expr)


@dataclass(frozen=True)
class Probe:
    """One screen point of a candidate: its float32 value against the 50-digit reference."""

    point: float  # the value of the varied argument (the others are 0.3)
    exact: float | None  # None: no reference representable in float32 here, point not judged
    got: float  # the candidate in float32 (NaN where skipped)

    @property
    def status(self) -> str:
        """ok | overflow (inf) | nan | precision (finite, off by > 1e-3 relative) | skipped."""
        if self.exact is None:
            return "skipped"
        if np.isnan(self.got):
            return "nan"
        if np.isinf(self.got):
            return "overflow"
        if abs(self.got - self.exact) > 1e-3 * abs(self.exact) + 1e3 * _TINY:
            return "precision"
        return "ok"


# 50 digits, then (where no reference evaluates) 6000: enough to resolve 1 - 1/(1 + e^-z) at
# z = 1e4, since e^-1e4 is about 1e-4343.
_DIGITS = (50, 6000)


def _exact(references, f: sympy.Expr, args, point) -> float | None:
    """The first reference that evaluates; None if none does or it is beyond float32."""
    for dps in _DIGITS:
        with mpmath.workdps(dps):
            x = [mpmath.mpf(v) for v in point]
            for expr in references:
                try:
                    y = _reference(f, args)(*x, 0) if Y in expr.free_symbols else 0
                    value = _reference(expr, args)(*x, y)
                    if mpmath.isnan(value) or mpmath.isinf(value):
                        continue
                    value = float(value)
                except (ZeroDivisionError, OverflowError, ValueError, TypeError):
                    continue
                return value if abs(value) <= 3e38 else None
    return None


def probe(candidate: sympy.Expr, references, f: sympy.Expr, i: int, nargs: int, float32=None):
    """The candidate's :class:`Probe` at each screen point, varying argument i in float32.

    ``references`` are equivalent exact forms, tried in order where the first cannot be evaluated.
    ``float32(expr, args)`` makes the float32 function of an expression (default: lambdify; the
    audit passes ``codegen.printer.kernel_float32``, the code the kernels run).
    """
    args = ARGS[:nargs]
    compile32 = float32 or _float32
    out = []
    with np.errstate(all="ignore"):
        for p in SCREEN_POINTS:
            point = [0.3] * nargs
            point[i] = p
            exact = _exact(references, f, args, point)
            if exact is None:
                out.append(Probe(p, None, float("nan")))
                continue
            x32 = [np.float32(v) for v in point]
            try:
                y32 = np.float32(compile32(f, args)(*x32))
                got = float(np.asarray(compile32(candidate, (*args, Y))(*x32, y32), np.float32))
            except Exception:  # noqa: BLE001 - a form NumPy cannot evaluate (besselj) screens as NaN
                got = float("nan")
            out.append(Probe(p, exact, got))
    return tuple(out)


def screen(candidate: sympy.Expr, truth: sympy.Expr, f: sympy.Expr, i: int, nargs: int, *more):
    """(non-finite, inaccurate) screen points of a candidate in float32, varying argument i.

    ``truth`` is the reference; ``more`` are equivalent forms used where it cannot be evaluated.
    """
    probes = probe(candidate, (truth, *more), f, i, nargs)
    nonfinite = tuple(p.point for p in probes if p.status in ("nan", "overflow"))
    inaccurate = tuple(p.point for p in probes if p.status == "precision")
    return nonfinite, inaccurate


# Among equally good candidates: the output form needs no stored input; sympy.diff's own form
# is the most faithful; simplify's is the least predictable.
PREFERENCE = {"output": 0, "input": 1, "sigmoid": 2, "simplified": 3}


def rank(c: Candidate) -> tuple:
    """Sort key of the screen: non-finite points, inaccurate points, preference, length."""
    return (len(c.nonfinite), len(c.inaccurate), PREFERENCE[c.form], sympy.count_ops(c.expr))


def derive_form(f: sympy.Expr, i: int, nargs: int) -> Derivative:
    """Every candidate form of df/d(a_i), screened, and the best one (see the module docstring),
    within the time budget GRAPHNN_DERIVE_SECONDS; past it (SymPy's solve and simplify, mpmath at
    6000 digits have no bound of their own: exp(exp(exp(z))) ran for minutes) sympy.diff's form
    as it comes, unscreened, with a warning."""
    from graphnn.budgets import limit
    from graphnn.deadline import DeadlineExceeded, deadline, restore_defaults

    raw = sympy.diff(f, ARGS[i])
    seconds = limit("GRAPHNN_DERIVE_SECONDS")
    try:
        with deadline(seconds):
            return _screened(f, i, nargs, raw)
    except DeadlineExceeded:
        restore_defaults()
    text = str(f.xreplace({ARGS[0]: sympy.Symbol("z")}) if nargs == 1 else f)
    shown = text if len(text) <= 80 else text[:77] + "..."
    which = f" in argument {i + 1}" if nargs > 1 else ""
    warnings.warn(
        f"the derivative of {shown}{which} took over {seconds:g} s to simplify and screen "
        "(GRAPHNN_DERIVE_SECONDS); using it unsimplified and unscreened, as sympy.diff gives it",
        GraphnnWarning,
        stacklevel=4,
    )
    return Derivative(raw, "input", (Candidate("input", raw),), (raw,), over_budget=True)


def _screened(f: sympy.Expr, i: int, nargs: int, raw: sympy.Expr) -> Derivative:
    z = ARGS[i]
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
    others = sorted((e for e in forms.values() if e != raw), key=sympy.count_ops)
    references = (raw, *others)
    candidates = tuple(
        Candidate(name, e, *screen(e, *references[:1], f, i, nargs, *references[1:]))
        for name, e in forms.items()
    )
    best = min(candidates, key=rank)
    return Derivative(best.expr, best.form, candidates, references)
