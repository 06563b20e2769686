"""Parameter initializers, keyed by the names accepted by ``gn.param(init=...)``.

Each parameter draws from its own stream, seeded by (seed, name), so adding a parameter never
changes the others' initial values.

>>> init_array("W", (4, 3), "zeros", seed=0).sum()
np.float32(0.0)
"""

from __future__ import annotations

import zlib

import numpy as np


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 4:  # a conv2d kernel (kh, kw, in, out), as TensorFlow's HWIO
        window = shape[0] * shape[1]
        return window * shape[2], window * shape[3]
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[0] * receptive, shape[1] * receptive


def init_array(name: str, shape: tuple[int, ...], init: str, seed: int, dtype=np.float32):
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    fan_in, fan_out = fans(shape)
    draw = {
        "zeros": lambda: np.zeros(shape),
        "ones": lambda: np.ones(shape),
        "normal": lambda: rng.normal(0.0, 0.01, shape),
        "uniform": lambda: rng.uniform(-0.05, 0.05, shape),
        "he_normal": lambda: rng.normal(0.0, np.sqrt(2.0 / fan_in), shape),
        "he_uniform": lambda: rng.uniform(-1, 1, shape) * np.sqrt(6.0 / fan_in),
        "glorot_normal": lambda: rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), shape),
        "glorot_uniform": lambda: rng.uniform(-1, 1, shape) * np.sqrt(6.0 / (fan_in + fan_out)),
    }[init]
    return np.asarray(draw(), dtype=dtype, order="C")
