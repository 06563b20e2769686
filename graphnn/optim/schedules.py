"""Learning-rate schedules: a multiplier of the base learning rate for each optimizer step.

The driver evaluates the schedule for every step of an epoch up front and hands the kernels an
array of learning rates, so a schedule never forces a recompile or a Python call per step.

>>> Cosine(total_steps=10)(0), round(Cosine(total_steps=10)(10), 6)
(1.0, 0.0)
>>> Warmup(steps=4)(1)
0.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from graphnn.errors import GraphError


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise GraphError(what)


class Schedule:
    """A learning-rate multiplier per optimizer step (steps count from 0 over the whole run)."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def multipliers(self, start: int, count: int) -> np.ndarray:
        return np.array([self(start + k) for k in range(count)], dtype=np.float64)


@dataclass(frozen=True)
class Constant(Schedule):
    def __call__(self, step: int) -> float:
        return 1.0


@dataclass(frozen=True)
class Step(Schedule):
    """Multiply by ``gamma`` every ``every`` steps."""

    every: int
    gamma: float = 0.1

    def __post_init__(self):
        _check(int(self.every) == self.every >= 1, f"Step: every must be an int >= 1: {self!r}")
        _check(self.gamma > 0, f"Step: gamma must be > 0: {self!r}")

    def __call__(self, step: int) -> float:
        return self.gamma ** (step // self.every)


@dataclass(frozen=True)
class Exponential(Schedule):
    """Multiply by ``gamma`` every step."""

    gamma: float

    def __post_init__(self):
        _check(self.gamma > 0, f"Exponential: gamma must be > 0: {self!r}")

    def __call__(self, step: int) -> float:
        return self.gamma**step


@dataclass(frozen=True)
class Cosine(Schedule):
    """Cosine decay from 1 to ``floor`` over ``total_steps``, then ``floor``."""

    total_steps: int
    floor: float = 0.0

    def __post_init__(self):
        _check(self.total_steps >= 1, f"Cosine: total_steps must be >= 1: {self!r}")
        _check(0 <= self.floor <= 1, f"Cosine: floor must be in [0, 1]: {self!r}")

    def __call__(self, step: int) -> float:
        frac = min(step, self.total_steps) / self.total_steps
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * frac))


@dataclass(frozen=True)
class Warmup(Schedule):
    """Linear warm-up over ``steps`` steps, then ``then`` (counted from the end of warm-up)."""

    steps: int
    then: Schedule = Constant()

    def __post_init__(self):
        _check(int(self.steps) == self.steps >= 1, f"Warmup: steps must be an int >= 1: {self!r}")
        _check(isinstance(self.then, Schedule), f"Warmup: then must be a Schedule: {self!r}")

    def __call__(self, step: int) -> float:
        if step < self.steps:
            return (step + 1) / self.steps
        return self.then(step - self.steps)


SCHEDULES = {cls.__name__: cls for cls in (Constant, Step, Exponential, Cosine, Warmup)}


def schedule_to_data(schedule: Schedule | None) -> dict | None:
    """A schedule as data: ``{"kind": "Cosine", "total_steps": 100, "floor": 0.0}``."""
    if schedule is None:
        return None
    kind = type(schedule).__name__
    if SCHEDULES.get(kind) is not type(schedule):
        raise GraphError(
            f"cannot store the schedule {schedule!r}: not one of {', '.join(SCHEDULES)}"
        )
    out = {"kind": kind}
    for key, value in schedule.__dict__.items():
        out[key] = schedule_to_data(value) if isinstance(value, Schedule) else value
    return out


def schedule_from_data(data) -> Schedule | None:
    """The schedule :func:`schedule_to_data` stored (GraphError if malformed)."""
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("kind") not in SCHEDULES:
        raise GraphError(f"unknown schedule {data!r}")
    fields = {k: v for k, v in data.items() if k != "kind"}
    if isinstance(fields.get("then"), dict):
        fields["then"] = schedule_from_data(fields["then"])
    try:
        return SCHEDULES[data["kind"]](**fields)
    except TypeError as exc:
        raise GraphError(f"schedule {data['kind']}: {exc}") from None
