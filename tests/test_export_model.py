"""A trained model's exported module applies the model's preprocessing: its predict takes raw
rows, labels() gives the training labels, and its command line trains on raw rows and labels."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

import graphnn as gn
from graphnn.cli import main

USE = """
import numpy as np, step
raw = np.load("raw.npz")["x"]
params = step.load_params("m.npz")
pred = step.predict(raw, params)
np.save("pred.npy", pred)
np.save("labels.npy", step.labels(pred))
"""


def trained():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, 120)
    x = np.array([[50.0, 1e3], [60.0, 3e3], [70.0, 2e3]])[codes] + rng.normal(size=(120, 2))
    xin, yin = gn.input("x", (2,)), gn.input("y", (3,))
    logits = (gn.tanh(xin @ gn.param("W", (2, 6))) @ gn.param("V", (6, 3))).named("logits")
    graph = gn.Graph(gn.softmax_cross_entropy(logits, yin))
    model = gn.compile(graph, optimizer=gn.Adam(lr=0.05), backend="numpy", scale="standard")
    names = np.array(["low", "mid", "high"])[codes]
    model.fit({"x": x, "y": names}, epochs=20, batch_size=16)
    return model, x, names


def test_the_exported_module_predicts_raw_rows_as_the_model_does(tmp_path):
    model, x, names = trained()
    model.save(tmp_path / "m.npz")
    assert main(["export", str(tmp_path / "m.npz"), "-o", str(tmp_path / "step.py")]) == 0
    np.savez(tmp_path / "raw.npz", x=x)
    subprocess.run([sys.executable, "-c", USE], cwd=tmp_path, check=True, timeout=600)
    np.testing.assert_allclose(np.load(tmp_path / "pred.npy"), model.predict({"x": x}), atol=1e-5)
    labels = np.load(tmp_path / "labels.npy")
    np.testing.assert_array_equal(labels, model.predict_labels({"x": x}))
    assert np.mean(labels == names) > 0.9
    # its command line trains on raw rows and string labels
    np.savez(tmp_path / "train.npz", x=x, y=names)
    run = subprocess.run(
        [sys.executable, "step.py", "train.npz", "--epochs", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("loss") == 2
