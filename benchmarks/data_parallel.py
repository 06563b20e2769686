"""Data-parallel step time: one process (the fused epoch) against N MPI ranks, one BLAS thread each.

    python benchmarks/data_parallel.py                                  # mnist_mlp, wide; 2 ranks
    python benchmarks/data_parallel.py --workloads mnist_mlp --ranks 2 --epochs 5

Every configuration runs in processes of its own: the baseline is the fused epoch kernel of
``fit(distributed=None)`` with OPENBLAS_NUM_THREADS=1; the ranks run under ``mpiexec -n N`` the
engine of ``fit(distributed="mpi")`` with BLAS limited to one thread per rank, once with the
all-reduce (``mpi``) and once with the sharded optimizer (``zero``).  After one warm-up epoch
every global step is timed: printed are the median and the minimum ms per step (of the round
with the lowest median, of ``--rounds`` interleaved rounds), the speed-ups over the baseline,
and the ranks' mean step split into compute (the rows' loss and gradients), communication
(collectives, barriers and the checks on reduced values) and update (apply_update).  Needs
``pip install -e ".[mpi]" mpich``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

ROWS = {"mnist_mlp": 128 * 48, "wide": 256 * 8}  # a few dozen global steps per epoch


def _model_and_data(name: str):
    from dataclasses import replace

    from peer_graphnn import build_model
    from workloads import get_workload, make_data

    import graphnn as gn

    wl = replace(get_workload(name), n_samples=ROWS[name])
    X, Y = make_data(wl)
    model, _, _ = build_model(gn, wl)
    return model, {"x": X, "y": Y}, wl.batch_size


def child(name: str, mode: str, epochs: int) -> None:
    """One configuration: print one JSON line (from rank 0) with its timings.

    Every global step is timed on its own (on rank 0, whose collectives wait for the other
    ranks): the median says what a busy machine gives, the minimum what the code costs.
    """
    from graphnn.train import distributed as mpi
    from graphnn.train.denormals import flush_denormals
    from graphnn.train.parallel import DataParallel

    model, data, bs = _model_and_data(name)
    model._trainable_arrays()
    n = len(data["x"])
    order = np.random.default_rng(0).permutation(n * (epochs + 1)) % n
    batches = [order[k : k + bs].astype(np.int64) for k in range(0, len(order) - bs + 1, bs)]
    warm, timed = batches[: n // bs], batches[n // bs :]  # one epoch's steps to warm up
    hyper = dict(model.optimizer.hyper)
    lr = model.dtype.type(hyper["lr"])
    if mode == "fused":  # the fused epoch kernel, one step per call
        lrs = np.full(1, lr)
        with flush_denormals():
            step = lambda k, rows: model.trainer.epoch(  # noqa: E731
                model.params, model.state, data, rows, bs, hyper, lrs, k
            )
            seconds, split, ranks = _timed(step, warm, timed), {}, 1
    else:
        comm = mpi._mpi().COMM_WORLD
        model._rng = np.random.default_rng(0)
        with (
            DataParallel(model, comm, data, bs, zero=mode == "zero") as dp,
            mpi.limit_blas_threads(mpi.blas_threads(comm)),
            flush_denormals(),
        ):
            step = lambda k, rows: dp._step(rows, lr, k + 1)  # noqa: E731
            seconds = _timed(step, warm, timed, dp)
            split = {k: v / len(timed) * 1e3 for k, v in dp.seconds.items()}
            every, ranks = comm.gather(split, root=0), comm.Get_size()
            if comm.Get_rank() != 0:
                return
            split = {k: sum(s[k] for s in every) / len(every) for k in split}
    seconds.sort()
    row = {"workload": name, "mode": mode, "ranks": ranks, "steps": len(seconds)}
    row |= {"min": seconds[0] * 1e3, "median": seconds[len(seconds) // 2] * 1e3, **split}
    print(json.dumps(row))


def _timed(step, warm, timed, dp=None) -> list[float]:
    for k, rows in enumerate(warm):
        step(k, rows)
    if dp is not None:
        dp.seconds = dict.fromkeys(dp.seconds, 0.0)
        dp.comm.Barrier()
    seconds = []
    for k, rows in enumerate(timed, start=len(warm)):
        started = time.perf_counter()
        step(k, rows)
        seconds.append(time.perf_counter() - started)
    return seconds


def run(args) -> list[dict]:
    """Every configuration ``--rounds`` times, interleaved so that a busy period of the machine
    hits each alike; each one's fastest (least disturbed) round."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])
    )
    # the baseline's one BLAS thread comes from the environment; the ranks' from fit's own limit
    one_thread = dict(env, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    mpiexec = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(args.ranks)]
    configs = [("fused", [], one_thread), ("mpi", mpiexec, env), ("zero", mpiexec, env)]
    best: dict = {}
    for _ in range(args.rounds):
        for name in args.workloads.split(","):
            for mode, launcher, run_env in configs:
                own = [sys.executable, __file__, "--child", name, mode]
                own += ["--epochs", str(args.epochs)]
                done = subprocess.run(
                    launcher + own, env=run_env, capture_output=True, text=True, timeout=1800
                )
                if done.returncode != 0:
                    raise SystemExit(f"{name} {mode} failed:\n{done.stdout}\n{done.stderr}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                key = (name, mode)
                if key not in best or row["median"] < best[key]["median"]:
                    best[key] = row
    return list(best.values())


def table(rows: list[dict]) -> str:
    lines = [
        "| workload | trainer | ranks | ms/step median | min | speed-up median (min) "
        "| compute | communication | update |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r["workload"]: r for r in rows if r["mode"] == "fused"}
    for r in rows:
        b = base[r["workload"]]
        parts = [f"{r[k]:.3f}" if k in r else "" for k in ("compute", "communication", "update")]
        speed = f"{b['median'] / r['median']:.2f}x ({b['min'] / r['min']:.2f}x)"
        lines.append(
            f"| {r['workload']} | {r['mode']} | {r['ranks']} | {r['median']:.3f} | "
            f"{r['min']:.3f} | {speed} | {' | '.join(parts)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="mnist_mlp,wide")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after 1 warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="keep each one's fastest round")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.epochs)
        return
    rows = run(args)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
