"""Integer class labels for softmax cross-entropy (gn.sparse_softmax_cross_entropy): one class id
per row, made one-hot in the kernel a batch at a time, never as a one-hot copy of the data."""

import numpy as np
import pytest

import graphnn as gn
from graphnn.errors import DataError, NonFiniteError, ShapeError
from graphnn.spec.build import loads_spec
from tests.finite_diff import numeric_gradients, relative_error


def _graphs(classes=4):
    x = gn.input("x", (5,))
    W, b = gn.param("W", (5, classes)), gn.param("b", (classes,), "zeros")
    logits = (gn.tanh(x @ W) + b).named("logits")
    sparse = gn.Graph(gn.sparse_softmax_cross_entropy(logits, gn.input("y", ())))
    dense = gn.Graph(gn.softmax_cross_entropy(logits, gn.input("y", (classes,))))
    return sparse, dense


def _data(rows=23, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 5)).astype(np.float32), rng.integers(0, classes, rows)


def test_gradients_agree_with_finite_differences_and_the_one_hot_form():
    sparse, dense = _graphs()
    x, labels = _data()
    params = {k: v.astype(np.float64) for k, v in sparse.init_params(1).items()}
    data = {"x": x.astype(np.float64), "y": labels.astype(np.float64)}
    loss, grads = sparse.value_and_grad(params, data, backend="numpy", dtype=np.float64)
    numeric = numeric_gradients(sparse, params, data)
    assert all(relative_error(grads[p], numeric[p]) < 1e-7 for p in params)
    one_hot = {"x": data["x"], "y": np.eye(4)[labels]}
    want_loss, want = dense.value_and_grad(params, one_hot, backend="numpy", dtype=np.float64)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    for backend in ("cpu",):
        got_loss, got = sparse.value_and_grad(params, data, backend=backend, dtype=np.float64)
        assert got_loss == pytest.approx(want_loss, rel=1e-12)
        assert all(np.allclose(got[p], want[p], rtol=1e-10, atol=1e-12) for p in params)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_training_on_integer_labels_equals_training_on_one_hot_rows(backend):
    sparse, dense = _graphs()
    x, labels = _data()
    models = []
    for g, y in [(sparse, labels), (dense, np.eye(4, dtype=np.float32)[labels])]:
        m = gn.compile(g, gn.Adam(lr=0.05), backend=backend, seed=0)
        m.fit({"x": x, "y": y}, epochs=3, batch_size=8, seed=0, metrics=["accuracy", "f1"])
        models.append(m)
    a, b = models
    for p in a.params:  # the same arithmetic: the one-hot rows are the same numbers
        assert np.array_equal(a.params[p], b.params[p]), p
    assert a.history["loss"] == b.history["loss"]
    assert a.history["accuracy"] == b.history["accuracy"]
    assert a.history["f1"] == b.history["f1"]
    assert 0 < a.evaluate({"x": x, "y": labels})["accuracy"] <= 1


def test_a_label_that_is_not_a_class_stops_training_naming_the_labels():
    sparse, _ = _graphs()
    x, labels = _data()
    labels[7] = 4  # classes are 0..3
    model = gn.compile(sparse, gn.SGD(lr=0.1), seed=0)
    with pytest.raises(NonFiniteError, match=r"one_hot\(y\)"):
        model.fit({"x": x, "y": labels}, epochs=1, batch_size=8)


def test_integers_are_taken_only_where_the_graph_reads_ids():
    sparse, _ = _graphs()
    x, labels = _data()
    model = gn.compile(sparse, gn.SGD(lr=0.1), seed=0)
    with pytest.raises(DataError, match="input 'x' must hold floats"):
        model.fit({"x": x.astype(np.int64), "y": labels}, epochs=1)
    with pytest.raises(DataError, match="2\\*\\*24"):
        model.fit({"x": x, "y": labels * 2**24}, epochs=1)


def test_labels_must_have_the_logits_shape_without_classes():
    logits = gn.input("x", (3,)) @ gn.param("W", (3, 4))
    with pytest.raises(ShapeError, match=r"labels 'y' .* per-sample shape \(\) or \(1,\)"):
        gn.sparse_softmax_cross_entropy(logits, gn.input("y", (4,)))


def test_a_spec_formula_takes_sparse_labels():
    spec = loads_spec(
        """
[inputs]
x = [5]
y = [1]
[params]
W = [5, 4]
[graph]
logits = "x @ W"
loss = "sparse_softmax_cross_entropy(logits, y)"
"""
    )
    x, labels = _data()
    model = gn.compile(spec.graph, gn.SGD(lr=0.1), seed=0)
    history = model.fit(
        {"x": x, "y": labels[:, None]}, epochs=2, batch_size=8, metrics=["accuracy"]
    )
    assert len(history["accuracy"]) == 2


def test_a_saved_sparse_model_loads_and_predicts_the_same(tmp_path):
    sparse, _ = _graphs()
    x, labels = _data()
    model = gn.compile(sparse, gn.SGD(lr=0.1, momentum=0.9), seed=0)
    model.fit({"x": x, "y": labels}, epochs=2, batch_size=8)
    path = model.save(tmp_path / "m.npz")
    loaded = gn.load_model(path)
    assert np.array_equal(loaded.predict({"x": x}), model.predict({"x": x}))
    assert loaded.evaluate({"x": x, "y": labels}) == model.evaluate({"x": x, "y": labels})
