"""Self-describing model files: gn.load_model rebuilds graph, optimizer, state and preprocessing
from the file alone (the graph stored as data), in a new process, for every example spec."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import graphnn as gn
from graphnn.ir.serialize import expr_from_data, expr_to_data, graph_from_data, graph_to_data
from graphnn.optim.schedules import Cosine, Warmup
from graphnn.spec.build import load_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))

LOAD_AND_PREDICT = """
import sys, numpy as np, graphnn as gn
for name in sys.argv[1:]:
    data = dict(np.load(name + ".data.npz"))
    model = gn.load_model(name + ".npz")
    np.save(name + ".pred.npy", model.predict(data))
    np.save(name + ".loss.npy", model.evaluate(data)["loss"])
"""


def test_every_example_predicts_identically_in_a_new_process(tmp_path):
    names = []
    expected = {}
    for path in EXAMPLES:
        spec = load_spec(path)
        model = gn.compile(spec.graph, **{**spec.compile_options(), "backend": "numpy"})
        train, _ = spec.load_data() if spec.data else (None, None)
        if train is None:
            continue
        model.fit(train, epochs=2, batch_size=spec.train.batch_size, seed=0)
        name = str(tmp_path / path.stem)
        model.save(name + ".npz")
        np.savez(name + ".data.npz", **train)
        expected[name] = (model.predict(train), model.evaluate(train)["loss"])
        # the graph read back is the same graph: the same kernels to the character
        again = gn.load_model(name + ".npz")
        assert again.graph.source("cpu") == spec.graph.source("cpu"), path.name
        names.append(name)
    assert len(names) == len(EXAMPLES)
    subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, *names], check=True, cwd=ROOT, timeout=600
    )
    for name in names:
        pred, loss = expected[name]
        np.testing.assert_array_equal(np.load(name + ".pred.npy"), pred, err_msg=name)
        assert float(np.load(name + ".loss.npy")) == loss


def test_load_model_restores_optimizer_state_schedule_and_scaling(tmp_path):
    x = gn.input("x", (2,))
    t = gn.input("t", (1,))
    h = gn.tanh(x @ gn.param("W", (2, 4)))
    loss = gn.mse(h @ gn.param("V", (4, 1)), t)
    optimizer = gn.Adam(lr=0.01, schedule=Warmup(steps=3, then=Cosine(total_steps=20)))
    graph = gn.Graph(loss)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2)) * 100 + 7
    T = np.tanh(X[:, :1] / 100)
    model = gn.compile(graph, optimizer=optimizer, backend="numpy", scale="minmax")
    model.fit({"x": X, "t": T}, epochs=2, batch_size=8)
    model.save(tmp_path / "m.npz")
    loaded = gn.load_model(tmp_path / "m.npz")
    assert loaded.optimizer.schedule == optimizer.schedule
    assert loaded.optimizer.assignments() == optimizer.assignments()
    for name, value in model.state.items():
        np.testing.assert_array_equal(loaded.state[name], value)
    np.testing.assert_array_equal(loaded.preprocessing.stats["x"][0], X.astype("f4").min(axis=0))
    # the two go on training alike
    model.fit({"x": X, "t": T}, epochs=4, batch_size=8, resume=True)
    loaded.fit({"x": X, "t": T}, epochs=4, batch_size=8, resume=True)
    for name, value in model.params.items():
        np.testing.assert_array_equal(loaded.params[name], value)


def test_parameter_names_are_visible_to_np_load(tmp_path):
    spec = load_spec(ROOT / "examples" / "iris.toml")
    model = gn.compile(spec.graph, **{**spec.compile_options(), "backend": "numpy"})
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as npz:
        assert {"param/W1", "param/b1", "param/W2", "param/b2"} <= set(npz.files)
        np.testing.assert_array_equal(npz["param/W1"], model.params["W1"])


def test_the_graph_is_stored_as_data_not_code(tmp_path):
    spec = load_spec(ROOT / "examples" / "swish.toml")
    model = gn.compile(spec.graph, **{**spec.compile_options(), "backend": "numpy"})
    model.save(tmp_path / "m.npz")
    with zipfile.ZipFile(tmp_path / "m.npz") as archive:
        meta = json.loads(np.load(archive.open("meta.npy")).tobytes())
    ops = {n["op"] for n in meta["graph"]["nodes"]}
    assert {"input", "param", "matmul", "ewise"} <= ops
    text = json.dumps(meta["graph"])
    assert "swish" in text and "lambda" not in text
    # a class outside the fixed table is refused, not looked up anywhere else
    bad = json.loads(text.replace('"f": "exp"', '"f": "__import__"', 1))
    with pytest.raises(gn.GraphError, match="unknown SymPy class '__import__'"):
        graph_from_data(bad, ["matmul"])


def test_a_tampered_graph_is_a_checkpoint_error(tmp_path):
    x, t = gn.input("x", (2,)), gn.input("t", (1,))
    graph = gn.Graph(gn.mse(x @ gn.param("w", (2, 1)), t))
    data = graph_to_data(graph.forward.outputs)
    data["nodes"][2]["op"] = "system"
    with pytest.raises(gn.GraphError, match="unknown op 'system'"):
        graph_from_data(data, ["matmul"])
    model = gn.compile(graph, backend="numpy")
    model.save(tmp_path / "old.npz")
    from graphnn.train import checkpoint

    arrays, meta = checkpoint.load_checkpoint(tmp_path / "old.npz")
    del meta["graph"]
    checkpoint.save_checkpoint(tmp_path / "old.npz", arrays=arrays, meta=meta)
    with pytest.raises(gn.CheckpointError, match="holds no graph description"):
        gn.load_model(tmp_path / "old.npz")


def test_formulas_round_trip_exactly():
    import sympy

    from graphnn.ir.elementwise import ARGS, BATCH, ELEMENTWISE

    exprs = [row.formula(**row.params) for row in ELEMENTWISE.values()]
    exprs += [ARGS[0] / BATCH, sympy.Float("1e-4") * ARGS[0] ** 3, sympy.Rational(2, 3)]
    for expr in exprs:
        back = expr_from_data(json.loads(json.dumps(expr_to_data(expr))))
        assert sympy.srepr(back) == sympy.srepr(expr)


def test_a_file_with_a_bad_preprocessing_record_leaves_the_model_unchanged(tmp_path):
    from graphnn.train import checkpoint

    x, t = gn.input("x", (2,)), gn.input("t", (1,))
    graph = gn.Graph(gn.mse(x @ gn.param("w", (2, 1)), t))
    trained = gn.compile(graph, backend="numpy", scale="standard")
    trained.fit({"x": np.arange(8.0).reshape(4, 2), "t": np.ones((4, 1))}, epochs=2)
    trained.save(tmp_path / "m.npz")
    arrays, meta = checkpoint.load_checkpoint(tmp_path / "m.npz")
    meta["preprocessing"]["scale"] = {"x": "zscore"}
    checkpoint.save_checkpoint(tmp_path / "m.npz", arrays=arrays, meta=meta)
    fresh = gn.compile(graph, backend="numpy")
    before = fresh.params["w"].copy()
    with pytest.raises(gn.CheckpointError, match="preprocessing record is malformed"):
        fresh.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(fresh.params["w"], before)
    assert fresh.step == 0 and not fresh.preprocessing.scale
