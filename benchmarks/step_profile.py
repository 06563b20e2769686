"""Where a fused training step goes: products and elementwise blocks, the guard, the update.

    python benchmarks/step_profile.py mnist_mlp [--repeats 30] [--parallel-update]

Loads the workload's fused module (the one ``train_epoch`` runs, codegen/cpu/module.py) and
times, on one batch of the workload's size, under flush-to-zero as ``fit`` runs:

- ``loss_and_grads``: every product and elementwise block of the step (block_profile.py splits
  it per block);
- the guard: ``all_finite`` over every gradient;
- the update: ``apply_update`` over every parameter;
- ``loss_and_grads`` + guard + update back to back (the order ``train_epoch`` calls them);
- ``train_epoch`` over 16 batches, per step (adds the batch gather and the epoch's loop).

Each figure is the fastest and the median over the repeats, in microseconds: on a shared
machine the median shows the interference, the fastest what the code can do.

``--parallel-update`` first rewrites the module's ``apply_update`` and ``all_finite`` loops to
Numba ``prange`` (``parallel=True``): the experiment of issue 18, kept so it can be rerun
(measured on 2 cores, OpenBLAS on both: see the comment above ``_update_function`` in
codegen/cpu/module.py for why the generated update stays serial).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peer_graphnn import build_graph, graphnn_optimizer  # noqa: E402
from workloads import get_workload  # noqa: E402

import graphnn as gn  # noqa: E402
from codegen.cache import load_module  # noqa: E402
from codegen.cpu.module import module_source  # noqa: E402
from codegen.signature import signature  # noqa: E402
from graphnn.train.denormals import flush_denormals  # noqa: E402

SERIAL_JIT = '@njit(cache=True, error_model="numpy")\ndef apply_update('
SERIAL_SUM = '@njit(cache=True, fastmath={"reassoc"}, error_model="numpy")\ndef all_finite('


def parallel_update_source(source: str) -> str:
    """``source`` (a fused module) with apply_update's and all_finite's loops as prange.

    Both split only work whose per-element arithmetic does not change: the update is per
    element, and all_finite's sum of ``x * 0`` is NaN exactly when a term is, in any order.
    """
    for old in (SERIAL_JIT, SERIAL_SUM):
        if old not in source:
            raise ValueError(f"the module has no {old.split('def ')[1]}...): not a fused module")
        parallel = old.replace('error_model="numpy")', 'error_model="numpy", parallel=True)')
        source = source.replace(old, parallel)
    source = source.replace("for i in range(P_.shape[0]):", "for i in prange(P_.shape[0]):")
    source = source.replace(
        "for i in range(a.shape[0]):\n        acc +=",
        "for i in prange(a.shape[0]):\n        acc +=",
    )
    return source.replace("from numba import njit\n", "from numba import njit, prange\n", 1)


def _timed(call, repeats: int) -> tuple[float, float]:
    """(fastest, median) microseconds of ``call()`` over ``repeats`` calls after one warm-up."""
    call()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return min(times) * 1e6, float(np.median(times)) * 1e6


def step_pieces(name: str, repeats: int = 30, parallel_update: bool = False) -> dict:
    """piece -> (fastest, median) microseconds, for workload ``name`` (see the module doc)."""
    wl = get_workload(name)
    graph = build_graph(gn, wl)
    optimizer, _ = graphnn_optimizer(gn, wl)
    source = module_source(graph, optimizer, "float32")
    module = load_module(parallel_update_source(source) if parallel_update else source)
    sig = signature(graph, optimizer)
    rng = np.random.default_rng(0)
    init = graph.init_params(0)
    params = [init[p].astype(np.float32) for p in sig.params]
    states = [np.zeros_like(p) for p in params for _ in optimizer.state]  # per param, per buffer
    n_state = len(optimizer.state)
    hyper = [np.float32(optimizer.hyper[h]) for h in sig.hyper]
    n, rows = wl.batch_size, 16 * wl.batch_size
    x_all = rng.random((rows, *(wl.image or (wl.sizes[0],))), dtype=np.float32)
    y_all = np.eye(wl.sizes[-1], dtype=np.float32)[rng.integers(0, wl.sizes[-1], rows)]
    x, y = x_all[:n], y_all[:n]
    ws = module.workspace(n, x, y, *params)
    flat_p = [p.ravel() for p in params]

    def grads():
        return [g.ravel() for g in module.loss_and_grads(x, y, *params, ws)[1:]]

    def guard(flat_g):
        return all(module.all_finite(g) for g in flat_g)

    def update(flat_g):
        for k, (p, g) in enumerate(zip(flat_p, flat_g, strict=True)):
            own = [s.ravel() for s in states[k * n_state : (k + 1) * n_state]]
            module.apply_update(p, g, *own, *hyper, np.float32(1.0), np.float32(1.0))

    def step():
        flat_g = grads()
        if guard(flat_g):
            update(flat_g)

    perm = rng.permutation(rows)
    lrs = np.full(rows // n, hyper[0], dtype=np.float32)  # lr is the first hyper-parameter
    epoch_args = [x_all, y_all, perm, n, *params, *states, lrs, *hyper[1:], 0, ws]
    with flush_denormals():
        flat_g = grads()
        pieces = {
            "loss_and_grads": _timed(grads, repeats),
            "guard (all_finite)": _timed(lambda: guard(flat_g), repeats),
            "update (apply_update)": _timed(lambda: update(flat_g), repeats),
            "step (the three)": _timed(step, repeats),
        }
        t0 = time.perf_counter()
        module.train_epoch(*epoch_args)
        pieces["train_epoch compile or load, s"] = (time.perf_counter() - t0,) * 2
        fastest, median = _timed(lambda: module.train_epoch(*epoch_args), max(3, repeats // 8))
        pieces["train_epoch per step"] = (fastest / (rows // n), median / (rows // n))
    return pieces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workload")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--parallel-update", action="store_true")
    args = ap.parse_args()
    how = "prange update and guard" if args.parallel_update else "as generated"
    print(f"{args.workload} ({how}): fastest / median, us")
    for piece, (fastest, median) in step_pieces(
        args.workload, args.repeats, args.parallel_update
    ).items():
        print(f"  {piece:32s} {fastest:12.1f} {median:12.1f}")


if __name__ == "__main__":
    main()
