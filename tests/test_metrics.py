"""Metrics beyond the loss: accuracy for any classifier, precision/recall/F1 (macro), top-k, MAE,
RMSE, R², and user functions; in fit(metrics=...), [train] metrics, the history, the summary and
model files. Each is checked against scikit-learn's own function on the model's predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

import graphnn as gn
from graphnn.spec.build import loads_spec
from graphnn.spec.runner import run_spec


def classifier(classes=4):
    x, y = gn.input("x", (5,)), gn.input("y", (classes,))
    logits = (x @ gn.param("W", (5, classes)) + gn.param("b", (classes,), init="zeros")).named(
        "logits"
    )
    return gn.compile(
        gn.Graph(gn.softmax_cross_entropy(logits, y)), optimizer=gn.SGD(lr=0.05), backend="numpy"
    )


def regression():
    x, t = gn.input("x", (5,)), gn.input("t", (2,))
    pred = (gn.tanh(x @ gn.param("W", (5, 6))) @ gn.param("V", (6, 2))).named("pred")
    return gn.compile(gn.Graph(gn.mse(pred, t)), optimizer=gn.Adam(lr=0.01), backend="numpy")


def labelled(n, seed, classes=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    codes = (x[:, 0] > 0).astype(int) * 2 + (x[:, 1] + 0.7 * rng.normal(size=n) > 0)
    return x, codes % classes


def test_classifier_metrics_are_scikit_learns_on_the_predictions():
    (x, codes), (xv, cv) = labelled(200, 0), labelled(80, 1)
    model = classifier()
    wanted = ["precision", "recall", "f1", "top2"]
    history = model.fit(
        {"x": x, "y": codes}, epochs=3, validation_data={"x": xv, "y": cv}, metrics=wanted
    )
    scores = model.predict({"x": xv})
    guess = scores.argmax(axis=1)
    expected = {
        "accuracy": sk.accuracy_score(cv, guess),
        "precision": sk.precision_score(cv, guess, average="macro", zero_division=0),
        "recall": sk.recall_score(cv, guess, average="macro", zero_division=0),
        "f1": sk.f1_score(cv, guess, average="macro", zero_division=0),
        "top2": sk.top_k_accuracy_score(cv, scores, k=2, labels=range(4)),
    }
    for name, value in expected.items():
        assert history[f"val_{name}"][-1] == pytest.approx(value, abs=1e-12), name
        assert len(history[f"val_{name}"]) == 3
    for name in wanted:
        assert len(history[name]) == 3  # on the training rows too
    assert history["precision"][-1] != history["val_precision"][-1]
    assert "val_f1" in model.summary() and "top2" in model.summary()


def test_accuracy_with_integer_targets_is_the_labels_hit_rate():
    x, codes = labelled(120, 2)
    model = classifier()
    model.fit({"x": x, "y": codes}, epochs=2, metrics=["accuracy"])
    hit = np.mean(model.predict_labels({"x": x}) == codes)
    assert model.history["accuracy"][-1] == pytest.approx(hit)
    assert model.evaluate({"x": x, "y": codes})["accuracy"] == pytest.approx(hit)


def test_regression_metrics_and_a_user_function(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(150, 5))
    t = np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1)

    def max_error(pred, target):
        return float(np.max(np.abs(pred - target)))

    model = regression()
    history = model.fit(
        {"x": x, "t": t}, epochs=4, validation_split=0.3, metrics=["mae", "rmse", "r2", max_error]
    )
    # on the held-out rows fit kept: the same split rule
    order = np.random.default_rng(0).permutation(150)
    xv, tv = x[order[105:]], t[order[105:]].astype(np.float32)
    pred = model.predict({"x": xv}).astype(np.float64)
    assert history["val_mae"][-1] == pytest.approx(sk.mean_absolute_error(tv, pred), rel=1e-9)
    assert history["val_rmse"][-1] == pytest.approx(
        np.sqrt(sk.mean_squared_error(tv, pred)), rel=1e-9
    )
    assert history["val_r2"][-1] == pytest.approx(sk.r2_score(tv, pred), rel=1e-9)
    assert history["val_max_error"][-1] == pytest.approx(np.max(np.abs(pred - tv)), rel=1e-6)
    # the built-in ones travel with the model file; evaluate reports them again
    model.save(tmp_path / "m.npz")
    loaded = gn.load_model(tmp_path / "m.npz")
    assert set(loaded.evaluate({"x": x, "t": t})) == {"loss", "mae", "rmse", "r2"}


def test_class_metrics_of_a_model_trained_with_another_loss():
    x, codes = labelled(100, 6)
    one_hot = np.eye(2)[codes % 2]
    model = regression()  # MSE on one-hot rows: its loss reads no classes
    history = model.fit({"x": x, "t": one_hot}, epochs=2, metrics=["accuracy", "f1"])
    guess = model.predict({"x": x}).argmax(axis=1)
    assert history["accuracy"][-1] == pytest.approx(sk.accuracy_score(codes % 2, guess))
    assert history["f1"][-1] == pytest.approx(sk.f1_score(codes % 2, guess, average="macro"))


def test_metric_errors():
    from graphnn.train.metrics import resolve

    with pytest.raises(gn.DataError, match="metric 'f1' compares classes with a target of one"):
        resolve(["f1"], None, (2, 2))  # a regression loss on (2, 2) targets
    with pytest.raises(gn.DataError, match="metric 'top3' compares classes"):
        resolve(["top3"], None, None)  # no target at all
    with pytest.raises(gn.DataError, match="unknown metric 'mse'"):
        regression().fit({"x": np.ones((4, 5)), "t": np.ones((4, 2))}, metrics=["mse"])


def test_early_stopping_on_a_metric_that_improves_upwards():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(80, 5))
    t = np.stack([x[:, 0], -x[:, 1]], axis=1)
    model = regression()
    history = model.fit(
        {"x": x, "t": t},
        epochs=30,
        validation_split=0.25,
        metrics=["r2"],
        early_stopping=True,
        monitor="val_r2",
        patience=2,
    )
    best = int(np.argmax(history["val_r2"]))
    # stopped `patience` epochs after the best r2, or ran out while still improving
    assert history["stopped"] == "epochs" or len(history["val_r2"]) == best + 3


SPEC = """
[inputs]
x = [4]
t = [1]
[params]
W = { shape = [4, 1] }
[graph]
loss = "mse(x @ W, t)"
[train]
optimizer = "sgd"
lr = 0.05
epochs = 3
backend = "numpy"
metrics = ["mae", "r2"]
[data]
source = "d.npz"
validation_split = 0.25
"""


def test_spec_train_metrics(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 4))
    np.savez(tmp_path / "d.npz", x=x, t=x @ [[1.0], [2.0], [0.0], [-1.0]])
    result = run_spec(loads_spec(SPEC, tmp_path / "m.toml"), tmp_path / "run")
    for key in ("mae", "r2", "val_mae", "val_r2"):
        assert len(result.history[key]) == 3
    assert set(result.heldout_metrics) == {"loss", "mae", "r2"}
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    with pytest.raises(gn.SpecError, match=r"\[train\] metrics: unknown metric 'r3'"):
        loads_spec(SPEC.replace('"r2"]', '"r3"]'), tmp_path / "m.toml")
