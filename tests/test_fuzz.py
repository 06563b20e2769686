"""Property-based fuzzing: random graphs (``tests/fuzz_graphs.py``) against two oracles.

1. The NumPy reference's gradients, in float64, agree with float64 central differences of its
   own loss; and NaN is never turned into a number (as in PyTorch): a NaN anywhere in the
   forward pass, or one NaN put into the data, makes the loss NaN.
2. Each compiled back end (cpu; cuda on Numba's simulator), in float32, agrees with the float64
   NumPy reference on the loss and every gradient, and is NaN exactly where the reference is
   (on the cpu also for one more draw with a NaN in the data).
3. Training on the cpu: the fused epoch (a small model's step written out, as one loop over the
   rows where it can be) ends with the stepwise kernels' parameters and losses, bit for bit,
   or stops on NaN/Inf at the same step with the same parameters.

The back ends run in a child process, ``python -m tests.test_fuzz BACKEND EXAMPLES [SEED]``,
started with ``NUMBA_BOUNDSCHECK=1`` (every array access of a generated kernel is checked: an
out-of-bounds index is an IndexError, not silent heap corruption) and, for cuda,
``NUMBA_ENABLE_CUDASIM=1``; Numba reads both once, at import.  The child's kernel cache is a
directory of its own (``$GRAPHNN_CACHE_DIR-boundscheck``): Numba's cache is keyed on the module
file and the signature, not on the bounds-check flag, so the suite's unchecked kernels must never
be loaded there.  A crash of the child fails the test instead of the whole session.

Budget.  Every new graph costs the cpu back end a Numba compile (0.2-5 s, ~0.85 s of CPU on
average), so each compiled graph is checked on five data draws (batch 1, an odd batch, another,
that one with a NaN, that one scaled), and the graph count is fixed.  In CI the examples are
derandomized (the same graphs every run, so a warm cache makes reruns fast: ~1 min; a cold run
is ~55 s of CPU, ~2 min of wall time while other jobs load both cores).  ``pytest --fuzz-long``
runs :data:`LONG` with a random seed, printed with the summary (about 20 min at nice 19).

Tolerances.
- Reference vs central differences (eps = 1e-6, float64): the truncation error is about
  eps**2/6 * |f'''| and the rounding error about 1e-16 * |terms| / eps ~ 1e-10 * |terms|, so
  ``|fd - g| <= 1e-5 |g| + 1e-6 * scale + |fd(2 eps) - fd|`` (scale = max(1, |loss|,
  max |gradient|)); the last term is 3x the truncation error itself, large only where the loss
  curves hard.  The summary prints the worst error / allowance (about 2e-3 over 5,000 graphs;
  without the last term, exp(exp(p / x)) reached 0.6), while a wrong rule is off by O(1).
  Inputs within 1e-4 of a kink (relu, leaky_relu, elu at 0), where differences do not measure
  the derivative, and points where a perturbed loss is NaN/Inf are skipped and counted.
- Back end (float32) vs reference (float64, on the same float32-rounded arrays):
  ``|got - want| <= 4 |want32 - want| + 1e-4 |want| + 1e-5 * max(1, max |want|)``, where want32 is
  the NumPy reference run in float32.  Its distance from float64 measures how much float32
  rounding moves this graph on this data (cancellation, division by small values), which a fixed
  tolerance cannot know; the other terms cover libm against NumPy (1-2 ulp), summation order,
  FMA and the rational tanh.  Where float32 overflows but float64 does not, values are not
  compared.  NaN in the reference must be NaN on the back end, and finite must stay finite.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import graphnn as gn
from codegen.numpy_ref import evaluate
from tests.finite_diff import central_differences
from tests.fuzz_graphs import Program, programs

ROOT = Path(__file__).resolve().parents[1]

FD_EPS, FD_RTOL, FD_ATOL = 1e-6, 1e-5, 1e-6
KINKS, KINK_MARGIN = ("relu", "leaky_relu", "elu"), 1e-4
RTOL, ATOL, ROUNDING = 1e-4, 1e-5, 4.0
FD_BATCHES = (1, 3, 5, 2)
ODD_BATCHES, OTHER_BATCHES = (3, 5, 7), (2, 4, 6, 8)
WIDE = 30  # the cpu's last draw again with normal inputs this much larger (float32 overflows)


@dataclass(frozen=True)
class Budget:
    """Graphs per property; seed None is derandomized (the same graphs every run)."""

    fd: int
    cpu: int
    cuda: int
    epoch: int
    seed: int | None = None


CI = Budget(fd=800, cpu=24, cuda=12, epoch=8)  # cold: ~55 s of CPU in all (the compiles ~20 s)
LONG = Budget(fd=5000, cpu=400, cuda=150, epoch=100)


class FuzzFailure(AssertionError):
    """A property failed; the message holds a standalone reproducer."""


def _settings(examples: int, seed: int | None) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,  # a compile takes seconds
        database=None,  # CI runs are reproducible from the seed alone
        derandomize=seed is None,
        print_blob=False,
        # Shrinking compiles every smaller graph: shrink the first bug found, not every one.
        report_multiple_bugs=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


def _run(check, strategies, examples: int, seed: int | None, stats: Counter) -> None:
    """Run ``check`` on ``examples`` draws of ``strategies``; the first failure is counted."""

    def prop(program, batch, data_seed):
        try:
            check(program, batch, data_seed)
        except FuzzFailure:
            stats.setdefault("first failure at graph", stats["graphs"])
            raise

    test = _settings(examples, seed)(given(*strategies)(prop))
    if seed is not None:
        test = hypothesis_seed(seed)(test)
    test()


def _worst(stats: Counter, ratio: float) -> None:
    """Keep the largest error / allowance of a passing comparison: the tolerance's room."""
    stats["worst error/allowance"] = max(stats["worst error/allowance"], round(ratio, 6))


def _fail(program: Program, batch: int, seed: int, what: str, detail: str, check: str, dtype):
    script = program.reproducer(batch, seed, check, what, dtype)
    raise FuzzFailure(f"{what}: {detail}\n\n--- reproducer ---\n{script}\n--- end ---")


def _build(program: Program, stats: Counter):
    """The program's graph; a graphnn error is a refusal (counted, example rejected)."""
    stats["graphs"] += 1
    try:
        return program.build()
    except gn.GraphnnError as e:
        stats["refused"] += 1
        stats["refused (deliberate misfit)"] += program.deliberate_misfit
        event(f"builder refused: {type(e).__name__}")
        reject()
    except Exception as e:
        detail = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        _fail(program, 1, 0, "the builder raised a non-graphnn error", detail, "", np.float64)


# --- property 1: the reference against central differences ------------------------------------

FD_CHECK = """\
from tests.finite_diff import numeric_gradients  # run from the repository root
loss, grads = g.value_and_grad(params, data, backend="numpy", dtype=np.float64)
fd = numeric_gradients(g, params, data)
for p in g.param_names:
    print(p, "reference:", grads[p].ravel(), "differences:", fd[p].ravel(), sep="\\n")
"""

NAN_CHECK = """\
env = g.evaluate_nodes(params, data, dtype=np.float64)
nan_nodes = [n.name for n in g.forward.nodes if np.isnan(env[n.name]).any()]
print("forward nodes holding NaN:", nan_nodes)
print("loss:", env[g.loss_name])  # PyTorch: NaN
"""


def _near_kink(g, env) -> bool:
    for node in g.forward.nodes:
        if node.op == "ewise" and node.attr("fn") in KINKS:
            if np.min(np.abs(env[node.inputs[0]])) < KINK_MARGIN:
                return True
    return False


def nan_position(g, data, seed: int) -> tuple[str, int]:
    """Where a draw puts its NaN: an input of the graph and a flat index, chosen by the seed."""
    names = sorted(g.inputs)
    name = names[seed % len(names)]
    return name, (seed // len(names)) % data[name].size


def check_nan_data(program: Program, g, params, data, batch: int, seed: int, stats) -> None:
    """One NaN in the data makes the loss NaN (every element of every node reaches the loss)."""
    if not g.inputs:
        return
    name, k = nan_position(g, data, seed)
    data = {**data, name: data[name].copy()}
    data[name].flat[k] = np.nan
    with np.errstate(all="ignore"):
        loss = evaluate(g.forward, {**params, **data}, np.float64, outputs=[g.loss_name])
    stats["NaN data checked"] += 1
    if not np.isnan(loss[g.loss_name]):
        detail = (
            f"input {name!r} holds a NaN at flat index {k}, but the loss is {loss[g.loss_name]}"
        )
        check = f"data[{name!r}].flat[{k}] = np.nan\n" + NAN_CHECK
        _fail(program, batch, seed, "NaN lost", detail, check, np.float64)


def check_reference(program: Program, batch: int, seed: int, stats: Counter) -> None:
    g = _build(program, stats)
    params, data = program.values(batch, seed)
    check_nan_data(program, g, params, data, batch, seed, stats)
    with np.errstate(all="ignore"):
        env = g.evaluate_nodes(params, data, dtype=np.float64)
    loss = env[g.loss_name]
    grads = {p: env[g.grad_names[p]] for p in g.param_names}
    nan_nodes = [n.name for n in g.forward.nodes if np.isnan(env[n.name]).any()]
    if nan_nodes:
        stats["NaN in the forward pass"] += 1
        if not np.isnan(loss):
            detail = f"forward nodes {nan_nodes} hold NaN, but the loss is {float(loss)}"
            _fail(program, batch, seed, "NaN lost", detail, NAN_CHECK, np.float64)
        return
    if not (np.isfinite(loss) and all(np.isfinite(v).all() for v in grads.values())):
        stats["Inf in the reference"] += 1
        return
    if _near_kink(g, env):
        stats["near a kink"] += 1
        return

    def loss_at(p):
        with np.errstate(all="ignore"):
            out = evaluate(g.forward, {**p, **data}, np.float64, outputs=[g.loss_name])
        return float(out[g.loss_name])

    fd = central_differences(loss_at, params, FD_EPS)
    fd2 = central_differences(loss_at, params, 2 * FD_EPS)
    if not all(np.isfinite(v).all() for v in [*fd.values(), *fd2.values()]):
        stats["singular within eps"] += 1
        return
    scale = max([1.0, abs(float(loss))] + [float(np.max(np.abs(v))) for v in grads.values()])
    worst = 0.0
    for p in g.param_names:
        err = np.abs(fd[p] - grads[p])
        # Truncation error grows as eps**2: fd(2 eps) - fd(eps) is 3x fd(eps)'s own, so where the
        # loss curves hard (exp(exp(p / x)) at a small x) the allowance grows with it.
        allowed = FD_RTOL * np.abs(grads[p]) + FD_ATOL * scale + np.abs(fd2[p] - fd[p])
        worst = max(worst, float(np.max(err / allowed)))
        if np.any(err > allowed):
            k = tuple(int(i) for i in np.unravel_index(np.argmax(err / allowed), err.shape))
            detail = (
                f"gradient of {p} at {k}: reference {grads[p][k]!r}, central differences "
                f"{fd[p][k]!r} (allowed {allowed[k]:.3g})"
            )
            what = "reference != finite differences"
            _fail(program, batch, seed, what, detail, FD_CHECK, np.float64)
    _worst(stats, worst)
    stats["checked"] += 1


def run_reference(examples: int, seed: int | None, stats: Counter) -> None:
    strategies = (programs(), st.sampled_from(FD_BATCHES), st.integers(0, 2**32 - 1))
    _run(lambda *a: check_reference(*a, stats), strategies, examples, seed, stats)


# --- property 2: each back end against the reference ------------------------------------------

BACKEND_CHECK = """\
# Run with NUMBA_BOUNDSCHECK=1 (and NUMBA_ENABLE_CUDASIM=1 for cuda) in the environment and an
# empty GRAPHNN_CACHE_DIR, so that no kernel compiled without bounds checks is loaded.
want_loss, want = g.value_and_grad(params, data, backend="numpy", dtype=np.float64)
loss, grads = g.value_and_grad(params, data, backend={backend!r})
print("loss:", want_loss, loss)
for p in g.param_names:
    print(p, "numpy float64:", want[p].ravel(), {backend!r} + ":", grads[p].ravel(), sep="\\n")
"""


def disagreement(want, want32, got, stats: Counter | None = None) -> str | None:
    """Why ``got`` (float32 back end) is not ``want`` (float64 reference), or None."""
    want, want32 = np.asarray(want, np.float64), np.asarray(want32, np.float64)
    got = np.asarray(got)
    if got.shape != want.shape:
        return f"shape {got.shape}, reference {want.shape}"
    got = got.astype(np.float64)
    finite = np.isfinite(want) & np.isfinite(want32)
    scale = max(1.0, float(np.max(np.abs(want[finite]), initial=0.0)))
    allowed = ROUNDING * np.abs(want32 - want) + RTOL * np.abs(want) + ATOL * scale
    checks = [
        (np.isnan(want) & ~np.isnan(got), "the reference is NaN"),
        (np.isinf(want) & np.isfinite(got), "the reference is Inf"),
        # where float32 overflows (float64 does not), no compiler flag may make the value finite
        (~np.isfinite(want32) & np.isfinite(got), "the float32 reference is NaN or Inf"),
        (finite & ~np.isfinite(got), "the reference is finite"),
        (finite & np.isfinite(got) & (np.abs(got - want) > allowed), "beyond the tolerance"),
    ]
    for bad, why in checks:
        if np.any(bad):
            at = [tuple(int(i) for i in k) for k in np.argwhere(bad)[:3]]
            rows = "; ".join(
                f"{k}: got {got[k]!r}, reference {want[k]!r} (float32 reference {want32[k]!r})"
                for k in at
            )
            return f"{why} at {int(bad.sum())} entries: {rows}"
    ok = finite & np.isfinite(got)
    if stats is not None and np.any(ok):
        _worst(stats, float(np.max(np.abs(got - want)[ok] / allowed[ok])))
    return None


def check_backend(program: Program, backend: str, batches, seed: int, stats: Counter) -> None:
    """The back end against the reference on one draw per batch size; on the cpu, the last
    draw twice more: with a NaN in the data, and with the normal inputs scaled by WIDE, where
    float32 overflows (the simulator raises on NaN and Inf, where a GPU would not)."""
    g = _build(program, stats)
    compared = False
    draws = [(batch, seed + k, "") for k, batch in enumerate(batches)]
    if backend == "cpu" and g.inputs:
        draws += [(*draws[-1][:2], "NaN in the data"), (*draws[-1][:2], f"inputs x {WIDE}")]
    for batch, data_seed, variant in draws:
        params, data = program.values(batch, data_seed)
        params = {n: v.astype(np.float32) for n, v in params.items()}
        data = {n: v.astype(np.float32) for n, v in data.items()}
        check = BACKEND_CHECK.format(backend=backend)
        if variant.startswith("NaN"):
            name, k = nan_position(g, data, data_seed)
            data[name].flat[k] = np.nan
            check = f"data[{name!r}].flat[{k}] = np.nan\n" + check
        elif variant:
            normal = [leaf.name for leaf in program.leaves if leaf.kind == "normal"]
            data = {n: v * np.float32(WIDE) if n in normal else v for n, v in data.items()}
            check = f"for k in {normal}:\n    data[k] = data[k] * np.float32({WIDE})\n" + check
        with np.errstate(all="ignore"):
            env = g.evaluate_nodes(params, data, dtype=np.float64)
            want32 = g.value_and_grad(params, data, backend="numpy", dtype=np.float32)
        if backend == "cuda" and not all(np.isfinite(v).all() for v in env.values()):
            # The simulator runs math.* in Python, which raises where a GPU gives NaN or Inf.
            stats["draws skipped (NaN/Inf on the simulator)"] += 1
            continue
        where = f" ({variant})" if variant else ""
        try:
            with np.errstate(all="ignore"):
                got = g.value_and_grad(params, data, backend=backend, dtype=np.float32)
        except Exception as e:
            detail = f"{type(e).__name__}: {str(e)[:2000]}"
            _fail(program, batch, data_seed, f"{backend} raised{where}", detail, check, np.float32)
        wants = [("loss", env[g.loss_name], want32[0], got[0])]
        wants += [
            (f"gradient of {p}", env[g.grad_names[p]], want32[1][p], got[1][p])
            for p in g.param_names
        ]
        for what, want, w32, value in wants:
            problem = disagreement(want, w32, value, stats)
            if problem:
                what = f"{backend} != reference{where}: {what}"
                _fail(program, batch, data_seed, what, problem, check, np.float32)
        stats[f"draws checked{where}"] += 1
        compared = True
    stats["checked" if compared else "graphs with every draw skipped"] += 1


# --- property 3: training, the fused epoch against the stepwise kernels ------------------------

EPOCH_CHECK = """\
from tests.test_fuzz import _fit  # run from the repository root
print("fused:", _fit(g, params, data, batch_size, "wait"))
print("stepwise:", _fit(g, params, data, batch_size, "never"))
"""


def _fit(g, params, data, batch_size: int, mode: str):
    """Two epochs of SGD with momentum from ``params``: (parameters, losses), or the error."""
    os.environ["GRAPHNN_FUSED"] = mode
    model = gn.compile(g, gn.SGD(lr=0.01, momentum=0.9), seed=0)
    for name, value in params.items():
        model.params[name][...] = value
    try:
        with np.errstate(all="ignore"):
            model.fit(data, epochs=2, batch_size=batch_size, shuffle=True, seed=1)
    except gn.GraphnnError as e:  # a NaN/Inf stop: the same step and message on both paths
        return type(e).__name__, str(e), {k: v.copy() for k, v in model.params.items()}
    return {k: v.copy() for k, v in model.params.items()}, list(model.history["loss"])


def _same_bits(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(
            a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_bits(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (a != a and b != b)  # a NaN loss on both paths is the same


def check_epoch(program: Program, rows: int, batch_size: int, seed: int, stats: Counter) -> None:
    """The fused epoch (codegen/cpu/module.py: a small model's written-out step, its one loop
    over the rows) trains to the stepwise kernels' bits, shuffled mini-batches with a short
    last one; a NaN/Inf stop happens at the same step with the same parameters."""
    g = _build(program, stats)
    if not g.param_names:
        stats["graphs without parameters"] += 1
        return
    params, data = program.values(rows, seed)
    params = {n: v.astype(np.float32) for n, v in params.items()}
    data = {n: v.astype(np.float32) for n, v in data.items()}
    fused = _fit(g, params, data, batch_size, "wait")
    stepwise = _fit(g, params, data, batch_size, "never")
    if not _same_bits(fused, stepwise):
        check = f"batch_size = {batch_size}\n" + EPOCH_CHECK
        detail = f"fused: {fused}\nstepwise: {stepwise}"
        _fail(
            program,
            rows,
            seed,
            "the fused epoch != the stepwise kernels",
            detail,
            check,
            np.float32,
        )
    stats["stopped on NaN/Inf" if isinstance(fused[0], str) else "trained alike"] += 1
    module = gn.compile(
        g, gn.SGD(lr=0.01, momentum=0.9)
    ).trainer.module  # generates, compiles nothing
    epoch = Path(module.__file__).read_text(encoding="utf-8").split("def train_epoch(")[1]
    stats["step written out"] += "written out" in epoch
    stats["one loop over the rows"] += "codegen/cpu/row_loop.py" in epoch
    stats["checked"] += 1


def run_epoch(examples: int, seed: int | None, stats: Counter) -> None:
    strategies = (
        programs(max_steps=5),
        st.sampled_from([(7, 3), (5, 1), (9, 4)]),  # (rows, batch size): a short last batch
        st.integers(0, 2**31),
    )
    check = lambda p, shape, d: check_epoch(p, *shape, d, stats)  # noqa: E731
    _run(check, strategies, examples, seed, stats)


def run_backend(backend: str, examples: int, seed: int | None, stats: Counter) -> None:
    if backend == "epoch":
        return run_epoch(examples, seed, stats)
    others = st.sampled_from(ODD_BATCHES + OTHER_BATCHES)
    if backend == "cuda":  # the simulator costs ~0.2 s a draw, the compile nothing
        batches = st.tuples(st.just(1), st.sampled_from(ODD_BATCHES))
    else:  # the compile costs seconds, a draw microseconds
        batches = st.tuples(st.just(1), st.sampled_from(ODD_BATCHES), others)

    strategies = (programs(max_steps=5), batches, st.integers(0, 2**31))
    _run(lambda p, b, d: check_backend(p, backend, b, d, stats), strategies, examples, seed, stats)


# --- the tests ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def budget(request) -> Budget:
    if request.config.getoption("--fuzz-long"):
        return Budget(LONG.fd, LONG.cpu, LONG.cuda, LONG.epoch, seed=random.randrange(2**32))
    return CI


def _summary(name: str, stats: Counter, budget: Budget) -> str:
    seed = "derandomized" if budget.seed is None else f"seed {budget.seed}"
    return f"fuzz {name} ({seed}): " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items()))


def _assert_not_vacuous(stats: Counter, examples: int) -> None:
    # Most graphs must be built and compared: a generator whose graphs the builder refuses, or
    # whose data always skip, would pass while testing nothing.
    assert stats["refused"] <= 0.1 * stats["graphs"], stats
    assert stats["checked"] >= 0.6 * examples, stats


def test_reference_matches_finite_differences(budget):
    stats = Counter()
    try:
        run_reference(budget.fd, budget.seed, stats)
    finally:
        print(_summary("reference vs central differences", stats, budget))
    _assert_not_vacuous(stats, budget.fd)


@pytest.mark.parametrize("backend", ["cpu", "cuda", "epoch"])
def test_backend_matches_reference(backend, budget):
    """cpu, cuda: the back end against the reference; epoch: fused training against stepwise
    training on the cpu (:func:`check_epoch`)."""
    env = {
        **os.environ,
        "NUMBA_BOUNDSCHECK": "1",
        "GRAPHNN_CACHE_DIR": os.environ["GRAPHNN_CACHE_DIR"] + "-boundscheck",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    if backend == "cuda":
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    examples = getattr(budget, backend)
    args = [sys.executable, "-m", "tests.test_fuzz", backend, str(examples), str(budget.seed)]
    # a failure is shrunk, and every smaller graph compiles: allow minutes (Hypothesis stops
    # shrinking after 5), but not forever
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    lines = proc.stdout.strip().splitlines()
    output = f"{proc.stdout[-20000:]}\n{proc.stderr[-20000:]}"
    assert proc.returncode == 0, (
        f"the {backend} fuzz run failed (exit {proc.returncode}):\n{output}"
    )
    stats = Counter(json.loads(lines[-1]))
    print(_summary(f"{backend} vs reference (bounds-checked)", stats, budget))
    _assert_not_vacuous(stats, examples)


def main(argv: list[str]) -> None:
    """The child process: ``BACKEND EXAMPLES SEED`` (SEED "None": derandomized)."""
    backend, examples, seed = argv[0], int(argv[1]), argv[2] if len(argv) > 2 else "None"
    stats = Counter()
    try:
        run_backend(backend, examples, None if seed == "None" else int(seed), stats)
    finally:
        print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
