"""Every derived gradient against central finite differences in float64 (relative error < 1e-6).

One row per elementwise op comes straight from the op table, so a new op is tested by adding its
row there; structural ops and whole networks have rows below.
"""

import numpy as np
import pytest

import graphnn as gn
from graphnn.ir.elementwise import ELEMENTWISE
from tests import cases
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


@pytest.mark.parametrize("name", sorted(cases.STRUCTURAL))
def test_structural_gradient(name):
    g, data = cases.build(name)
    params = {k: v.astype(np.float64) for k, v in g.init_params(0).items()}
    check(g.loss, data, params=params)


@pytest.mark.parametrize("name", sorted(cases.LOSSES))
def test_losses(name):
    g, data = cases.loss_case(name)
    check(g.loss, data)


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
