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
