"""Graphs on which a back end once gave a wrong number or no kernel (issue 15), with their values.

Each case builds a graph, its parameters and one batch of data, and computes the loss it must
give independently of graphnn, in float64 NumPy (``expect``).  ``tests/test_reproducers.py`` runs
every case on the NumPy reference (against ``expect`` and central differences) and on the CPU
back end; ``tests/cuda_cases.py`` runs them on the CUDA simulator.  Batch sizes vary on purpose:
a value whose rows are not the batch must not follow the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sympy

import graphnn as gn
from graphnn.ir.elementwise import ELEMENTWISE


@dataclass
class Case:
    graph: gn.Graph
    params: dict
    data: dict
    expect: Callable[[dict, dict], float]  # the loss in float64 NumPy, from params and data
    dtype: str = "float32"  # the CUDA simulator's: float64 for values float32 cannot hold
    # what the CUDA result is compared with: float32 where the float32 value is the point
    # (1 - tanh(9)^2 is 1.19e-7 in float32, as in PyTorch, and 6.1e-8 in float64)
    reference: str = "float64"
    # the gradients in float64 NumPy, where central differences cannot resolve them
    exact_grads: Callable[[dict, dict], dict] | None = None
    tol64: float = 1e-12  # CPU against the reference in float64


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _random(g: gn.Graph, rng, batch: int, scale=1.0) -> tuple[dict, dict]:
    params = {n.name: rng.normal(size=n.shape) * scale for n in g.forward.params}
    data = {n.name: rng.normal(size=(batch, *n.shape[1:])) for n in g.forward.inputs}
    return params, data


def softmax_of_param(batch: int) -> Case:
    """softmax over a (4, 3) parameter: 4 rows whatever the batch (1 read uninitialized rows,
    6 and 8 wrote past the buffer)."""
    x, w = gn.input("x", (2,)), gn.param("w", (2,))
    P, V = gn.param("P", (4, 3)), gn.param("V", (3, 1))
    g = gn.Graph(gn.mean(gn.softmax(P) @ V) + gn.mean(x * w))
    params, data = _random(g, _rng(f"softmax_of_param{batch}"), batch)

    def expect(p, d):
        return np.mean(_softmax(p["P"]) @ p["V"]) + np.mean(d["x"] * p["w"])

    return Case(g, params, data, expect)


def softmax_of_batch_sum(batch: int) -> Case:
    """softmax over a (1, 3) row, the batch summed away first."""
    x, P = gn.input("x", (3,)), gn.param("P", (3,))
    V = gn.param("V", (3, 2))
    g = gn.Graph(gn.mean(gn.softmax(gn.sum(x + P, axis=0, keepdims=True)) @ V))
    params, data = _random(g, _rng(f"softmax_of_batch_sum{batch}"), batch, 0.5)

    def expect(p, d):
        return np.mean(_softmax((d["x"] + p["P"]).sum(axis=0, keepdims=True)) @ p["V"])

    return Case(g, params, data, expect)


CASES: dict[str, Callable[[], Case]] = {}
for _b in (1, 4, 6, 8):
    CASES[f"softmax_of_param_batch{_b}"] = lambda b=_b: softmax_of_param(b)
    CASES[f"softmax_of_batch_sum_batch{_b}"] = lambda b=_b: softmax_of_batch_sum(b)


def reduction_of_a_scalar(which: str) -> Case:
    """A sum or mean of a 0-d value: the CPU kernel indexed it as ``x[]`` (a SyntaxError)."""
    x, w = gn.input("x", (3,)), gn.param("w", (3,))
    v = gn.input("v", (2,))
    losses = {
        "mean_of_sum": (lambda: gn.mean(gn.sum(x * w)), lambda p, d: np.sum(d["x"] * p["w"])),
        "sum_of_mean": (lambda: gn.sum(gn.mean(x * w)), lambda p, d: np.mean(d["x"] * p["w"])),
        "mean_of_mean": (
            lambda: gn.mean(gn.mean(v * gn.sum(w), 0), 0),
            lambda p, d: np.mean(np.mean(d["v"] * np.sum(p["w"]), 0), 0),
        ),
    }
    build, expect = losses[which]
    g = gn.Graph(build())
    params, data = _random(g, _rng(which), 5)
    return Case(g, params, data, expect)


for _which in ("mean_of_sum", "sum_of_mean", "mean_of_mean"):
    CASES[f"scalar_{_which}"] = lambda w=_which: reduction_of_a_scalar(w)


def _softmax_ce(z, t):
    """PyTorch's cross-entropy with probability targets, mean over the rows of z."""
    m = z.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[:, 0]
    return np.mean(t.sum(axis=-1) * lse - (t * z).sum(axis=-1))


def ce_without_batch_axis(batch: int) -> Case:
    """Cross-entropy of (4, 3) logits (a parameter plus the batch mean of x W): the mean over
    their 4 rows, whatever the batch size (its gradient was divided by n)."""
    x, y = gn.input("x", (2,)), gn.input("y", (4, 3))
    P, W = gn.param("P", (4, 3)), gn.param("W", (2, 3))
    z = P + gn.mean(x @ W, axis=0, keepdims=True)
    g = gn.Graph(gn.softmax_cross_entropy(z, gn.mean(y, axis=0)))
    rng = _rng(f"ce_without_batch_axis{batch}")
    params, data = _random(g, rng, batch)
    data["y"] = np.eye(3)[rng.integers(0, 3, (batch, 4))]  # one-hot: the mean rows sum to 1

    def expect(p, d):
        z = p["P"] + (d["x"] @ p["W"]).mean(axis=0, keepdims=True)
        return _softmax_ce(z, d["y"].mean(axis=0))

    return Case(g, params, data, expect)


for _b in (1, 4, 7):
    CASES[f"ce_without_batch_axis_batch{_b}"] = lambda b=_b: ce_without_batch_axis(b)


def ce_targets_not_summing_to_one() -> Case:
    """Target rows of zeros (padding) and multi-label rows summing to 2: PyTorch's loss is
    sum(t) logsumexp(z) - sum(t z) per row (logsumexp(z) - sum(t z) was negative for the 2s)."""
    x, y = gn.input("x", (3,)), gn.input("y", (4,))
    W = gn.param("W", (3, 4))
    g = gn.Graph(gn.softmax_cross_entropy(x @ W, y))
    rng = _rng("ce_targets_not_summing_to_one")
    params, data = _random(g, rng, 5)
    data["y"] = np.array(
        [[0, 0, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0.5, 0.25, 0, 0], [1, 1, 1, 0]], float
    )
    return Case(g, params, data, lambda p, d: _softmax_ce(d["x"] @ p["W"], d["y"]))


CASES["ce_targets_not_summing_to_one"] = ce_targets_not_summing_to_one


def gelu_far_left() -> Case:
    """gelu in float64 for z <= -27: z Phi(z) is about -1e-160 to -1e-265, not 0."""
    P = gn.param("P", (3,))
    g = gn.Graph(gn.sum(gn.gelu(P)))
    params = {"P": np.array([-27.0, -30.0, -35.0])}

    def expect(p, d):
        return sum(z * math.erfc(-z / math.sqrt(2)) / 2 for z in p["P"])

    return Case(g, params, {}, expect, dtype="float64")


CASES["gelu_far_left"] = gelu_far_left


def tanh_saturated() -> Case:
    """mean(tanh(x + b)) at x = (9, 12, 30): float32 dL/db is (1 - y^2)/3 = (3.97e-8, 0, 0), as
    in NumPy and PyTorch; the CPU's clamped rational tanh gave 1.59e-7 for each."""
    x, b = gn.input("x", (3,)), gn.param("b", (3,))
    g = gn.Graph(gn.mean(gn.tanh(x + b)))
    params, data = {"b": np.zeros(3)}, {"x": np.array([[9.0, 12.0, 30.0]])}
    expect = lambda p, d: np.mean(np.tanh(d["x"] + p["b"]))  # noqa: E731
    # tanh moves by 1e-13 over a finite-difference step at 9: sech^2 instead
    slope = lambda p, d: {"b": np.mean(1 / np.cosh(d["x"] + p["b"]) ** 2, axis=0) / 3}  # noqa: E731
    # 1 - y^2 at y = 1 - 3e-8 turns an ulp of tanh (libm against NumPy) into 4e-9 relative
    return Case(g, params, data, expect, reference="float32", exact_grads=slope, tol64=1e-8)


CASES["tanh_saturated"] = tanh_saturated


def _nan_graph(body: Callable[[gn.Tensor], gn.Tensor]) -> Case:
    """mse of body(x @ W) on rows where x @ W < 0 (where log is NaN) or large (exp overflows)."""
    x, t, W = gn.input("x", (2,)), gn.input("t", (2,)), gn.param("W", (2, 2))
    g = gn.Graph(gn.mse(body(x @ W), t))
    params = {"W": np.array([[1.0, -1.0], [0.5, 100.0]])}
    data = {"x": np.array([[1.0, 1.0], [-1.0, 1.0]]), "t": np.zeros((2, 2))}
    return Case(g, params, data, lambda p, d: math.nan)


# Graphs whose loss is NaN or Inf in the reference: every back end must show it (a fast-math
# flag folded exp(log(z)) into z, relu turned NaN into 0, and training went on, finite).
NAN_CASES: dict[str, Callable[[], Case]] = {
    "exp_of_log": lambda: _nan_graph(lambda z: gn.exp(gn.log(z))),
    "log_of_exp": lambda: _nan_graph(lambda z: gn.log(gn.exp(z))),
    "elu_of_log": lambda: _nan_graph(lambda z: gn.elu(gn.log(z))),
    "relu_of_log": lambda: _nan_graph(lambda z: gn.relu(gn.log(z))),
}


def nan_through(op: str, arg: int) -> Case:
    """sum(op(p0, ...)) with a NaN in argument ``arg``: NaN, as in PyTorch (relu(NaN) was 0)."""
    row = ELEMENTWISE[op]
    ps = [gn.param(f"p{k}", (3,)) for k in range(row.arity)]
    g = gn.Graph(gn.sum(gn.apply(op, *ps)))
    lo, hi = row.domain
    params = {f"p{k}": np.array([lo, (lo + hi) / 2, hi]) for k in range(row.arity)}
    params[f"p{arg}"][1] = np.nan
    return Case(g, params, {}, lambda p, d: math.nan)


# every elementwise op with a NaN in each of its arguments
NAN_OPS = {
    f"{op}_arg{k}": lambda op=op, k=k: nan_through(op, k)
    for op, row in ELEMENTWISE.items()
    for k in range(row.arity)
}


def user_mish() -> Case:
    """A user function z*tanh(log(1 + exp(z))): Inf/NaN in float32 from z = 89 in every derived
    form; graphnn rewrites log(1 + exp(z)) to its stable softplus."""
    s = sympy.Symbol("z", real=True)
    mish = gn.elementwise("mish", s * sympy.tanh(sympy.log(1 + sympy.exp(s))), [s])
    P = gn.param("P", (6,))
    g = gn.Graph(gn.sum(mish(P)))
    params = {"P": np.array([-30.0, 0.5, 87.0, 88.0, 89.0, 100.0])}
    return Case(g, params, {}, lambda p, d: np.sum(p["P"] * np.tanh(np.logaddexp(0, p["P"]))))


CASES["user_mish"] = user_mish
