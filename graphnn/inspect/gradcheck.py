"""Check a back end's gradients against central finite differences (``graphnn check``).

The back end computes the loss and every gradient in its dtype on a small batch.  The reference
is independent of code generation: central differences of the float64 NumPy reference loss at
the same point (the parameters rounded to the back end's dtype).  For each parameter a seeded
sample of entries is differenced, always including the largest one.  The error of a parameter is
``max |grad - fd| / max |fd|`` over the entries checked (relative to the gradient's scale, so an
entry near zero does not turn float32 rounding into a large relative error).

>>> import numpy as np, graphnn as gn
>>> g = gn.Graph(gn.mse(gn.input("x", (2,)) @ gn.param("w", (2, 1)), gn.input("t", (1,))))
>>> data = {"x": np.ones((4, 2)), "t": np.zeros((4, 1))}
>>> report = check_gradients(g, data, backend="numpy", dtype="float64")
>>> report.params["w"].error < 1e-8
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

TOLERANCE = {"float32": 1e-4, "float64": 1e-7}


@dataclass(frozen=True)
class ParamCheck:
    error: float  # max |grad - fd| / max |fd| over the entries checked
    checked: int
    size: int


@dataclass(frozen=True)
class GradCheck:
    loss_error: float  # |loss - loss64| / max(|loss64|, 1)
    params: Mapping[str, ParamCheck]

    @property
    def worst(self) -> float:
        return max([self.loss_error, *(p.error for p in self.params.values())])


def random_data(graph, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal arrays for every input (for specs without data)."""
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=(rows, *shape[1:])) for name, shape in graph.inputs.items()}


def _entries(grad: np.ndarray, count: int, rng) -> np.ndarray:
    flat = np.abs(grad).ravel()
    if flat.size <= count:
        return np.arange(flat.size)
    picked = rng.choice(flat.size, size=count - 1, replace=False)
    return np.unique(np.append(picked, np.argmax(flat)))


def check_gradients(
    graph, data: Mapping, backend: str = "cpu", dtype="float32", seed: int = 0, entries=24, eps=1e-6
) -> GradCheck:
    """Compare ``backend``'s loss and gradients with float64 central differences."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    # Perturb the initial values so zero-initialized biases do not hide mistakes.
    params = {
        k: (v + rng.normal(0.0, 0.05, v.shape)).astype(dtype)
        for k, v in graph.init_params(seed, np.float64).items()
    }
    batch = {k: np.asarray(v, dtype=dtype) for k, v in data.items()}
    loss, grads = graph.value_and_grad(params, batch, backend=backend, dtype=dtype)
    point = {k: v.astype(np.float64) for k, v in params.items()}
    batch64 = {k: v.astype(np.float64) for k, v in batch.items()}

    def loss64() -> float:
        return graph.value_and_grad(point, batch64, backend="numpy", dtype=np.float64)[0]

    base = loss64()
    results = {}
    for name in graph.param_names:
        p, grad = point[name].reshape(-1), np.asarray(grads[name], np.float64).reshape(-1)
        idx = _entries(grad, entries, rng)
        fd = np.empty(len(idx))
        for j, i in enumerate(idx):
            old = p[i]
            p[i] = old + eps
            up = loss64()
            p[i] = old - eps
            down = loss64()
            p[i] = old
            fd[j] = (up - down) / (2 * eps)
        scale = max(float(np.max(np.abs(fd))), 1e-12)
        error = float(np.max(np.abs(grad[idx] - fd))) / scale
        results[name] = ParamCheck(error, len(idx), p.size)
    return GradCheck(abs(loss - base) / max(abs(base), 1.0), results)
