"""Optimizers as update formulas, compiled into fused update kernels like any other formula.

An optimizer is data: hyper-parameters, per-parameter state buffers (zero at the start), scalars
computed once per step from the hyper-parameters and the step count ``t`` (bias corrections), and
an ordered list of assignments in the symbols ``P`` (parameter), ``G`` (its gradient), the state
names, the hyper-parameter names, the per-step scalars and ``t``.  The back ends print the same
formulas into their update loops.  A new optimizer is a new :class:`Optimizer`:

>>> signum = Optimizer(
...     "signum", hyper={"lr": 0.01, "beta": 0.9}, state=("m",),
...     updates=(("m", "beta*m + (1 - beta)*G"), ("P", "P - lr*sign(m)")),
... )
>>> signum.assignments()[1]
(P, P - lr*sign(m))
"""

from __future__ import annotations

import keyword
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import sympy

from graphnn.errors import GraphError

P, G, T = sympy.symbols("P G t", real=True)
BETA1, BETA2 = sympy.symbols("beta1 beta2", real=True)
# Bias corrections; SymPy expressions since the spec parser only takes constant exponents.
_ADAM_SCALARS = (("bc1", 1 - BETA1**T), ("bc2", 1 - BETA2**T))
_FUNCTIONS = {"sqrt": sympy.sqrt, "sign": sympy.sign, "abs": sympy.Abs, "exp": sympy.exp}
_FUNCTIONS |= {"log": sympy.log, "min": sympy.Min, "max": sympy.Max}


# Names the generated update, step and epoch functions use for themselves; an optimizer may not
# name a hyper-parameter, state buffer or per-step scalar after one of them.
RESERVED = {"P", "G", "t", "i", "gscale", "norm", "clip_norm", "loss", "status", "total"}
RESERVED |= {"steps", "start", "idx", "perm", "batch_size", "lrs", "t0", "np", "math", "njit"}
RESERVED |= set(_FUNCTIONS) | {"FASTMATH", "range", "float32", "float64"}
RESERVED |= {"all_finite", "sum_squares", "apply_update", "loss_and_grads", "train_step"}
RESERVED |= {"update_all", "train_epoch", "forward"}


def state_key(buffer: str, param: str) -> str:
    """The name of ``param``'s optimizer buffer ``buffer`` in ``model.state`` and checkpoints."""
    return f"{buffer}_{param}"


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_names(where: str, opt) -> None:
    names = [*opt.hyper, *opt.state, *(k for k, _ in opt.per_step)]
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name) or name.endswith("_"):
            raise GraphError(f"{where}: {name!r} is not a usable name (an identifier, no '_' end)")
        if name in RESERVED or name.startswith("grad_"):
            raise GraphError(f"{where}: the name {name!r} is reserved by the generated code")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise GraphError(f"{where}: {repeated} used for more than one of hyper, state, per_step")


def _formula(text_or_expr, symbols: Mapping[str, sympy.Symbol], where: str) -> sympy.Expr:
    if isinstance(text_or_expr, sympy.Basic):
        return text_or_expr
    if isinstance(text_or_expr, int | float):
        return sympy.Float(text_or_expr)
    from graphnn.exprparse import parse_expression

    return sympy.sympify(
        parse_expression(str(text_or_expr), names=symbols, functions=_FUNCTIONS, where=where)
    )


@dataclass(frozen=True)
class Optimizer:
    """Update rule ``updates`` (ordered; targets are 'P' or state names) with hyper-parameters."""

    name: str
    hyper: Mapping[str, float]
    state: Sequence[str] = ()
    updates: Sequence[tuple[str, object]] = ()
    per_step: Sequence[tuple[str, object]] = ()  # scalars of (hyper, t), computed once a step
    clip_norm: float | None = None  # clip gradients to this global L2 norm before the update
    schedule: object | None = None  # a graphnn.optim.schedules schedule: lr multiplier per step
    options: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self):
        where = f"optimizer '{self.name}'"
        if "lr" not in self.hyper:
            raise GraphError(f"{where} needs a learning rate 'lr'")
        # lr first: the compiled epoch takes the per-step learning rates in lr's argument slot
        object.__setattr__(self, "hyper", {"lr": self.hyper["lr"], **dict(self.hyper)})
        for key, value in self.hyper.items():
            if not _is_number(value) or not 0 <= value < math.inf:
                raise GraphError(f"{where}: {key} must be a finite number >= 0, got {value!r}")
        _check_names(where, self)
        targets = [t for t, _ in self.updates]
        if "P" not in targets:
            raise GraphError(f"{where} never assigns the parameter P")
        unknown = set(targets) - {"P", *self.state}
        if unknown:
            raise GraphError(f"{where} assigns unknown names {sorted(unknown)}")
        if self.clip_norm is not None and not (_is_number(self.clip_norm) and self.clip_norm > 0):
            raise GraphError(f"{where}: clip_norm must be a number > 0, got {self.clip_norm!r}")
        if self.schedule is not None and not callable(getattr(self.schedule, "multipliers", None)):
            raise GraphError(
                f"{where}: schedule must be a graphnn.optim.schedules schedule (Step, Exponential, "
                f"Cosine, Warmup), got {self.schedule!r}"
            )

    @property
    def symbols(self) -> dict[str, sympy.Symbol]:
        names = ["P", "G", "t", *self.state, *self.hyper, *(k for k, _ in self.per_step)]
        return {n: sympy.Symbol(n, real=True) for n in names}

    def scalars(self) -> list[tuple[sympy.Symbol, sympy.Expr]]:
        """Per-step scalars, in order, as (symbol, formula in hypers and t)."""
        sym = self.symbols
        where = f"optimizer '{self.name}' per-step scalar"
        return [(sym[k], _formula(v, sym, f"{where} {k}")) for k, v in self.per_step]

    def assignments(self) -> list[tuple[sympy.Symbol, sympy.Expr]]:
        """The update as ordered assignments (target symbol, formula)."""
        sym = self.symbols
        return [
            (sym[k], _formula(v, sym, f"optimizer '{self.name}' update of {k}"))
            for k, v in self.updates
        ]

    def with_options(self, **changes) -> Optimizer:
        fields = {**self.__dict__, **changes}
        return Optimizer(**fields)


def _decayed_gradient(weight_decay: float) -> str:
    return "(G + weight_decay*P)" if weight_decay else "G"


def _positive_eps(who: str, eps) -> None:
    # eps keeps the step finite where a gradient's running square is 0 (at step 1 for a zero
    # gradient entry): with eps = 0 the update is 0/0 = NaN, reported as a learning-rate problem.
    if not (_is_number(eps) and 0 < eps < math.inf):
        raise GraphError(
            f"{who}: eps must be a finite number > 0 (it keeps the update finite where a "
            f"gradient's running square is 0), got {eps!r}"
        )


def _below_one(who: str, **values) -> None:
    for key, value in values.items():
        if not (_is_number(value) and 0 <= value < 1):
            raise GraphError(f"{who}: {key} must be in [0, 1), got {value!r}")


def SGD(lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0, **kw):
    """Stochastic gradient descent ``w ← w − η g``, with optional (Nesterov) momentum.

    As PyTorch defines it: ``g = ∂L/∂w + λw``; with momentum ``v ← μv + g`` and the step is ``v``,
    or ``g + μv`` (Nesterov's look-ahead).  ``**kw``: ``clip_norm=``, ``schedule=``.
    """
    g = _decayed_gradient(weight_decay)
    hyper = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
    if nesterov and not momentum:
        raise GraphError("SGD: nesterov=True needs momentum > 0")
    if not momentum:
        return Optimizer("sgd", hyper, (), (("P", f"P - lr*{g}"),), **kw)
    step = f"({g} + momentum*v)" if nesterov else "v"
    updates = (("v", f"momentum*v + {g}"), ("P", f"P - lr*{step}"))
    return Optimizer("sgd_nesterov" if nesterov else "sgd_momentum", hyper, ("v",), updates, **kw)


def Adam(lr: float = 1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, **kw):
    """Adam with bias correction; weight_decay adds L2 to the gradient (PyTorch's Adam).

    ``m ← β1 m + (1−β1) g``, ``v ← β2 v + (1−β2) g²``,
    ``w ← w − η (m/(1−β1ᵗ)) / (√(v/(1−β2ᵗ)) + ε)``.
    """
    _below_one("Adam", beta1=beta1, beta2=beta2)
    _positive_eps("Adam", eps)
    g = _decayed_gradient(weight_decay)
    hyper = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay}
    per_step = _ADAM_SCALARS
    updates = (
        ("m", f"beta1*m + (1 - beta1)*{g}"),
        ("v", f"beta2*v + (1 - beta2)*{g}*{g}"),
        ("P", "P - lr*(m/bc1)/(sqrt(v/bc2) + eps)"),
    )
    return Optimizer("adam", hyper, ("m", "v"), updates, per_step, **kw)


def AdamW(lr: float = 1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, **kw):
    """Adam with decoupled weight decay: ``w ← w(1 − η λ)`` before the Adam step (PyTorch)."""
    _below_one("AdamW", beta1=beta1, beta2=beta2)
    _positive_eps("AdamW", eps)
    hyper = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay}
    per_step = _ADAM_SCALARS
    updates = (
        ("m", "beta1*m + (1 - beta1)*G"),
        ("v", "beta2*v + (1 - beta2)*G*G"),
        ("P", "P*(1 - lr*weight_decay) - lr*(m/bc1)/(sqrt(v/bc2) + eps)"),
    )
    return Optimizer("adamw", hyper, ("m", "v"), updates, per_step, **kw)


def RMSProp(lr: float = 0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, **kw):
    """RMSProp (PyTorch's): ``v ← αv + (1−α) g²``, ``w ← w − η g / (√v + ε)``."""
    _below_one("RMSProp", alpha=alpha)
    _positive_eps("RMSProp", eps)
    g = _decayed_gradient(weight_decay)
    hyper = {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay}
    updates = (("v", f"alpha*v + (1 - alpha)*{g}*{g}"), ("P", f"P - lr*{g}/(sqrt(v) + eps)"))
    return Optimizer("rmsprop", hyper, ("v",), updates, **kw)


def Adagrad(lr: float = 0.01, eps=1e-10, weight_decay=0.0, **kw):
    """Adagrad (PyTorch's, no lr decay): ``s ← s + g²``, ``w ← w − η g / (√s + ε)``."""
    _positive_eps("Adagrad", eps)
    g = _decayed_gradient(weight_decay)
    hyper = {"lr": lr, "eps": eps, "weight_decay": weight_decay}
    updates = (("s", f"s + {g}*{g}"), ("P", f"P - lr*{g}/(sqrt(s) + eps)"))
    return Optimizer("adagrad", hyper, ("s",), updates, **kw)


def optimizer_to_data(opt: Optimizer) -> dict:
    """An optimizer as data (its formulas as SymPy trees, never code)."""
    from graphnn.ir.serialize import expr_to_data
    from graphnn.optim.schedules import schedule_to_data

    sym = opt.symbols

    def formulas(pairs, what):
        return [[k, expr_to_data(_formula(v, sym, f"{what} {k}"))] for k, v in pairs]

    return {
        "name": opt.name,
        "hyper": dict(opt.hyper),
        "state": list(opt.state),
        "updates": formulas(opt.updates, "update of"),
        "per_step": formulas(opt.per_step, "per-step scalar"),
        "clip_norm": opt.clip_norm,
        "schedule": schedule_to_data(opt.schedule),
    }


def optimizer_from_data(data) -> Optimizer:
    """The optimizer :func:`optimizer_to_data` stored; GraphError if malformed."""
    from graphnn.ir.serialize import expr_from_data
    from graphnn.optim.schedules import schedule_from_data

    if not isinstance(data, dict):
        raise GraphError("the optimizer record is not a table")
    try:
        pairs = {
            key: tuple((k, expr_from_data(v, f"optimizer {key} {k}")) for k, v in data[key])
            for key in ("updates", "per_step")
        }
        return Optimizer(
            str(data["name"]),
            dict(data["hyper"]),
            tuple(data["state"]),
            pairs["updates"],
            pairs["per_step"],
            data.get("clip_norm"),
            schedule_from_data(data.get("schedule")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise GraphError(f"malformed optimizer record ({type(exc).__name__}: {exc})") from None
