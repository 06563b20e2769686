"""What a start costs, checked by behaviour rather than by the clock: which modules ``import
graphnn`` loads, which kernels a call compiles, and how the generated training code grows with
the number of parameters (``benchmarks/startup_profile.py`` measures the times themselves).
"""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphnn as gn
from codegen import cache
from codegen.cpu import backend as cpu_backend

ROOT = Path(__file__).resolve().parents[1]


def _mlp(hidden: int, width: int = 4):
    x, y = gn.input("x", (3,)), gn.input("y", (2,))
    h, sizes = x, [3] + [width] * hidden + [2]
    for k in range(len(sizes) - 1):
        W = gn.param(f"W{k + 1}", (sizes[k], sizes[k + 1]), init="he_normal")
        b = gn.param(f"b{k + 1}", (sizes[k + 1],), init="zeros")
        h = h @ W + b
        h = gn.relu(h) if k < len(sizes) - 2 else h
    return gn.Graph(gn.softmax_cross_entropy(h, y))


@pytest.fixture
def private_modules(monkeypatch, tmp_path):
    """An empty kernel cache and no module loaded yet: what a kernel compiles is this test's."""
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "_LOADED", {})


def _data(rows: int = 16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, rows)]
    return {"x": x, "y": y}


def test_import_graphnn_loads_no_heavy_module_it_does_not_need():
    # networkx (0.12 s of every start) is gone; numba, scipy and matplotlib load on first use.
    code = (
        "import sys, graphnn\n"
        "heavy = {'networkx', 'numba', 'scipy', 'matplotlib', 'tqdm', 'sklearn', 'llvmlite'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[]"]


def test_training_code_does_not_grow_per_parameter():
    # One copy of the guard and the update, looped over flat views of every parameter: unrolled
    # per parameter, a 30-layer MLP's 60 inlined update loops were most of its cold compile.
    # train_epoch calls loss_and_grads itself: through train_step, LLVM optimized the step's
    # code once more.  It does update_all's work inline (one copy; update_all, which train_step
    # calls, holds the other).
    for hidden in (1, 6):
        text = cpu_backend.source(_mlp(hidden), gn.Adam(lr=0.01, clip_norm=1.0))
        epoch = text[text.index("def train_epoch(") :]
        for name in ("apply_update", "all_finite", "sum_squares"):
            assert len(re.findall(rf"(?<!def ){name}\(", text)) == 2, (hidden, name)
            assert len(re.findall(rf"{name}\(", epoch)) == 1, (hidden, name)
        assert "loss_and_grads(" in epoch and "train_step(" not in epoch
        assert "update_all(" not in epoch


def _step_kernels(glue, function: str) -> set:
    """The step kernels that ``function`` of a stepwise module calls."""
    import inspect

    text = inspect.getsource(getattr(glue, function))
    return {getattr(glue, name) for name in re.findall(r"\b(step_[0-9a-f]{12})\(", text)}


def test_fit_compiles_no_forward_kernel_and_no_unused_helper(private_modules, monkeypatch):
    # Numba compiles a kernel on its first call: fit compiles the training path only (with
    # GRAPHNN_FUSED=wait, the fused train_epoch and nothing else of the fused module); evaluate
    # and predict compile their forward step kernels when first called, and sum_squares
    # (gradient clipping) is never compiled for an optimizer without clip_norm.
    monkeypatch.setenv("GRAPHNN_FUSED", "wait")
    model = gn.compile(_mlp(1), gn.SGD(lr=0.1, momentum=0.9), backend="cpu")
    data = _data()
    model.fit(data, epochs=1, batch_size=8)
    module, glue = model.trainer.module, model.trainer.stepwise
    assert len(module.train_epoch.signatures) == 1
    assert module.forward.signatures == [] and module.sum_squares.signatures == []
    assert module.train_step.signatures == []  # train_epoch calls loss_and_grads itself
    assert glue.sum_squares.signatures == []
    forward_only = _step_kernels(glue, "forward") - _step_kernels(glue, "loss_and_grads")
    assert forward_only and all(k.signatures == [] for k in forward_only)
    model.evaluate(data)
    assert all(len(k.signatures) == 1 for k in forward_only)
    assert module.forward.signatures == []  # evaluate runs stepwise
    assert model._predictors == {}
    model.predict({"x": data["x"]})
    (predictor,) = model._predictors.values()
    assert all(k.signatures for k in _step_kernels(predictor.stepwise, "forward"))
    assert predictor.module.train_epoch.signatures == []


def test_stepwise_fit_compiles_nothing_of_the_fused_module(private_modules, monkeypatch):
    monkeypatch.setenv("GRAPHNN_FUSED", "never")
    model = gn.compile(_mlp(2), gn.Adam(lr=0.01), backend="cpu")
    model.fit(_data(), epochs=2, batch_size=8)
    model.evaluate(_data())
    module = model.trainer.module
    compiled = [f for f in vars(module).values() if getattr(f, "signatures", None)]
    assert compiled == []
    assert _step_kernels(model.trainer.stepwise, "loss_and_grads")


def test_models_differing_only_in_widths_share_their_compiled_module(private_modules):
    # Kernels read sizes from their arrays, so a new width is the same module text: the same
    # cache file and the same compiled train_epoch (a width change used to recompile for
    # seconds).  A width equal to another size (hidden = 2 = classes) is another pattern, and
    # another module; every one trains as the NumPy reference does.
    opt = gn.SGD(lr=0.1, momentum=0.9)
    graphs = {w: _mlp(1, width=w) for w in (4, 7, 2)}
    texts = {w: cpu_backend.source(g, opt) for w, g in graphs.items()}
    assert texts[4] == texts[7] != texts[2]
    assert "range(4)" not in texts[4] and "range(7)" not in texts[7]
    data, models = _data(), {}
    for w, g in graphs.items():
        ref = gn.compile(g, opt, backend="numpy")
        models[w] = gn.compile(g, opt, backend="cpu")
        for m in (ref, models[w]):
            m.fit(data, epochs=2, batch_size=8, shuffle=False)
        for p in g.param_names:
            np.testing.assert_allclose(models[w].params[p], ref.params[p], rtol=1e-4, atol=1e-5)
    assert models[4].trainer.module is models[7].trainer.module
    assert models[4].trainer.stepwise is models[7].trainer.stepwise
    steps = _step_kernels(models[7].trainer.stepwise, "loss_and_grads")
    assert steps and all(len(k.signatures) == 1 for k in steps)  # compiled once for both
    assert models[2].trainer.module is not models[4].trainer.module


def test_gradient_formulas_of_one_graph_assemble_each_node_once(monkeypatch):
    # The module header shows every parameter's formula; a deep MLP's gradients all read the
    # same chain of cotangents, which was assembled again for each parameter (0.7 s of every
    # start, warm or cold, of a 30-layer MLP).
    from graphnn.derive import matrixform

    built = []
    build = matrixform._Assembler._build
    monkeypatch.setattr(
        matrixform._Assembler,
        "_build",
        lambda self, node: built.append(node.name) or build(self, node),
    )
    g = _mlp(6)
    formulas = [str(g.gradient(p)) for p in g.param_names]
    assert len(built) == len(set(built)) <= len(g.training.nodes)
    assert formulas[0].startswith("x^T")


_WARM_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, {root!r})
import graphnn as gn
from codegen import cache
from tests.test_startup import _data, _mlp

model = gn.compile(_mlp(1), gn.SGD(lr=0.1, momentum=0.9), backend="cpu")
model.fit(_data(), epochs=1, batch_size=8, shuffle=False)
fused = model.trainer.fused
if {fill}:  # the cold start: let the background child put the fused epoch in the cache
    assert fused.child.wait(timeout=600) == 0
stats = model.trainer.module.train_epoch.stats
print(json.dumps({{
    "modules": sorted(m for m in sys.modules if m.startswith("graphnn_")),
    "fused": model.trainer.module.__name__,
    "ready": fused._ready,
    "hits": len(stats.cache_hits), "misses": len(stats.cache_misses),
}}))
"""


def _start(tmp_path, fill: bool) -> dict:
    import json
    import os

    env = dict(os.environ, GRAPHNN_CACHE_DIR=str(tmp_path), GRAPHNN_FUSED="background")
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba")
    code = _WARM_SCRIPT.format(root=str(ROOT), fill=fill)
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_a_warm_start_imports_the_fused_module_and_no_step_kernel(tmp_path):
    # A start whose fused epoch is in the cache trains on it from the first step: it imports
    # the fused module and the shared update kernels (the driver's NaN/Inf test) only, not
    # the stepwise module and its dozen step-kernel modules, and Numba loads train_epoch from
    # its cache instead of compiling it.
    cold = _start(tmp_path, fill=True)
    assert not cold["ready"] and len(cold["modules"]) > 3  # the cold start trained stepwise
    warm = _start(tmp_path, fill=False)
    assert warm["ready"] and warm["hits"] == 1 and warm["misses"] == 0
    assert warm["fused"] in warm["modules"] and len(warm["modules"]) == 2
