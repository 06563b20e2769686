"""Every derived gradient against central finite differences in float64 (relative error < 1e-6).

One row per elementwise op comes straight from the op table, so a new op is tested by adding its
row there; structural ops and whole networks have rows below.
"""

import numpy as np
import pytest

import graphnn as gn
from graphnn.ir.elementwise import ELEMENTWISE
from tests.finite_diff import numeric_gradients, relative_error

TOL = 1e-6


def check(loss, data, seed=0, params=None):
    g = gn.Graph(loss)
    params = params or {k: v.astype(np.float64) for k, v in g.init_params(seed).items()}
    data = {k: np.asarray(v, np.float64) for k, v in data.items()}
    _, grads = g.value_and_grad(params, data)
    numeric = numeric_gradients(g, params, data)
    for name in g.param_names:
        err = relative_error(grads[name], numeric[name])
        assert err < TOL, f"{name}: relative error {err:.2e}"
    return g


@pytest.mark.parametrize("op", sorted(ELEMENTWISE))
def test_elementwise_op_gradient(op):
    row = ELEMENTWISE[op]
    rng = np.random.default_rng(1)
    lo, hi = row.domain
    ps = [gn.param(f"p{k}", (2, 3)) for k in range(row.arity)]
    u = gn.input("u", (2, 3))  # random upstream weights; broadcasting (2,3) against (batch,2,3)
    loss = gn.sum(gn.apply(op, *ps) * u)
    params = {f"p{k}": rng.uniform(lo, hi, (2, 3)) for k in range(row.arity)}
    check(loss, {"u": rng.normal(size=(4, 2, 3))}, params=params)


def _mlp(act, width=5):
    x, y = gn.input("x", (4,)), gn.input("y", (3,))
    W1, b1 = gn.param("W1", (4, width)), gn.param("b1", (width,), init="normal")
    W2, b2 = gn.param("W2", (width, 3)), gn.param("b2", (3,), init="normal")
    h = gn.apply(act, x @ W1 + b1)
    return gn.softmax_cross_entropy(h @ W2 + b2, y)


def _data(rng, n=6, d=4, k=3):
    return {"x": rng.normal(size=(n, d)), "y": np.eye(k)[rng.integers(0, k, n)]}


@pytest.mark.parametrize("act", gn.ACTIVATIONS)
def test_mlp_with_each_activation(act):
    check(_mlp(act), _data(np.random.default_rng(2)))


STRUCTURAL = {
    "matmul_chain": lambda x, W, V: gn.sum(x @ W @ V),
    "mean_rows": lambda x, W, V: gn.sum(gn.mean(gn.tanh(x @ W), axis=1) * 3.0),
    "mean_batch": lambda x, W, V: gn.sum(gn.mean(gn.tanh(x @ W), axis=0, keepdims=True) @ V),
    "sum_keepdims": lambda x, W, V: gn.sum(gn.sum(x @ W, axis=1, keepdims=True) * (x @ W)),
    "softmax": lambda x, W, V: gn.sum(gn.softmax(x @ W) * (x @ W)),
    "power_div": lambda x, W, V: gn.mean((x @ W) ** 2 / (1.5 + gn.sigmoid(x @ W))),
    "fan_out": lambda x, W, V: gn.sum(gn.tanh(x @ W) * gn.sigmoid(x @ W) + (x @ W)),
    "shared_param": lambda x, W, V: gn.sum((x @ W) @ V + (x @ W) @ V * 2.0),
    "bias_broadcast": lambda x, W, V: gn.sum(gn.exp(x @ W * 0.1 + gn.sum(V, axis=1))),
    "neg_sub": lambda x, W, V: gn.sum(-(x @ W) - 1.0) + gn.sum(2.0 * ((x @ W) @ V)),
}


@pytest.mark.parametrize("name", sorted(STRUCTURAL))
def test_structural_gradient(name):
    x = gn.input("x", (4,))
    W, V = gn.param("W", (4, 4)), gn.param("V", (4, 2))
    loss = STRUCTURAL[name](x, W, V)
    data = {"x": np.random.default_rng(3).normal(size=(5, 4))}
    g = gn.Graph(loss)
    params = {k: v.astype(np.float64) for k, v in g.init_params(0).items()}
    check(loss, data, params=params)


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda z, t: gn.mse(z, t),
        lambda z, t: gn.softmax_cross_entropy(z, t),
        lambda z, t: gn.binary_cross_entropy_with_logits(z, t),
    ],
    ids=["mse", "softmax_ce", "bce_logits"],
)
def test_losses(loss_fn):
    x, t = gn.input("x", (4,)), gn.input("t", (3,))
    W = gn.param("W", (4, 3))
    rng = np.random.default_rng(4)
    target = np.eye(3)[rng.integers(0, 3, 7)]
    check(loss_fn(x @ W, t), {"x": rng.normal(size=(7, 4)) * 2, "t": target})


def test_single_neuron():
    x, y = gn.input("x", (8,)), gn.input("y", (1,))
    w, b = gn.param("w", (8, 1)), gn.param("b", (1,), init="normal")
    rng = np.random.default_rng(5)
    check(gn.mse(gn.sigmoid(x @ w + b), y), {"x": rng.normal(size=(9, 8)), "y": rng.random((9, 1))})


def test_user_defined_function():
    import sympy

    z = sympy.Symbol("z")
    swish = gn.elementwise("swish", z / (1 + sympy.exp(-z)), [z])
    x, y = gn.input("x", (4,)), gn.input("y", (3,))
    W = gn.param("W", (4, 3))
    rng = np.random.default_rng(6)
    check(gn.mse(swish(x @ W), y), {"x": rng.normal(size=(5, 4)), "y": rng.normal(size=(5, 3))})
