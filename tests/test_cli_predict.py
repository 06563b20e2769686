"""graphnn predict / graphnn evaluate: a model trained from a spec with raw CSV features and
scale = "standard" predicts raw rows from its file alone, as model.predict does."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import graphnn as gn
from graphnn.cli import main

SPEC = """
[inputs]
x = [3]
y = [3]

[params]
W1 = { shape = [3, 8], init = "he_normal" }
b1 = { shape = [8], init = "zeros" }
W2 = { shape = [8, 3] }
b2 = { shape = [3], init = "zeros" }

[graph]
logits = "relu(x @ W1 + b1) @ W2 + b2"
loss = "softmax_cross_entropy(logits, y)"

[train]
optimizer = "adam"
lr = 0.02
batch_size = 16
epochs = 40
backend = "numpy"

[data]
source = "train.csv"
x = ["size", "weight", "age"]
y = "kind"
one_hot = "y"
validation_split = 0.25
scale = "standard"
"""


def rows(n, seed):
    """Raw features on very different scales, and string labels."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 3, n)
    centers = np.array([[150.0, 2e3, 0.1], [190.0, 4e3, 0.3], [170.0, 3e3, 0.5]])
    x = centers[codes] + rng.normal(size=(n, 3)) * [6.0, 200.0, 0.03]
    return x, np.array(["ant", "bee", "cat"])[codes]


def write(path, x, labels=None):
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["size", "weight", "age"] + (["kind"] if labels is not None else []))
        for k, r in enumerate(x):
            out.writerow([repr(float(v)) for v in r] + ([labels[k]] if labels is not None else []))


@pytest.fixture
def trained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x, labels = rows(200, 0)
    write(tmp_path / "train.csv", x, labels)
    (tmp_path / "m.toml").write_text(SPEC)
    assert main(["train", "m.toml", "--out", "run", "--quiet"]) == 0
    return tmp_path


def test_graphnn_predict_reproduces_model_predict_on_raw_rows(trained, capsys):
    x, labels = rows(50, 1)
    write(trained / "new.csv", x)  # features only, raw
    assert main(["predict", "run/model.npz", "new.csv", "-o", "out.csv"]) == 0
    model = gn.load_model(trained / "run" / "model.npz")
    assert model.preprocessing.scale == {"x": "standard"}
    expected = model.predict({"x": x})
    with open(trained / "out.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["label", "logits_0", "logits_1", "logits_2"]
    got = np.array([[float(v) for v in r[1:]] for r in table[1:]], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)
    predicted = [r[0] for r in table[1:]]
    assert predicted == list(model.predict_labels({"x": x}))
    assert np.mean(np.array(predicted) == labels) > 0.9  # scaled inside: raw rows are fine


def test_graphnn_evaluate_prints_the_models_metrics(trained, capsys):
    x, labels = rows(60, 2)
    write(trained / "test.csv", x, labels)
    capsys.readouterr()
    assert main(["evaluate", "run/model.npz", "test.csv"]) == 0
    out = capsys.readouterr().out
    metrics = gn.load_model(trained / "run" / "model.npz").evaluate({"x": x, "y": labels})
    assert f"accuracy   {metrics['accuracy']:.6g}" in out
    assert f"loss       {metrics['loss']:.6g}" in out
    assert metrics["accuracy"] > 0.9


def test_predict_errors_are_one_line(trained, capsys):
    (trained / "bad.csv").write_text("size,weight\n1,2\n")
    assert main(["predict", "run/model.npz", "bad.csv"]) == 2
    assert "no column 'age'" in capsys.readouterr().err
    assert main(["predict", "nothing.npz", "bad.csv"]) == 1
    assert "nothing.npz does not exist" in capsys.readouterr().err


def test_a_model_trained_in_python_reads_csv_columns_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    x, labels = rows(90, 3)
    xin, yin = gn.input("x", (3,)), gn.input("y", (3,))
    logits = (xin @ gn.param("W", (3, 3)) + gn.param("b", (3,), init="zeros")).named("logits")
    model = gn.compile(
        gn.Graph(gn.softmax_cross_entropy(logits, yin)), backend="numpy", scale="standard"
    )
    model.fit({"x": x, "y": labels}, epochs=5)
    model.save("m.npz")
    write(tmp_path / "test.csv", x, labels)  # 3 feature columns, then the label
    assert main(["evaluate", "m.npz", "test.csv"]) == 0
    expected = model.evaluate({"x": x, "y": labels})
    assert f"loss       {expected['loss']:.6g}" in capsys.readouterr().out
    (tmp_path / "wide.csv").write_text("a,b,c,d,e\n1,2,3,4,5\n")
    assert main(["predict", "m.npz", "wide.csv"]) == 2
    assert "has 5 columns; the model reads 3 feature columns" in capsys.readouterr().err
