"""Preprocessing that travels with the model: input scaling fitted on the training rows only,
label encoding of integer and string labels, both saved in the model file."""

from __future__ import annotations

import numpy as np
import pytest

import graphnn as gn
from graphnn.spec.build import load_spec
from graphnn.spec.runner import run_spec
from graphnn.train.preprocess import Preprocessing

SPEC = """
[inputs]
x = [3]
y = [3]

[params]
W = { shape = [3, 3], init = "zeros" }
b = { shape = [3], init = "zeros" }

[graph]
logits = "x @ W + b"
loss = "softmax_cross_entropy(logits, y)"

[train]
optimizer = "sgd"
lr = 0.1
batch_size = 8
epochs = 3
backend = "numpy"

[data]
source = "d.csv"
x = ["a", "b", "c"]
y = "kind"
one_hot = "y"
validation_split = 0.5
scale = "SCALE"
"""


def classifier(scale=None):
    x, y = gn.input("x", (3,)), gn.input("y", (3,))
    logits = (x @ gn.param("W", (3, 3)) + gn.param("b", (3,), init="zeros")).named("logits")
    graph = gn.Graph(gn.softmax_cross_entropy(logits, y))
    return gn.compile(graph, optimizer=gn.SGD(lr=0.1), backend="numpy", scale=scale)


def blobs(n=60, seed=0):
    """Three classes with raw features far from unit scale, and string labels."""
    rng = np.random.default_rng(seed)
    codes = np.arange(n) % 3
    centers = np.array([[100.0, -5.0, 1e-3], [140.0, 5.0, 3e-3], [120.0, 0.0, 5e-3]])
    x = centers[codes] + rng.normal(size=(n, 3)) * [5.0, 1.0, 5e-4]
    return x, np.array(["setosa", "versicolor", "virginica"])[codes]


def write_csv(path, x, labels):
    rows = ["a,b,c,kind"] + [
        ",".join(f"{v:.17g}" for v in r) + f",{k}" for r, k in zip(x, labels, strict=True)
    ]
    path.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("scale", ["standard", "minmax"])
def test_spec_scaling_is_fitted_on_the_training_rows_only(tmp_path, scale):
    x, labels = blobs()
    x[1::2] *= 50.0  # rows the split holds out differ: any leak moves the statistics
    write_csv(tmp_path / "d.csv", x, labels)
    (tmp_path / "m.toml").write_text(SPEC.replace("SCALE", scale))
    spec = load_spec(tmp_path / "m.toml")
    train, heldout = spec.load_data()
    result = run_spec(spec, None)
    shift, divisor = result.model.preprocessing.stats["x"]
    rows = train["x"].astype(np.float64)
    if scale == "standard":
        expected = rows.mean(axis=0), rows.std(axis=0)
    else:
        expected = rows.min(axis=0), rows.max(axis=0) - rows.min(axis=0)
    np.testing.assert_allclose(shift, expected[0], rtol=1e-6)
    np.testing.assert_allclose(divisor, expected[1], rtol=1e-6)
    every = np.concatenate([rows, heldout["x"]]).mean(axis=0)
    assert not np.allclose(shift, every, rtol=1e-3)


def test_python_scaling_uses_fits_own_training_split():
    x, labels = blobs()
    x[:12] *= 30.0
    model = classifier("standard")
    model.fit({"x": x, "y": labels}, epochs=1, validation_split=0.2, seed=3, batch_size=None)
    order = np.random.default_rng(3).permutation(len(x))
    kept = x[order[: len(x) - 12]].astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(model.preprocessing.stats["x"][0], kept.mean(axis=0), rtol=1e-6)


def test_scaling_makes_raw_features_trainable_and_predict_takes_raw_rows():
    x, labels = blobs(90)
    raw, scaled = classifier(), classifier("standard")
    for model in (raw, scaled):
        model.fit({"x": x, "y": labels}, epochs=30, batch_size=16)
    assert scaled.evaluate({"x": x, "y": labels})["accuracy"] > 0.95
    assert raw.evaluate({"x": x, "y": labels})["accuracy"] < 0.8
    # predict scales raw rows itself: the same as the kernels fed by hand-scaled rows
    shift, divisor = scaled.preprocessing.stats["x"]
    raw.params = scaled.params
    by_hand = raw.predict({"x": (x - shift) / divisor})
    np.testing.assert_allclose(scaled.predict({"x": x}), by_hand, rtol=1e-5, atol=1e-5)


def test_string_labels_come_back_as_strings_and_are_saved(tmp_path):
    x, labels = blobs(90)
    model = classifier("standard")
    model.fit({"x": x, "y": labels}, epochs=30, batch_size=16)
    assert model.preprocessing.classes["y"] == ["setosa", "versicolor", "virginica"]
    predicted = model.predict_labels({"x": x})
    assert np.mean(predicted == labels) > 0.95
    model.save(tmp_path / "m.npz")
    fresh = classifier("standard")
    with pytest.raises(gn.DataError, match="has not fitted the scaling"):
        fresh.predict({"x": x})
    fresh.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(fresh.predict_labels({"x": x}), predicted)
    np.testing.assert_array_equal(fresh.predict({"x": x}), model.predict({"x": x}))
    assert fresh.evaluate({"x": x, "y": labels}) == model.evaluate({"x": x, "y": labels})


def test_integer_labels_are_class_indices():
    x, _ = blobs(30)
    codes = np.arange(30) % 3
    model = classifier("standard")
    model.fit({"x": x, "y": codes}, epochs=1)
    assert model.preprocessing.classes["y"] == [0, 1, 2]
    one_hot = np.eye(3, dtype=np.float32)[codes]
    assert model.evaluate({"x": x, "y": codes}) == model.evaluate({"x": x, "y": one_hot})


def test_label_errors_name_the_input():
    prep = Preprocessing({})
    with pytest.raises(gn.DataError, match="input 'y': the labels hold 4 classes"):
        prep.encode({"y": np.array(list("abcd"))}, {"y": (3,)}, fit=True)
    prep.encode({"y": np.array(list("abc"))}, {"y": (3,)}, fit=True)
    with pytest.raises(gn.DataError, match="label 'z' is not one of the model's 3 classes"):
        prep.encode({"y": np.array(["a", "z"])}, {"y": (3,)})
    with pytest.raises(gn.DataError, match="scale must be one of standard, minmax"):
        classifier("zscore")


def test_binary_string_labels_fill_one_column():
    prep = Preprocessing({})
    out = prep.encode({"t": np.array(["no", "yes", "no"])}, {"t": (1,)}, fit=True)["t"]
    np.testing.assert_array_equal(out, [[0.0], [1.0], [0.0]])
    assert prep.labels("t", np.array([[2.0], [-1.0]]), "logit").tolist() == ["yes", "no"]


def test_a_regressions_integer_target_is_not_taken_for_labels():
    x, t = gn.input("x", (2,)), gn.input("t", (1,))
    model = gn.compile(gn.Graph(gn.mse(x @ gn.param("w", (2, 1)), t)), backend="numpy")
    counts = np.arange(12) % 7  # 7 values for one column: labels would be refused as such
    with pytest.raises(gn.DataError, match="input 't' must hold floats"):
        model.fit({"x": np.ones((12, 2)), "t": counts[:, None]}, epochs=1)
    model.fit({"x": np.ones((12, 2)), "t": counts[:, None].astype(float)}, epochs=1)
    assert model.preprocessing.classes == {}
