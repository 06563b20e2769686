"""Dropout with a counter-based RNG: the mask is a hash of (seed, training step, element index).

No random state lives anywhere: element ``e`` (its row-major index in the batch's array) of a
dropout node is kept at training step ``t`` exactly when ``mix(mix(mix(seed) ^ t) ^ e) >=
rate · 2**32``, on every back end (each prints :data:`MIX_LINES`), so a seed gives the same masks
on the NumPy reference, the CPU and CUDA.  A kept element is scaled by ``1 / (1 - rate)``
(inverted dropout).  The op is linear and its mask depends on nothing but the step and the
position, so its adjoint is the same dropout applied to the cotangent.  Prediction and
evaluation run the eval form: the identity.

>>> import numpy as np
>>> keep = keep_mask(seed=0, step=1, shape=(4, 1000), rate=0.25)
>>> keep.shape, 0.7 < keep.mean() < 0.8
((4, 1000), True)
"""

from __future__ import annotations

import numbers

import numpy as np

from graphnn.errors import GraphError
from graphnn.ir.ops import Tensor, _as_tensor, _label

# A 32-bit integer hash (two multiply-xorshift rounds; the products stay below 2**59, so int64
# arithmetic is exact on every back end).  The lines of the function body each back end prints.
MIX_LINES = (
    "h = ((h >> 16) ^ h) * 0x45D9F3B & 0xFFFFFFFF",
    "h = ((h >> 16) ^ h) * 0x45D9F3B & 0xFFFFFFFF",
    "return (h >> 16) ^ h",
)


def mix(h):
    """The hash of :data:`MIX_LINES`, on ints or int64 arrays (the NumPy reference's)."""
    h = ((h >> 16) ^ h) * 0x45D9F3B & 0xFFFFFFFF
    h = ((h >> 16) ^ h) * 0x45D9F3B & 0xFFFFFFFF
    return (h >> 16) ^ h


def threshold(rate: float) -> int:
    """An element is kept when its hash is at least this (hashes are uniform on [0, 2**32))."""
    return int(round(rate * 2**32))


def keep_mask(seed: int, step: int, shape, rate: float) -> np.ndarray:
    """True where dropout keeps the element at ``step``; the row-major index is the counter."""
    key = mix(mix(int(seed) & 0xFFFFFFFF) ^ (int(step) & 0xFFFFFFFF))
    counter = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    return mix(key ^ counter) >= threshold(rate)


def dropout(x, rate: float, seed: int = 0) -> Tensor:
    """Zero each element with probability ``rate`` while training (kept ones scaled by
    1/(1 - rate)); the identity in prediction and evaluation.  Two dropouts of the same shape
    and ``seed`` drop the same elements: give each layer its own seed."""
    x = _as_tensor(x)
    ok = isinstance(rate, numbers.Real) and not isinstance(rate, bool) and 0 <= rate < 1
    if not ok:
        raise GraphError(f"dropout of '{x.label}': rate must be in [0, 1), got {rate!r}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise GraphError(f"dropout of '{x.label}': seed must be an int >= 0, got {seed!r}")
    if rate == 0:
        return x
    attrs = {"rate": float(rate), "seed": int(seed)}
    return Tensor("dropout", (x,), x.shape, attrs, None, _label("dropout({})", x))


def has_dropout(ir) -> bool:
    """Whether a graph IR has a dropout node: its training kernels then take the step."""
    return any(n.op == "dropout" for n in ir.nodes)
