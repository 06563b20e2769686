"""Graphs for the CUDA back-end tests, and the runner that executes them on Numba's simulator.

The simulator must be chosen before numba is imported, so the tests run this module in a
subprocess: ``NUMBA_ENABLE_CUDASIM=1 python -m tests.cuda_cases OUT_DIR`` runs every case on the
cuda back end and writes ``OUT_DIR/results.npz`` (arrays) and ``OUT_DIR/results.json`` (errors,
NaN reports, timings).  ``tests/test_cuda.py`` builds the same cases in its own process and
compares them with the NumPy reference and the CPU back end.  Shapes are tiny: the simulator runs
each GPU thread as a Python thread.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

import graphnn as gn
from codegen.signature import forward_inputs
from graphnn.ir.elementwise import ELEMENTWISE
from graphnn.optim.schedules import Step
from tests import cases, reproducers

BATCH = 5


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))


def _op_case(op: str):
    """As in test_gradients: op applied to (2, 3) params, weighted by a (batch, 2, 3) input."""
    row = ELEMENTWISE[op]
    ps = [gn.param(f"p{k}", (2, 3)) for k in range(row.arity)]
    u = gn.input("u", (2, 3))
    g = gn.Graph(gn.sum(gn.apply(op, *ps) * u))
    rng = _rng(op)
    params = {f"p{k}": rng.uniform(*row.domain, (2, 3)) for k in range(row.arity)}
    return g, params, {"u": rng.normal(size=(4, 2, 3))}


def _structural(name: str):
    """Row ``name`` of the shared table (tests/cases.py), with random parameters."""

    def build():
        g, data = cases.build(name)
        rng = cases.rng_for(name + " params")
        params = {n.name: rng.normal(size=n.shape) * 0.5 for n in g.forward.params}
        return g, params, data

    return build


def _mlp(act: str, loss: str, k: int = 3, names=("x", "y", "W1", "b1", "W2", "b2")):
    """A 4 -> 6 -> k perceptron; ``names`` renames its leaves (to clash with the generated code)."""

    def build():
        x, y = gn.input(names[0], (4,)), gn.input(names[1], (k,))
        W1, b1 = gn.param(names[2], (4, 6)), gn.param(names[3], (6,), init="normal")
        W2, b2 = gn.param(names[4], (6, k)), gn.param(names[5], (k,), init="normal")
        z = gn.apply(act, x @ W1 + b1) @ W2 + b2
        g = gn.Graph(
            gn.softmax_cross_entropy(z, y) if loss == "softmax_ce" else getattr(gn, loss)(z, y)
        )
        rng = _rng(act + loss)
        target = np.eye(k)[rng.integers(0, k, 10)] if loss != "mse" else rng.normal(size=(10, k))
        return g, g.init_params(2), {names[0]: rng.normal(size=(10, 4)) * 1.5, names[1]: target}

    return build


STRUCTURAL = {name: _structural(name) for name in cases.STRUCTURAL}
STRUCTURAL |= {
    "mse": _mlp("sigmoid", "mse"),
    "bce_logits": _mlp("relu", "binary_cross_entropy_with_logits"),
    "softmax_ce_gelu": _mlp("gelu", "softmax_ce"),
    "renamed_leaves": _mlp("tanh", "softmax_ce", names=("ws", "rows", "k", "blocks", "cuda", "i")),
}

# name -> (graph builder, dtype, launch): every op of the table, then the structural cases.
GRAD_CASES = {f"op_{op}": (lambda op=op: _op_case(op), "float32", None) for op in ELEMENTWISE}
GRAD_CASES |= {name: (build, "float32", None) for name, build in STRUCTURAL.items()}
GRAD_CASES["float64_mlp"] = (_mlp("tanh", "softmax_ce"), "float64", None)
GRAD_CASES["gpu_launch_mlp"] = (_mlp("tanh", "softmax_ce"), "float32", "gpu")


def _reproducer(name: str):
    case = reproducers.CASES[name]()
    return case.graph, case.params, case.data


GRAD_CASES |= {
    f"repro_{name}": (lambda name=name: _reproducer(name), case().dtype, None)
    for name, case in reproducers.CASES.items()
}
# the NumPy reference's dtype for a case, where it is not float64
REFERENCE_DTYPE = {
    f"repro_{name}": case().reference
    for name, case in reproducers.CASES.items()
    if case().reference != "float64"
}


def _train(act, loss, optimizer, names=None):
    mlp = _mlp(act, loss) if names is None else _mlp(act, loss, names=names)
    return lambda: (*mlp()[::2], optimizer)  # (graph, data, optimizer)


def _dropout_train():
    """An MLP with dropout: every step draws new masks, from the epoch and each sample."""
    x, y = gn.input("x", (4,)), gn.input("y", (3,))
    W1, W2 = gn.param("W1", (4, 6)), gn.param("W2", (6, 3))
    h = gn.dropout(gn.tanh(x @ W1), 0.3, seed=1)
    rng = _rng("dropout_train")
    data = {"x": rng.normal(size=(10, 4)), "y": np.eye(3)[rng.integers(0, 3, 10)]}
    return gn.Graph(gn.softmax_cross_entropy(h @ W2, y)), data, gn.Adam(lr=0.05)


def _batch_norm_train():
    """An MLP with batch norm, clipped: each step assigns the running statistics (unclipped),
    and evaluate and predict read them."""
    x, y = gn.input("x", (4,)), gn.input("y", (3,))
    W1, W2 = gn.param("W1", (4, 6)), gn.param("W2", (6, 3))
    g1, b1 = gn.param("g1", (6,), init="ones"), gn.param("b1", (6,), init="zeros")
    h = gn.tanh(gn.batch_norm(x @ W1, g1, b1, momentum=0.3, name="bn1"))
    rng = _rng("batch_norm_train")
    data = {"x": rng.normal(size=(10, 4)) * 2 + 1, "y": np.eye(3)[rng.integers(0, 3, 10)]}
    optimizer = gn.Adam(lr=0.05, clip_norm=0.5)
    return gn.Graph(gn.softmax_cross_entropy(h @ W2, y)), data, optimizer


# name -> (graph, data, optimizer) builder; batch 4 over 10 rows: steps of 4, 4, 2 rows.
TRAIN_CASES = {
    "adam_tanh_softmax_ce": _train("tanh", "softmax_ce", gn.Adam(lr=0.05)),
    "nesterov_clip_mse": _train(
        "sigmoid", "mse", gn.SGD(lr=0.5, momentum=0.9, nesterov=True, clip_norm=0.5)
    ),
    "rmsprop_3d_input": lambda: (*_op_case("tanh")[::2], gn.RMSProp(lr=0.05)),
    "adam_dropout": _dropout_train,
    "adam_batch_norm_clip": _batch_norm_train,
}
TRAIN_EPOCHS, TRAIN_BATCH = 2, 4


def _overflow_case():
    """Plain gradient descent with a step 40x too large: |x @ w| grows ~39x a step until the
    squared error overflows float32 to inf (on the simulator too: math.log(-1) would raise there,
    where a GPU gives NaN, so the loss goes non-finite through arithmetic)."""
    x, t, w = gn.input("x", (2,)), gn.input("t", (1,)), gn.param("w", (2, 1), init="ones")
    g = gn.Graph(gn.mse(x @ w, t))
    return g, {"x": np.ones((8, 2)), "t": np.zeros((8, 1))}, gn.SGD(lr=10.0)


def _sqrt_case():
    """sqrt(v) from v = 1 with lr = 2: step 1 sets v to exactly 0, where the loss is finite and
    the gradient of v (the second parameter) is not."""
    x, t, w = gn.input("x", (2,)), gn.input("t", (1,)), gn.param("w", (2, 1))
    v = gn.param("v", (1,), init="ones")
    g = gn.Graph(gn.mse(x @ w, t) + gn.sum(gn.power(v, 0.5)))
    return g, {"x": np.full((8, 2), 0.1), "t": np.zeros((8, 1))}, gn.SGD(lr=2.0)


def _update_overflow_case():
    """Step 3 multiplies the learning rate by 1e38: its update overflows W (the loss and
    gradients are finite); the model must hold the values of step 2."""
    x, t = gn.input("x", (4,)), gn.input("t", (3,))
    W, b = gn.param("W", (4, 3)), gn.param("b", (3,), init="normal")
    g = gn.Graph(gn.mse(x @ W + b, t))
    rng = np.random.default_rng(42)
    data = {"x": rng.normal(size=(16, 4)), "t": 100 * rng.normal(size=(16, 3))}
    return g, data, gn.SGD(lr=0.5, momentum=0.9, schedule=Step(every=2, gamma=1e38))


def _running_var_case():
    """Batch norm of the input: the second batch's rows of +-3e19 overflow its float32 variance
    (the loss and gradients stay finite: the normalized values are 0), so the step's guard
    stops on the new running variance, the state parameter after the 2 trainable ones."""
    x, t = gn.input("x", (2,)), gn.input("t", (2,))
    gam, W = gn.param("gam", (2,), init="ones"), gn.param("W", (2, 2))
    g = gn.Graph(gn.mse(gn.batch_norm(x, gam, name="bn") @ W, t))
    rng = np.random.default_rng(8)
    x = rng.normal(size=(8, 2))
    x[4:] = np.sign(x[4:]) * 3e19
    return g, {"x": x, "t": rng.normal(size=(8, 2))}, gn.SGD(lr=0.1)


NONFINITE_CASES = {
    "inf_loss": _overflow_case,
    "inf_gradient": _sqrt_case,
    "update_overflow": _update_overflow_case,
    "running_var_overflow": _running_var_case,
}


def run_training(graph, data, optimizer, backend: str):
    model = gn.compile(graph, optimizer, backend=backend, seed=0)
    history = model.fit(data, epochs=TRAIN_EPOCHS, batch_size=TRAIN_BATCH, seed=3)
    return model, history


def nonfinite_report(graph, data, optimizer, backend: str) -> dict:
    model = gn.compile(graph, optimizer, backend=backend, seed=0)
    report = {"step": None}
    try:
        model.fit(data, epochs=10, batch_size=4, shuffle=False)
    except gn.NonFiniteError as e:
        report = {"step": e.step, "param": e.param, "node": e.node, "message": str(e)}
    report["params"] = {k: v.tolist() for k, v in model.params.items()}
    report["model_step"] = model.step
    return report


# --- the runner (in the simulator subprocess) ---------------------------------------------------


def _run_grad(name, arrays):
    from codegen.cuda import backend as cuda_backend
    from codegen.cuda.library import GPU

    build, dtype, launch = GRAD_CASES[name]
    g, params, data = build()
    if launch == "gpu":
        values = {k: np.asarray(v, np.float32) for k, v in {**params, **data}.items()}
        loss, grads = cuda_backend.value_and_grad(g, values, np.float32, launch=GPU)
    else:
        loss, grads = g.value_and_grad(params, data, backend="cuda", dtype=dtype)
    arrays[f"grad/{name}/loss"] = np.asarray(loss)
    arrays |= {f"grad/{name}/{p}": v for p, v in grads.items()}


def _run_nan(name, arrays):
    case = reproducers.NAN_OPS[name]()
    loss, _ = case.graph.value_and_grad(case.params, case.data, backend="cuda", dtype="float32")
    arrays[f"nan/{name}/loss"] = np.asarray(loss)


def _run_train(name, arrays):
    graph, data, optimizer = TRAIN_CASES[name]()
    model, history = run_training(graph, data, optimizer, "cuda")
    arrays[f"train/{name}/history"] = np.asarray(history["loss"])
    arrays |= {f"train/{name}/param/{k}": v for k, v in model.params.items()}
    arrays |= {f"train/{name}/state/{k}": v for k, v in model.state.items()}
    if forward_inputs(graph, [model.prediction]):
        arrays[f"train/{name}/predict"] = model.predict(data)
    arrays[f"train/{name}/evaluate"] = np.asarray(model.evaluate(data)["loss"])


def main(out: Path) -> None:
    import numba

    sys.setswitchinterval(1e-4)  # the simulator's block manager busy-polls its threads
    arrays, report = {}, {"errors": {}, "nonfinite": {}, "seconds": {}}
    report["simulator"] = bool(numba.config.ENABLE_CUDASIM)
    jobs = [(f"grad/{n}", _run_grad, n) for n in GRAD_CASES]
    jobs += [(f"train/{n}", _run_train, n) for n in TRAIN_CASES]
    # NaN inputs only: the simulator runs math.log(-1) and math.exp(1e3) in Python, which raise
    jobs += [(f"nan/{n}", _run_nan, n) for n in reproducers.NAN_OPS]
    for key, run, name in jobs:
        start = time.perf_counter()
        try:
            run(name, arrays)
        except Exception:  # recorded per case; the tests show it
            report["errors"][key] = traceback.format_exc()
        report["seconds"][key] = time.perf_counter() - start
    for name, build in NONFINITE_CASES.items():
        start = time.perf_counter()
        try:
            report["nonfinite"][name] = nonfinite_report(*build(), "cuda")
        except Exception:
            report["errors"][f"nonfinite/{name}"] = traceback.format_exc()
        report["seconds"][f"nonfinite/{name}"] = time.perf_counter() - start
    np.savez(out / "results.npz", **arrays)
    (out / "results.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
