"""Dropout: counter-based masks (seed, step, element index) identical on the NumPy reference and
the CPU, new masks every step, the eval form in prediction and evaluation, and its spec forms.
(The CUDA simulator: the ``dropout`` row of tests/cases.py and the ``adam_dropout`` training
case of tests/cuda_cases.py.)"""

import numpy as np
import pytest

import graphnn as gn
from graphnn.errors import CodegenError, GraphError, SpecError
from graphnn.ir.dropout import keep_mask
from graphnn.spec.build import loads_spec


def _mlp(rate=0.5):
    x, y = gn.input("x", (5,)), gn.input("y", (3,))
    h = gn.dropout(gn.relu(x @ gn.param("W1", (5, 8))), rate, seed=7)
    logits = h @ gn.param("W2", (8, 3))
    return gn.Graph(gn.softmax_cross_entropy(logits, y), [logits]), logits


def _data(rows=12):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 5)).astype(np.float32)
    return {"x": x, "y": np.eye(3, dtype=np.float32)[rng.integers(0, 3, rows)]}


def test_masks_keep_about_one_minus_rate_and_change_with_the_step_and_seed():
    a = keep_mask(seed=1, step=1, shape=(64, 100), rate=0.3)
    assert abs(a.mean() - 0.7) < 0.02
    assert (a != keep_mask(seed=1, step=2, shape=(64, 100), rate=0.3)).mean() > 0.3
    assert (a != keep_mask(seed=2, step=1, shape=(64, 100), rate=0.3)).mean() > 0.3
    np.testing.assert_array_equal(a, keep_mask(seed=1, step=1, shape=(64, 100), rate=0.3))


def test_training_on_the_cpu_draws_the_reference_masks_at_every_step():
    """Three epochs of mini-batches (9 steps, 9 different masks): the CPU's parameters and
    losses are the NumPy reference's, which they could not be with other masks."""
    g, _ = _mlp()
    runs = {}
    for backend in ("numpy", "cpu"):
        model = gn.compile(g, gn.SGD(lr=0.5), backend=backend, seed=0)
        history = model.fit(_data(), epochs=3, batch_size=5, seed=1)
        runs[backend] = (model.params, history["loss"])
    (p_ref, loss_ref), (p_cpu, loss_cpu) = runs["numpy"], runs["cpu"]
    np.testing.assert_allclose(loss_cpu, loss_ref, rtol=1e-5)
    for k in p_ref:
        np.testing.assert_allclose(p_cpu[k], p_ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
    # and the masks mattered: without dropout the same run ends elsewhere
    plain = gn.compile(_mlp(rate=0.0)[0], gn.SGD(lr=0.5), backend="cpu", seed=0)
    plain.fit(_data(), epochs=3, batch_size=5, seed=1)
    assert not np.allclose(plain.params["W1"], p_cpu["W1"], atol=1e-4)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_predict_and_evaluate_run_the_eval_form(backend):
    g, logits = _mlp()
    model = gn.compile(g, gn.SGD(lr=0.1), backend=backend, seed=0)
    data = _data()
    W1, W2 = model.params["W1"], model.params["W2"]
    want = np.maximum(data["x"] @ W1, 0) @ W2  # no mask, no 1/(1 - rate)
    np.testing.assert_allclose(model.predict(data, g.forward.name_of(logits)), want, rtol=1e-5)
    eval_loss = model.evaluate(data)["loss"]
    train_loss, _ = g.value_and_grad(model.params, data, backend=backend)
    assert eval_loss != pytest.approx(train_loss, rel=1e-3)  # the training form drops units


def test_export_refuses_dropout_clearly():
    from codegen.export.cpu import standalone_source

    with pytest.raises(CodegenError, match="does not support dropout"):
        standalone_source(_mlp()[0], gn.SGD(lr=0.1))


def test_bad_rate_and_seed():
    x = gn.input("x", (2,))
    with pytest.raises(GraphError, match="rate must be in"):
        gn.dropout(x, 1.0)
    with pytest.raises(GraphError, match="seed must be an int"):
        gn.dropout(x, 0.5, seed=-1)
    assert gn.dropout(x, 0.0) is x


SPEC = """
[inputs]
x = [5]
y = [3]
[model]
input = "x"
target = "y"
loss = "softmax_cross_entropy"
[[layers]]
units = 8
activation = "relu"
[[layers]]
dropout = {dropout}
[[layers]]
units = 3
"""


def test_dropout_layer_kind():
    g = loads_spec(SPEC.format(dropout="0.25"), "d.toml").graph
    node = g.forward.node("h2")
    assert node.op == "dropout" and dict(node.attrs) == {"rate": 0.25, "seed": 2}
    g = loads_spec(SPEC.format(dropout="{ rate = 0.1, seed = 9 }"), "d.toml").graph
    assert dict(g.forward.node("h2").attrs) == {"rate": 0.1, "seed": 9}
    with pytest.raises(SpecError, match="dropout rate: must be a number in"):
        loads_spec(SPEC.format(dropout="1.5"), "d.toml")
