"""Reference networks train on the NumPy back end by plain full-batch gradient descent."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

import graphnn as gn

STEPS = 30
LR = 0.5


def descend(g, data, steps=STEPS, lr=LR, seed=0):
    """w <- w - lr * dL/dw on all samples each step; returns the loss before every step."""
    params = g.init_params(seed=seed)
    losses = []
    for _ in range(steps):
        value, grads = g.value_and_grad(params, data, backend="numpy")
        assert np.isfinite(value)
        losses.append(value)
        params = {k: v - lr * grads[k] for k, v in params.items()}
    return np.array(losses), params


def assert_falls(losses):
    assert losses[-1] < 0.7 * losses[0], losses
    falls = np.sum(np.diff(losses) < 0)
    assert falls >= 0.8 * (len(losses) - 1), losses


def test_single_neuron_mse():
    x, y = gn.input("x", (8,)), gn.input("y", (1,))
    w, b = gn.param("w", (8, 1)), gn.param("b", (1,), init="zeros")
    g = gn.Graph(gn.mse(gn.sigmoid(x @ w + b), y))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 8))
    w_true = rng.normal(size=(8, 1))
    Y = (X @ w_true + 0.5 > 0).astype(np.float64)
    losses, params = descend(g, {"x": X, "y": Y})
    assert_falls(losses)
    assert params["w"].dtype == np.float32
    pred = 1 / (1 + np.exp(-(X @ params["w"] + params["b"])))
    assert np.mean((pred > 0.5) == (Y > 0.5)) > 0.8


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    Y = np.eye(10, dtype=np.float32)[d.target]
    return X, Y


def test_digits_mlp_softmax_ce(digits):
    X, Y = digits
    x, y = gn.input("x", (64,)), gn.input("y", (10,))
    W1, b1 = gn.param("W1", (64, 128), init="he_normal"), gn.param("b1", (128,), init="zeros")
    W2, b2 = gn.param("W2", (128, 10), init="glorot_uniform"), gn.param("b2", (10,))
    h = gn.relu(x @ W1 + b1)
    g = gn.Graph(gn.softmax_cross_entropy(h @ W2 + b2, y))
    losses, params = descend(g, {"x": X, "y": Y})
    assert_falls(losses)
    logits = np.maximum(X @ params["W1"] + params["b1"], 0) @ params["W2"] + params["b2"]
    assert np.mean(logits.argmax(1) == Y.argmax(1)) > 0.7
