"""The MPI job that tests/test_distributed.py launches: ``mpiexec -n N python THIS JOB OUT``.

Every rank trains the iris example's network (examples/iris.toml: 4 -> 16 tanh -> 3, Adam) and
writes what it ended with to ``OUT/<what>-<size>-<rank>.npz``; the tests compare the files.
Jobs: ``train`` (most checks, in one job so the ranks start once), ``reference`` (one rank: the
fused single-process fit next to the data-parallel one), ``raise`` (rank 1 raises mid-run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import graphnn as gn
from graphnn.spec.build import load_spec
from graphnn.train import distributed, exchange, parallel
from graphnn.train.parallel import DataParallel

ROOT = Path(__file__).resolve().parents[1]
SPEC = load_spec(ROOT / "examples" / "iris.toml")
TRAIN, HELD_OUT = SPEC.load_data()
ROWS = 66  # batch 7: 9 full batches split unevenly, and a last one of 3 rows (fewer than 4 ranks)
GRAD_ROWS = np.arange(13)


def model(dtype="float32", seed=0):
    return gn.compile(SPEC.graph, **{**SPEC.compile_options(), "dtype": dtype, "seed": seed})


def save(out: Path, what: str, **arrays) -> None:
    name = f"{what}-{distributed.size()}-{distributed.rank()}.npz"
    np.savez(out / name, **arrays)


def params(m) -> dict:
    return {k: v.copy() for k, v in m.params.items()}


def adam_steps(out: Path, what: str = "adam") -> None:
    """20 Adam steps in float64 (2 epochs of 10 batches of 7 rows over 66 rows): ``what`` is
    "adam" (all-reduce), "fused" (no MPI), "zero" (sharded; in shared memory on one node) or
    "zero-mpi" (sharded over MPI messages, as across nodes)."""
    m = model("float64")
    own = {**m.params, **m.state}
    data = {k: v[:ROWS] for k, v in TRAIN.items()}
    mode = None if what == "fused" else "mpi"
    if what == "zero-mpi":  # as across nodes: sharded over MPI messages, not shared memory
        parallel.exchange = lambda comm, zero, *args: exchange.ReduceScatter(comm, *args)
    try:
        m.fit(data, epochs=2, batch_size=7, distributed=mode, zero=what.startswith("zero"))
    finally:
        parallel.exchange = exchange.exchange
    save(out, what, **params(m))
    same = all(v is own[k] for k, v in {**m.params, **m.state}.items())
    save(out, f"{what}-arrays", same=np.array(same))


def dropout_steps(out: Path, what: str) -> None:
    """20 Adam steps in float64 of the iris network with dropout after its hidden layer:
    ``what`` is "dropout" (all-reduce) or "dropout-fused" (no MPI).  A sample's mask depends on
    the epoch and its row only (graphnn.ir.dropout), so the ranks draw what one process draws."""
    x, y = gn.input("x", (4,)), gn.input("y", (3,))
    h = gn.dropout(gn.tanh(x @ gn.param("W1", (4, 16)) + gn.param("b1", (16,))), 0.3, seed=5)
    loss = gn.softmax_cross_entropy(h @ gn.param("W2", (16, 3)) + gn.param("b2", (3,)), y)
    m = gn.compile(gn.Graph(loss), gn.Adam(lr=0.01), dtype="float64", seed=0)
    data = {k: v[:ROWS] for k, v in TRAIN.items()}
    mode = None if what == "dropout-fused" else "mpi"
    m.fit(data, epochs=2, batch_size=7, distributed=mode, seed=3)
    save(out, what, **params(m))


def gradients(out: Path) -> None:
    """float32 gradients of one global batch of 13 rows, reduced over the ranks."""
    m = model("float32")
    m._trainable_arrays()
    dp = DataParallel(m, distributed._mpi().COMM_WORLD, TRAIN, len(GRAD_ROWS))
    loss, grads = dp.gradients(GRAD_ROWS)
    save(out, "grads", loss=np.float64(loss), **grads)


def resume(out: Path) -> None:
    """2+2 epochs with a checkpoint in between against 4 epochs at once (early stopping on)."""
    options = dict(batch_size=16, validation_data=HELD_OUT, early_stopping=True, distributed="mpi")
    whole = model()
    whole.fit(TRAIN, epochs=4, checkpoint_dir=out / "whole", **options)
    first = model()
    first.fit(TRAIN, epochs=2, checkpoint_dir=out / "parts", **options)
    again = model(seed=7)  # other initial values: every rank must take the checkpoint's
    again.fit(TRAIN, epochs=4, checkpoint_dir=out / "parts", resume=True, **options)
    arrays = {f"whole/{k}": v for k, v in params(whole).items()}
    arrays |= {f"resumed/{k}": v for k, v in params(again).items()}
    save(out, "resume", history=np.array(json.dumps([whole.history, again.history])), **arrays)


def files(out: Path) -> None:
    """Checkpoints, history, curves and model files: each rank is given a directory of its own,
    so a file in any but rank 0's shows which rank wrote it."""
    from threadpoolctl import threadpool_info

    from graphnn.spec.runner import run_spec

    rank, threads = distributed.rank(), []

    def blas_threads(model, epoch, logs):  # while fit runs
        threads.append(max(pool["num_threads"] for pool in threadpool_info()))

    options = dict(validation_data=HELD_OUT, early_stopping=True, callbacks=[blas_threads])
    m = model()
    m.fit(TRAIN, epochs=2, batch_size=16, checkpoint_dir=out / f"fit-{rank}", distributed="mpi",
          **options)  # fmt: skip
    run_spec(SPEC, out / f"spec-{rank}", epochs=2)
    save(out, "threads", threads=np.array(threads))


def nan_on_rank_1(out: Path) -> None:
    """Rank 1's copy of the data has a NaN in the row it takes from the first batch."""
    m = model()
    data = {k: v.copy() for k, v in TRAIN.items()}
    if distributed.rank() == 1:
        data["x"][1, 2] = np.nan
    try:
        m.fit(data, epochs=1, batch_size=16, shuffle=False, distributed="mpi")
        message = "no error"
    except gn.NonFiniteError as exc:
        message = f"NonFiniteError: {exc}"
    save(out, "nan", message=np.array(message))


def batch_smaller_than_ranks(out: Path) -> None:
    try:
        model().fit(TRAIN, epochs=1, batch_size=distributed.size() - 1, distributed="mpi")
        message = "no error"
    except gn.DataError as exc:
        message = f"DataError: {exc}"
    save(out, "small", message=np.array(message))


def update_overflow(out: Path, zero: bool) -> None:
    """The learning rate times 1e38 every 2 steps: an update overflows to Inf from finite
    gradients; every rank re-runs the epoch's steps together to the one that did it."""
    from graphnn.optim.schedules import Step

    optimizer = gn.Adam(lr=0.01, schedule=Step(every=2, gamma=1e38))
    m = gn.compile(SPEC.graph, **{**SPEC.compile_options(), "optimizer": optimizer})
    try:
        m.fit(TRAIN, epochs=1, batch_size=16, shuffle=False, distributed="mpi", zero=zero)
        message = "no error"
    except gn.NonFiniteError as exc:
        message = f"NonFiniteError: {exc} (model.step {m.step})"
    finite = all(np.all(np.isfinite(v)) for v in {**m.params, **m.state}.values())
    save(out, f"overflow-{int(zero)}", message=np.array(message), finite=np.array(finite))


def numpy_backend(out: Path) -> None:
    m = gn.compile(SPEC.graph, **{**SPEC.compile_options(), "backend": "numpy"})
    try:
        m.fit(TRAIN, epochs=1, batch_size=16, distributed="mpi")
        message = "no error"
    except gn.DataError as exc:
        message = f"DataError: {exc}"
    save(out, "backend", message=np.array(message))


def raise_on_rank_1(out: Path) -> None:
    def fail(model, epoch, logs):
        if distributed.rank() == 1 and epoch == 1:
            raise RuntimeError("rank 1 fails on purpose")

    model().fit(TRAIN, epochs=50, batch_size=16, callbacks=[fail], distributed="mpi")


def main(job: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if job == "train":
        for what in ("adam", "zero", "zero-mpi"):
            adam_steps(out, what)
        dropout_steps(out, "dropout")
        gradients(out)
        resume(out)
        files(out)
        nan_on_rank_1(out)
        numpy_backend(out)
        for _ in range(3):  # a race between ranks rewinding shared memory hung 2 runs in 3
            update_overflow(out, zero=False)
            update_overflow(out, zero=True)
        from graphnn.cli import main as cli

        code = cli(["train", str(ROOT / "examples" / "iris.toml"), "--epochs", "2", "--quiet",
                    "--out", str(out / "cli")])  # fmt: skip
        save(out, "cli", code=np.int64(code))
    elif job == "adam":
        adam_steps(out, "adam")
        adam_steps(out, "zero")
        gradients(out)
        batch_smaller_than_ranks(out)
    elif job == "reference":  # one rank: the fused fit, the data-parallel engine, its gradients
        adam_steps(out, "fused")
        dropout_steps(out, "dropout-fused")
        adam_steps(out, "adam")
        gradients(out)
    elif job == "raise":
        raise_on_rank_1(out)
    else:
        raise SystemExit(f"unknown job {job!r}")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
