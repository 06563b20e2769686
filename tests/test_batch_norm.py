"""Batch norm with running statistics (graphnn.ir.batch_norm): float64 finite-difference
gradients of its training form, running statistics that a NumPy recomputation matches after
every training step (and that no optimizer touches), the eval form in predict and evaluate,
checkpoints and model files, spec forms, clear errors, and PyTorch parity when torch is
installed.  (The CPU, stepwise and CUDA-simulator back ends also run the ``batch_norm`` rows of
tests/cases.py and the ``adam_batch_norm_clip`` case of tests/cuda_cases.py.)"""

import numpy as np
import pytest

import graphnn as gn
from codegen.numpy_ref import evaluate
from graphnn.errors import (
    DataError,
    GraphError,
    NameNotFoundError,
    ShapeError,
    SpecError,
)
from graphnn.spec.build import loads_spec
from tests.finite_diff import central_differences, relative_error

EPS = 1e-5


def _dense_net(d=4, h=5, k=3, momentum=0.1):
    """logits = tanh(batch_norm(x @ W)) @ V; the normalized node is named z."""
    x, t = gn.input("x", (d,)), gn.input("t", (k,))
    W, V = gn.param("W", (d, h)), gn.param("V", (h, k))
    gam, bet = gn.param("gam", (h,), init="ones"), gn.param("bet", (h,), init="zeros")
    z = gn.batch_norm(x @ W, gam, bet, momentum=momentum, name="bn").named("z")
    return gn.Graph(gn.softmax_cross_entropy(gn.tanh(z) @ V, t), [z])


def _input_net(shape, momentum=0.3):
    """batch_norm applied to the input itself, so its statistics depend on the data alone."""
    x, t = gn.input("x", shape), gn.input("t", (3,))
    gam, bet = gn.param("gam", (shape[-1],), init="ones"), gn.param("bet", (shape[-1],))
    z = gn.batch_norm(x, gam, bet, momentum=momentum, name="bn").named("z")
    flat = z if len(shape) == 1 else gn.flatten(z)
    W = gn.param("W", (int(np.prod(shape)), 3))
    return gn.Graph(gn.softmax_cross_entropy(flat @ W, t), [z])


def _classes(rng, rows, k=3):
    return np.eye(k)[rng.integers(0, k, rows)]


@pytest.mark.parametrize("seed", range(4))
def test_training_form_gradients_match_central_differences_in_float64(seed):
    """Random widths and batch sizes (2 to 7 rows), 2-D and NHWC, gamma and beta random."""
    rng = np.random.default_rng(seed)
    d, h = (int(v) for v in rng.integers(2, 6, 2))
    rows = int(rng.integers(2, 8))
    if seed % 2:  # 2-D: over the batch
        g = _dense_net(d, h)
        data = {"x": rng.normal(size=(rows, d)) * 3 + 1, "t": _classes(rng, rows)}
    else:  # NHWC: over batch, height and width, per channel
        img, K = gn.input("img", (3, 4, 2)), gn.param("K", (2, 2, 2, h))
        gam, bet = gn.param("gam", (h,)), gn.param("bet", (h,))
        z = gn.batch_norm(gn.conv2d(img, K), gam, bet, name="bn")
        W = gn.param("W", (2 * 3 * h, 3))
        g = gn.Graph(gn.softmax_cross_entropy(gn.tanh(gn.flatten(z)) @ W, gn.input("t", (3,))))
        data = {"img": rng.normal(size=(rows, 3, 4, 2)), "t": _classes(rng, rows)}
    params = {k: v.astype(np.float64) for k, v in g.init_params(seed).items()}
    params["gam"] = rng.normal(1.0, 0.5, params["gam"].shape)
    params["bet"] = rng.normal(0.0, 0.5, params["bet"].shape)
    state = {s: rng.random(params[s].shape) + 0.5 for s in g.state_names}  # never read here
    trainable = {p: params[p] for p in g.param_names}
    _, grads = g.value_and_grad({**trainable, **state}, data, "numpy", np.float64)
    numeric = central_differences(
        lambda p: g.value_and_grad({**p, **state}, data, "numpy", np.float64)[0], trainable
    )
    assert sorted(grads) == sorted(g.param_names)  # no gradient for the running statistics
    for p in g.param_names:
        assert relative_error(grads[p], numeric[p]) < 1e-6, p
    assert np.abs(grads["gam"]).max() > 1e-3  # the normalization is on the gradient's path


def _recompute(x_all, perms, batch_size, momentum, axes):
    """Running mean and variance as PyTorch defines them: the unbiased batch variance."""
    shape = x_all.shape[-1:]
    mean, var = np.zeros(shape), np.ones(shape)
    for perm in perms:
        for start in range(0, len(perm), batch_size):
            x = x_all[perm[start : start + batch_size]].astype(np.float64)
            m = x.mean(axis=axes)
            count = x.size // x.shape[-1]
            v = ((x - m) ** 2).sum(axis=axes) / (count - 1)
            mean = (1 - momentum) * mean + momentum * m
            var = (1 - momentum) * var + momentum * v
    return mean, var


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("shape", [(4,), (3, 2, 2)], ids=["2d", "nhwc"])
def test_running_statistics_after_every_step_equal_a_numpy_recomputation(backend, shape):
    """Three epochs of shuffled batches of 4, 4 and 2 rows, with AdamW (weight decay would
    move the statistics if an optimizer touched them)."""
    g = _input_net(shape)
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(10, *shape)) * 2 + 3).astype(np.float32)
    data = {"x": x, "t": _classes(rng, 10).astype(np.float32)}
    model = gn.compile(g, gn.AdamW(lr=0.05, weight_decay=0.5), backend=backend)
    model.fit(data, epochs=3, batch_size=4, seed=7)
    order = np.random.default_rng(7)
    perms = [order.permutation(10) for _ in range(3)]  # the driver's shuffles
    axes = tuple(range(len(shape)))
    mean, var = _recompute(x, perms, 4, 0.3, axes)
    np.testing.assert_allclose(model.params["bn_mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.params["bn_var"], var, rtol=1e-5)
    assert set(model.state) == {f"{b}_{p}" for b in ("m", "v") for p in g.param_names}


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_eval_output_uses_the_running_statistics(backend):
    g = _dense_net()
    rng = np.random.default_rng(2)
    data = {"x": (rng.normal(size=(12, 4)) * 2 + 1).astype(np.float32)}
    data["t"] = _classes(rng, 12).astype(np.float32)
    model = gn.compile(g, gn.SGD(lr=0.1), backend=backend)
    model.fit(data, epochs=2, batch_size=4, seed=0)
    p = model.params
    assert not np.allclose(p["bn_var"], 1.0)  # trained away from their initial values
    pre = data["x"] @ p["W"]
    want = (pre - p["bn_mean"]) / np.sqrt(p["bn_var"] + EPS) * p["gam"] + p["bet"]
    got = model.predict(data, "z")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    train_form = (pre - pre.mean(0)) / np.sqrt(pre.var(0) + EPS) * p["gam"] + p["bet"]
    assert not np.allclose(got, train_form, atol=1e-2)  # the batch statistics would differ
    # the training graph's own value of z is the batch form
    env = evaluate(g.training, {**p, **data}, np.float32)
    np.testing.assert_allclose(env["z"], train_form, rtol=1e-4, atol=1e-4)
    logits = np.tanh(want) @ p["V"]
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    loss = -(data["t"] * logp).sum(1).mean()
    assert model.evaluate(data)["loss"] == pytest.approx(loss, rel=1e-4)


def test_a_batch_of_one_row_is_refused_for_2d_and_allowed_for_images():
    g = _dense_net()
    rng = np.random.default_rng(0)
    one = {"x": rng.normal(size=(1, 4)), "t": _classes(rng, 1)}
    # the defined value: variance 0, so the output is beta and the loss finite
    params = {k: v.astype(np.float64) for k, v in g.init_params(0).items()}
    params["bet"] = rng.normal(size=5)
    env = evaluate(g.training, {**params, **one}, np.float64)
    np.testing.assert_allclose(env["z"], params["bet"][None, :], atol=1e-12)
    model = gn.compile(g, gn.SGD(lr=0.1), backend="numpy")
    with pytest.raises(DataError, match=r"bn_mean, bn_var.*batch_size >= 2"):
        model.fit({k: v.astype(np.float32) for k, v in one.items()}, epochs=1)
    with pytest.raises(DataError, match="a batch of one row has no variance"):
        model.fit({"x": np.ones((6, 4), np.float32), "t": np.ones((6, 3), np.float32)},
                  epochs=1, batch_size=1)  # fmt: skip
    image = _input_net((2, 2, 1))  # over batch, height and width: 4 values per channel
    fine = gn.compile(image, gn.SGD(lr=0.1), backend="numpy")
    fine.fit({"x": rng.normal(size=(3, 2, 2, 1)), "t": _classes(rng, 3)}, epochs=1, batch_size=1)
    assert np.all(np.isfinite(fine.params["bn_var"])) and not np.allclose(fine.params["bn_var"], 1)


def test_checkpoint_resume_and_model_file_keep_the_running_statistics(tmp_path):
    g = _dense_net()
    rng = np.random.default_rng(3)
    data = {"x": (rng.normal(size=(10, 4)) + 2).astype(np.float32)}
    data["t"] = _classes(rng, 10).astype(np.float32)
    whole = gn.compile(g, gn.Adam(lr=0.05))
    whole.fit(data, epochs=4, batch_size=4, checkpoint_dir=tmp_path / "a")
    half = gn.compile(g, gn.Adam(lr=0.05))
    half.fit(data, epochs=2, batch_size=4, checkpoint_dir=tmp_path / "b")
    saved = np.load(sorted((tmp_path / "b").glob("ckpt-*.npz"))[-1])
    np.testing.assert_array_equal(saved["param/bn_mean"], half.params["bn_mean"])
    resumed = gn.compile(g, gn.Adam(lr=0.05))  # fresh: statistics zeros and ones
    resumed.fit(data, epochs=4, batch_size=4, checkpoint_dir=tmp_path / "b", resume=True)
    for name in whole.params:
        np.testing.assert_array_equal(resumed.params[name], whole.params[name], err_msg=name)
    assert not np.array_equal(half.params["bn_var"], whole.params["bn_var"])
    whole.save(tmp_path / "model.npz")
    loaded = gn.load_model(tmp_path / "model.npz")
    assert loaded.graph.state_names == ["bn_mean", "bn_var"]
    np.testing.assert_array_equal(loaded.predict(data), whole.predict(data))


SPEC = """
[inputs]
x = [4]
y = [3]
[model]
input = "x"
target = "y"
loss = "softmax_cross_entropy"
[[layers]]
units = 6
[[layers]]
batch_norm = {bn}
[[layers]]
units = 3
"""


def test_spec_layer_kind_batch_norm():
    g = loads_spec(SPEC.format(bn="true"), "b.toml").graph
    assert g.state_names == ["h2_mean", "h2_var"] and {"gamma2", "beta2"} <= set(g.param_names)
    running = [n for n in g.forward.nodes if n.op == "running"]
    assert [n.attr("momentum") for n in running] == [0.1, 0.1]
    g = loads_spec(SPEC.format(bn="{ momentum = 0.25, eps = 0.001 }"), "b.toml").graph
    assert [n.attr("momentum") for n in g.forward.nodes if n.op == "running"] == [0.25, 0.25]
    assert "0.001" in str([n.attr("expr") for n in g.forward.nodes if n.op == "ewise"])
    with pytest.raises(SpecError, match=r"b.toml \[\[layers\]\] #2 batch_norm momentum"):
        loads_spec(SPEC.format(bn="{ momentum = 0 }"), "b.toml")
    with pytest.raises(SpecError, match="unknown key 'decay'"):
        loads_spec(SPEC.format(bn="{ decay = 0.9 }"), "b.toml")


def test_spec_graph_formula_batch_norm_names_its_statistics_for_the_node():
    spec = """
[inputs]
x = [4]
y = [3]
[params]
W = [4, 3]
g = { shape = [3], init = "ones" }
b = { shape = [3], init = "zeros" }
[graph]
h = "batch_norm(x @ W, g, b, momentum=0.2)"
loss = "softmax_cross_entropy(h, y)"
"""
    g = loads_spec(spec, "f.toml").graph
    assert g.state_names == ["h_mean", "h_var"]
    assert {n.attr("momentum") for n in g.forward.nodes if n.op == "running"} == {0.2}


def test_bad_arguments_and_unsupported_uses_are_clear_errors():
    x = gn.input("x", (3,))
    with pytest.raises(ShapeError, match="must be \\(batch, ..., channels\\)"):
        gn.batch_norm(gn.sum(x, axis=1))
    with pytest.raises(GraphError, match="momentum must be in \\(0, 1\\]"):
        gn.batch_norm(x, momentum=0)
    with pytest.raises(GraphError, match="eps must be a number > 0"):
        gn.batch_norm(x, eps=-1)
    with pytest.raises(GraphError, match="named 'bn_mean'; give each batch_norm its own name="):
        gn.Graph(gn.sum(gn.batch_norm(x) + gn.batch_norm(x * 2.0)))
    g = _dense_net()
    summary = gn.compile(g, gn.SGD(lr=0.1), backend="numpy").summary()
    assert "bn_mean *" in summary and "* a running statistic" in summary
    assert "gam *" not in summary
    with pytest.raises(NameNotFoundError, match="'bn_mean' is a state parameter"):
        g.gradient("bn_mean")


def test_matches_pytorch_batch_norm_in_training_and_eval():
    """Gradients of the training form, the running statistics after three steps and the eval
    output against torch.nn.BatchNorm1d (momentum 0.1, eps 1e-5), in float64."""
    torch = pytest.importorskip("torch")
    g = _dense_net()
    rng = np.random.default_rng(9)
    batches = [rng.normal(size=(5, 4)) * 2 + 1 for _ in range(3)]
    t = _classes(rng, 5)
    params = {k: v.astype(np.float64) for k, v in g.init_params(1).items()}
    params["gam"], params["bet"] = rng.normal(1, 0.3, 5), rng.normal(0, 0.3, 5)
    bn = torch.nn.BatchNorm1d(5, momentum=0.1, eps=EPS, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(params["gam"]))
        bn.bias.copy_(torch.from_numpy(params["bet"]))
    W = torch.tensor(params["W"], requires_grad=True)
    V = torch.from_numpy(params["V"])
    x = torch.from_numpy(batches[0])
    logits = torch.tanh(bn(x @ W)) @ V
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(t))
    loss.backward()
    value, grads = g.value_and_grad(params, {"x": batches[0], "t": t}, "numpy", np.float64)
    assert value == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(grads["W"], W.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grads["gam"], bn.weight.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grads["bet"], bn.bias.grad.numpy(), rtol=1e-9, atol=1e-12)
    # three training steps with lr = 0: only the running statistics move
    model = gn.compile(g, gn.SGD(lr=0.0), backend="numpy", dtype="float64")
    model.params.update({k: v.copy() for k, v in params.items()})
    with torch.no_grad():
        for b in batches[1:]:
            bn(torch.from_numpy(b) @ W)
    for b in batches:
        model.fit({"x": b, "t": t}, epochs=1, batch_size=None, shuffle=False)
    np.testing.assert_allclose(model.params["bn_mean"], bn.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(model.params["bn_var"], bn.running_var.numpy(), rtol=1e-12)
    bn.eval()
    with torch.no_grad():
        want = bn(torch.from_numpy(batches[0]) @ W).numpy()
    got = model.predict({"x": batches[0]}, "z")
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_matches_pytorch_batch_norm_2d_on_nhwc_images():
    torch = pytest.importorskip("torch")
    g = _input_net((3, 2, 2), momentum=0.1)
    rng = np.random.default_rng(4)
    x, t = rng.normal(size=(4, 3, 2, 2)) + 1, _classes(rng, 4)
    params = {k: v.astype(np.float64) for k, v in g.init_params(0).items()}
    params["gam"], params["bet"] = rng.normal(1, 0.3, 2), rng.normal(0, 0.3, 2)
    bn = torch.nn.BatchNorm2d(2, momentum=0.1, eps=EPS, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(params["gam"]))
        bn.bias.copy_(torch.from_numpy(params["bet"]))
        nchw = torch.from_numpy(x).permute(0, 3, 1, 2)
        want_train = bn(nchw).permute(0, 2, 3, 1).numpy()
    env = evaluate(g.training, {**params, "x": x, "t": t}, np.float64)
    np.testing.assert_allclose(env["z"], want_train, rtol=1e-12, atol=1e-12)
    news = {s: env[u] for s, u in g.update_names.items()}
    np.testing.assert_allclose(news["bn_mean"], bn.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(news["bn_var"], bn.running_var.numpy(), rtol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_a_non_finite_running_statistic_stops_training_before_any_update(backend):
    """Rows of +-3e19: the batch variance overflows float32 while the loss and gradients stay
    finite (the normalized values are 0); the step's guard catches the new running variance."""
    g = _input_net((2,))
    rng = np.random.default_rng(0)
    x = (np.sign(rng.normal(size=(8, 2))) * 3e19).astype(np.float32)
    model = gn.compile(g, gn.SGD(lr=0.1), backend=backend)
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(gn.NonFiniteError, match="new running value of state parameter 'bn_var'"):
        model.fit({"x": x, "t": _classes(rng, 8).astype(np.float32)}, epochs=1, batch_size=4)
    assert model.step == 0
    for name, value in before.items():
        np.testing.assert_array_equal(model.params[name], value, err_msg=name)


def test_data_parallel_training_refuses_batch_norm_clearly(monkeypatch):
    """Checked before any collective: a stand-in communicator of two ranks suffices."""
    from graphnn.errors import DistributedError
    from graphnn.train import parallel

    class TwoRanks:
        def Get_size(self):
            return 2

        def Get_rank(self):
            return 0

    monkeypatch.setattr(parallel.mpi, "_mpi", lambda: None)
    model = gn.compile(_dense_net(), gn.SGD(lr=0.1), backend="numpy")
    with pytest.raises(DistributedError, match="does not support batch_norm.*bn_mean, bn_var"):
        parallel.DataParallel(model, TwoRanks(), {}, 4)


def test_a_graph_whose_running_statistics_and_states_do_not_pair_up_is_a_graph_error():
    """As a hand-edited model file could describe; the builders never make one."""
    from graphnn.ir.batch_norm import running, state
    from graphnn.ir.ops import Tensor

    x = gn.input("x", (2,))
    W = gn.param("W", (2, 2))
    stray = state("stray", (2,), "zeros")
    with pytest.raises(GraphError, match="'stray' is read by no running statistic"):
        gn.Graph(gn.sum(x @ W + stray))
    fake = Tensor(
        "running",
        (gn.mean(x @ W, axis=0), gn.input("q", (2,))),
        (2,),
        {"momentum": 0.1, "correction": 1, "count": 1},
    )
    with pytest.raises(GraphError, match="must read a state parameter of its own, not 'q'"):
        gn.Graph(gn.sum(x @ W + fake))
    twice = state("twice", (2,), "zeros")
    a, b = running(gn.mean(x @ W, axis=0), twice, 0.1), running(gn.mean(x, axis=0), twice, 0.1)
    with pytest.raises(GraphError, match="of its own, not 'twice'"):
        gn.Graph(gn.sum(x @ W + a + b))


def test_spec_batch_norm_layer_after_a_convolution_normalizes_per_channel():
    spec = """
[inputs]
x = [6, 6, 1]
y = [2]
[model]
input = "x"
target = "y"
loss = "softmax_cross_entropy"
[[layers]]
conv2d = { filters = 3, kernel = 3 }
[[layers]]
batch_norm = true
[[layers]]
flatten = true
[[layers]]
units = 2
"""
    g = loads_spec(spec, "c.toml").graph
    assert g.shapes["h2_mean"] == (3,) and g.shapes["gamma2"] == (3,)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4, 6, 6, 1)) + 2, _classes(rng, 4, 2)
    params = {k: v.astype(np.float64) for k, v in g.init_params(0).items()}
    env = evaluate(g.training, {**params, "x": x, "y": y}, np.float64)
    z = env["h2"]  # the training form: each channel has mean beta and variance gamma**2
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), params["beta2"], atol=1e-9)
    np.testing.assert_allclose(z.var(axis=(0, 1, 2)), params["gamma2"] ** 2, rtol=1e-3)


def test_the_cpu_export_trains_batch_norm_as_graphnn_does(tmp_path):
    """fit_epoch of the exported module: the same parameters and running statistics, bit for
    bit, as gn.compile(...).fit; predict runs the eval form; grads has no running statistic."""
    import importlib.util
    import sys

    g = _dense_net()
    path = g.export(tmp_path / "bn_export.py", gn.Adam(lr=0.05, clip_norm=1.0), batch_size=4)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # Numba's cache locator finds functions through the module
    spec.loader.exec_module(module)
    rng = np.random.default_rng(6)
    data = {"x": (rng.normal(size=(10, 4)) + 1).astype(np.float32)}
    data["t"] = _classes(rng, 10).astype(np.float32)
    params = module.init_params(0)
    state = module.init_state(params)
    assert set(state) == {f"{b}_{p}" for b in ("m", "v") for p in g.param_names}
    t = 0
    for _ in range(2):
        _, t = module.fit_epoch(data, params, state, t0=t)
    model = gn.compile(g, gn.Adam(lr=0.05, clip_norm=1.0), backend="cpu", seed=0)
    model.fit(data, epochs=2, batch_size=4, shuffle=False)
    for name, value in model.params.items():
        assert np.array_equal(params[name], value), name
    assert not np.allclose(params["bn_var"], 1.0)
    np.testing.assert_array_equal(module.predict(data["x"], params), model.predict(data))
    assert sorted(module.grads(data["x"], data["t"], params)) == sorted(g.param_names)
    with pytest.raises(FloatingPointError, match="gradient or new value of bn_var"):
        module._check(len(g.param_names) + 2, 1)
