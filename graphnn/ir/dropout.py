"""Dropout with a counter-based RNG: a mask is a hash of (seed, epoch, sample, element).

No random state lives anywhere.  While training, element ``j`` (its row-major index within the
sample) of sample ``i`` (its row in the training data) is kept in the epoch whose first step is
``t`` exactly when ``mix(mix(mix(mix(seed) ^ t) ^ i) ^ j) >= rate · 2**32``, on every back end
(each prints :data:`MIX_LINES`).  So a seed gives the same masks on the NumPy reference, the CPU
and CUDA, and at any batch split: the batch size, and which MPI rank takes a row, do not change
a sample's mask.  A kept element is scaled by ``1 / (1 - rate)`` (inverted dropout).  The op is
linear and its mask depends on nothing but the draw, so its adjoint is the same dropout applied
to the cotangent.  Prediction and evaluation run the eval form: the identity.  The kernels take
the draw as two arguments: ``draw`` (the epoch's first step) and ``sample_ids`` (each batch
row's row in the training data; ``value_and_grad`` uses 0 and ``0..n-1``).

>>> import numpy as np
>>> keep = keep_mask(seed=0, draw=1, ids=np.arange(4), shape=(4, 1000), rate=0.25)
>>> keep.shape, 0.7 < keep.mean() < 0.8
((4, 1000), True)
>>> bool((keep[2:] == keep_mask(0, 1, np.arange(2, 4), (2, 1000), 0.25)).all())  # a split
True
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


def keep_mask(seed: int, draw: int, ids, shape, rate: float) -> np.ndarray:
    """True where dropout keeps an element of the batch whose rows are the samples ``ids``, in
    the draw (epoch) ``draw``; an element's counter is its row-major index within its row."""
    key = mix(mix(int(seed) & 0xFFFFFFFF) ^ (int(draw) & 0xFFFFFFFF))
    rows = mix(key ^ (np.asarray(ids, dtype=np.int64) & 0xFFFFFFFF))
    within = np.arange(int(np.prod(shape[1:])), dtype=np.int64)
    return (mix(rows[:, None] ^ within[None, :]) >= threshold(rate)).reshape(shape)


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
    if not x.shape or x.shape[0] is not None:
        raise GraphError(
            f"dropout of '{x.label}': its input must have the batch as its first axis (a mask "
            f"is drawn per sample), got shape {x.shape}"
        )
    if rate == 0:
        return x
    attrs = {"rate": float(rate), "seed": int(seed)}
    return Tensor("dropout", (x,), x.shape, attrs, None, _label("dropout({})", x))


def has_dropout(ir) -> bool:
    """Whether a graph IR has a dropout node: its training kernels then take the draw."""
    return any(n.op == "dropout" for n in ir.nodes)
