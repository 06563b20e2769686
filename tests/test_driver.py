"""The training driver: accuracy on digits, convergence and early stopping, evaluation, the
NaN/Inf guard, progress and history files, and argument errors."""

import copy
import json
import platform

import numpy as np
import pytest
from sklearn.datasets import load_digits

import graphnn as gn
from graphnn.optim.schedules import Step
from graphnn.train.history import History

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def linear_graph():
    x, t = gn.input("x", (4,)), gn.input("t", (3,))
    W, b = gn.param("W", (4, 3)), gn.param("b", (3,), init="normal")
    return gn.Graph(gn.mse(x @ W + b, t))


def digits_graph():
    x, y = gn.input("x", (64,)), gn.input("y", (10,))
    W1, b1 = gn.param("W1", (64, 128), init="he_normal"), gn.param("b1", (128,), init="zeros")
    W2, b2 = gn.param("W2", (128, 10), init="glorot_uniform"), gn.param("b2", (10,), init="zeros")
    h = gn.relu(x @ W1 + b1).named("hidden")
    return gn.Graph(gn.softmax_cross_entropy((h @ W2 + b2).named("logits"), y))


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    Y = np.eye(10, dtype=np.float32)[d.target]
    n = len(X)
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    cut = int(0.8 * n)
    train = {"x": X[order[:cut]], "y": Y[order[:cut]]}
    test = {"x": X[order[cut:]], "y": Y[order[cut:]]}
    return train, test


@pytest.fixture(scope="module")
def line():
    """Centred inputs with orthonormal columns: full-batch GD on linear + MSE moves every
    parameter on a straight line, theta_k - theta* = r^k (theta_0 - theta*), r = 1 - 2 lr / 3."""
    rng = np.random.default_rng(7)
    A = rng.normal(size=(32, 4))
    A -= A.mean(axis=0)
    Q, _ = np.linalg.qr(A)
    X = (Q * np.sqrt(32)).astype(np.float32)
    W, b = rng.normal(size=(4, 3)), rng.normal(size=3)
    return X, W, b, {"x": X, "t": (X @ W + b).astype(np.float32)}


def snapshots(into):
    return lambda model, epoch, logs: into.append({k: v.copy() for k, v in model.params.items()})


# --- accuracy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "optimizer",
    [gn.Adam(lr=1e-3), gn.SGD(lr=0.1, momentum=0.9)],
    ids=["adam", "sgd_momentum"],
)
def test_digits_mlp_reaches_96_percent(digits, optimizer):
    train, test = digits
    model = gn.compile(digits_graph(), optimizer=optimizer)
    history = model.fit(train, epochs=30, batch_size=32, validation_data=test)
    assert history["stopped"] == "epochs" and history.epochs == 30
    metrics = model.evaluate(test)
    assert metrics["accuracy"] >= 0.96, metrics
    # validation metrics are recorded per epoch and agree with evaluate at the end
    assert len(history["val_loss"]) == len(history["val_accuracy"]) == 30
    assert history["val_accuracy"][-1] == metrics["accuracy"]
    assert history["val_loss"][-1] == pytest.approx(metrics["loss"])
    assert history["loss"][-1] < 0.2 * history["loss"][0]


def test_predict_named_nodes(digits):
    train, test = digits
    model = gn.compile(digits_graph(), optimizer=gn.Adam(lr=1e-3))
    model.fit(train, epochs=1, batch_size=64)
    p = {k: v.astype(np.float64) for k, v in model.params.items()}
    hidden = np.maximum(test["x"] @ p["W1"] + p["b1"], 0)
    logits = hidden @ p["W2"] + p["b2"]
    assert model.prediction == "logits"
    np.testing.assert_allclose(model.predict({"x": test["x"]}), logits, rtol=1e-4, atol=1e-4)
    got = model.predict({"x": test["x"]}, node="logits")
    np.testing.assert_allclose(got, logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.predict(test, node="hidden"), hidden, rtol=1e-4, atol=1e-4)
    accuracy = np.mean(logits.argmax(1) == test["y"].argmax(1))
    assert model.evaluate(test)["accuracy"] == pytest.approx(accuracy)
    with pytest.raises(gn.GraphError, match="no node named 'nope'"):
        model.predict(test, node="nope")


def test_predict_a_node_that_reads_no_data():
    # A node of parameters only (an L2 penalty) has one value whatever the batch: predict
    # returns it instead of failing to find a batch size in data it does not read.
    x, y = gn.input("x", (3,)), gn.input("y", (2,))
    W = gn.param("W", (3, 2))
    penalty = gn.sum(W * W).named("penalty")
    g = gn.Graph(gn.mse(x @ W, y) + 0.01 * penalty)
    for backend in ("numpy", "cpu"):
        model = gn.compile(g, optimizer=gn.SGD(lr=0.1), backend=backend)
        got = model.predict({}, node="penalty")
        assert got.shape == () and got == pytest.approx(float(np.sum(model.params["W"] ** 2)))


# --- stopping ----------------------------------------------------------------------------------


def test_tol_stops_when_converged(line):
    *_, data = line
    model = gn.compile(linear_graph(), optimizer=gn.SGD(lr=0.3))
    history = model.fit(data, epochs=200, batch_size=None, shuffle=False, tol=1e-6, patience=3)
    assert history["stopped"] == "converged"
    changes = np.abs(np.diff(history["loss"]))
    assert history.epochs < 200
    assert np.all(changes[-3:] < 1e-6)  # the last `patience` changes were below tol ...
    assert changes[-4] >= 1e-6  # ... and training stopped at the first such run


def test_without_tol_runs_all_epochs(line):
    *_, data = line
    model = gn.compile(linear_graph(), optimizer=gn.SGD(lr=0.3))
    history = model.fit(data, epochs=40, batch_size=None, shuffle=False)
    assert history["stopped"] == "epochs" and history.epochs == 40 and model.epoch == 40


def test_early_stopping_restores_best_parameters(line):
    X, W, b, data = line
    model = gn.compile(linear_graph(), optimizer=gn.SGD(lr=0.3))  # r = 0.8
    # validation targets from the point halfway back to the start: closest at 0.8^3 = 0.512
    W0, b0 = model.params["W"].astype(np.float64), model.params["b"].astype(np.float64)
    Wv, bv = W + 0.5 * (W0 - W), b + 0.5 * (b0 - b)
    val = {"x": X, "t": (X @ Wv + bv).astype(np.float32)}
    seen = []
    history = model.fit(
        data,
        epochs=30,
        batch_size=None,
        shuffle=False,
        validation_data=val,
        early_stopping=True,
        patience=2,
        callbacks=[snapshots(seen)],
    )
    assert history["stopped"] == "early_stopping"
    assert int(np.argmin(history["val_loss"])) == 2 and history.epochs == 5
    for k in model.params:
        np.testing.assert_array_equal(model.params[k], seen[2][k])
    assert not np.array_equal(model.params["W"], seen[-1]["W"])


def test_early_stopping_on_val_accuracy_keeps_the_highest(digits):
    train, _ = digits
    small = {k: v[:300] for k, v in train.items()}
    model = gn.compile(digits_graph(), optimizer=gn.Adam(lr=1e-3))
    seen = []
    history = model.fit(
        small,
        epochs=40,
        validation_split=0.25,
        monitor="val_accuracy",
        early_stopping=True,
        patience=3,
        callbacks=[snapshots(seen)],
    )
    assert history["stopped"] == "early_stopping" and history.epochs < 40
    best = int(np.argmax(history["val_accuracy"]))
    assert history["val_accuracy"][best] > history["val_accuracy"][0]
    assert history.epochs == best + 1 + 3
    for k in model.params:
        np.testing.assert_array_equal(model.params[k], seen[best][k])


def test_each_fit_is_a_new_run_from_the_current_weights(line):
    *_, data = line
    model = gn.compile(linear_graph(), optimizer=gn.SGD(lr=0.1))
    first = model.fit(data, epochs=2, batch_size=8)
    second = model.fit(data, epochs=3, batch_size=8)
    assert first.epochs == 2 and second.epochs == 3 and model.epoch == 3
    assert model.step == 5 * 4
    assert second["loss"][0] < first["loss"][0]


# --- NaN / Inf ---------------------------------------------------------------------------------


def exp_graph():
    x, t = gn.input("x", (4,)), gn.input("t", (3,))
    W, b = gn.param("W", (4, 3)), gn.param("b", (3,), init="normal")
    return gn.Graph(gn.mse(gn.exp(x @ W + b).named("pred"), t))


def test_divergence_names_step_parameter_and_node(tmp_path):
    rng = np.random.default_rng(42)
    data = {
        "x": rng.normal(size=(16, 4)).astype(np.float32),
        "t": rng.normal(size=(16, 3)).astype(np.float32),
    }
    # the learning rate jumps to 1e5 after 2 epochs of 4 steps: a diverging schedule
    opt = gn.SGD(lr=0.1, schedule=Step(every=8, gamma=1e6))
    model = gn.compile(exp_graph(), optimizer=opt)
    seen = []
    with pytest.raises(gn.NonFiniteError) as exc:
        model.fit(
            data, epochs=6, batch_size=4, checkpoint_dir=tmp_path, callbacks=[snapshots(seen)]
        )
    err = exc.value
    assert (err.step, err.param, err.node) == (11, "W", "pred")
    assert model.step == 10 and model.epoch == 2  # the failing step changed nothing
    message = str(err)
    for part in ("step 11", "epoch 3", "the loss is NaN or Inf", "'pred' = exp(", "'W'"):
        assert part in message, message
    assert "ckpt-000000008.npz" in message and "clip_norm" in message
    assert all(np.all(np.isfinite(v)) for v in model.params.values())
    # the checkpoints written before the failure load and hold finite values
    fresh = gn.compile(exp_graph(), optimizer=opt)
    fresh.load(tmp_path / "ckpt-000000008.npz")
    assert fresh.epoch == 2 and fresh.step == 8
    assert all(np.all(np.isfinite(v)) for v in [*fresh.params.values(), *fresh.state.values()])
    for k in model.params:  # and equal the parameters at the end of epoch 2
        np.testing.assert_array_equal(fresh.params[k], seen[1][k])


def test_overflowing_loss_names_the_largest_parameter(tmp_path):
    rng = np.random.default_rng(42)
    data = {
        "x": rng.normal(size=(16, 4)).astype(np.float32),
        "t": rng.normal(size=(16, 3)).astype(np.float32),
    }
    opt = gn.SGD(lr=0.1, schedule=Step(every=8, gamma=1e6))
    model = gn.compile(linear_graph(), optimizer=opt)
    with pytest.raises(gn.NonFiniteError, match="the loss is NaN or Inf") as exc:
        model.fit(data, epochs=6, batch_size=4)
    err = exc.value
    # the gradients are still finite: the parameter that has grown the most is named
    largest = max(model.params, key=lambda k: np.abs(model.params[k]).max())
    assert err.param == largest and np.abs(model.params[largest]).max() > 1e18
    assert err.step == model.step + 1 and err.step > 8
    node = model.graph.training.node(err.node)
    assert node.op == "ewise" and f"'{err.node}' =" in str(err)
    assert "gradients of" not in str(err)


def test_nonfinite_gradient_names_its_parameter():
    x, t = gn.input("x", (2,)), gn.input("t", (1,))
    w = gn.param("w", (2, 1), init="ones")
    g = gn.Graph(gn.mse(gn.power(x @ w, 0.5).named("root"), t))  # sqrt'(0) is infinite
    data = {"x": np.array([[1, 1], [0, 0], [2, 1]], np.float32), "t": np.ones((3, 1), np.float32)}
    model = gn.compile(g, optimizer=gn.SGD(lr=0.1))
    with pytest.raises(gn.NonFiniteError, match="the gradient of parameter 'w'") as exc:
        model.fit(data, epochs=2, batch_size=None)
    assert (exc.value.step, exc.value.param) == (1, "w")
    assert exc.value.node.startswith("d_power")
    np.testing.assert_array_equal(model.params["w"], np.ones((2, 1), np.float32))


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_overflowing_update_is_caught_before_a_checkpoint(tmp_path, backend):
    rng = np.random.default_rng(42)
    data = {
        "x": rng.normal(size=(16, 4)).astype(np.float32),
        "t": 100 * rng.normal(size=(16, 3)).astype(np.float32),
    }
    model = gn.compile(linear_graph(), optimizer=gn.SGD(lr=3e38), backend=backend)
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(gn.NonFiniteError, match="the optimizer update made 'W'") as exc:
        model.fit(data, epochs=2, batch_size=None, checkpoint_dir=tmp_path)
    assert (exc.value.step, exc.value.param) == (1, "W")
    assert list(tmp_path.iterdir()) == []  # nothing non-finite was saved
    assert model.step == 0 and "hold their values from before this step" in str(exc.value)
    for k, v in before.items():
        np.testing.assert_array_equal(model.params[k], v, err_msg=k)


def _overflow_data():
    rng = np.random.default_rng(42)
    return {
        "x": rng.normal(size=(16, 4)).astype(np.float32),
        "t": 100 * rng.normal(size=(16, 3)).astype(np.float32),
    }


def _unpack(model, packed: bool):
    """A model's arrays as it holds them from the start (views of one flat array: the epoch's
    snapshot and NaN/Inf check are one each), or apart (the user set some of them)."""
    if not packed:
        model.params["b"] = model.params["b"].copy()  # trained in place, as the user's own
        model.state[next(iter(model.state))] = np.zeros_like(next(iter(model.state.values())))
    assert (model.packed_values() is not None) == packed


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_a_step_whose_update_overflows_leaves_the_model_as_before_it(backend, packed):
    """Step 3 of 4 in an epoch multiplies the learning rate by 1e38: its update overflows W, and
    the model holds the parameters and momentum of step 2 (they were NaN/Inf in memory)."""
    opt = gn.SGD(lr=0.5, momentum=0.9, schedule=Step(every=2, gamma=1e38))
    data = _overflow_data()
    model = gn.compile(linear_graph(), optimizer=opt, backend=backend)
    _unpack(model, packed)
    held = {**model.params, **model.state}
    with pytest.raises(gn.NonFiniteError, match="step 3 .*update made 'W'") as exc:
        model.fit(data, epochs=3, batch_size=4, shuffle=False)
    assert (exc.value.step, exc.value.param, model.step) == (3, "W", 2)
    two = gn.compile(linear_graph(), optimizer=opt, backend=backend)
    two.fit({k: v[:8] for k, v in data.items()}, epochs=1, batch_size=4, shuffle=False)
    assert two.step == 2
    for k, v in {**two.params, **two.state}.items():
        got = {**model.params, **model.state}[k]
        assert got is held[k], k  # the arrays the model held, put back in place
        assert np.all(np.isfinite(got)), k
        np.testing.assert_array_equal(got, v, err_msg=k)
    assert (model.packed_values() is not None) == packed


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_an_update_that_overflows_only_optimizer_state_is_undone(backend, packed):
    """s overflows to Inf at step 1 while P stays finite: the error names s's parameter."""
    opt = gn.Optimizer(
        "sumsq", {"lr": 1e-3, "k": 1e38}, ("s",), (("s", "s + k*G*G"), ("P", "P - lr*G"))
    )
    model = gn.compile(linear_graph(), optimizer=opt, backend=backend)
    _unpack(model, packed)
    before = {k: v.copy() for k, v in {**model.params, **model.state}.items()}
    with pytest.raises(gn.NonFiniteError, match="update made 's_W'") as exc:
        model.fit(_overflow_data(), epochs=1, batch_size=8, shuffle=False)
    assert (exc.value.step, exc.value.param, model.step) == (1, "W", 0)
    for k, v in before.items():
        np.testing.assert_array_equal({**model.params, **model.state}[k], v, err_msg=k)


def test_a_models_arrays_are_packed_views_that_fit_trains_in_place():
    data = _overflow_data()
    model = gn.compile(linear_graph(), optimizer=gn.SGD(lr=1e-3, momentum=0.9))
    flat = model.packed_values()
    held = {**model.params, **model.state}
    assert flat is not None and all(np.shares_memory(v, flat) for v in held.values())
    assert all(v.ctypes.data % 64 == 0 for v in held.values())  # each on a cache line
    before = flat.copy()
    model.fit(data, epochs=2, batch_size=4)
    assert all({**model.params, **model.state}[k] is v for k, v in held.items())
    assert model.packed_values() is flat and not np.array_equal(flat, before)
    # a packed view made read-only in place is replaced by a writable copy, then trained
    model.params["W"].flags.writeable = False
    frozen = model.params["W"]
    model.fit(data, epochs=1, batch_size=4)
    assert model.params["W"] is not frozen and model.params["W"].flags.writeable
    assert not np.array_equal(model.params["W"], frozen) and model.packed_values() is None


def test_a_copied_model_checks_and_snapshots_its_own_arrays():
    """copy.deepcopy copies the views away from the packed memory: the copy goes array by array
    (were it taken as packed, its guards would read the original's values)."""
    model = gn.compile(linear_graph(), optimizer=gn.SGD(lr=3e38), backend="numpy")
    twin = copy.deepcopy(model)
    assert model.packed_values() is not None and twin.packed_values() is None
    before = {k: v.copy() for k, v in twin.params.items()}
    with pytest.raises(gn.NonFiniteError, match="the optimizer update made 'W'"):
        twin.fit(_overflow_data(), epochs=1, batch_size=None)
    for k, v in before.items():
        np.testing.assert_array_equal(twin.params[k], v, err_msg=k)
        np.testing.assert_array_equal(model.params[k], v, err_msg=k)


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize(
    "dtype, backend", [("float32", "cpu"), ("float64", "cpu"), ("float32", "numpy")]
)
def test_broken_names_finds_every_nonfinite_value_and_only_those(dtype, backend, packed):
    """With the CPU back end's compiled all_finite, and with NumPy (the reference back end);
    with the arrays packed in one flat array (as a model holds them) and apart."""
    from types import SimpleNamespace

    from graphnn.train.nonfinite import broken_names
    from graphnn.train.packing import Packing

    trainer = gn.compile(linear_graph(), backend=backend, dtype=dtype).trainer
    assert (getattr(trainer, "all_finite", None) is not None) == (backend == "cpu")
    big = np.finfo(dtype).max
    good = np.array([[big, -big], [np.finfo(dtype).smallest_subnormal, 0.0]], dtype)
    arrays = {f"a{k}": np.ones((3, 11), dtype) for k in range(6)}
    params = {"good": good, "a0": arrays["a0"], "a1": arrays["a1"], "empty": np.ones(0, dtype)}
    state = {k: v for k, v in arrays.items() if k not in ("a0", "a1")}
    packing = Packing(params, state, dtype) if packed else None
    assert packed == all(v.base is getattr(packing, "memory", 0) for v in params.values())
    model = SimpleNamespace(
        params=params,
        state=state,
        trainer=trainer,
        packed_values=lambda: packing.flat if packing and packing.intact(params, state) else None,
    )
    assert broken_names(model) == []
    for k, bad in enumerate([np.nan, np.inf, -np.inf]):
        (params if k == 0 else state)[f"a{2 * k}"][2, 2 * k + 5] = bad  # vector lane or tail
    assert broken_names(model) == ["a0", "a2", "a4"]
    if packed:  # an entry replaced: the arrays the dicts hold now are checked
        params["a0"] = np.ones((3, 11), dtype)
        state["a4"] = np.ones((3, 11), dtype)
        assert model.packed_values() is None
        assert broken_names(model) == ["a2"]


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize(
    "make", [np.asfortranarray, lambda a: np.ascontiguousarray(a.T).T, "read-only", "float64"]
)
def test_a_parameter_set_to_any_array_is_trained(make, backend):
    rng = np.random.default_rng(0)
    data = {
        "x": rng.normal(size=(16, 4)).astype(np.float32),
        "t": rng.normal(size=(16, 3)).astype(np.float32),
    }
    reference = gn.compile(linear_graph(), optimizer=gn.SGD(lr=0.1, momentum=0.9))
    model = gn.compile(linear_graph(), optimizer=gn.SGD(lr=0.1, momentum=0.9), backend=backend)
    start = reference.params["W"].copy()
    if make == "read-only":
        given = start.copy()
        given.flags.writeable = False
    elif make == "float64":
        given = start.astype(np.float64)
    else:
        given = make(start)
    model.params["W"] = given
    model.state["v_W"] = np.asfortranarray(model.state["v_W"])
    for m in (reference, model):
        m.fit(data, epochs=3, batch_size=4, seed=1)
    trained = model.params["W"]
    assert trained.flags.c_contiguous and trained.dtype == np.float32
    assert not np.array_equal(trained, start)
    np.testing.assert_allclose(trained, reference.params["W"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.state["v_W"], reference.state["v_W"], rtol=1e-5, atol=1e-6)


def test_a_checkpoint_loads_into_a_parameter_set_to_any_array(tmp_path):
    model = gn.compile(linear_graph(), optimizer=gn.SGD(lr=0.1, momentum=0.9))
    saved = model.params["W"].copy()
    model.save(tmp_path / "a.npz")
    frozen = np.zeros((4, 3), np.float32)
    frozen.flags.writeable = False
    for given in (frozen, [[0.0] * 3] * 4):
        model.params["W"] = given
        model.load(tmp_path / "a.npz")
        np.testing.assert_array_equal(model.params["W"], saved)


def test_a_parameter_of_the_wrong_shape_or_missing_is_named():
    data = {"x": np.zeros((4, 4), np.float32), "t": np.zeros((4, 3), np.float32)}
    model = gn.compile(linear_graph(), optimizer=gn.SGD(lr=0.1, momentum=0.9))
    model.params["W"] = np.zeros((3, 4), np.float32)
    with pytest.raises(gn.DataError, match=r"parameter 'W' has shape \(4, 3\), got \(3, 4\)"):
        model.fit(data, epochs=1)
    model.params["W"] = np.zeros((4, 3), np.float32)
    del model.state["v_b"]
    with pytest.raises(gn.DataError, match="model.state has no buffer 'v_b'"):
        model.fit(data, epochs=1)


# --- progress, history files -----------------------------------------------------------------


def test_progress_bar_on_stderr(line, capsys):
    *_, data = line
    model = gn.compile(linear_graph(), optimizer=gn.SGD(lr=0.1))
    model.fit(data, epochs=3, batch_size=8, validation_split=0.25, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "3/3" in err and "epoch" in err
    assert "loss=" in err and "val_loss=" in err
    model.fit(data, epochs=2, batch_size=8)
    assert capsys.readouterr().err == ""  # no bar unless asked


def test_history_json_and_png(digits, tmp_path):
    train, test = digits
    small = {k: v[:200] for k, v in train.items()}
    model = gn.compile(digits_graph(), optimizer=gn.Adam(lr=1e-3))
    history = model.fit(small, epochs=3, validation_data=test)
    path = history.save_json(tmp_path / "run" / "history.json")
    loaded = History.load_json(path)
    assert loaded == history and loaded.epochs == 3 and loaded["stopped"] == "epochs"
    assert json.loads(path.read_text())["val_accuracy"] == history["val_accuracy"]
    png = history.plot(tmp_path / "run" / "curves.png")
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    width = int.from_bytes(data[16:20], "big")  # IHDR: two panels, loss and accuracy
    assert width == 1000
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["curves.png", "history.json"]
    with pytest.raises(ValueError, match="nothing to plot"):
        History().plot(tmp_path / "empty.png")


# --- argument errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batch_size=0), "batch_size must be an int >= 1"),
        (dict(batch_size=-4), "batch_size must be an int >= 1"),
        (dict(batch_size=2.5), "batch_size must be an int >= 1"),
        (dict(validation_split=1.0), r"validation_split must be in \[0, 1\)"),
        (dict(validation_split=-0.2), r"validation_split must be in \[0, 1\)"),
        (dict(validation_split=np.zeros(2)), r"validation_split must be in \[0, 1\)"),
        (dict(validation_split="0"), r"validation_split must be in \[0, 1\)"),
        (dict(batch_size=True), "batch_size must be an int >= 1"),
        (dict(monitor="val_loss"), "val_ metrics need validation_data"),
        (dict(monitor="accuracy", validation_split=0.25), "cannot monitor 'accuracy'"),
        (dict(validation_split=0.2, validation_data={}), "not both"),
        (dict(checkpoint_every=0), "checkpoint_every must be"),
        (dict(patience=0), "patience must be"),
        (dict(epochs=-1), "epochs must be"),
        (dict(epochs=True), "epochs must be"),
        (dict(callbacks=[1]), "callbacks must be callables"),
    ],
)
def test_bad_fit_arguments(line, kwargs, match):
    *_, data = line
    model = gn.compile(linear_graph(), optimizer=gn.SGD(lr=0.1))
    with pytest.raises(gn.DataError, match=match):
        model.fit(data, epochs=kwargs.pop("epochs", 2), **kwargs)
    assert model.step == 0  # rejected before any training


def test_unknown_monitor_lists_the_choices(digits):
    train, test = digits
    model = gn.compile(digits_graph(), optimizer=gn.Adam(lr=1e-3))
    with pytest.raises(gn.DataError) as exc:
        model.fit(train, validation_data=test, monitor="val_acc", early_stopping=True)
    assert str(exc.value) == "cannot monitor 'val_acc': fit records loss, val_loss, val_accuracy"


# --- denormals ---------------------------------------------------------------------------------


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 only")
@pytest.mark.parametrize("flush", [True, False])
def test_denormals_flushed_only_inside_fit(line, flush):
    *_, data = line
    tiny = np.float32(1e-38)  # times 0.01 is a denormal
    inside = []
    model = gn.compile(linear_graph(), optimizer=gn.SGD(lr=0.1), flush_denormals=flush)
    model.fit(data, epochs=1, callbacks=[lambda m, e, logs: inside.append(tiny * np.float32(0.01))])
    assert (inside[0] == 0) == flush
    assert tiny * np.float32(0.01) != 0  # the thread's state is restored after fit


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 only")
def test_denormals_are_restored_after_an_error_and_in_every_fit(line):
    *_, data = line
    tiny = np.float32(1e-38)
    model = gn.compile(linear_graph(), optimizer=gn.SGD(lr=0.1))

    def fails(m, e, logs):
        assert tiny * np.float32(0.01) == 0
        raise RuntimeError("callback failed")

    for _ in range(2):
        with pytest.raises(RuntimeError, match="callback failed"):
            model.fit(data, epochs=1, callbacks=[fails])
        assert tiny * np.float32(0.01) != 0


# --- description and the fit(X, Y) habit ---------------------------------------------------------


def _small_model():
    x, y = gn.input("x", (3,)), gn.input("y", (2,))
    W, b = gn.param("W", (3, 2)), gn.param("b", (2,), init="zeros")
    g = gn.Graph(gn.softmax_cross_entropy((x @ W + b).named("logits"), y))
    return gn.compile(g, optimizer=gn.SGD(lr=0.1, momentum=0.9), backend="numpy")


def test_repr_and_summary_describe_the_model():
    model = _small_model()
    text = repr(model)
    assert text.startswith("Model(loss='softmax_ce1', params=2 (8 values)")
    assert "sgd_momentum(lr=0.1, momentum=0.9)" in text and "backend='numpy'" in text
    summary = model.summary().splitlines()
    assert summary[1].split() == ["W", "3x2", "6"] and summary[2].split() == ["b", "2", "2"]
    assert summary[3].split() == ["total", "8"]
    assert "inputs: x (batch, 3), y (batch, 2)" in summary
    assert "prediction: logits; loss: softmax_ce1" in summary


def test_fit_takes_features_and_targets_like_other_libraries():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)).astype(np.float32)
    Y = np.eye(2, dtype=np.float32)[(X[:, 0] > 0).astype(int)]
    a, b = _small_model(), _small_model()
    history = a.fit(X, Y, batch_size=8)
    want = b.fit({"x": X, "y": Y}, epochs=20, batch_size=8)
    assert history["loss"] == want["loss"] and len(history["loss"]) == 20
    with pytest.raises(gn.DataError, match=r"model\.fit\(\{'x': \.\.\., 'y': \.\.\.\}"):
        a.fit(X)


def test_check_data_takes_ready_arrays_as_they_are_and_ids_per_graph():
    """A C-contiguous array of the dtype is used as it is; anything else is converted; integer
    labels only where that graph reads the input through one_hot (found once per graph)."""
    from graphnn.train.data import check_data

    x = gn.input("x", (4,))
    logits = x @ gn.param("W", (4, 3))
    sparse = gn.Graph(gn.sparse_softmax_cross_entropy(logits, gn.input("y", ()))).forward
    dense = gn.Graph(gn.mse(logits, gn.input("t", (3,)))).forward
    ready = np.ones((5, 4), np.float32)
    labels = np.array([0, 2, 1, 1, 0])
    for _ in range(2):  # the second time from what was found the first
        out = check_data(sparse, {"x": ready, "y": labels})
        assert out["x"] is ready and out["y"].dtype == np.float32
        np.testing.assert_array_equal(out["y"], labels)
        with pytest.raises(gn.DataError, match="input 't' must hold floats"):
            check_data(dense, {"x": ready, "t": np.ones((5, 3), int)})
    for other in (np.asfortranarray(np.ones((5, 4), np.float32)), ready.astype(np.float64),
                  ready[:, ::-1], ready.view(np.matrix)):  # fmt: skip
        out = check_data(dense, {"x": other, "t": np.ones((5, 3), np.float32)})["x"]
        assert out is not other and type(out) is np.ndarray
        assert out.dtype == np.float32 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, np.asarray(other))


def test_fit_takes_any_mapping_and_names_what_is_not_one():
    from types import MappingProxyType

    data = _overflow_data()
    model = gn.compile(linear_graph(), optimizer=gn.SGD(lr=1e-3), backend="numpy")
    model.fit(MappingProxyType(data), epochs=1, batch_size=8)
    assert model.step == 2
    with pytest.raises(gn.DataError, match="data must be a dict of input name -> array, got list"):
        model.evaluate([data["x"], data["t"]])
