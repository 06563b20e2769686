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

ARGS = sympy.symbols("a0:8", real=True)
Y = sympy.Symbol("Y", real=True)  # the op's own output, for output-form derivatives
BATCH = sympy.Symbol("n", positive=True, integer=True)  # batch size, known only at run time
HE = "he_normal"  # the init of relu-like layers (He et al.)

z, t = ARGS[0], ARGS[1]


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
    "gelu": Elementwise(
        lambda: z * (1 + sympy.erf(z / sympy.sqrt(2))) / 2, activation=True, init=HE
    ),
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
    expr = _log1p(expr)
    return sympy.lambdify((*ARGS[:nargs], BATCH), expr, modules=[{"erf": erf}, "numpy"])
