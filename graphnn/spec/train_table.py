"""The ``[train]`` and ``[expect]`` tables of a spec: optimizer, batching, stopping, back end.

>>> cfg = parse_train({"optimizer": "adam", "lr": 0.01, "betas": [0.9, 0.99],
...                    "batch_size": "full"}, "m.toml [train]", {"loss": None}, {})
>>> cfg.optimizer.name, cfg.optimizer.hyper["beta2"], cfg.batch_size
('adam', 0.99, None)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from graphnn.errors import GraphnnError, SpecError, shown
from graphnn.exprparse import _suggest
from graphnn.ir.shapes import show
from graphnn.optim import optimizers, schedules
from graphnn.train.metrics import is_builtin

_SGD = ("lr", "momentum", "nesterov", "weight_decay")
_ADAM = ("lr", "beta1", "beta2", "eps", "weight_decay")
# name -> (factory, its settings, defaults the spec adds)
OPTIMIZERS = {
    "sgd": (optimizers.SGD, _SGD, {"lr": 0.01}),
    "momentum": (optimizers.SGD, _SGD, {"lr": 0.01, "momentum": 0.9}),
    "adam": (optimizers.Adam, _ADAM, {}),
    "adamw": (optimizers.AdamW, _ADAM, {}),
    "rmsprop": (optimizers.RMSProp, ("lr", "alpha", "eps", "weight_decay"), {}),
    "adagrad": (optimizers.Adagrad, ("lr", "eps", "weight_decay"), {}),
}
SETTINGS = sorted({s for _, names, _ in OPTIMIZERS.values() for s in names})
TRAIN_KEYS = (
    "loss",
    "optimizer",
    "clip_norm",
    "betas",
    "batch_size",
    "epochs",
    "convergence",
    "backend",
    "seed",
    "dtype",
    "predict",
    "metrics",
    "schedule",
    *SETTINGS,
)
CONVERGENCE_KEYS = ("tol", "patience", "early_stopping")
BACKENDS = ("numpy", "cpu", "cuda")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class TrainConfig:
    """How to train: which node is the loss, the optimizer, batching, stopping, back end."""

    optimizer: optimizers.Optimizer
    loss: str = "loss"
    batch_size: int | None = 32  # None: the whole training set per step (batch GD)
    epochs: int = 20
    tol: float | None = None
    patience: int = 5
    early_stopping: bool = False
    backend: str = "cpu"
    seed: int = 0
    dtype: str = "float32"
    predict: str | None = None
    metrics: tuple[str, ...] = ()


def check_keys(table, where: str, allowed, required=(), what: str = "key") -> None:
    """Reject unknown and missing keys of a table, suggesting the nearest known key."""
    if not isinstance(table, Mapping):
        raise SpecError(f"{where}: must be a table, got {type(table).__name__}")
    for key in table:
        if key not in allowed:
            raise SpecError(f"{where}: unknown {what} {shown(key)}; {_suggest(key, allowed)}")
    for key in required:
        if key not in table:
            raise SpecError(f"{where}: missing {what} {shown(key)}")


def _int(value, where: str, low: int, high: int = 10**9) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise SpecError(f"{where}: must be an int in [{low}, {high}], got {shown(value)}")
    return value


def _number(value, where: str, positive: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        kind = "a number > 0" if positive else "a number >= 0"
        raise SpecError(f"{where}: must be {kind}, got {shown(value)}")
    return float(value)


def _choice(value, where: str, options) -> str:
    if value not in options:
        raise SpecError(
            f"{where}: {shown(value)} is not one of {', '.join(options)}; "
            + _suggest(str(value), options)
        )
    return value


def _node(value, where: str, nodes: Mapping, leaves: Mapping) -> str:
    if not isinstance(value, str) or value not in nodes:
        what = "an input or parameter" if value in leaves else "not a node of [graph]"
        raise SpecError(f"{where}: {shown(value)} is {what}; {_suggest(str(value), nodes)}")
    return value


def parse_optimizer(table: Mapping, where: str) -> optimizers.Optimizer:
    """The optimizer that ``[train]`` names, with its settings and ``clip_norm``."""
    name = _choice(table.get("optimizer", "sgd"), f"{where} optimizer", tuple(OPTIMIZERS))
    factory, allowed, defaults = OPTIMIZERS[name]
    settings = dict(defaults)
    if "betas" in table:
        betas = table["betas"]
        if "beta1" in table or "beta2" in table:
            raise SpecError(f"{where} betas: give either betas or beta1/beta2, not both")
        if not isinstance(betas, list) or len(betas) != 2:
            raise SpecError(f"{where} betas: must be a list of two numbers, got {shown(betas)}")
        if "beta1" not in allowed:
            raise SpecError(f"{where} betas: not a setting of optimizer {shown(name)}")
        settings["beta1"], settings["beta2"] = betas
    for key in SETTINGS:
        if key in table and key not in allowed:
            raise SpecError(
                f"{where} {key}: not a setting of optimizer {shown(name)}; its settings: "
                f"{', '.join(allowed)}, clip_norm"
            )
        if key in table:
            settings[key] = table[key]
    for key, value in settings.items():
        if key == "nesterov":
            if not isinstance(value, bool):
                raise SpecError(f"{where} nesterov: must be true or false, got {shown(value)}")
        else:
            settings[key] = _number(value, f"{where} {key}", positive=key == "lr")
    if "clip_norm" in table:
        settings["clip_norm"] = _number(table["clip_norm"], f"{where} clip_norm", True)
    if "schedule" in table:
        settings["schedule"] = parse_schedule(table["schedule"], f"{where} schedule")
    try:
        return factory(**settings)
    except GraphnnError as exc:
        raise SpecError(f"{where} optimizer: {exc}") from None


# kind -> (class, its keys: name -> (required, an int?))
SCHEDULES = {
    "step": (schedules.Step, {"every": (True, True), "gamma": (False, False)}),
    "exponential": (schedules.Exponential, {"gamma": (True, False)}),
    "cosine": (schedules.Cosine, {"total_steps": (True, True), "floor": (False, False)}),
    "warmup": (schedules.Warmup, {"steps": (True, True), "then": (False, None)}),
}


def parse_schedule(value, where: str) -> schedules.Schedule:
    """A learning-rate schedule table, e.g. ``{ kind = "cosine", total_steps = 1000 }``, or
    ``{ kind = "warmup", steps = 100, then = { kind = "cosine", total_steps = 900 } }``.
    Steps count optimizer steps over the whole run."""
    if not isinstance(value, Mapping):
        raise SpecError(
            f'{where}: must be a table, e.g. {{ kind = "cosine", total_steps = 1000 }}, got '
            f"{shown(value)}"
        )
    kind = _choice(value.get("kind"), f"{where} kind", tuple(SCHEDULES))
    cls, keys = SCHEDULES[kind]
    check_keys(value, where, ("kind", *keys), [k for k, (need, _) in keys.items() if need])
    args = {}
    for key, given in value.items():
        if key == "kind":
            continue
        is_int = keys[key][1]
        if is_int is None:  # warmup's then: a schedule of its own
            args[key] = parse_schedule(given, f"{where}.{key}")
        elif is_int:
            args[key] = _int(given, f"{where} {key}", 1)
        else:
            args[key] = _number(given, f"{where} {key}")
    try:
        return cls(**args)
    except GraphnnError as exc:
        raise SpecError(f"{where}: {exc}") from None


def parse_train(table: Mapping, where: str, nodes: Mapping, leaves: Mapping) -> TrainConfig:
    """Check the ``[train]`` table against the built ``nodes`` and make a TrainConfig."""
    check_keys(table, where, TRAIN_KEYS)
    optimizer = parse_optimizer(table, where)
    if "loss" not in table and "loss" not in nodes and nodes:
        last = list(nodes)[-1]
        raise SpecError(
            f"{where} loss: no node of [graph] is named 'loss', the default loss node; "
            f'name it loss or set loss = "{last}" (or whichever node is the loss) in [train]'
        )
    loss = _node(table.get("loss", "loss"), f"{where} loss", nodes, leaves)
    if nodes[loss] is not None and nodes[loss].shape != ():
        raise SpecError(
            f"{where} loss: node {shown(loss)} has shape {show(nodes[loss].shape)}, not a "
            "scalar; reduce it, e.g. mean(...)"
        )
    batch = table.get("batch_size", 32)
    if batch == "full":
        batch = None
    elif not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise SpecError(f'{where} batch_size: must be a positive int or "full", got {shown(batch)}')
    conv = table.get("convergence", {})
    conv_where = where.replace("[train]", "[train.convergence]")
    check_keys(conv, f"{conv_where}", CONVERGENCE_KEYS)
    tol = conv.get("tol")
    early = conv.get("early_stopping", False)
    if not isinstance(early, bool):
        raise SpecError(f"{conv_where} early_stopping: must be true or false")
    predict = table.get("predict")
    metrics = table.get("metrics", [])
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise SpecError(f'{where} metrics: expected a list of names, e.g. ["mae", "r2"]')
    for name in metrics:
        if not is_builtin(name):
            known = ["accuracy", "precision", "recall", "f1", "top3", "mae", "rmse", "r2"]
            raise SpecError(
                f"{where} metrics: unknown metric {shown(name)}; known: accuracy, precision, "
                f"recall, f1, top<k>, mae, rmse, r2; " + _suggest(name, known)
            )
    return TrainConfig(
        optimizer=optimizer,
        loss=loss,
        batch_size=batch,
        epochs=_int(table.get("epochs", 20), f"{where} epochs", 1, 1_000_000),
        tol=None if tol is None else _number(tol, f"{conv_where} tol", positive=True),
        patience=_int(conv.get("patience", 5), f"{conv_where} patience", 1),
        early_stopping=early,
        backend=_choice(table.get("backend", "cpu"), f"{where} backend", BACKENDS),
        seed=_int(table.get("seed", 0), f"{where} seed", 0, 2**32 - 1),
        dtype=_choice(table.get("dtype", "float32"), f"{where} dtype", DTYPES),
        predict=None if predict is None else _node(predict, f"{where} predict", nodes, leaves),
        metrics=tuple(metrics),
    )


def parse_expect(table: Mapping, where: str) -> dict[str, float]:
    """``[expect]``: ``accuracy`` (at least, on held-out data if any) and ``loss`` (at most)."""
    check_keys(table, where, ("accuracy", "loss"))
    out = {k: _number(v, f"{where} {k}") for k, v in table.items()}
    if out.get("accuracy", 0) > 1:
        raise SpecError(f"{where} accuracy: must be a fraction in [0, 1], got {out['accuracy']}")
    return out
