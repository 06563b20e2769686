"""The exported standalone module: runs without graphnn and trains bit for bit like graphnn."""

import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

import graphnn as gn
from codegen.cpu.backend import source as cpu_source
from graphnn.ir.ops import INITIALIZERS
from graphnn.ir.prediction import prediction_node

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("graphnn", "sympy", "networkx")


def digits_graph():
    x, y = gn.input("x", (64,)), gn.input("y", (10,))
    W1, b1 = gn.param("W1", (64, 128), init="he_normal"), gn.param("b1", (128,), init="zeros")
    W2, b2 = gn.param("W2", (128, 10)), gn.param("b2", (10,), init="zeros")
    return gn.Graph(gn.softmax_cross_entropy(gn.relu(x @ W1 + b1) @ W2 + b2, y))


def optimizer():
    return gn.SGD(lr=0.1, momentum=0.9)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The exported digits MLP, its data as .npz, and an environment where graphnn, sympy and
    networkx cannot be imported (stub packages that raise ImportError come first on the path)."""
    root = tmp_path_factory.mktemp("export")
    stubs = root / "stubs"
    for name in BLOCKED:
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('blocked: {name}')\n")
    work = root / "work"  # not the repo root, so nothing from the repo is importable
    work.mkdir()
    X, labels = load_digits(return_X_y=True)
    data = {
        "x": (X[:320] / 16).astype(np.float32),
        "y": np.eye(10, dtype=np.float32)[labels[:320]],
    }
    np.savez(work / "digits.npz", **data)
    graph = digits_graph()
    path = graph.export(work / "digits_mlp.py", optimizer=optimizer())
    drop = ("PYTHONPATH", "NUMBA_CACHE_DIR")  # the cache belongs next to the exported file
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = str(stubs)
    return types.SimpleNamespace(graph=graph, path=path, work=work, data=data, env=env)


def run(digits, *args, env=None):
    return subprocess.run(
        [sys.executable, *args],
        cwd=digits.work,
        env={**digits.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


STANDALONE = """
import sys
import numpy as np
import digits_mlp as m

with np.load("digits.npz") as f:
    data = {k: f[k] for k in f.files}
params, t = m.init_params(0), 0
state = m.init_state(params)
for _ in range(2):
    _, t = m.fit_epoch(data, params, state, batch_size=32, t0=t)
stepped = m.init_params(0)
stepped_state = m.init_state(stepped)
losses = [m.step(data["x"], data["y"], stepped, stepped_state, t=k) for k in (1, 2, 3)]
out = {f"epoch_{k}": v for k, v in {**params, **state}.items()}
out |= {f"step_{k}": v for k, v in {**stepped, **stepped_state}.items()}
out["pred"] = m.predict(data["x"], params)
out["loss"] = np.float32(m.loss(data["x"], data["y"], params))
np.savez("standalone.npz", **out)
print(t, sorted(set(sys.modules) & {"graphnn", "sympy", "networkx"}))
"""


def test_blocked_environment_really_blocks(digits):
    for name in BLOCKED:
        r = run(digits, "-c", f"import {name}")
        assert r.returncode != 0 and f"blocked: {name}" in r.stderr


def test_standalone_training_matches_graphnn_bit_for_bit(digits):
    r = run(digits, "-c", STANDALONE)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["20", "[]"]  # 2 epochs of 10 batches; no graphnn, sympy, networkx
    with np.load(digits.work / "standalone.npz") as f:
        out = {k: f[k] for k in f.files}
    model = gn.compile(digits.graph, optimizer(), backend="cpu", seed=0)
    model.fit(digits.data, epochs=2, batch_size=32, shuffle=False)
    full_batch = gn.compile(digits.graph, optimizer(), backend="cpu", seed=0)
    full_batch.fit(digits.data, epochs=3, batch_size=None, shuffle=False)  # steps t = 1, 2, 3
    for prefix, m in [("epoch", model), ("step", full_batch)]:
        for name, value in {**m.params, **m.state}.items():
            saved = out[f"{prefix}_{name}"]
            assert saved.dtype == value.dtype and np.array_equal(saved, value), (prefix, name)
    assert np.array_equal(out["pred"], model.predict(digits.data))
    assert out["loss"] == np.float32(model.evaluate(digits.data)["loss"])
    # Numba's on-disk cache works on the exported file.
    cached = {p.name.split("-")[0] for p in (digits.work / "__pycache__").glob("*.nbi")}
    assert {"digits_mlp.loss_and_grads", "digits_mlp.train_epoch"} <= cached


def test_exported_kernels_are_graphnn_kernels(digits):
    graph, text = digits.graph, digits.path.read_text()
    prediction = prediction_node(graph.forward, graph.loss_name)[0]
    kernels = cpu_source(graph, optimizer(), "float32", (graph.loss_name, prediction))
    assert kernels[kernels.index("def workspace(") :] in text
    for p in graph.param_names:  # the header shows each gradient formula
        assert f"dL/d{p} = {graph.gradient(p)}" in text
    assert "digits_mlp: a standalone training module" in text.splitlines()[0]
    assert "# relu1 = relu(add1)" in text  # a comment naming the graph node above each block


def test_exported_module_lints_compiles_and_is_short(digits):
    config = REPO / "pyproject.toml"  # the project's rules (E, F, W, I, B, UP; 100 columns)
    lint = [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(config)]
    r = subprocess.run([*lint, str(digits.path)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "py_compile", str(digits.path)], capture_output=True)
    assert r.returncode == 0, r.stderr
    # 513 lines when written: kernels (each binding the sizes it reads from its arrays, each
    # bias gradient zeroed by a loop of two lines), the workspace's buffer list (one line per
    # buffer), the API with its input checks, the SciPy check, train_epoch's gather reading
    # each row's index once (a line per input).
    assert len(digits.path.read_text().splitlines()) < 520


def test_main_trains_on_npz_like_fit(digits):
    args = ["digits_mlp.py", "digits.npz", "--epochs", "4", "--lr", "0.1", "--seed", "1"]
    r = run(digits, *args, "--save", "trained.npz")
    assert r.returncode == 0, r.stderr
    losses = [float(v) for v in re.findall(r"^epoch \d+: loss (\S+)$", r.stdout, re.M)]
    assert len(losses) == 4 and all(a > b for a, b in zip(losses, losses[1:], strict=False))
    model = gn.compile(digits.graph, optimizer(), backend="cpu", seed=1)
    history = model.fit(digits.data, epochs=4, batch_size=32, seed=1)  # the same shuffles
    assert losses == [float(f"{v:.6f}") for v in history["loss"]]
    with np.load(digits.work / "trained.npz") as f:
        assert all(np.array_equal(f[k], v) for k, v in model.params.items())
    r = run(digits, *args[:2], "--epochs", "1", env={"NUMBA_DEBUG_CACHE": "1"})
    assert re.search(r"data loaded from .*digits_mlp\.train_epoch", r.stdout), r.stdout
    r = run(digits, "digits_mlp.py", "missing.npz")
    assert r.returncode == 2 and "cannot read missing.npz" in r.stderr
    assert "Traceback" not in r.stderr
    r = run(digits, *args[:2], "--epochs", "2", "--lr", "1e30")  # diverges at once
    assert r.returncode == 1 and "is not finite (NaN or Inf)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # Numba's cache locator finds functions through the module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_init_params_equal_graphnn_for_every_initializer(tmp_path, dtype):
    x, t = gn.input("x", (4,)), gn.input("t", (3,))
    h = x @ gn.param("A", (4, 3), init="glorot_uniform") + gn.param("a", (3,), init="zeros")
    for k, init in enumerate(["he_normal", "he_uniform", "glorot_normal", "normal"]):
        h = h @ gn.param(f"M{k}", (3, 3), init=init)
    h = h + gn.param("c", (3,), init="ones") + gn.param("d", (3,), init="uniform")
    graph = gn.Graph(gn.mse(h, t))
    inits = {n.attr("init") for n in graph.forward.params}
    assert inits == set(INITIALIZERS)
    module = _load(graph.export(tmp_path / f"inits_{dtype}.py", dtype=dtype))
    for seed in (0, 1, 12345):
        mine, theirs = module.init_params(seed), graph.init_params(seed, np.dtype(dtype))
        assert list(mine) == list(theirs)
        for name, value in theirs.items():
            assert mine[name].dtype == value.dtype and np.array_equal(mine[name], value), name
    assert not np.array_equal(module.init_params(0)["A"], module.init_params(1)["A"])


def test_names_that_clash_with_the_api(tmp_path):
    """Inputs named like wrapper arguments and parameters named like generated identifiers."""
    data_in, step_in = gn.input("params", (3,)), gn.input("step", (2,))
    w = gn.param("loss", (3, 2))
    b = gn.param("len", (2,), init="uniform")
    graph = gn.Graph(gn.mse(gn.tanh(data_in @ w + b), step_in))
    module = _load(graph.export(tmp_path / "clash.py", optimizer=gn.Adam(lr=0.05)))
    rng = np.random.default_rng(0)
    data = {"params": rng.normal(size=(8, 3)), "step": rng.normal(size=(8, 2))}
    data = {k: v.astype(np.float32) for k, v in data.items()}
    params = module.init_params(0)
    value, grads = graph.value_and_grad(params, data, backend="cpu")
    assert module.loss(data["params"], data["step"], params) == value
    mine = module.grads(data["params"], data["step"], params)
    assert all(np.array_equal(mine[k], grads[k]) for k in grads)
    state = module.init_state(params)
    for t in (1, 2):
        module.step(data["params"], data["step"], params, state, t=t)
    model = gn.compile(graph, gn.Adam(lr=0.05), backend="cpu", seed=0)
    model.fit(data, epochs=2, batch_size=None, shuffle=False)
    assert all(np.array_equal(params[k], model.params[k]) for k in params)
    assert np.array_equal(module.predict(data["params"], params), model.predict(data))
    with pytest.raises(FloatingPointError, match="step 3: the loss is not finite"):
        module.step(data["params"] * np.nan, data["step"], params, state, t=3)


def test_wrong_input_shapes_are_named_before_any_kernel_runs(tmp_path):
    graph = digits_graph()
    module = _load(graph.export(tmp_path / "shapes.py"))
    params, x, y = module.init_params(0), np.zeros((6, 64)), np.zeros((6, 10))
    wrong = "input 'x' has shape (6, 63); expected (batch, 64)"
    calls = {
        "loss": lambda: module.loss(x[:, :63], y, params),
        "grads": lambda: module.grads(x[:, :63], y, params),
        "step": lambda: module.step(x[:, :63], y, params, module.init_state(params)),
        "fit_epoch": lambda: module.fit_epoch(
            {"x": x[:, :63], "y": y}, params, module.init_state(params)
        ),
        "predict": lambda: module.predict(x[:, :63], params),
    }
    before = {k: v.copy() for k, v in params.items()}
    for name, call in calls.items():
        with pytest.raises(ValueError, match=re.escape(wrong)):
            call()
            pytest.fail(f"{name} took the wrong shape")
    assert all(np.array_equal(before[k], params[k]) for k in params)  # nothing was trained
    with pytest.raises(ValueError, match="input 'y' has 5 rows; 'x' has 6"):
        module.loss(x, y[:5], params)
    with pytest.raises(ValueError, match=re.escape("input 'x' has shape (64,); expected")):
        module.predict(x[0], params)
    with pytest.raises(ValueError, match=re.escape("no samples (batch of size 0)")):
        module.fit_epoch({"x": x[:0], "y": y[:0]}, params, module.init_state(params))


def test_export_errors(tmp_path, monkeypatch):
    graph = digits_graph()
    with pytest.raises(gn.CodegenError, match="back end 'tpu'"):
        graph.export(tmp_path / "m.py", backend="tpu")
    with pytest.raises(gn.CodegenError, match="back end 'numpy'"):
        graph.export(tmp_path / "m.py", backend="numpy")
    with pytest.raises(gn.CodegenError, match="dtype"):
        graph.export(tmp_path / "m.py", dtype="int32")
    with pytest.raises(FileNotFoundError, match="directory .*nowhere does not exist"):
        graph.export(tmp_path / "nowhere" / "m.py")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        graph.export(tmp_path)
    monkeypatch.setitem(sys.modules, "codegen.cuda.backend", None)  # the module cannot be imported
    with pytest.raises(gn.CodegenError, match="the CUDA exporter needs numba-cuda"):
        graph.export(tmp_path / "m.py", backend="cuda")
    monkeypatch.undo()
    with pytest.raises(gn.CodegenError, match="epochs must be a positive int, got 0"):
        graph.export(tmp_path / "m.py", epochs=0)
    with pytest.raises(gn.CodegenError, match="batch_size must be a positive int or None"):
        graph.export(tmp_path / "m.py", batch_size="full")
    path = graph.export(tmp_path / "m.py", dtype="float64")
    assert "DTYPE = np.float64" in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.py"]  # no temp files left behind


def test_a_module_that_calls_blas_says_it_needs_scipy_and_checks_it(digits):
    text = digits.path.read_text()
    assert "needs numpy, numba and SciPy" in text and "np.dot(" in text
    stubs = digits.work.parent / "stubs_scipy"
    (stubs / "scipy").mkdir(parents=True, exist_ok=True)
    (stubs / "scipy" / "__init__.py").write_text("raise ImportError('blocked: scipy')\n")
    path = f"{digits.env['PYTHONPATH']}{os.pathsep}{stubs}"
    r = run(digits, "-c", "import digits_mlp", env={"PYTHONPATH": path})
    assert r.returncode == 1
    assert "this module needs SciPy (pip install scipy)" in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) < 15, r.stderr  # not Numba's 300-line typing error


def test_no_blas_export_trains_without_scipy(digits):
    """--no-blas: every product is generated loops; the module trains with numpy and numba only."""
    out = digits.work / "digits_loops.py"
    cmd = [sys.executable, "-m", "graphnn.cli", "export", str(REPO / "examples" / "digits.toml")]
    r = subprocess.run([*cmd, "-o", str(out), "--no-blas"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "np.dot(" not in text and "needs only numpy and numba" in text
    stubs = digits.work.parent / "stubs_scipy"
    (stubs / "scipy").mkdir(parents=True, exist_ok=True)
    (stubs / "scipy" / "__init__.py").write_text("raise ImportError('blocked: scipy')\n")
    path = f"{digits.env['PYTHONPATH']}{os.pathsep}{stubs}"
    script = (
        "import numpy as np, digits_loops as m\n"
        "with np.load('digits.npz') as f:\n"
        "    data = {k: f[k] for k in f.files}\n"
        "params = m.init_params(0); state = m.init_state(params)\n"
        "losses, t = [], 0\n"
        "for _ in range(3):\n"
        "    loss, t = m.fit_epoch(data, params, state, t0=t)\n"
        "    losses.append(loss)\n"
        "assert losses[-1] < losses[0], losses\n"
        "import sys; assert 'scipy' not in sys.modules or sys.modules['scipy'] is None\n"
        "print(losses)\n"
    )
    r = run(digits, "-c", script, env={"PYTHONPATH": path})
    assert r.returncode == 0, r.stderr[-3000:]


def _only(packages, site: Path) -> Path:
    """A site folder holding just ``packages`` (links to the installed ones, with the shared
    libraries their wheels ship beside them, e.g. numpy.libs)."""
    import importlib

    site.mkdir(parents=True, exist_ok=True)
    for name in packages:
        folder = Path(importlib.import_module(name).__file__).resolve().parent
        for entry in [folder, *folder.parent.glob(f"{name}.libs")]:
            if not (site / entry.name).exists():
                (site / entry.name).symlink_to(entry, target_is_directory=True)
    return site


def test_no_blas_export_trains_with_only_numpy_and_numba_importable(digits):
    """What the module's docstring says it needs is all it needs: a Python started isolated
    (-I -S: no site-packages, no user path) that can import numpy, numba and llvmlite (numba's
    compiler) and nothing else trains the --no-blas module."""
    out = digits.work / "digits_bare.py"
    cmd = [sys.executable, "-m", "graphnn.cli", "export", str(REPO / "examples" / "digits.toml")]
    r = subprocess.run([*cmd, "-o", str(out), "--no-blas"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "needs only numpy and numba" in out.read_text()
    site = _only(["numpy", "numba", "llvmlite"], digits.work.parent / "bare_site")
    script = (
        f"import sys; sys.path[:0] = [{str(site)!r}, '.']\n"
        "import numpy as np, digits_bare as m\n"
        "with np.load('digits.npz') as f:\n"
        "    data = {k: f[k] for k in f.files}\n"
        "params = m.init_params(0); state = m.init_state(params)\n"
        "first, t = m.fit_epoch(data, params, state)\n"
        "last, t = m.fit_epoch(data, params, state, t0=t)\n"
        "assert last < first, (first, last)\n"
        "for name in ('scipy', 'sympy', 'graphnn', 'sklearn', 'networkx'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError:\n"
        "        continue\n"
        "    raise SystemExit(f'{name} was importable')\n"
        "print('ok')\n"
    )
    r = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script],
        cwd=digits.work,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
