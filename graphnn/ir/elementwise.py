"""The elementwise op table: one row per op, its SymPy formula in the argument symbols.

A row is a formula in ``a0, a1, ...`` (:data:`ARGS`), its default parameters and the input domain
the tests draw from.  Its derivative is derived (:mod:`graphnn.derive`), never written here, and
every back end prints the formula through one printer.  **Adding an activation** is one row here
with ``activation=True`` (and its ``[[layers]]`` default ``init``), one builder line in
:mod:`graphnn.ir.ops` and one name in ``graphnn/__init__.py``.

>>> ELEMENTWISE["sigmoid"].formula()
1/(1 + exp(-a0))
>>> "relu" in ACTIVATIONS
True
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import sympy
from sympy import Piecewise, exp, log
from sympy.codegen.cfunctions import log1p
from sympy.printing.numpy import NumPyPrinter

ARGS = sympy.symbols("a0:8", real=True)
Y = sympy.Symbol("Y", real=True)  # the op's own output, for output-form derivatives
BATCH = sympy.Symbol("n", positive=True, integer=True)  # batch size, known only at run time
HE = "he_normal"  # the init of relu-like layers (He et al.)

z, t = ARGS[0], ARGS[1]


class Phi(sympy.Function):
    """The standard normal CDF, computed as ``erfc(-z/sqrt(2))/2`` by every back end.

    A function of its own because SymPy rewrites ``erfc(-x)`` as ``2 - erfc(x)`` (and has no
    other normal CDF): that form, like ``(1 + erf(z/sqrt(2)))/2``, cancels to 0 in float64 for
    z <= -27, where Phi(-30) is 4.9e-198.
    """

    def fdiff(self, argindex=1):
        x = self.args[0]
        return sympy.exp(-(x**2) / 2) / sympy.sqrt(2 * sympy.pi)

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return sympy.erfc(-x / sympy.sqrt(2)) / 2
        return None

    def _eval_rewrite_as_erfc(self, x, **kwargs):
        return sympy.erfc(-x / sympy.sqrt(2), evaluate=False) / 2


@dataclass(frozen=True)
class Elementwise:
    """One elementwise op: formula(*args, **params) -> SymPy expression in ARGS."""

    formula: Callable[..., sympy.Expr]
    arity: int = 1
    params: Mapping[str, float] = field(default_factory=dict)
    domain: tuple[float, float] = (-3.0, 3.0)  # where tests draw inputs (first argument)
    activation: bool = False  # a layer activation: gn.<name>, [[layers]] activation = "<name>"
    init: str = "glorot_uniform"  # the default init of a [[layers]] layer with this activation


def _relu_like(negative: sympy.Expr) -> sympy.Expr:
    # Piecewise with a strict z > 0 makes relu'(0) = 0 (PyTorch's convention), not Heaviside's 1/2.
    return Piecewise((z, z > 0), (negative, True))


ELEMENTWISE: dict[str, Elementwise] = {
    "add": Elementwise(lambda: ARGS[0] + ARGS[1], arity=2),
    "sub": Elementwise(lambda: ARGS[0] - ARGS[1], arity=2),
    "mul": Elementwise(lambda: ARGS[0] * ARGS[1], arity=2),
    "div": Elementwise(lambda: ARGS[0] / ARGS[1], arity=2, domain=(0.5, 3.0)),
    "neg": Elementwise(lambda: -z),
    "exp": Elementwise(lambda: exp(z)),
    "log": Elementwise(lambda: log(z), domain=(0.1, 3.0)),
    "sigmoid": Elementwise(lambda: 1 / (1 + exp(-z)), activation=True),
    "tanh": Elementwise(lambda: sympy.tanh(z), activation=True),
    "relu": Elementwise(lambda: _relu_like(sympy.Integer(0)), activation=True, init=HE),
    "leaky_relu": Elementwise(
        lambda slope: _relu_like(slope * z), params={"slope": 0.01}, activation=True, init=HE
    ),
    "softplus": Elementwise(
        lambda: Piecewise((z + log(1 + exp(-z)), z > 0), (log(1 + exp(z)), True)), activation=True
    ),
    "elu": Elementwise(
        lambda alpha: _relu_like(alpha * (exp(z) - 1)),
        params={"alpha": 1.0},
        activation=True,
        init=HE,
    ),
    # z Phi(z), Phi computed as erfc(-z/sqrt 2)/2: 1 + erf(z/sqrt 2) cancels to 0 for z <= -27
    # in float64, where gelu(-30) is -1.5e-195 (PyTorch's erfc form gives it).
    "gelu": Elementwise(lambda: z * Phi(z), activation=True, init=HE),
    "silu": Elementwise(lambda: z / (1 + exp(-z)), activation=True, init=HE),
    # Loss terms: binary cross-entropy on logits z against targets t, in its stable form.
    "bce_with_logits": Elementwise(
        lambda: Piecewise((z - z * t + log(1 + exp(-z)), z > 0), (-z * t + log(1 + exp(z)), True)),
        arity=2,
    ),
}

ACTIVATIONS = tuple(name for name, row in ELEMENTWISE.items() if row.activation)


def erf(x):
    """scipy's erf for lambdified formulas, imported on first use (scipy.special takes 0.12 s)."""
    import scipy.special

    return scipy.special.erf(x)


def erfc(x):
    """scipy's erfc for lambdified formulas, imported on first use."""
    import scipy.special

    return scipy.special.erfc(x)


def _phi(x):
    import scipy.special

    return scipy.special.ndtr(x)  # Phi, accurate in both tails


# Functions NumPy lacks, for sympy.lambdify's modules.
SPECIAL = {"erf": erf, "erfc": erfc, "Phi": _phi}


def nan_guarded(pieces) -> list[tuple[sympy.Expr, sympy.Basic]]:
    """The (value, condition) pairs of a Piecewise with its default branch guarded.

    NaN fails every comparison, so a NaN input fell through to the default branch: relu(NaN)
    was its 0, as was relu'(NaN).  The default branch's condition becomes the complement of
    the others' written as comparisons (z > 0 -> z <= 0), which NaN fails too; taking no
    branch, a Piecewise is NaN (every printer's rule), so NaN propagates as in PyTorch.  A
    complement SymPy can only write with a Not is left as the default.
    """
    out, prior = [], []
    for value, cond in pieces:
        if cond == sympy.true and prior:
            guard = sympy.And(*[sympy.Not(c) for c in prior]).to_nnf()
            if not guard.has(sympy.Not) and guard not in (sympy.true, sympy.false):
                cond = guard
        out.append((value, cond))
        prior.append(cond)
        if cond == sympy.true:
            break
    return out


class _NanPropagatingPrinter(NumPyPrinter):
    """NumPy's printer for lambdify, with every Piecewise NaN-guarded (:func:`nan_guarded`)."""

    def _print_Piecewise(self, expr):
        return super()._print_Piecewise(sympy.Piecewise(*nan_guarded(expr.args), evaluate=False))


def numpy_lambdify(args, expr: sympy.Expr):
    """``expr`` as a NumPy function of ``args``: sympy.lambdify with our special functions and a
    NaN input giving NaN through every Piecewise."""
    # the settings lambdify gives its own printer, with our functions named as themselves
    settings = {"fully_qualified_modules": False, "inline": True, "allow_unknown_functions": True}
    printer = _NanPropagatingPrinter({**settings, "user_functions": {k: k for k in SPECIAL}})
    return sympy.lambdify(args, expr, modules=[SPECIAL, "numpy"], printer=printer)


def _log1p(expr: sympy.Expr) -> sympy.Expr:
    """log(1 + x) as log1p(x), as the kernels' printer writes it: 1 + x rounds a tiny x away, so
    softplus(-40) was 0 instead of 4.2e-18 (and log(softplus(z)) -inf instead of about z)."""
    return expr.replace(
        lambda e: isinstance(e, log) and isinstance(e.args[0], sympy.Add) and 1 in e.args[0].args,
        lambda e: log1p(e.args[0] - 1),
    )


@functools.cache
def numpy_function(expr: sympy.Expr, nargs: int) -> Callable:
    """``expr`` (in ARGS[:nargs] and the batch size n) as a NumPy function of (a0, ..., n)."""
    return numpy_lambdify((*ARGS[:nargs], BATCH), _log1p(expr))
