"""Stepwise training (one shared step kernel per block) against the fused module: the same bits.

A new model trains on step kernels shared across models and layers until its fused epoch is
compiled (codegen/cpu/stepwise.py, codegen/cpu/fused_compile.py), and switches at an epoch
boundary whose position depends on how fast the machine compiles.  That is only sound if both
compute exactly the same floats, so these tests compare parameters and losses bit for bit, on
every structural case and loss of tests/cases.py, with each optimizer, a partial last batch
and gradient clipping.
"""

import re
from pathlib import Path

import numpy as np
import pytest

import graphnn as gn
from codegen.cpu import fused_compile, small_step
from codegen.cpu.module import stepwise_source
from codegen.cpu.stepwise import names_of, split_block
from graphnn.errors import GraphnnError, GraphnnWarning
from tests import cases

OPTIMIZERS = {
    "sgd_momentum": lambda: gn.SGD(lr=0.05, momentum=0.9),
    "adam": lambda: gn.Adam(lr=0.01),
    "clipped": lambda: gn.SGD(lr=0.5, clip_norm=0.1),
}


def _train(g, data, mode, monkeypatch, optimizer, epochs=2, batch_size=4):
    monkeypatch.setenv("GRAPHNN_FUSED", mode)
    model = gn.compile(g, optimizer(), seed=0)
    data32 = {k: np.asarray(v, np.float32) for k, v in data.items()}
    history = model.fit(data32, epochs=epochs, batch_size=batch_size, shuffle=False)
    return model, history


def assert_same_bits(a, b):
    """Parameters and per-epoch losses of two trained models are identical, bit for bit."""
    assert sorted(a.params) == sorted(b.params)
    for name in a.params:
        x, y = a.params[name], b.params[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x.view(np.uint32), y.view(np.uint32)), (name, x, y)
    assert list(a.history["loss"]) == list(b.history["loss"])


def _check_case(g, data, monkeypatch, optimizer):
    fused, _ = _train(g, data, "wait", monkeypatch, optimizer)
    stepwise, _ = _train(g, data, "never", monkeypatch, optimizer)
    # each ran the path it was meant to
    assert fused.trainer.module.train_epoch.overloads
    assert fused.trainer.fused._ready and not stepwise.trainer.fused._ready
    assert_same_bits(fused, stepwise)
    moved = [not np.array_equal(fused.params[p], g.init_params(0)[p]) for p in g.param_names]
    assert any(moved)  # training happened: the comparison is not vacuous


@pytest.mark.parametrize("name", sorted(cases.STRUCTURAL))
def test_structural_case_fused_and_stepwise_give_the_same_bits(name, monkeypatch):
    g, data = cases.build(name, rows=7)  # batches of 4 and 3
    _check_case(g, data, monkeypatch, OPTIMIZERS["sgd_momentum"])


@pytest.mark.parametrize("opt", ["adam", "clipped"])
def test_batch_norm_with_adam_and_clipping_fused_and_stepwise_give_the_same_bits(opt, monkeypatch):
    """The running statistics, assigned after the guard and outside clipping, bit for bit."""
    g, data = cases.build("batch_norm_nhwc", rows=7)
    _check_case(g, data, monkeypatch, OPTIMIZERS[opt])


CONV_ROWS = ["conv2d_same", "conv2d_stride_dilation", "conv2d_stacked", "max_pool"]


@pytest.mark.parametrize("name", CONV_ROWS)
@pytest.mark.parametrize("how", ["im2col", "loops"])
def test_each_convolution_lowering_fused_and_stepwise_give_the_same_bits(name, how, monkeypatch):
    """Both lowerings of a convolution (codegen/cpu/im2col.py: gather, BLAS, col2im; or the
    loop nests), with Adam: step kernels and the fused module agree bit for bit."""
    monkeypatch.setenv("GRAPHNN_CONV_LOWERING", how)
    g, data = cases.build(name, rows=7)
    text, _ = stepwise_source(g, OPTIMIZERS["adam"]())
    assert ("# im2col: " in text) == (how == "im2col")
    _check_case(g, data, monkeypatch, OPTIMIZERS["adam"])


@pytest.mark.parametrize("loss", sorted(cases.LOSSES))
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_loss_and_optimizer_fused_and_stepwise_give_the_same_bits(loss, opt, monkeypatch):
    g, data = cases.loss_case(loss, rows=9)
    _check_case(g, data, monkeypatch, OPTIMIZERS[opt])


@pytest.mark.parametrize("act", ["tanh", "relu", "sigmoid", "gelu"])
def test_mlp_activation_fused_and_stepwise_give_the_same_bits(act, monkeypatch):
    x, y = gn.input("x", (6,)), gn.input("y", (3,))
    W1, b1 = gn.param("W1", (6, 16)), gn.param("b1", (16,))
    W2, b2 = gn.param("W2", (16, 3)), gn.param("b2", (3,))
    g = gn.Graph(gn.softmax_cross_entropy(gn.apply(act, x @ W1 + b1) @ W2 + b2, y))
    rng = np.random.default_rng(3)
    data = {"x": rng.normal(size=(40, 6)), "y": np.eye(3)[rng.integers(0, 3, 40)]}
    fused, _ = _train(g, data, "wait", monkeypatch, OPTIMIZERS["adam"], batch_size=16)
    stepwise, _ = _train(g, data, "never", monkeypatch, OPTIMIZERS["adam"], batch_size=16)
    assert_same_bits(fused, stepwise)


def _mlp(depth: int, width: int):
    x, y = gn.input("x", (8,)), gn.input("y", (4,))
    h, fan_in = x, 8
    for k in range(depth):
        W, b = gn.param(f"W{k}", (fan_in, width)), gn.param(f"b{k}", (width,))
        h, fan_in = gn.relu(h @ W + b), width
    W, b = gn.param("Wout", (fan_in, 4)), gn.param("bout", (4,))
    return gn.Graph(gn.softmax_cross_entropy(h @ W + b, y))


def test_a_deep_model_has_the_step_kernels_of_a_shallow_one():
    """A 12-layer MLP is made of the blocks of a 3-layer one of another width (both wide enough
    for BLAS products: codegen.cpu.matmul writes tiny ones as loops): a new depth or
    width compiles no new step kernel."""
    shallow = {k.name for k in stepwise_source(_mlp(3, 48), gn.Adam(lr=0.01))[1]}
    deep = {k.name for k in stepwise_source(_mlp(12, 40), gn.Adam(lr=0.01))[1]}
    assert deep == shallow
    assert len(deep) < 20


def test_background_compile_switches_to_the_fused_epoch(monkeypatch, tmp_path):
    """The default: stepwise epochs while a child process compiles the fused epoch into the
    cache, then the fused epoch; the result is the bits of a stepwise-only run."""
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))
    g = _mlp(2, 12)
    rng = np.random.default_rng(5)
    data = {"x": rng.normal(size=(30, 8)), "y": np.eye(4)[rng.integers(0, 4, 30)]}
    model, _ = _train(g, data, "background", monkeypatch, OPTIMIZERS["sgd_momentum"], epochs=1)
    child = model.trainer.fused.child
    assert child is not None and not model.trainer.fused._ready
    assert child.wait(timeout=600) == 0
    data32 = {k: np.asarray(v, np.float32) for k, v in data.items()}
    model.fit(data32, epochs=3, batch_size=4, shuffle=False)
    assert model.trainer.fused._ready and model.trainer.module.train_epoch.overloads
    reference, _ = _train(g, data, "never", monkeypatch, OPTIMIZERS["sgd_momentum"], epochs=1)
    reference.fit(data32, epochs=3, batch_size=4, shuffle=False)  # the same two calls
    assert not reference.trainer.fused._ready
    assert_same_bits(model, reference)


def test_a_new_process_finds_the_fused_epoch_the_child_compiled(monkeypatch, tmp_path):
    """The marker the child leaves lets the next model of the same graph use the fused epoch
    from its first epoch (Numba loads it from the cache)."""
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))
    g = _mlp(1, 10)
    rng = np.random.default_rng(6)
    data = {"x": rng.normal(size=(12, 8)), "y": np.eye(4)[rng.integers(0, 4, 12)]}
    first, _ = _train(g, data, "background", monkeypatch, OPTIMIZERS["adam"], epochs=1)
    assert first.trainer.fused.child.wait(timeout=600) == 0
    assert list(tmp_path.glob("*.fused")) and not list(tmp_path.glob("*.job"))
    monkeypatch.setenv("GRAPHNN_FUSED", "background")
    second = gn.compile(g, OPTIMIZERS["adam"](), seed=0)  # same module, not compiled here
    assert second.trainer.module is first.trainer.module
    second.trainer.module.train_epoch.overloads.clear()  # as a new process would see it
    data32 = {k: np.asarray(v, np.float32) for k, v in data.items()}
    second.fit(data32, epochs=1, batch_size=4, shuffle=False)
    assert second.trainer.fused._ready and second.trainer.fused.child is None


def test_an_unknown_fused_mode_is_refused(monkeypatch):
    monkeypatch.setenv("GRAPHNN_FUSED", "sometimes")
    g = _mlp(1, 4)
    model = gn.compile(g, gn.SGD(lr=0.1))
    data = {"x": np.ones((4, 8), np.float32), "y": np.eye(4, dtype=np.float32)}
    with pytest.raises(GraphnnError, match="GRAPHNN_FUSED='sometimes'.*background, wait, never"):
        model.fit(data, epochs=1)


def test_a_block_takes_what_it_reads_first_and_returns_what_is_read_later():
    block = ["# z = a * b", "z = np.empty_like(a)", "s = s + np.float32(1.0)", "z[0] = a[0] * s"]
    seen = names_of(block)
    assert seen.free == ["a", "s"]
    k = split_block(block, later={"z", "s"}, scalars={"s": "np.float32"}, dtype="float32")
    assert k.call == ["# z = a * b", f"z, s = {k.name}(a, s)", "s = np.float32(s)"]
    assert "def step(a0, a1):" in k.source and "return (v0, a1)" in k.source
    # the same block over other names is the same kernel
    other = [re.sub(r"\ba\b", "q", line) for line in block]
    assert split_block(other, {"z", "s"}, {}, "float32").name == k.name


def test_stepwise_training_starts_without_the_fused_compile(monkeypatch, tmp_path):
    """With GRAPHNN_FUSED=never, fit compiles no fused function: the first epoch costs only the
    step kernels (the point of stepwise training)."""
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))
    g = _mlp(2, 9)
    data = {"x": np.ones((8, 8), np.float32), "y": np.tile(np.eye(4, dtype=np.float32), (2, 1))}
    monkeypatch.setenv("GRAPHNN_FUSED", "never")
    model = gn.compile(g, gn.SGD(lr=0.1))
    model.fit(data, epochs=1, batch_size=4)
    assert model.history["loss"] and np.isfinite(model.history["loss"][-1])
    assert not model.trainer.module.train_epoch.overloads
    assert not model.trainer.module.loss_and_grads.overloads


def test_a_failed_background_compile_is_reported_and_training_goes_on(monkeypatch, tmp_path):
    """A child that cannot compile leaves a report; the trainer warns once, naming it, and
    trains on with the step kernels (the same bits as a stepwise-only run)."""
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))

    class Child:  # the child process, run here on a damaged job file
        def __init__(self, argv, **kwargs):
            path, job = argv[-2:]
            Path(job).write_bytes(b"not a pickle")
            self.returncode = fused_compile.main([path, job])

    monkeypatch.setattr(fused_compile.subprocess, "Popen", Child)
    g = _mlp(1, 6)
    rng = np.random.default_rng(7)
    data = {"x": rng.normal(size=(12, 8)), "y": np.eye(4)[rng.integers(0, 4, 12)]}
    model, _ = _train(g, data, "background", monkeypatch, OPTIMIZERS["sgd_momentum"], epochs=1)
    assert model.trainer.fused.child.returncode == 1
    (report,) = tmp_path.glob("*.failed")
    assert "UnpicklingError" in report.read_text() and not list(tmp_path.glob("*.job"))
    data32 = {k: np.asarray(v, np.float32) for k, v in data.items()}
    with pytest.warns(GraphnnWarning, match=r"did not compile in the background \(see .*failed"):
        model.fit(data32, epochs=3, batch_size=4, shuffle=False)
    assert not model.trainer.fused._ready
    reference, _ = _train(g, data, "never", monkeypatch, OPTIMIZERS["sgd_momentum"], epochs=1)
    reference.fit(data32, epochs=3, batch_size=4, shuffle=False)
    assert_same_bits(model, reference)


def test_forward_runs_the_training_steps_forward_kernels():
    """evaluate and predict compile at most the loss's own block: the forward's products and
    activations are the training step's kernels (both write into workspace buffers)."""
    text, _ = stepwise_source(_mlp(3, 32), gn.Adam(lr=0.01))
    training = text[text.index("def loss_and_grads(") : text.index("def forward_workspace(")]
    forward = text[text.index("def forward(") : text.index("def train_epoch(")]
    kernels = lambda part: set(re.findall(r"\bstep_[0-9a-f]{12}\(", part))  # noqa: E731
    assert len(kernels(forward)) >= 4
    assert len(kernels(forward) - kernels(training)) <= 1  # softmax CE without its gradient


def test_models_of_one_module_share_one_background_compile(monkeypatch, tmp_path):
    """A grid search over the learning rate builds many models of one module in one process:
    they share the child that compiles its fused epoch instead of starting one each."""
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))
    started = []

    class Child:  # a child that never finishes while the test runs
        def __init__(self, argv, **kwargs):
            started.append(argv)

        def poll(self):
            return None

    monkeypatch.setattr(fused_compile.subprocess, "Popen", Child)
    g = _mlp(1, 5)
    rng = np.random.default_rng(8)
    data = {"x": rng.normal(size=(12, 8)), "y": np.eye(4)[rng.integers(0, 4, 12)]}
    for lr in (0.1, 0.01, 0.001):
        model, _ = _train(g, data, "background", monkeypatch, lambda lr=lr: gn.SGD(lr=lr))
        assert isinstance(model.trainer.fused.child, Child)
    assert len(started) == 1


def test_a_child_that_cannot_start_is_reported_and_training_goes_on(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))

    def no_process(*args, **kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(fused_compile.subprocess, "Popen", no_process)
    g = _mlp(1, 7)
    rng = np.random.default_rng(9)
    data = {"x": rng.normal(size=(12, 8)), "y": np.eye(4)[rng.integers(0, 4, 12)]}
    with pytest.warns(GraphnnWarning, match="cannot compile the fused epoch in the background"):
        model, _ = _train(g, data, "background", monkeypatch, OPTIMIZERS["adam"], epochs=3)
    assert model.trainer.fused.child is False and not model.trainer.fused._ready
    reference, _ = _train(g, data, "never", monkeypatch, OPTIMIZERS["adam"], epochs=3)
    assert_same_bits(model, reference)


@pytest.mark.parametrize("mode", ["wait", "never"])
def test_a_nonfinite_gradient_stops_both_paths_at_its_step_with_the_params_before_it(
    mode, monkeypatch
):
    """The fused and the stepwise train_epoch both do update_all's guard inline: both stop at
    step 2, whose gradient of the second parameter is NaN (sqrt'(0) * 0), name that
    parameter, and leave the parameters step 1 made."""
    x, t = gn.input("x", (2,)), gn.input("t", (1,))
    b = gn.param("b", (1,), init="ones")
    w = gn.param("w", (2, 1), init="ones")
    g = gn.Graph(gn.mse(b + gn.power(x @ w, 0.5), t))
    assert list(g.param_names).index("w") == 1  # the status is k > 1, not the first parameter
    data = {"x": np.array([[1, 1], [0, 0], [2, 1]], np.float32), "t": np.ones((3, 1), np.float32)}
    monkeypatch.setenv("GRAPHNN_FUSED", mode)
    model = gn.compile(g, gn.SGD(lr=0.1), seed=0)
    with pytest.raises(gn.NonFiniteError, match="the gradient of parameter 'w'") as exc:
        model.fit(data, epochs=1, batch_size=1, shuffle=False)
    assert (exc.value.step, exc.value.param) == (2, "w")
    assert bool(model.trainer.fused._ready) == (mode == "wait")
    # the parameters after step 1 alone, computed by a model that trains on the first row only
    monkeypatch.setenv("GRAPHNN_FUSED", "never")
    one = gn.compile(g, gn.SGD(lr=0.1), seed=0)
    one.fit({k: v[:1] for k, v in data.items()}, epochs=1, batch_size=1, shuffle=False)
    assert_same_bits_params = [np.array_equal(model.params[p], one.params[p]) for p in "bw"]
    assert all(assert_same_bits_params), (model.params, one.params)
    assert not np.array_equal(one.params["w"], np.ones((2, 1), np.float32))  # step 1 moved w


def _epoch_text(model) -> str:
    text = open(model.trainer.module.__file__, encoding="utf-8").read()
    return text[text.index("def train_epoch(") :]


def _tiny(hidden: int):
    x, y = gn.input("x", (3,)), gn.input("y", (2,))
    W1, W2 = gn.param("W1", (3, hidden)), gn.param("W2", (hidden, 2))
    return gn.Graph(gn.softmax_cross_entropy(gn.tanh(x @ W1) @ W2, y))


def test_a_small_models_epoch_writes_its_step_out_and_a_larger_one_calls_it():
    """codegen/cpu/small_step.py: no call of loss_and_grads, all_finite or apply_update in the
    epoch of a small model; the calls stay for a model past SMALL_ELEMENTS."""
    small = gn.compile(_tiny(4), gn.Adam(lr=0.01))
    text = _epoch_text(small)
    assert "# loss_and_grads, written out" in text
    assert not any(f"{f}(" in text for f in ("loss_and_grads", "all_finite", "apply_update"))
    assert "u_m = m_W1[i0, i1]" in text  # Adam's m, renamed clear of the epoch's row count
    large = gn.compile(_tiny(small_step.SMALL_ELEMENTS), gn.Adam(lr=0.01))
    assert "loss_and_grads(" in _epoch_text(large) and "written out" not in _epoch_text(large)


@pytest.mark.parametrize("hidden", [4, 6])
def test_a_written_out_step_serves_every_width_of_its_module(hidden, monkeypatch):
    """Two widths share one module (its sizes are read from the arrays): the written-out
    updates loop over each model's own sizes, so fused and stepwise agree for both."""
    g = _tiny(hidden)
    rng = np.random.default_rng(hidden)
    data = {"x": rng.normal(size=(10, 3)), "y": np.eye(2)[rng.integers(0, 2, 10)]}
    _check_case(g, data, monkeypatch, OPTIMIZERS["adam"])
    same = gn.compile(_tiny(10 - hidden), gn.Adam(lr=0.01))
    assert same.trainer.module.__file__ == gn.compile(g, gn.Adam()).trainer.module.__file__
    assert "written out" in _epoch_text(same)


def _workspace_function(text: str) -> str:
    found = re.search(r"\ndef workspace\(.*?(?=\n(?:@|def ))", text, re.S)
    assert found, text[:400]
    return found.group(0)


@pytest.mark.parametrize("name", [*sorted(cases.STRUCTURAL), *sorted(cases.LOSSES)])
def test_fused_and_stepwise_modules_make_the_same_workspace(name):
    """The trainer makes the step buffers with the fused module's ``workspace`` (a warm start
    imports no stepwise module) and hands them to either ``train_epoch``: the two functions
    must be the same text."""
    from codegen.cpu.backend import source

    g = cases.build(name)[0] if name in cases.STRUCTURAL else cases.loss_case(name)[0]
    opt = gn.Adam(lr=0.01)
    fused = _workspace_function(source(g, opt))
    assert fused == _workspace_function(stepwise_source(g, opt)[0])


def _neuron_and_xor():
    x, y = gn.input("x", (8,)), gn.input("y", (1,))
    w, b = gn.param("w", (8, 1)), gn.param("b", (1,))
    neuron = gn.Graph(gn.mse(gn.sigmoid(x @ w + b), y))
    x2 = gn.input("x", (2,))
    W1, b1, W2 = gn.param("W1", (2, 4)), gn.param("b1", (4,)), gn.param("W2", (4, 1))
    xor = gn.Graph(gn.mse(gn.sigmoid(gn.tanh(x2 @ W1 + b1) @ W2), y))
    x4, y3 = gn.input("x", (4,)), gn.input("y", (3,))
    V1, c1, V2 = gn.param("W1", (4, 5)), gn.param("b1", (5,)), gn.param("W2", (5, 3))
    softmax = gn.Graph(gn.softmax_cross_entropy(gn.relu(x4 @ V1 + c1) @ V2, y3))
    return {"neuron": (neuron, 8, 1), "xor": (xor, 2, 1), "softmax": (softmax, 4, 3)}


@pytest.mark.parametrize("name", ["neuron", "xor", "softmax"])
def test_a_small_step_runs_as_one_loop_over_the_rows_with_the_stepwise_bits(name, monkeypatch):
    """codegen/cpu/row_loop.py: the written-out step of a small model whose blocks are loops
    over the batch's rows runs them as one loop, one-column values in variables; bit for bit
    the stepwise kernels' result, with batches of 17 rows (17 * 8 > 128: the products through
    BLAS, the separate blocks) and 3 (the one loop)."""
    g, inputs, classes = _neuron_and_xor()[name]
    rng = np.random.default_rng(1)
    y = rng.uniform(size=(20, 1)) if classes == 1 else np.eye(classes)[rng.integers(0, 3, 20)]
    data = {"x": rng.normal(size=(20, inputs)), "y": y}
    monkeypatch.setenv("GRAPHNN_FUSED", "wait")
    text = _epoch_text(gn.compile(g, gn.SGD(lr=0.1)))
    assert "for i0 in range(n):" in text and "(codegen/cpu/row_loop.py)" in text
    loop = text[text.index("(codegen/cpu/row_loop.py)") : text.index("else:")]
    if classes == 1:  # the output layer's one-column values in variables, not in arrays
        assert re.search(r"\bd_sigmoid1_r = ", loop) and "d_sigmoid1[" not in loop, loop
    else:  # the loss and its gradient in the loop, the loss's mean after it
        assert "softmax_ce1 += " in loop and "softmax_ce1 = softmax_ce1 / nf" in text
    for batch_size in (17, 1):
        fused, _ = _train(g, data, "wait", monkeypatch, OPTIMIZERS["sgd_momentum"], 2, batch_size)
        stepwise, _ = _train(
            g, data, "never", monkeypatch, OPTIMIZERS["sgd_momentum"], 2, batch_size
        )
        assert fused.trainer.fused._ready and not stepwise.trainer.fused._ready
        assert_same_bits(fused, stepwise)
