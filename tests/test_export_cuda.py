"""The CUDA export: the exported module trains on Numba's simulator like graphnn's CPU back end.

Numba picks the simulator when it is first imported, so the exported file runs in a subprocess
(NUMBA_ENABLE_CUDASIM=1) where graphnn, SymPy and networkx cannot be imported.  The script calls
the module's host function ``train_epoch`` as ``codegen.cuda.backend.Trainer.epoch`` does, building
its arguments from the function's own parameter names (``x_all`` is input ``x``'s data; the other
array names are parameters and optimizer buffers), so it needs nothing but the exported file.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import graphnn as gn

BLOCKED = ("graphnn", "sympy", "networkx")

# Both scripts start here: argv = exported module, input .npz, output .npz, codegen/cuda/cudasim.py.
PREAMBLE = """
import importlib.util
import inspect
import sys

import numpy as np
from numba import cuda

assert cuda.is_available() and cuda.simulator  # the simulator, not a GPU
# The simulator's shared-array race (codegen/cuda/cudasim.py), fixed by loading that file by path:
fix = importlib.util.spec_from_file_location("cudasim", sys.argv[4])
cudasim = importlib.util.module_from_spec(fix)
fix.loader.exec_module(cudasim)
assert cudasim.lock_shared_arrays()
spec = importlib.util.spec_from_file_location("mlp_cuda", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
"""

SIM_SCRIPT = (
    PREAMBLE
    + """
with np.load(sys.argv[2]) as f:
    host = {k: f[k] for k in f.files}
dtype = np.float32
n, batch_size = host["x"].shape[0], int(host["batch_size"])
perm = np.arange(n, dtype=np.int64)  # a fixed order: graphnn's fit(shuffle=False)
steps = -(-n // batch_size)
device = {}  # what Trainer.epoch uploads, by train_epoch's argument names
for name in inspect.signature(m.train_epoch).parameters:
    key = name[: -len("_all")] if name.endswith("_all") else name
    if key in host and host[key].ndim > 0:
        device[name] = cuda.to_device(np.ascontiguousarray(host[key], dtype=dtype))
device["perm"] = cuda.to_device(perm)
device["losses"] = cuda.device_array(steps, dtype=dtype)
device["status"] = cuda.to_device(np.zeros(2, np.int64))
device["gscale"] = cuda.to_device(np.ones(1, dtype))
scalars = {"batch_size": batch_size, "t0": 0, "lrs": np.full(steps, host["lr"], dtype)}
scalars |= {k: dtype(host[k]) for k in ("momentum", "weight_decay")}
args = []
for name in list(inspect.signature(m.train_epoch).parameters)[1:]:
    args.append(device[name] if name in device else scalars[name])
done = m.train_epoch(m.Workspace(dtype), *args)
status = device["status"].copy_to_host()
out = {k: device[k].copy_to_host() for k in host if k in device and k not in ("x", "y")}
out["losses"] = device["losses"].copy_to_host()
np.savez(sys.argv[3], **out)
print(done, int(status[0]), sorted(set(sys.modules) & {"graphnn", "sympy", "networkx"}))
"""
)


def mlp_graph():
    """4 -> 8 tanh -> 3, softmax cross-entropy."""
    x, y = gn.input("x", (4,)), gn.input("y", (3,))
    W1, b1 = gn.param("W1", (4, 8), init="glorot_uniform"), gn.param("b1", (8,), init="zeros")
    W2, b2 = gn.param("W2", (8, 3), init="glorot_uniform"), gn.param("b2", (3,), init="zeros")
    return gn.Graph(gn.softmax_cross_entropy(gn.tanh(x @ W1 + b1) @ W2 + b2, y))


def batch_norm_graph():
    """4 -> 8 batch norm, tanh -> 3: the running statistics are assigned by each step."""
    x, y = gn.input("x", (4,)), gn.input("y", (3,))
    W1, b1 = gn.param("W1", (4, 8), init="glorot_uniform"), gn.param("b1", (8,), init="zeros")
    W2, b2 = gn.param("W2", (8, 3), init="glorot_uniform"), gn.param("b2", (3,), init="zeros")
    h = gn.tanh(gn.batch_norm(x @ W1, beta=b1, name="bn1"))
    return gn.Graph(gn.softmax_cross_entropy(h @ W2 + b2, y))


def dropout_graph():
    """4 -> 8 tanh, dropout 0.3 -> 3: grads and fit_epoch draw graphnn's masks."""
    x, y = gn.input("x", (4,)), gn.input("y", (3,))
    W1, b1 = gn.param("W1", (4, 8), init="glorot_uniform"), gn.param("b1", (8,), init="zeros")
    W2, b2 = gn.param("W2", (8, 3), init="glorot_uniform"), gn.param("b2", (3,), init="zeros")
    h = gn.dropout(gn.tanh(x @ W1 + b1), 0.3, seed=4)
    return gn.Graph(gn.softmax_cross_entropy(h @ W2 + b2, y))


def lint(path: Path) -> None:
    """The exported file passes the project's own ruff rules."""
    config = Path(__file__).resolve().parents[1] / "pyproject.toml"
    cmd = [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(config), path]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cuda_export_refuses_hyper_parameter_names_its_wrappers_use(tmp_path):
    x, y = gn.input("x", (2,)), gn.input("y", (1,))
    graph = gn.Graph(gn.mse(x @ gn.param("W", (2, 1)), y))
    custom = gn.Optimizer("custom", {"lr": 0.1, "weights": 0.5}, (), (("P", "P - lr*weights*G"),))
    graph.export(tmp_path / "cpu.py", optimizer=custom)  # fine for the CPU export's wrappers
    with pytest.raises(gn.CodegenError, match="cannot export hyper-parameter names .*weights"):
        graph.export(tmp_path / "gpu.py", optimizer=custom, backend="cuda")


def run_blocked(tmp_path, script: str, module: Path, data: Path) -> subprocess.CompletedProcess:
    """``script`` on the simulator in a subprocess where graphnn, SymPy and networkx can't be
    imported (stub packages that raise ImportError come first on the path); it writes out.npz."""
    stubs = tmp_path / "stubs"
    for name in BLOCKED:
        (stubs / name).mkdir(parents=True, exist_ok=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('blocked: {name}')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR")}
    env |= {"PYTHONPATH": str(stubs), "NUMBA_ENABLE_CUDASIM": "1"}
    cudasim = Path(__file__).resolve().parents[1] / "codegen" / "cuda" / "cudasim.py"
    files = [str(module), str(data), str(tmp_path / "out.npz"), str(cudasim)]
    return subprocess.run(
        [sys.executable, "-c", script, *files],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_cuda_export_trains_on_the_simulator_like_the_cpu_back_end(tmp_path):
    """One epoch (3 mini-batches of 4, data order) of a 4 -> 8 tanh -> 3 softmax-CE MLP with SGD
    momentum through the exported CUDA module on the simulator gives the CPU back end's params,
    momentum buffers and per-step losses (float32 tolerance), with no graphnn at run time."""
    graph = mlp_graph()
    optimizer = gn.SGD(lr=0.1, momentum=0.9)
    rng = np.random.default_rng(7)
    data = {
        "x": rng.normal(size=(12, 4)).astype(np.float32),
        "y": np.eye(3, dtype=np.float32)[rng.integers(0, 3, 12)],
    }
    path = graph.export(tmp_path / "mlp_cuda.py", optimizer=optimizer, backend="cuda")
    model = gn.compile(graph, optimizer, backend="cpu", seed=0)
    start = {"batch_size": 4, **optimizer.hyper, **model.params, **model.state, **data}
    np.savez(tmp_path / "start.npz", **start)  # initial params and state (zero), data, hyper

    t0 = time.perf_counter()
    proc = run_blocked(tmp_path, SIM_SCRIPT, path, tmp_path / "start.npz")
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert proc.stdout.split() == ["3", "0", "[]"], (proc.stdout, wall)  # 3 steps, finite
    with np.load(tmp_path / "out.npz") as f:
        out = {k: f[k] for k in f.files}

    history = model.fit(data, epochs=1, batch_size=4, shuffle=False)
    assert model.step == 3
    assert set(out) == {*model.params, *model.state, "losses"}
    for name, value in {**model.params, **model.state}.items():
        np.testing.assert_allclose(out[name].reshape(value.shape), value, rtol=1e-4, atol=1e-5)
    assert out[name].dtype == np.float32
    assert not np.array_equal(out["W1"], start["W1"])  # it trained
    loss = float(out["losses"].astype(np.float64) @ [4, 4, 4]) / 12  # fit's mean epoch loss
    np.testing.assert_allclose(loss, history["loss"][-1], rtol=1e-4)


API_SCRIPT = (
    PREAMBLE
    + """
with np.load(sys.argv[2]) as f:
    data = {k: f[k] for k in f.files}
params = m.init_params(0)
state = m.init_state(params)
before = m.grads(data["x"], data["y"], params)
mean, t = m.fit_epoch(data, params, state, batch_size=4)
pred = m.predict(data["x"], params)
out = {**params, **state, "mean": mean, "t": t, "pred": pred}
out |= {"grad_" + k: g for k, g in before.items()}
for call in (lambda: m.grads(data["x"][:, :3], data["y"], params),
             lambda: m.predict(data["x"][:, :3], params),
             lambda: m.fit_epoch({"x": data["x"], "y": data["y"][:9]}, params, state)):
    try:
        call()
    except ValueError as e:
        print("ValueError:", e)
np.savez(sys.argv[3], **out)
print(sorted(set(sys.modules) & {"graphnn", "sympy", "networkx"}))
"""
)


@pytest.mark.parametrize(
    "build", [mlp_graph, batch_norm_graph, dropout_graph], ids=["mlp", "batch_norm", "dropout"]
)
def test_cuda_export_api_matches_the_cpu_back_end(tmp_path, build):
    """init_params, init_state, grads, fit_epoch and predict of the exported CUDA module, on the
    simulator with graphnn blocked, against gn.compile(..., backend="cpu") from the same seed."""
    graph = build()
    optimizer = gn.Adam(lr=0.05)
    rng = np.random.default_rng(8)
    data = {
        "x": rng.normal(size=(10, 4)).astype(np.float32),  # batches of 4, 4 and 2
        "y": np.eye(3, dtype=np.float32)[rng.integers(0, 3, 10)],
    }
    path = graph.export(tmp_path / "mlp_cuda.py", optimizer=optimizer, backend="cuda")
    text = path.read_text()
    assert "def fit_epoch(" in text and "def predict(" in text and "def init_params(" in text
    lint(path)
    np.savez(tmp_path / "data.npz", **data)
    proc = run_blocked(tmp_path, API_SCRIPT, path, tmp_path / "data.npz")
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert proc.stdout.splitlines() == [  # input shapes checked; graphnn etc. never imported
        "ValueError: input 'x' has shape (10, 3); expected (batch, 4)",
        "ValueError: input 'x' has shape (10, 3); expected (batch, 4)",
        "ValueError: input 'y' has 9 rows; 'x' has 10",
        "[]",
    ], proc.stdout
    with np.load(tmp_path / "out.npz") as f:
        out = {k: f[k] for k in f.files}

    model = gn.compile(graph, optimizer, backend="cpu", seed=0)
    _, grads0 = graph.value_and_grad(model.params, data, backend="cpu")
    assert sorted(k[5:] for k in out if k.startswith("grad_")) == sorted(graph.param_names)
    for name, g in grads0.items():
        np.testing.assert_allclose(out["grad_" + name], g, rtol=1e-4, atol=1e-6, err_msg=name)
    history = model.fit(data, epochs=1, batch_size=4, shuffle=False)
    assert int(out["t"]) == model.step == 3
    np.testing.assert_allclose(out["mean"], history["loss"][-1], rtol=1e-4)
    for name, value in {**model.params, **model.state}.items():
        np.testing.assert_allclose(out[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    assert not np.array_equal(out["W1"], graph.init_params(0)["W1"])  # it trained
    np.testing.assert_allclose(out["pred"], model.predict(data), rtol=1e-4, atol=1e-5)


def test_cuda_export_main_without_a_gpu_says_so(tmp_path):
    """Without a GPU (and without the simulator) the exported module's main names the problem
    and the way out instead of Numba's driver traceback; with a GPU it trains."""
    x, y = gn.input("x", (2,)), gn.input("y", (1,))
    graph = gn.Graph(gn.mse(x @ gn.param("W", (2, 1)), y))
    path = graph.export(tmp_path / "tiny_cuda.py", backend="cuda")
    lint(path)  # an mse loss: a full reduction to a scalar, unlike the MLP's softmax-CE
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(8, 2)), y=rng.normal(size=(8, 1)))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run(
        [sys.executable, str(path), str(tmp_path / "d.npz"), "--epochs", "1"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if r.returncode == 0:  # a machine with a GPU
        assert r.stdout.startswith("epoch 1: loss "), r.stdout
    else:
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert "no CUDA GPU is available" in r.stderr and "NUMBA_ENABLE_CUDASIM=1" in r.stderr
