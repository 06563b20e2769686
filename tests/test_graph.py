"""The Python API as the issue shows it, the errors bad input gets, deep graphs, names, init."""

import os
import subprocess
import sys

import numpy as np
import pytest

import graphnn as gn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def issue_example():
    """The issue's example, verbatim."""
    x = gn.input("x", (64,))
    y = gn.input("y", (10,))
    W1 = gn.param("W1", (64, 128), init="he_normal")
    b1 = gn.param("b1", (128,), init="zeros")
    W2 = gn.param("W2", (128, 10), init="glorot_uniform")
    b2 = gn.param("b2", (10,))
    h = gn.relu(x @ W1 + b1)
    loss = gn.softmax_cross_entropy(h @ W2 + b2, y)
    return gn.Graph(loss), h


def batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 64)).astype(np.float32)
    Y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]
    return X, Y


SHAPES = {"W1": (64, 128), "b1": (128,), "W2": (128, 10), "b2": (10,)}


# --- the API example ------------------------------------------------------------------------


def test_issue_example_runs_as_written(capsys):
    g, _ = issue_example()
    assert sorted(g.param_names) == sorted(SHAPES)
    print(g.gradient("W1"))
    print(g.gradient("W1").latex())
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    text, tex = out
    assert text == str(g.gradient("W1"))
    assert text.startswith("x^T") and "W2^T" in text and "relu'" in text and "softmax" in text
    assert tex == g.gradient("W1").latex()
    assert r"\circ" in tex and r"\operatorname{relu}" in tex

    params = g.init_params(seed=0)
    assert set(params) == set(SHAPES)
    for name, shape in SHAPES.items():
        assert isinstance(params[name], np.ndarray)
        assert params[name].dtype == np.float32
        assert params[name].shape == shape
    assert not params["b1"].any()  # zeros
    assert params["W1"].std() > 0

    X, Y = batch()
    value, grads = g.value_and_grad(params, {"x": X, "y": Y}, backend="numpy")
    assert isinstance(value, float)
    assert np.isfinite(value) and value > 0
    assert set(grads) == set(SHAPES)
    for name, shape in SHAPES.items():
        assert isinstance(grads[name], np.ndarray)
        assert grads[name].shape == shape
        assert np.all(np.isfinite(grads[name]))
    assert np.abs(grads["W2"]).sum() > 0


def test_issue_example_gradient_matches_manual_numpy():
    """The numpy back end's W1 gradient equals the textbook backprop of the same network."""
    g, _ = issue_example()
    params = {k: v.astype(np.float64) for k, v in g.init_params(seed=0).items()}
    X, Y = (a.astype(np.float64) for a in batch(16, seed=1))
    value, grads = g.value_and_grad(params, {"x": X, "y": Y})
    z1 = X @ params["W1"] + params["b1"]
    h = np.maximum(z1, 0)
    z2 = h @ params["W2"] + params["b2"]
    e = np.exp(z2 - z2.max(axis=1, keepdims=True))
    s = e / e.sum(axis=1, keepdims=True)
    assert value == pytest.approx(-(Y * np.log(s)).sum(axis=1).mean(), rel=1e-10)
    d2 = (s - Y) / len(X)
    np.testing.assert_allclose(grads["W2"], h.T @ d2, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(grads["W1"], X.T @ ((d2 @ params["W2"].T) * (z1 > 0)), rtol=1e-10)


# --- bad input ------------------------------------------------------------------------------


def test_matmul_shape_error_names_both_nodes_and_shapes():
    _, h = issue_example()
    W = gn.param("W", (64, 10))
    with pytest.raises(gn.ShapeError) as info:
        h @ W
    msg = str(info.value)
    assert h.label in msg and "'W'" in msg
    assert "(batch, 128)" in msg and "(64, 10)" in msg


def test_matmul_shape_error_between_two_params():
    W1 = gn.param("W1", (64, 128))
    W = gn.param("W", (64, 10))
    with pytest.raises(gn.ShapeError) as info:
        W1 @ W
    msg = str(info.value)
    assert "'W1'" in msg and "'W'" in msg
    assert "(64, 128)" in msg and "(64, 10)" in msg


def test_unknown_parameter_lists_known_ones():
    g, _ = issue_example()
    with pytest.raises(KeyError) as info:
        g.gradient("W9")
    msg = str(info.value)
    assert "W9" in msg
    for name in SHAPES:
        assert name in msg


def test_integer_data_names_the_input():
    g, _ = issue_example()
    X, Y = batch()
    with pytest.raises(gn.DataError) as info:
        g.value_and_grad(g.init_params(0), {"x": X.astype(np.int64), "y": Y})
    msg = str(info.value)
    assert "'x'" in msg and "int" in msg and "'y'" not in msg


def test_wrongly_shaped_data_names_input_and_expected_shape():
    g, _ = issue_example()
    X, Y = batch()
    with pytest.raises(gn.DataError) as info:
        g.value_and_grad(g.init_params(0), {"x": X[:, :10], "y": Y})
    msg = str(info.value)
    assert "'x'" in msg and "(batch, 64)" in msg and "(32, 10)" in msg
    with pytest.raises(gn.DataError) as info:  # one sample without its batch axis
        g.value_and_grad(g.init_params(0), {"x": X[0], "y": Y})
    assert "'x'" in str(info.value) and "(batch, 64)" in str(info.value)


def test_missing_input_is_named():
    g, _ = issue_example()
    _, Y = batch()
    with pytest.raises(gn.DataError) as info:
        g.value_and_grad(g.init_params(0), {"y": Y})
    assert "'x'" in str(info.value)


def test_mismatched_batch_sizes_are_reported():
    g, _ = issue_example()
    X, Y = batch()
    with pytest.raises(gn.DataError) as info:
        g.value_and_grad(g.init_params(0), {"x": X, "y": Y[:5]})
    assert "'y'" in str(info.value) or "'x'" in str(info.value)


def test_wrong_parameter_shape_is_named():
    g, _ = issue_example()
    X, Y = batch()
    params = g.init_params(0)
    params["W1"] = np.zeros((64, 10), np.float32)
    with pytest.raises(gn.DataError) as info:
        g.value_and_grad(params, {"x": X, "y": Y})
    msg = str(info.value)
    assert "'W1'" in msg and "(64, 128)" in msg and "(64, 10)" in msg


def test_missing_parameter_is_named():
    g, _ = issue_example()
    X, Y = batch()
    params = g.init_params(0)
    del params["b2"]
    with pytest.raises(gn.DataError) as info:
        g.value_and_grad(params, {"x": X, "y": Y})
    assert "b2" in str(info.value)


# --- deep graphs ----------------------------------------------------------------------------


def test_chain_of_3000_tanh_builds_and_differentiates():
    depth = 3000
    assert depth > sys.getrecursionlimit()
    x = gn.input("x", (2,))
    W = gn.param("W", (2, 2))
    h = x @ W
    for _ in range(depth):
        h = gn.tanh(h)
    g = gn.Graph(gn.sum(h))
    assert len(g.forward.of_op("ewise")) == depth
    params = {"W": np.array([[0.5, -0.3], [0.2, 0.4]])}
    X = np.array([[1.0, -1.0], [0.5, 2.0], [-0.3, 0.1]])
    value, grads = g.value_and_grad(params, {"x": X})
    # The same chain in plain NumPy, forward and backward.
    hs = [X @ params["W"]]
    for _ in range(depth):
        hs.append(np.tanh(hs[-1]))
    assert value == pytest.approx(hs[-1].sum(), rel=1e-10)
    d = np.ones_like(hs[-1])
    for k in range(depth, 0, -1):
        d = d * (1 - hs[k] ** 2)
    np.testing.assert_allclose(grads["W"], X.T @ d, rtol=1e-8)


def test_deep_chain_gradient_formula_without_recursion_error():
    depth = 400  # deep enough that assembling the formula recursively overflowed the stack
    x = gn.input("x", (2,))
    W = gn.param("W", (2, 2))
    h = x @ W
    for _ in range(depth):
        h = gn.tanh(h)
    g = gn.Graph(gn.sum(h))
    text = str(g.gradient("W"))
    assert text.startswith("x^T")
    assert text.count("tanh'") == depth


# --- stable names -----------------------------------------------------------------------------


def _names(g):
    return [n.name for n in g.training.nodes]


def test_node_names_are_stable_within_a_process():
    g1, _ = issue_example()
    g2, _ = issue_example()
    assert _names(g1) == _names(g2)
    assert g1.grad_names == g2.grad_names
    assert [n.name for n in g1.forward.nodes] == [
        "x",
        "W1",
        "matmul1",
        "b1",
        "add1",
        "relu1",
        "W2",
        "matmul2",
        "b2",
        "add2",
        "y",
        "softmax_ce1",
    ]
    assert all(str(g1.gradient(p)) == str(g2.gradient(p)) for p in g1.param_names)


_SCRIPT = """
import graphnn as gn
x = gn.input("x", (64,)); y = gn.input("y", (10,))
W1 = gn.param("W1", (64, 128), init="he_normal"); b1 = gn.param("b1", (128,), init="zeros")
W2 = gn.param("W2", (128, 10), init="glorot_uniform"); b2 = gn.param("b2", (10,))
h = gn.relu(x @ W1 + b1)
g = gn.Graph(gn.softmax_cross_entropy(h @ W2 + b2, y))
print(" ".join(n.name for n in g.training.nodes))
print(g.gradient("W1"))
"""


def test_node_names_are_stable_across_runs():
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _SCRIPT],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": ROOT},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for hash_seed in ("1", "2")
    ]
    outs = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, stderr
        outs.append(stdout)
    assert outs[0] == outs[1]
    g, _ = issue_example()
    assert outs[0].splitlines()[0].split() == _names(g)


# --- initializers ---------------------------------------------------------------------------


def test_same_seed_same_arrays_different_seed_different_arrays():
    g, _ = issue_example()
    a, b, c = g.init_params(seed=0), g.init_params(seed=0), g.init_params(seed=1)
    for name in SHAPES:
        np.testing.assert_array_equal(a[name], b[name])
    for name in ("W1", "W2", "b2"):  # b1 is zeros under every seed
        assert not np.array_equal(a[name], c[name]), name
    assert not np.array_equal(a["W1"][:, :10], a["W1"][:, 10:20])  # no repeated stream


def test_init_dtype_float64_on_request():
    g, _ = issue_example()
    params = g.init_params(seed=0, dtype=np.float64)
    assert all(v.dtype == np.float64 for v in params.values())
    np.testing.assert_allclose(params["W1"], g.init_params(seed=0)["W1"], rtol=1e-6)


@pytest.mark.parametrize(
    "init, std",
    [
        ("he_normal", lambda fi, fo: np.sqrt(2.0 / fi)),
        ("he_uniform", lambda fi, fo: np.sqrt(2.0 / fi)),
        ("glorot_normal", lambda fi, fo: np.sqrt(2.0 / (fi + fo))),
        ("glorot_uniform", lambda fi, fo: np.sqrt(2.0 / (fi + fo))),
    ],
)
def test_initializer_scale_for_a_big_layer(init, std):
    fan_in, fan_out = 1000, 500
    x = gn.input("x", (fan_in,))
    W = gn.param("W", (fan_in, fan_out), init=init)
    g = gn.Graph(gn.sum(x @ W))
    w = g.init_params(seed=3)["W"].astype(np.float64)
    assert abs(w.mean()) < 0.01 * std(fan_in, fan_out)
    assert w.std() == pytest.approx(std(fan_in, fan_out), rel=0.02)


def test_scalar_parameter_is_rejected_with_a_hint():
    with pytest.raises(gn.ShapeError, match=r"parameter 's': shape \(\) is not supported.*\(1,\)"):
        gn.param("s", ())


def test_of_op_answers_a_new_list_each_time():
    x = gn.input("x", (3,))
    ir = gn.Graph(gn.mean(gn.sigmoid(x @ gn.param("w", (3, 1))))).forward
    inputs = ir.inputs
    inputs.append("changed by the caller")
    assert [n.name for n in ir.inputs] == ["x"] and [n.name for n in ir.params] == ["w"]
    for op in {n.op for n in ir.nodes}:
        assert ir.of_op(op) == [n for n in ir.nodes if n.op == op] != []
