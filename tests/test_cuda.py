"""The CUDA back end: generated source, float32 PTX, and results against the reference back ends.

Numba picks the simulator when it is first imported, and this process has imported numba for
the CPU back end already, so every simulator check runs in ONE subprocess
(``tests/cuda_cases.py`` with NUMBA_ENABLE_CUDASIM=1) whose results the tests below compare with
the NumPy reference (every op's loss and gradients) and the CPU back end (training).  The PTX
check needs no GPU, only the NVVM wheels.  Tests marked ``gpu`` need a real GPU and skip without.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import graphnn as gn
from codegen.cache import load_module, module_path
from codegen.cuda import backend as cuda_backend
from codegen.cuda.library import SIMULATOR
from codegen.cuda.steps import CudaSteps
from codegen.plan import make_plan
from graphnn.errors import CudaUnavailableError
from tests import cuda_cases as cases
from tests.finite_diff import relative_error

ROOT = Path(__file__).resolve().parents[1]
SIM_VAR = cuda_backend.SIMULATOR_VAR
PARENT_SIM_VAR = os.environ.get(SIM_VAR)
TOL = {"float32": 2e-5, "float64": 1e-10}
TRAIN_REFERENCE = {"adam_tanh_softmax_ce": "cpu"}  # others: the NumPy reference trainer


def _real_gpu() -> bool:
    if cuda_backend.simulator_enabled():
        return False
    from numba import cuda

    return cuda.is_available()


GPU = _real_gpu()
needs_gpu = pytest.mark.skipif(not GPU, reason="no CUDA GPU in this process")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """Run every simulator case once, in a subprocess; (report, arrays)."""
    out = tmp_path_factory.mktemp("cuda_sim")
    env = {**os.environ, SIM_VAR: "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.cuda_cases", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads((out / "results.json").read_text())
    report["wall"] = time.perf_counter() - start
    with np.load(out / "results.npz") as f:
        arrays = dict(f)
    return report, arrays


def _no_error(report, key):
    assert key not in report["errors"], report["errors"].get(key)


def _reference_grads(name):
    build, dtype, _ = cases.GRAD_CASES[name]
    g, params, data = build()
    reference = np.dtype(cases.REFERENCE_DTYPE.get(name, "float64"))
    params = {k: np.asarray(v, reference) for k, v in params.items()}
    loss, grads = g.value_and_grad(params, data, backend="numpy", dtype=reference)
    return g, dtype, loss, grads


# --- on the simulator (one subprocess) ---------------------------------------------------------


def test_simulator_ran_in_a_subprocess_only(sim):
    report, _ = sim
    assert report["simulator"] is True
    assert os.environ.get(SIM_VAR) == PARENT_SIM_VAR  # nothing leaked into this process
    print(f"\nsimulator subprocess: {report['wall']:.1f} s wall")
    for key, seconds in sorted(report["seconds"].items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {seconds:6.2f} s  {key}")


@pytest.mark.parametrize("name", sorted(cases.GRAD_CASES))
def test_loss_and_gradients_match_numpy(sim, name):
    report, arrays = sim
    _no_error(report, f"grad/{name}")
    g, dtype, loss, grads = _reference_grads(name)
    got = arrays[f"grad/{name}/loss"]  # a Python float from Graph.value_and_grad
    assert relative_error(got, loss) < TOL[dtype], (float(got), loss)
    for p in g.param_names:
        got = arrays[f"grad/{name}/{p}"]
        assert got.shape == grads[p].shape and got.dtype == np.dtype(dtype)
        err = relative_error(got, grads[p])
        assert err < TOL[dtype], f"{p}: relative error {err:.2e}"


@pytest.mark.parametrize("name", sorted(cases.reproducers.NAN_OPS))
def test_every_elementwise_op_propagates_nan(sim, name):
    report, arrays = sim
    _no_error(report, f"nan/{name}")
    assert np.isnan(arrays[f"nan/{name}/loss"])


def test_the_cases_cover_every_kernel_kind(sim):
    """Each CUDA emitter and each matmul variant ran in the simulator cases."""
    kinds, sources = set(), ""
    for build, _, _ in cases.GRAD_CASES.values():
        g = build()[0]
        kinds |= {
            s.kind for s in make_plan(g.training, [g.loss_name, *g.grad_names.values()]).steps
        }
        sources += cuda_backend.source(g, launch=SIMULATOR)
    emitted = {m[len("emit_") :] for m in dir(CudaSteps) if m.startswith("emit_")}
    assert kinds >= emitted - {"softmax_ce_grad"}  # always planned with its softmax_ce
    for variant in ("nn", "nt", "tn", "tt"):
        assert f"matmul_{variant}[tiles(" in sources


def test_generated_modules_go_through_the_kernel_cache(sim):
    g = cases.GRAD_CASES["mse"][0]()[0]
    path = module_path(cuda_backend.source(g, None, "float32", (), SIMULATOR))
    assert path.exists()  # the subprocess imported exactly this text from its hashed file


@pytest.mark.parametrize("name", sorted(cases.TRAIN_CASES))
def test_training_matches_reference(sim, name):
    """Two epochs of 3 steps (4, 4 and 2 rows): the parameters, optimizer state and losses."""
    report, arrays = sim
    _no_error(report, f"train/{name}")
    graph, data, optimizer = cases.TRAIN_CASES[name]()
    backend = TRAIN_REFERENCE.get(name, "numpy")
    model, history = cases.run_training(graph, data, optimizer, backend)
    key = f"train/{name}"
    np.testing.assert_allclose(arrays[f"{key}/history"], history["loss"], rtol=2e-5)
    for k, v in model.params.items():
        np.testing.assert_allclose(arrays[f"{key}/param/{k}"], v, rtol=1e-4, atol=2e-6, err_msg=k)
    for k, v in model.state.items():
        np.testing.assert_allclose(arrays[f"{key}/state/{k}"], v, rtol=1e-4, atol=2e-6, err_msg=k)
    evaluate = float(arrays[f"{key}/evaluate"])
    assert evaluate == pytest.approx(model.evaluate(data)["loss"], rel=2e-5)
    if f"{key}/predict" in arrays and backend == "cpu":  # numpy's predict wants every input
        np.testing.assert_allclose(arrays[f"{key}/predict"], model.predict(data), atol=2e-5)


@pytest.mark.parametrize("name", sorted(cases.NONFINITE_CASES))
def test_nonfinite_step_is_reported_like_the_reference(sim, name):
    report, _ = sim
    _no_error(report, f"nonfinite/{name}")
    got = report["nonfinite"][name]
    want = cases.nonfinite_report(*cases.NONFINITE_CASES[name](), "numpy")
    assert want["step"] is not None and want["step"] > 1  # the case does go non-finite, later on
    assert (got["step"], got["param"], got["node"]) == (want["step"], want["param"], want["node"])
    assert got["model_step"] == want["model_step"] == want["step"] - 1
    for k, v in want["params"].items():  # as after the last good step
        np.testing.assert_allclose(got["params"][k], v, rtol=1e-5, err_msg=k)


# --- in this process: source text, errors, PTX -------------------------------------------------


def _mlp_graph():
    return cases.GRAD_CASES["softmax_ce_gelu"][0]()[0]


def _host_function(text: str, name: str) -> list[str]:
    body = text.split(f"\ndef {name}(ws, ", 1)[1]
    return body.split("\n\n\n", 1)[0].splitlines()


def test_source_names_the_node_above_every_kernel_and_launch():
    text = _mlp_graph().source(backend="cuda", optimizer=gn.Adam(clip_norm=1.0))
    assert "njit" not in text and "np.dot" not in text
    lines = text.splitlines()
    kernels = [k for k, line in enumerate(lines) if line.startswith("@cuda.jit")]
    assert len(kernels) > 10
    assert all(lines[k - 1].startswith("# ") for k in kernels)
    launches = 0
    for name in ("loss_and_grads", "forward"):
        body = _host_function(text, name)
        for k, line in enumerate(body):
            if re.search(r"\w\[.+\]\(", line):  # kernel[grid, block](args)
                launches += 1
                above = next(x for x in reversed(body[:k]) if not x.strip() or "#" in x)
                assert re.match(r"\s+# \w+ = ", above), (line, above)
    assert launches > 15
    assert "def train_epoch(ws, " in text and "SIGNATURES = {" in text


def test_clashing_node_names_are_renamed():
    g = cases.GRAD_CASES["renamed_leaves"][0]()[0]
    text = cuda_backend.source(g, launch=SIMULATOR)
    assert "def loss_and_grads(ws, ws_1, rows_1, k_1, blocks_1, cuda_1, i_1):" in text


@pytest.mark.skipif(GPU or cuda_backend.simulator_enabled(), reason="a CUDA device is available")
def test_without_gpu_the_error_says_how_to_use_the_simulator(monkeypatch):
    g = _mlp_graph()
    with pytest.raises(gn.CodegenError, match=f"{SIM_VAR}=1") as info:
        gn.compile(g, backend="cuda")
    assert isinstance(info.value, CudaUnavailableError)
    assert "no CUDA GPU" in str(info.value) and "only after" not in str(info.value)
    monkeypatch.setenv(SIM_VAR, "1")  # too late: numba is imported
    with pytest.raises(CudaUnavailableError, match="only after numba was imported"):
        g.value_and_grad(g.init_params(), {"x": np.ones((2, 4)), "y": np.ones((2, 3))}, "cuda")


F64 = re.compile(r"\.f64\b")  # a double-precision type suffix: .reg .f64, cvt.f64.f32, mul.f64


def _compile_ptx():
    """numba.cuda.compile_ptx, or a skip naming why PTX cannot be produced here."""
    if cuda_backend.simulator_enabled():
        pytest.skip(f"{SIM_VAR} is set in this process: compile_ptx needs the real CUDA target")
    from numba import cuda

    def probe(a):
        a[0] = 1.0

    try:
        cuda.compile_ptx(probe, "void(float32[::1])", cc=(7, 5))
    except Exception as e:  # noqa: BLE001 - any missing NVVM/NVRTC library surfaces differently
        pytest.skip(f"NVVM unavailable (pip install 'numba-cuda[cu13]'): {type(e).__name__}: {e}")
    return lambda fn, sig: cuda.compile_ptx(fn, sig, cc=(7, 5))[0]


def test_ptx_check_detects_double_precision():
    compile_ptx = _compile_ptx()

    def slip(a):
        a[0] = a[0] * 0.1  # a Python float is a double

    assert F64.search(compile_ptx(slip, "void(float32[::1])"))


def test_every_kernel_compiles_to_float32_only_ptx():
    """All op formulas, every step kind, an optimizer with clipping: no f64 instruction."""
    compile_ptx = _compile_ptx()
    u, x, y = gn.input("u", (2, 3)), gn.input("x", (4,)), gn.input("y", (3,))
    ps = [gn.param(f"p{k}", (2, 3), init="ones") for k in range(2)]
    acts = [gn.apply(op, *ps[: row.arity]) for op, row in cases.ELEMENTWISE.items()]
    W, V = gn.param("W", (4, 3)), gn.param("V", (2, 4))
    z = x @ W + gn.sum(gn.matmul(W, V, ta=True, tb=True), axis=1)
    loss = gn.softmax_cross_entropy(z, y) + gn.sum(gn.mean(gn.softmax(z), axis=1))
    g = gn.Graph(loss + gn.sum(sum(acts[1:], acts[0]) * u))  # one fused group of every op
    module = load_module(cuda_backend.source(g, gn.Adam(clip_norm=1.0)))
    for name, signature in module.SIGNATURES.items():
        if name.startswith("fwd_"):  # the same emitters on the same nodes, storing less: skip
            continue  # (0.2-2 s per kernel)
        ptx = compile_ptx(getattr(module, name).py_func, signature)
        bad = [line.strip() for line in ptx.splitlines() if F64.search(line)]
        assert not bad, f"{name}: {bad[:4]}"


# --- on a real GPU -------------------------------------------------------------------------------


@needs_gpu
@pytest.mark.parametrize("name", sorted(cases.GRAD_CASES))
def test_gpu_loss_and_gradients_match_numpy(name):
    build, dtype, _ = cases.GRAD_CASES[name]
    g, params, data = build()
    loss, grads = g.value_and_grad(params, data, backend="cuda", dtype=dtype)
    _, _, want_loss, want = _reference_grads(name)
    assert relative_error(loss, want_loss) < 10 * TOL[dtype]
    for p in g.param_names:
        assert relative_error(grads[p], want[p]) < 10 * TOL[dtype], p


@needs_gpu
@pytest.mark.parametrize("name", sorted(cases.reproducers.NAN_CASES))
def test_gpu_nonfinite_loss_stays_nonfinite(name):
    case = cases.reproducers.NAN_CASES[name]()
    loss, _ = case.graph.value_and_grad(case.params, case.data, backend="cuda", dtype="float32")
    assert not np.isfinite(loss)


@needs_gpu
def test_gpu_large_shapes_match_numpy():
    """Shapes the simulator cannot afford: many tiles, partial tiles, long reductions."""
    x, y = gn.input("x", (70,)), gn.input("y", (10,))
    W1, b1 = gn.param("W1", (70, 130)), gn.param("b1", (130,), init="normal")
    W2 = gn.param("W2", (130, 10))
    g = gn.Graph(gn.softmax_cross_entropy(gn.relu(x @ W1 + b1) @ W2, y))
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(1000, 70)), "y": np.eye(10)[rng.integers(0, 10, 1000)]}
    params = g.init_params(0)
    loss, grads = g.value_and_grad(params, data, backend="cuda")
    want_loss, want = g.value_and_grad(params, data, backend="numpy", dtype=np.float64)
    assert relative_error(loss, want_loss) < 1e-4
    for p in g.param_names:
        assert relative_error(grads[p], want[p]) < 1e-4, p


@needs_gpu
@pytest.mark.parametrize("name", sorted(cases.TRAIN_CASES))
def test_gpu_training_matches_cpu(name):
    graph, data, optimizer = cases.TRAIN_CASES[name]()
    model, history = cases.run_training(graph, data, optimizer, "cuda")
    ref, ref_history = cases.run_training(graph, data, optimizer, "cpu")
    np.testing.assert_allclose(history["loss"], ref_history["loss"], rtol=1e-4)
    for k, v in ref.params.items():
        np.testing.assert_allclose(model.params[k], v, rtol=1e-3, atol=1e-5, err_msg=k)
