"""Dropout: counter-based masks (seed, epoch, sample, element) identical on the NumPy reference and
the CPU and at any batch split, new masks every step, the eval form in prediction and
evaluation, and its spec forms.
(The CUDA simulator: the ``dropout`` row of tests/cases.py and the ``adam_dropout`` training
case of tests/cuda_cases.py.)"""

import numpy as np
import pytest

import graphnn as gn
from codegen import numpy_ref
from graphnn.errors import GraphError, SpecError
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


def test_masks_keep_about_one_minus_rate_and_change_with_the_draw_sample_and_seed():
    ids = np.arange(64)
    a = keep_mask(seed=1, draw=1, ids=ids, shape=(64, 100), rate=0.3)
    assert abs(a.mean() - 0.7) < 0.02
    assert (a != keep_mask(seed=1, draw=2, ids=ids, shape=(64, 100), rate=0.3)).mean() > 0.3
    assert (a != keep_mask(seed=2, draw=1, ids=ids, shape=(64, 100), rate=0.3)).mean() > 0.3
    assert (a != keep_mask(1, 1, ids + 64, (64, 100), 0.3)).mean() > 0.3  # other samples
    np.testing.assert_array_equal(a, keep_mask(seed=1, draw=1, ids=ids, shape=(64, 100), rate=0.3))
    # a sample's mask is its own, wherever its row is in the batch
    np.testing.assert_array_equal(a[::-1], keep_mask(1, 1, ids[::-1], (64, 100), 0.3))


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_any_batch_split_draws_the_same_masks(backend):
    """The gradient of a sum over rows is the sum of its parts' gradients when each part's
    rows carry their sample ids: the parts drew the whole batch's masks."""
    g, _ = _mlp()
    model = gn.compile(g, gn.SGD(lr=0.1), backend=backend, seed=0)
    data, params = _data(), model.params
    ids = np.arange(12)

    def grads(rows, draw):
        batch = {k: v[rows] for k, v in data.items()}
        if backend == "numpy":
            values = {**params, **batch}
            return numpy_ref.value_and_grad(g, values, np.float32, (draw, ids[rows]))
        module = model.trainer.stepwise
        args = [batch["x"], batch["y"], params["W1"], params["W2"]]
        ws = module.workspace(len(ids[rows]), *args)
        loss, *grads = module.loss_and_grads(*args, draw, ids[rows], ws)
        return loss, dict(zip(g.param_names, grads, strict=True))

    whole = grads(slice(0, 12), 4)[1]
    halves = [grads(slice(0, 5), 4)[1], grads(slice(5, 12), 4)[1]]
    for p in g.param_names:  # softmax cross-entropy is a mean: weigh the halves by rows
        split = (halves[0][p] * 5 + halves[1][p] * 7) / 12
        np.testing.assert_allclose(split, whole[p], rtol=1e-5, atol=1e-6, err_msg=p)
    other = grads(slice(0, 12), 5)[1]  # another epoch draws other masks
    assert not np.allclose(other["W1"], whole["W1"], atol=1e-6)


def test_dropout_needs_the_batch_as_its_first_axis():
    with pytest.raises(GraphError, match="batch as its first axis"):
        gn.dropout(gn.param("W", (3, 4)), 0.5)


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


def test_the_cpu_export_trains_with_graphnns_masks(tmp_path):
    """The exported module (numpy and numba only) draws graphnn's masks: its grads are
    value_and_grad's, its fit_epoch ends on the CPU back end's bits, predict is the eval form."""
    import importlib.util
    import sys

    g, logits = _mlp()
    path = g.export(tmp_path / "drop.py", optimizer=gn.SGD(lr=0.5))
    spec = importlib.util.spec_from_file_location("drop", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["drop"] = module  # Numba's cache locator finds functions through the module
    spec.loader.exec_module(module)
    data = _data()
    model = gn.compile(g, gn.SGD(lr=0.5), backend="cpu", seed=0)
    params, state = module.init_params(0), module.init_state(module.init_params(0))
    _, want = g.value_and_grad(model.params, data, backend="cpu")
    got = module.grads(data["x"], data["y"], params)
    for p in want:
        np.testing.assert_array_equal(got[p], want[p], err_msg=p)
    module.fit_epoch(data, params, state, batch_size=5)
    model.fit(data, epochs=1, batch_size=5, shuffle=False)
    for p in model.params:
        np.testing.assert_array_equal(params[p], model.params[p], err_msg=p)
    np.testing.assert_allclose(
        module.predict(data["x"], params), model.predict(data), rtol=1e-6, atol=1e-7
    )


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
