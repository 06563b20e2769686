"""The Numba CPU back end against the NumPy reference: the same graph on the same float32 arrays.

Tolerance (rtol 1e-4, atol 1e-5).  Both back ends compute in float32 (eps = 6e-8); they differ only
in summation order (sequential loops and BLAS blocking against NumPy's pairwise sums), in libm
against NumPy transcendentals (1-2 ulp) and in FMA contraction.  The sums here have at most a few
hundred O(1) terms, so the honest difference is below ~1e-5 relative; 1e-4 leaves a 10x margin
and is still far below what any real slip causes (a wrong derivative form, a missed fan-out term
or a float64 upcast show at 1e-3 or more).  atol covers entries near zero, where cancellation in
a sum of O(1) terms leaves an absolute error of a few eps * terms.
"""

import re

import numba
import numpy as np
import pytest
import sympy
from sklearn.datasets import load_digits

import graphnn as gn
from codegen import cache
from codegen.cpu import backend as cpu_backend
from codegen.cpu import im2col
from codegen.cpu.module import stepwise_source
from codegen.plan import make_plan
from codegen.signature import signature
from graphnn.ir.elementwise import ELEMENTWISE
from tests import cases

RTOL, ATOL = 1e-4, 1e-5


def assert_close(got, want, what="", rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def assert_backends_agree(g, params, data, dtype=np.float32, rtol=RTOL, atol=ATOL):
    """Loss and every gradient of ``g`` on the CPU back end match the NumPy reference."""
    params = {k: np.asarray(v, dtype) for k, v in params.items()}
    data = {k: np.asarray(v, dtype) for k, v in data.items()}
    want_loss, want = g.value_and_grad(params, data, backend="numpy")
    loss, grads = g.value_and_grad(params, data, backend="cpu")
    assert np.isfinite(want_loss)
    assert_close(loss, want_loss, "loss", rtol, atol)
    assert sorted(grads) == sorted(g.param_names)
    for p in g.param_names:
        assert grads[p].dtype == dtype and grads[p].shape == want[p].shape, p
        assert np.all(np.isfinite(want[p])), p
        assert_close(grads[p], want[p], f"gradient of {p}", rtol, atol)
    assert any(np.any(want[p] != 0) for p in g.param_names)  # the comparison is not vacuous
    return loss, grads


# --- elementwise ops: one row per entry of the op table -----------------------------------------


@pytest.mark.parametrize("op", sorted(ELEMENTWISE))
def test_elementwise_op(op):
    row = ELEMENTWISE[op]
    rng = np.random.default_rng(1)
    ps = [gn.param(f"p{k}", (2, 3)) for k in range(row.arity)]
    u = gn.input("u", (2, 3))  # random upstream weights, broadcast over the batch
    g = gn.Graph(gn.sum(gn.apply(op, *ps) * u))
    data = {"u": rng.normal(size=(5, 2, 3))}
    params = {f"p{k}": rng.uniform(*row.domain, (2, 3)) for k in range(row.arity)}
    assert_backends_agree(g, params, data)
    if op in gn.ACTIVATIONS:
        # Far into the tails (same kernel): the screened derivative forms must stay finite.
        wide = {"p0": np.linspace(-30, 30, 6).reshape(2, 3)}
        assert_backends_agree(g, wide, data)


def test_softplus_far_in_its_tail_on_the_reference_and_the_cpu():
    """softplus(z) = log(1 + exp(z)) is exp(z) for very negative z, not 0: the NumPy reference
    rounded 1 + exp(z) to 1 from z = -37 (float64) and -17 (float32), so log(softplus(z)) was
    -inf and its gradient NaN, where the CPU (log1p) and PyTorch give about z and 1 (found by
    tests/test_fuzz.py)."""
    x, w = gn.input("x", (1,)), gn.param("w", (1,))
    g = gn.Graph(gn.sum(gn.log(gn.softplus(x * w))))
    z = np.array([[-20.0], [-40.0], [-80.0]])  # exp(-80) is still a normal float32
    want = np.sum(np.log(np.log1p(np.exp(z))))  # = -140 + 1e-9
    for backend, dtype in [("numpy", np.float64), ("numpy", np.float32), ("cpu", np.float32)]:
        params = {"w": np.ones(1, dtype)}
        loss, grads = g.value_and_grad(params, {"x": z.astype(dtype)}, backend, dtype)
        assert loss == pytest.approx(want, rel=1e-6), (backend, dtype)
        # d/dw log(softplus(z w)) = z sigmoid(z w) / softplus(z w), about z for z << 0
        assert grads["w"] == pytest.approx([np.sum(z)], rel=1e-6), (backend, dtype)


# --- structural ops -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(cases.STRUCTURAL))
def test_structural(name):
    g, data = cases.build(name, rows=6)
    assert_backends_agree(g, g.init_params(0), data)


@pytest.mark.parametrize(
    "name", [n for n in sorted(cases.STRUCTURAL) if "conv" in n or "pool" in n]
)
@pytest.mark.parametrize("how", ["im2col", "loops"])
def test_structural_convolution_rows_with_each_lowering(name, how):
    """The image rows with every convolution lowered as im2col + BLAS (+ col2im), the default,
    and as the loop nests (codegen/cpu/im2col.py)."""
    g, data = cases.build(name, rows=6)
    with im2col.forced(how):
        assert ("# im2col: " in cpu_backend.source(g)) == (how == "im2col")
        assert_backends_agree(g, g.init_params(0), data)


@pytest.mark.parametrize("name", sorted(cases.LOSSES))
def test_loss(name):
    g, data = cases.loss_case(name)
    assert_backends_agree(g, g.init_params(0), data)
    # Saturated logits (|z| ~ 100): the fused, stable forms must agree and stay finite.
    big = {"W": np.full((4, 3), 0.0), "b": np.array([100.0, 0.0, -100.0])}
    assert_backends_agree(g, big, data)


# --- whole networks: loss, gradients, and parameters after training ----------------------------


def _mlp(act, width=5):
    x, y = gn.input("x", (4,)), gn.input("y", (3,))
    W1, b1 = gn.param("W1", (4, width)), gn.param("b1", (width,), init="normal")
    W2, b2 = gn.param("W2", (width, 3)), gn.param("b2", (3,), init="normal")
    h = gn.apply(act, x @ W1 + b1)
    return gn.Graph(gn.softmax_cross_entropy(h @ W2 + b2, y))


def _mlp_data(n=20, seed=2):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return {"x": x, "y": np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]}


def train_both(g, data, epochs, batch_size, optimizer=None, dtype="float32", **fit):
    """The same training run on both back ends: same seed, same batches (no shuffling unless
    ``fit`` asks for it, with a seed)."""
    models = {}
    fit = {"shuffle": False, **fit}
    for backend in ("numpy", "cpu"):
        opt = optimizer or gn.SGD(lr=0.1, momentum=0.9)
        model = gn.compile(g, opt, backend=backend, dtype=dtype, seed=0)
        model.fit(data, epochs=epochs, batch_size=batch_size, **fit)
        models[backend] = model
    return models["numpy"], models["cpu"]


@pytest.mark.parametrize("act", gn.ACTIVATIONS)
def test_mlp_with_each_activation(act):
    g, data = _mlp(act), _mlp_data()
    assert_backends_agree(g, g.init_params(seed=0), data)
    ref, cpu = train_both(g, data, epochs=2, batch_size=4)  # 2 x 5 = 10 SGD-momentum steps
    assert cpu.step == ref.step == 10
    assert_close(cpu.history["loss"], ref.history["loss"], "epoch losses")
    for p in g.param_names:
        assert cpu.params[p].dtype == np.float32
        assert not np.array_equal(cpu.params[p], g.init_params(seed=0)[p]), p  # it did train
        assert_close(cpu.params[p], ref.params[p], f"{p} after 10 steps")


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_ragged_last_batch_reuses_the_workspace(act):
    # 20 rows in batches of 8: 8, 8, then 4. The steps share one workspace sized for 8 rows, so
    # the last step must read only its 4 rows and re-zero every accumulator (bias gradients,
    # loss sums); stale rows or sums from the previous step would show in the parameters.
    g, data = _mlp(act), _mlp_data()
    ref, cpu = train_both(g, data, epochs=2, batch_size=8)
    assert cpu.step == ref.step == 6
    assert_close(cpu.history["loss"], ref.history["loss"], "epoch losses")
    for p in g.param_names:
        assert_close(cpu.params[p], ref.params[p], f"{p} after 6 steps")


@pytest.mark.parametrize("shape", [(), (2, 3)])
def test_epoch_gathers_inputs_of_any_rank(shape):
    # train_epoch copies each batch's rows element by element into a reused buffer: a scalar per
    # row for an input of shape (n,), two nested loops for (n, 2, 3).
    x, t = gn.input("x", shape), gn.input("t", shape)
    w = gn.param("w", shape or (1,))
    g = gn.Graph(gn.mean((gn.tanh(x * w) - t) ** 2))
    rng = np.random.default_rng(3)
    data = {k: rng.normal(size=(10, *shape)).astype(np.float32) for k in ("x", "t")}
    ref, cpu = train_both(g, data, 2, 4, gn.SGD(lr=0.5), shuffle=True, seed=1)
    assert_close(cpu.params["w"], ref.params["w"], "w")
    assert not np.array_equal(cpu.params["w"], g.init_params(0)["w"])


@pytest.mark.parametrize("shape", [(), (5,), (2, 3)])
def test_epoch_gather_reads_perm_once_per_row(shape):
    # Read in the element loop, perm[start + r] is reloaded after every store (LLVM cannot tell
    # the batch does not alias perm) and the row copy does not vectorize: 4.5x slower on
    # mnist_mlp's batches.  So each row's source index is read once, before its element loop.
    x, t = gn.input("x", shape), gn.input("t", shape)
    g = gn.Graph(gn.mean((gn.tanh(x * gn.param("w", shape or (1,))) - t) ** 2))
    text = cpu_backend.source(g, gn.SGD(lr=0.5))
    epoch = text[text.index("def train_epoch(") :]
    rows = re.findall(r"^( *)for r in range\(m\):\n\1    _row = perm\[start \+ r\]$", epoch, re.M)
    assert len(rows) == 2, epoch  # one per input (t is renamed: the step's t is reserved)
    copies = re.findall(r"^ *(\w+)\[r\b.*\] = \1_all\[(.*)\]$", epoch, flags=re.M)
    assert [c[1].split(",")[0] for c in copies] == ["_row", "_row"], copies
    assert epoch.count("perm[start + r]") == 2  # once per input, outside the element loops


def test_workspace_too_small_is_refused_and_kept_across_fits():
    g, data = _mlp("tanh"), _mlp_data()
    module = cpu_backend.build(g)
    params = g.init_params(0)
    args = [data["x"], data["y"], *(params[p] for p in g.param_names)]
    with pytest.raises(ValueError, match="fewer rows than the batch"):
        module.loss_and_grads(*args, module.workspace(len(data["x"]) - 1, *args))
    model = gn.compile(g, gn.SGD(lr=0.1), backend="cpu")
    model.fit(data, epochs=1, batch_size=8)
    ws = model.trainer._ws
    model.fit(data, epochs=2, batch_size=4)  # a smaller batch fits in the same buffers
    assert model.trainer._ws is ws and ws[0] == 8


# --- float32 end to end -------------------------------------------------------------------------


DOUBLE_OPS = ("fadd double", "fmul double", "fdiv double", "fsub double", "fpext float")


def kernel_ir(func, name: str) -> str:
    """LLVM IR of the compiled function ``name`` itself: not its CPython wrapper (which boxes
    through double) nor numba's library helpers such as the BLAS dispatch.  Numba keeps no IR
    for what it loads from its on-disk cache, so callers compile in a fresh cache directory."""
    own = []
    for sig in func.signatures:
        blocks = re.split(r"^(?=define |declare )", func.inspect_llvm(sig), flags=re.M)
        heads = [(b, b.splitlines()[0]) for b in blocks if b.startswith("define")]
        own += [b for b, head in heads if name in head and "cpython" not in head]
    assert own, f"no IR found for {name}"
    return "\n".join(own)


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    """A private, empty kernel cache: everything compiles now, so numba has signatures and IR."""
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "_LOADED", {})


def double_ops(ir: str) -> list[str]:
    return [op for op in DOUBLE_OPS if op in ir]


def _float_types(sig, results=True) -> set:
    """The element types of every float argument (and result) of a numba signature."""
    ret = sig.return_type
    outs = ret.types if isinstance(ret, numba.types.BaseTuple) else (ret,)
    types = [getattr(a, "dtype", a) for a in (*sig.args, *(outs if results else ()))]
    return {t for t in types if isinstance(t, numba.types.Float)}


def test_kernels_are_float32_end_to_end(monkeypatch):
    # Through the driver: every float the compiled functions take or return is float32
    # (train_epoch's epoch loss sum is the one documented float64): the fused epoch (compiled
    # before the first epoch here) and every step kernel of the stepwise module (evaluate).
    monkeypatch.setenv("GRAPHNN_FUSED", "wait")
    g, data = _mlp("gelu"), _mlp_data()  # erf and exp: the transcendental-heavy activation
    model = gn.compile(g, gn.Adam(lr=0.01), backend="cpu")
    model.fit(data, epochs=1, batch_size=8, shuffle=False)
    model.evaluate(data)
    module = model.trainer.module
    (epoch,) = module.train_epoch.nopython_signatures
    assert _float_types(epoch, results=False) == {numba.float32}, epoch
    stepwise = model.trainer.stepwise
    steps = [getattr(stepwise, k) for k in dir(stepwise) if k.startswith("step_")]
    sigs = [sig for k in steps for sig in k.nopython_signatures]
    assert len(sigs) >= 4  # evaluate ran the forward's step kernels
    assert set().union(*(_float_types(sig) for sig in sigs)) == {numba.float32}, sigs
    args = [data["x"], data["y"], *(model.params[p] for p in g.param_names)]
    module.loss_and_grads(*args, module.workspace(len(data["x"]), *args))
    (grads,) = module.loss_and_grads.nopython_signatures
    assert _float_types(grads) == {numba.float32}, grads
    assert len(grads.return_type) == 5


def test_kernel_ir_has_no_double(fresh_cache):
    g, data = _mlp("gelu"), _mlp_data()
    opt = gn.Adam(lr=0.01)
    module = cpu_backend.build(g, opt, outputs=[g.loss_name])
    params = g.init_params(0)
    args = [data["x"], data["y"], *(params[p] for p in g.param_names)]
    module.loss_and_grads(*args, module.workspace(len(data["x"]), *args))
    module.forward(*args)
    # apply_update as train_step calls it: P, G, <state>, <hyper>, t, gscale, all float32.
    w, f32 = params["W1"], np.float32
    state = [np.zeros_like(w) for _ in opt.state]
    module.apply_update(w, w.copy(), *state, *map(f32, opt.hyper.values()), f32(1), f32(1))
    for name in ("loss_and_grads", "forward", "apply_update"):
        ir = kernel_ir(getattr(module, name), name)
        assert re.search(r"fmul (\w+ )*float", ir), name  # the kernel body really is here
        assert not double_ops(ir), (name, double_ops(ir))


def test_ir_scan_finds_a_float64_leak(fresh_cache):
    # The scan above can fail: one untyped literal in the generated source promotes to double.
    g = _mlp("sigmoid")
    text = cpu_backend.source(g)
    assert "np.float32(1.0) + np.exp(" in text
    module = cache.load_module(text.replace("np.float32(1.0) + np.exp(", "1.0 + np.exp(", 1))
    data, params = _mlp_data(), g.init_params(0)
    args = [data["x"], data["y"], *(params[p] for p in g.param_names)]
    module.loss_and_grads(*args, module.workspace(len(data["x"]), *args))
    assert double_ops(kernel_ir(module.loss_and_grads, "loss_and_grads"))


def test_float64_dtype():
    g = _mlp("tanh")
    params = {k: v.astype(np.float64) for k, v in g.init_params(0).items()}
    data = {k: v.astype(np.float64) for k, v in _mlp_data().items()}
    assert_backends_agree(g, params, data, np.float64, rtol=1e-10, atol=1e-12)
    assert "float32" not in cpu_backend.source(g, gn.SGD(lr=0.1), dtype="float64")
    ref, cpu = train_both(g, data, epochs=2, batch_size=4, dtype="float64")
    for p in g.param_names:
        assert cpu.params[p].dtype == np.float64
        assert_close(cpu.params[p], ref.params[p], p, rtol=1e-9, atol=1e-12)
    # value_and_grad and training ran the stepwise module's kernels: float64 everywhere
    stepwise = cpu_backend.build_stepwise(g, None, "float64")
    steps = [getattr(stepwise, k) for k in dir(stepwise) if k.startswith("step_")]
    sigs = [sig for k in steps for sig in k.nopython_signatures]
    # (a kernel with no dtype in its text, np.dot's, also serves float32 models: one signature
    # each, never mixed)
    assert all(len(_float_types(sig)) == 1 for sig in sigs), sigs
    assert len([sig for sig in sigs if _float_types(sig) == {numba.float64}]) >= 4, sigs


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_all_finite_finds_every_nan_and_inf(dtype):
    # The guard is a vectorized sum of x * 0 (no early exit): it must still see one bad value
    # anywhere, and must not mistake huge or subnormal finite values for bad ones.
    module = cpu_backend.build(_mlp("tanh"), gn.SGD(lr=0.1), dtype)
    info = np.finfo(dtype)
    a = np.random.default_rng(0).normal(size=(37, 11)).astype(dtype)
    a.flat[:4] = [info.max, -info.max, info.tiny / 4, 0.0]
    assert module.all_finite(a.ravel()) and module.all_finite(a[:0].ravel())  # it takes flat views
    for bad in (np.nan, np.inf, -np.inf):
        for pos in (0, 5, 16, a.size - 1):  # vector lanes, the middle, the scalar tail
            b = a.copy()
            b.flat[pos] = bad
            assert not module.all_finite(b.ravel()), (bad, pos)


# --- names, training runs, deep graphs ----------------------------------------------------------


def test_names_that_collide_with_generated_identifiers():
    # Inputs, parameters and intermediate nodes named like the kernels' own variables, the
    # optimizer's hyperparameters and buffers, and like names derived from renamed nodes.
    t, n = gn.input("t", (3,)), gn.input("n", (2,))
    m, loss = gn.param("m", (3, 2)), gn.param("loss", (2,), init="normal")
    np_, v = gn.param("np", (2,), init="normal"), gn.param("v", (2,), init="normal")
    lr, start = gn.param("lr", (2,), init="normal"), gn.param("start", (2,), init="normal")
    s_1_v, q = gn.param("s_1_v", (2,), init="normal"), gn.param("i0", (2, 2))
    h = gn.tanh(t @ m + loss).named("s")  # renamed s_1; its in-loop scalar would be s_1_v
    out = (h * np_ + v * lr - start + s_1_v).named("j") + h @ q
    g = gn.Graph(gn.mse(gn.softmax(out), n))
    opt = gn.SGD(lr=0.1, momentum=0.9)
    text, sig = cpu_backend.source(g, opt), signature(g, opt)
    for name in ("t", "n", "m", "loss", "np", "v", "lr", "start", "s", "j", "i0"):
        assert sig.ident[name] != name, name
        assert re.search(rf"\b{sig.ident[name]}\b", text), name
    idents = list(sig.ident.values())
    assert len(set(idents)) == len(idents)
    assert f"{sig.ident['s']}_v = " in text  # the renamed node's in-loop scalar ...
    assert sig.ident["s"] != "s_1" and sig.ident["s_1_v"] == "s_1_v"  # ... clashes with nothing
    rng = np.random.default_rng(0)
    data = {"t": rng.normal(size=(12, 3)), "n": rng.random((12, 2))}
    assert_backends_agree(g, g.init_params(0), data)
    ref, cpu = train_both(g, data, epochs=2, batch_size=4, optimizer=opt)
    assert cpu.history["loss"][-1] < cpu.history["loss"][0]
    for p in g.param_names:
        assert_close(cpu.params[p], ref.params[p], p)


def test_unused_input_and_zero_gradient():
    # V feeds only an extra output: its gradient is a zero constant and it is not among the
    # training graph's parameters; input z is an argument of the kernels but no node of the
    # training graph.  Both used to break the CPU path (KeyError 'V'; GraphError on 'z').
    x, z, y = gn.input("x", (3,)), gn.input("z", (3,)), gn.input("y", (2,))
    W, V = gn.param("W", (3, 2)), gn.param("V", (3, 2))
    rng = np.random.default_rng(0)
    data = {k: rng.normal(size=(6, 2 if k == "y" else 3)) for k in ("x", "y", "z")}
    for loss in (gn.mse(x @ W, y), gn.sum(gn.tanh(W) * W)):  # the second reads no input
        g = gn.Graph(loss, outputs=[gn.tanh(z @ V)])
        feed = {k: v for k, v in data.items() if k in g.inputs}
        _, grads = assert_backends_agree(g, g.init_params(0), feed)
        assert not grads["V"].any()


def test_graph_without_inputs():
    W = gn.param("W", (3, 2), init="normal")
    g = gn.Graph(gn.sum(gn.tanh(W) * W))
    assert_backends_agree(g, g.init_params(0), {})


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    Y = np.eye(10, dtype=np.float32)[d.target]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    cut = int(0.8 * len(X))
    train, test = order[:cut], order[cut:]
    return {"x": X[train], "y": Y[train]}, {"x": X[test], "y": Y[test]}


def _digits_graph():
    x, y = gn.input("x", (64,)), gn.input("y", (10,))
    W1, b1 = gn.param("W1", (64, 32), init="he_normal"), gn.param("b1", (32,), init="zeros")
    W2, b2 = gn.param("W2", (32, 10)), gn.param("b2", (10,), init="zeros")
    return gn.Graph(gn.softmax_cross_entropy(gn.relu(x @ W1 + b1) @ W2 + b2, y))


def test_digits_mlp_reaches_95_percent(digits):
    train, test = digits
    model = gn.compile(_digits_graph(), gn.SGD(lr=0.1, momentum=0.9), backend="cpu", seed=0)
    history = model.fit(train, epochs=20, batch_size=32, seed=0)
    assert history["loss"][-1] < 0.2 * history["loss"][0]
    assert model.evaluate(test)["accuracy"] >= 0.95


@pytest.mark.parametrize("batch_size", [None, 1, 64])
def test_batch_sizes_train(digits, batch_size):
    train = {k: v[:256] for k, v in digits[0].items()}
    lr, epochs, steps = {None: (0.5, 10, 1), 1: (0.01, 3, 256), 64: (0.1, 5, 4)}[batch_size]
    model = gn.compile(_digits_graph(), gn.SGD(lr=lr, momentum=0.9), backend="cpu")
    losses = model.fit(train, epochs=epochs, batch_size=batch_size, shuffle=True)["loss"]
    assert model.step == epochs * steps
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses


def test_deep_graph_compiles():
    x, y = gn.input("x", (4,)), gn.input("y", (4,))
    h = x
    for k in range(30):
        h = gn.tanh(h @ gn.param(f"W{k}", (4, 4)))
    g = gn.Graph(gn.mse(h, y))
    assert len(g.training) > 150
    rng = np.random.default_rng(7)
    data = {"x": rng.normal(size=(8, 4)), "y": rng.normal(size=(8, 4))}
    _, grads = assert_backends_agree(g, g.init_params(0), data)
    assert np.any(grads["W0"] != 0)  # the signal made it through all 30 layers


def _mse_graph():
    x, y = gn.input("x", (3,)), gn.input("y", (2,))
    W, b = gn.param("W", (3, 2)), gn.param("b", (2,))
    return gn.Graph(gn.mse(gn.sigmoid(x @ W + b), y))


def test_elementwise_chain_is_one_loop_without_temporaries():
    # mse's backward chain reads only the inlined constant 1/(2n) and forward values, so the
    # whole elementwise forward and backward, the loss sum and the bias gradient share one loop;
    # only the matmul operand d_sigmoid is an array.
    g = _mse_graph()
    text = cpu_backend.source(g)
    body = text[text.index("def loss_and_grads(") : text.index("def forward(")]
    assert body.count("for i0 in range(n):") == 1, body
    assert "np.full(" not in body
    # The step allocates nothing: its arrays are views of the buffers workspace(n) makes once.
    assert not re.search(r"np\.(empty|zeros|full)\(", body), body
    views = re.findall(r"^\s*(\w+) = ws_(\w+)(?:\[:n\])?$", body, flags=re.M)
    assert [a for a, b in views if a == b and "matmul" not in a] == ["d_sigmoid1", "reduce_sum2"]
    # an accumulator is zeroed before each step's sum, by a loop (Numba's ``[:] = 0`` costs
    # more than a small model's whole bias gradient)
    assert "reduce_sum2[z0] = np.float32(0.0)" in body and "[:] = 0" not in body
    ws = text[text.index("def workspace(") : text.index("def loss_and_grads(")]
    assert re.findall(r"# (\w+)$", ws, flags=re.M) == [a for a, _ in views], ws
    sig = signature(g, None)
    outputs = [sig.loss, *sig.grads]
    cpu = make_plan(sig.training, outputs, inline_consts=True, fuse_reductions=True)
    assert [s.kind for s in cpu.steps] == ["matmul", "group", "group", "matmul"]
    # The parallel (CUDA) plan keeps reductions and constants as steps of their own.
    kinds = [s.kind for s in make_plan(sig.training, outputs).steps]
    assert kinds.count("reduce_sum") == 2 and "const" in kinds
    rng = np.random.default_rng(5)
    data = {"x": rng.normal(size=(9, 3)), "y": rng.random((9, 2))}
    assert_backends_agree(g, g.init_params(0), data)


# --- readable source, debug dump, strict printing ----------------------------------------------


def test_source_names_every_node_in_a_comment():
    g = _mlp("sigmoid")
    text = g.source(backend="cpu")
    body = text[text.index("def loss_and_grads(") :]
    body = body[: body.index("\n    return ")]
    blocks = body.split("\n\n")[1:]  # after the signature and batch size: one per step
    assert len(blocks) >= 5
    for block in blocks:
        first = block.strip("\n").splitlines()[0].strip()
        assert re.fullmatch(r"# \w+ = .+", first), block
    sig = signature(g, None)
    plan = make_plan(sig.training, [sig.loss, *sig.grads])
    commented = set(re.findall(r"^\s*# (\w+) = ", body, flags=re.M))
    in_plan = {n.name for step in plan.steps for n in [*step.nodes, *step.reductions]}
    in_plan |= plan.inlined - {n.name for n in sig.training.nodes if n.shape == ()}
    assert in_plan and in_plan <= commented, in_plan - commented


@pytest.mark.parametrize("level, shown", [("2", True), ("1", False), ("10", True)])
def test_debug_env_prints_source(monkeypatch, capsys, level, shown):
    monkeypatch.setenv("GRAPHNN_DEBUG", level)
    g = _mlp("relu")
    g.value_and_grad(g.init_params(0), _mlp_data(), backend="cpu")
    out = capsys.readouterr().out
    assert ("def loss_and_grads(" in out) == shown
    if shown:  # what runs: the stepwise glue and each step kernel it calls
        glue, kernels = stepwise_source(g)
        assert glue in out
        assert kernels and all(f"# {k.name}\n{k.source}" in out for k in kernels)


def test_value_and_grad_builds_once_per_graph_and_dtype(monkeypatch):
    g, data = _mlp("tanh"), _mlp_data()
    rendered = []
    real = cpu_backend.stepwise_source
    monkeypatch.setattr(
        cpu_backend, "stepwise_source", lambda *a, **k: rendered.append(a) or real(*a, **k)
    )
    params = g.init_params(0)
    first = g.value_and_grad(params, data, backend="cpu")
    params["W1"] = params["W1"] + 0.5
    second = g.value_and_grad(params, data, backend="cpu")
    assert len(rendered) == 1 and first[0] != second[0]  # rebuilt: no; recomputed: yes
    g.value_and_grad({k: v.astype(np.float64) for k, v in params.items()}, data, backend="cpu")
    assert len(rendered) == 2  # a new dtype is a new module


def _bessel_graph(on_param_path: bool):
    z = sympy.Symbol("z")
    bessel = gn.elementwise("bessel", sympy.besselj(0, z) + z, [z])
    x, y = gn.input("x", (3,)), gn.input("y", (2,))
    W = gn.param("W", (3, 2))
    if on_param_path:
        return gn.Graph(gn.mse(bessel(x @ W), y))
    return gn.Graph(gn.mse(x @ W + gn.sum(bessel(x), axis=1, keepdims=True), y))


def _assert_codegen_error(g):
    data = {"x": np.ones((4, 3), np.float32), "y": np.zeros((4, 2), np.float32)}
    message = r"the cpu back end cannot print SymPy class 'besselj'"
    with pytest.raises(gn.CodegenError, match=message):
        g.value_and_grad(g.init_params(0), data, backend="cpu")
    with pytest.raises(gn.CodegenError, match=message):
        gn.compile(g, gn.SGD(lr=0.1), backend="cpu")
    with pytest.raises(gn.CodegenError, match=message):
        g.source(backend="cpu")


def test_unknown_sympy_class_raises_codegen_error():
    # In the forward pass only (no derivative needed): the printer's error, not a Numba one.
    _assert_codegen_error(_bessel_graph(on_param_path=False))


def test_unknown_sympy_class_on_the_gradient_path():
    _assert_codegen_error(_bessel_graph(on_param_path=True))
