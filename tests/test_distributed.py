"""Data-parallel training over MPI: the same steps on 1, 2 and 4 ranks, one model on every rank,
resume, files from rank 0 only, and errors that end the job instead of hanging it.

The MPI tests launch ``mpiexec -n N python tests/distributed_job.py JOB OUT`` (see that file) as
subprocesses with a timeout and the session's kernel cache; each job runs once per session and
the tests read what its ranks wrote.  They skip, saying why, without mpi4py or mpiexec
(``pip install -e ".[test,mpi]" mpich``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import graphnn as gn
from graphnn.errors import DataError, DistributedError
from graphnn.train import distributed
from graphnn.train.parallel import loss_kind

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "tests" / "distributed_job.py"
TIMEOUT = 180  # seconds for one job; a cold kernel cache on a busy 2-core machine is slow


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"  # the mpich wheel's, in this venv
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _launch(ranks: int, job: str, out: Path, timeout: float = TIMEOUT):
    try:
        import mpi4py  # noqa: F401  (not mpi4py.MPI: this process stays out of MPI)
    except ImportError:
        pytest.skip('mpi4py is not installed (pip install -e ".[test,mpi]" mpich)')
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec on PATH or beside python (pip install mpich)")
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    command = [mpiexec, "-n", str(ranks), sys.executable, str(JOB), job, str(out)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def _job(tmp_path_factory, ranks: int, job: str) -> Path:
    out = tmp_path_factory.mktemp(f"{job}-{ranks}")
    done = _launch(ranks, job, out)
    assert done.returncode == 0, f"{job} on {ranks} ranks failed:\n{done.stdout}\n{done.stderr}"
    (out / "stdout.txt").write_text(done.stdout)
    return out


@pytest.fixture(scope="session")
def one(tmp_path_factory) -> Path:
    return _job(tmp_path_factory, 1, "reference")


@pytest.fixture(scope="session")
def two(tmp_path_factory) -> Path:
    return _job(tmp_path_factory, 2, "train")


@pytest.fixture(scope="session")
def four(tmp_path_factory) -> Path:
    return _job(tmp_path_factory, 4, "adam")


def load(out: Path, what: str, ranks: int, rank: int = 0) -> dict:
    with np.load(out / f"{what}-{ranks}-{rank}.npz") as f:
        return {k: f[k] for k in f.files}


def assert_close(a: dict, b: dict, rel: float) -> None:
    """Every array of b within ``rel`` times the largest magnitude in a."""
    assert a.keys() == b.keys()
    scale = max(float(np.max(np.abs(v))) for v in a.values())
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert worst <= rel * scale, f"differ by {worst:.3g}, allowed {rel * scale:.3g}"


# --- equivalence ---------------------------------------------------------------------------------


def test_one_rank_takes_the_fused_fits_steps_bitwise(one):
    fused, engine = load(one, "fused", 1), load(one, "adam", 1)
    for name in fused:
        assert np.array_equal(fused[name], engine[name]), name


def test_float64_adam_steps_agree_on_1_2_and_4_ranks(one, two, four):
    """20 Adam steps, batches of 7 rows split 4/3 and 2/2/2/1, the last 3 rows over 4 ranks."""
    reference = load(one, "adam", 1)
    assert_close(reference, load(two, "adam", 2), 1e-10)
    assert_close(reference, load(four, "adam", 4), 1e-10)


def test_dropout_draws_the_same_masks_on_two_ranks_as_in_one_process(one, two):
    """Each rank takes every other row of a batch, yet draws the masks one process draws for
    those rows: 20 Adam steps with dropout agree with the fused single-process fit."""
    reference = load(one, "dropout-fused", 1)
    assert_close(reference, load(two, "dropout", 2), 1e-10)
    assert_close(reference, load(two, "dropout", 2, 1), 1e-10)


def test_sharded_optimizer_takes_the_same_steps(two, four):
    """In shared memory (one node) and over MPI messages (as across nodes)."""
    for rank in (0, 1):
        assert_close(load(two, "adam", 2, rank), load(two, "zero", 2, rank), 1e-10)
        assert_close(load(two, "adam", 2, rank), load(two, "zero-mpi", 2, rank), 1e-10)
    assert_close(load(four, "adam", 4), load(four, "zero", 4), 1e-10)


def test_fit_trains_the_models_own_arrays_in_place(two):
    """The engine trains views of flat (or shared) buffers; the values end in the arrays
    model.params and model.state held before fit, as without MPI."""
    for what in ("adam", "zero", "zero-mpi"):
        assert bool(load(two, f"{what}-arrays", 2, 1)["same"]), what


def test_float32_gradients_of_one_global_batch_agree(one, two, four):
    reference = load(one, "grads", 1)
    for got in (load(two, "grads", 2), load(four, "grads", 4)):
        for name, value in reference.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-7, err_msg=name)


def test_every_rank_holds_the_same_parameters_bitwise(two, four):
    cases = ((two, 2, ("adam", "zero", "zero-mpi", "resume")), (four, 4, ("adam", "zero")))
    for out, ranks, whats in cases:
        for what in whats:
            first = load(out, what, ranks, 0)
            for rank in range(1, ranks):
                other = load(out, what, ranks, rank)
                for name in first:
                    assert np.array_equal(first[name], other[name]), (what, rank, name)


def test_resume_under_two_ranks_equals_an_uninterrupted_run(two):
    """Rank 0 reads the checkpoint and every rank continues from it (rank 1 started from other
    initial values), early stopping's best parameters and the RNG included."""
    saved = load(two, "resume", 2, 1)
    whole, resumed = json.loads(str(saved.pop("history")))
    assert len(whole["loss"]) == 4
    assert whole == resumed
    for key in [k for k in saved if k.startswith("whole/")]:
        assert np.array_equal(saved[key], saved["resumed/" + key[6:]]), key


# --- files and output ----------------------------------------------------------------------------


def test_only_rank_0_writes_files(two):
    """Each rank was given its own directories: rank 1's must not exist."""
    fit0 = sorted(p.name for p in (two / "fit-0").iterdir())
    assert fit0 == ["best.npz", "ckpt-000000008.npz", "ckpt-000000016.npz"]
    spec0 = sorted(p.name for p in (two / "spec-0").iterdir())
    assert spec0 == ["checkpoints", "curves.png", "history.json", "model.npz"]
    assert not (two / "fit-1").exists()
    assert not (two / "spec-1").exists()


def test_blas_threads_times_ranks_do_not_exceed_the_cores(two):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for rank in (0, 1):
        threads = load(two, "threads", 2, rank)["threads"]
        assert len(threads) == 2
        assert max(threads) * 2 <= max(cores, 2), (threads, cores)


def test_graphnn_train_under_mpiexec_reports_once(two):
    stdout = (two / "stdout.txt").read_text()
    assert stdout.count("trained ") == 1, stdout
    assert stdout.count("wrote ") == 1, stdout
    codes = {int(load(two, "cli", 2, rank)["code"]) for rank in (0, 1)}
    assert len(codes) == 1  # the ranks agree on the exit code
    assert (two / "cli" / "model.npz").exists()


# --- errors --------------------------------------------------------------------------------------


def test_nan_in_one_ranks_data_stops_every_rank_with_the_same_error(two):
    messages = [str(load(two, "nan", 2, rank)["message"]) for rank in (0, 1)]
    assert messages[0] == messages[1]
    assert messages[0].startswith("NonFiniteError: training stopped at step 1")
    assert "node 'x'" in messages[0] and "rank 1's rows" in messages[0]


def test_a_global_batch_smaller_than_the_ranks_is_an_error_on_every_rank(four):
    messages = {str(load(four, "small", 4, rank)["message"]) for rank in range(4)}
    assert len(messages) == 1
    assert "global batch of 3 rows is smaller than the 4 ranks" in messages.pop()


@pytest.mark.parametrize("zero", [0, 1])
def test_an_overflowing_update_is_undone_on_every_rank(two, zero):
    saved = [load(two, f"overflow-{zero}", 2, rank) for rank in (0, 1)]
    messages = {str(s["message"]) for s in saved}
    assert len(messages) == 1
    message = messages.pop()
    assert "the optimizer update made" in message, message
    step = int(message.split("training stopped at step ")[1].split()[0])
    assert message.endswith(f"(model.step {step - 1})")
    assert all(bool(s["finite"]) for s in saved)


def test_data_parallel_needs_the_cpu_back_end(two):
    messages = {str(load(two, "backend", 2, rank)["message"]) for rank in (0, 1)}
    assert len(messages) == 1
    assert "runs on the cpu back end, not 'numpy'" in messages.pop()


def test_a_rank_that_raises_ends_the_job(tmp_path):
    started = time.perf_counter()
    try:
        done = _launch(2, "raise", tmp_path, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the job hung after rank 1 raised")
    assert done.returncode != 0
    assert "rank 1 fails on purpose" in done.stderr
    assert "rank 1 of 2 failed; aborting the job" in done.stderr
    assert time.perf_counter() - started < 120


# --- without MPI ---------------------------------------------------------------------------------


def test_outside_an_mpi_job_this_process_is_rank_0_of_1(monkeypatch):
    for name in (*distributed.SIZE_VARIABLES, *distributed.RANK_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    if "mpi4py.MPI" in sys.modules:
        pytest.skip("MPI is running in this process")
    assert (distributed.rank(), distributed.size(), distributed.is_main()) == (0, 1, True)
    distributed.barrier()
    assert distributed.communicator("auto") is None
    assert distributed.communicator(None) is None
    assert "mpi4py.MPI" not in sys.modules  # nothing above paid for MPI_Init


@pytest.mark.parametrize(
    ("env", "size"),
    [
        ({}, None),
        ({"PMI_SIZE": "4", "PMI_RANK": "1"}, 4),
        ({"OMPI_COMM_WORLD_SIZE": "2"}, 2),
        ({"PMIX_RANK": "0"}, 0),
    ],
)
def test_the_launcher_is_read_from_the_environment(monkeypatch, env, size):
    for name in (*distributed.SIZE_VARIABLES, *distributed.RANK_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.launched_size() == size


def test_the_launcher_probe_sees_variables_set_or_removed_since_its_last_call(monkeypatch):
    for name in (*distributed.SIZE_VARIABLES, *distributed.RANK_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launched_size() is None
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "3")
    assert distributed.launched_size() == 3
    os.environ["OMPI_COMM_WORLD_SIZE"] = "5"  # a plain write, not through monkeypatch
    assert distributed.launched_size() == 5
    del os.environ["OMPI_COMM_WORLD_SIZE"]
    assert distributed.launched_size() is None
    monkeypatch.setenv("PMI_RANK", "1")
    assert distributed.launched_size() == 0


@pytest.mark.parametrize(
    "env", [{}, {"PMI_SIZE": "x", "MV2_COMM_WORLD_SIZE": "7"}, {"PMI_SIZE": ""}, {"PMI_RANK": ""}]
)
def test_the_launcher_probe_reads_what_os_environ_holds(monkeypatch, env):
    """The probe reads os.environ's own dict; the plain read (any other os) answers alike."""
    for name in (*distributed.SIZE_VARIABLES, *distributed.RANK_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fast = distributed.launched_size()
    monkeypatch.setattr(distributed, "_ENCODED", {})
    assert distributed.launched_size() == fast
    plain = next((int(os.environ[n]) for n in distributed.SIZE_VARIABLES
                  if os.environ.get(n, "").isdigit()), None)  # fmt: skip
    ranked = any(n in os.environ for n in distributed.RANK_VARIABLES)
    assert fast == (plain if plain is not None else 0 if ranked else None)


def test_mpi_without_mpi4py_names_the_extra(monkeypatch):
    if "mpi4py.MPI" in sys.modules:
        pytest.skip("MPI is running in this process")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py raises ImportError
    with pytest.raises(DistributedError, match=r'pip install "graphnn\[mpi\]"'):
        distributed.communicator("mpi")


def test_an_unknown_distributed_mode_is_a_data_error():
    x = gn.input("x", (2,))
    model = gn.compile(gn.Graph(gn.mean(x @ gn.param("w", (2, 1)))), backend="numpy")
    with pytest.raises(DataError, match="distributed must be 'auto', 'mpi' or None"):
        model.fit({"x": np.ones((4, 2))}, distributed="ray")


@pytest.mark.parametrize(
    ("loss", "kind"),
    [
        (lambda e, t: gn.mse(e, t), "mean"),
        (lambda e, t: gn.sum((e - t) * (e - t)), "sum"),
        (lambda e, t: gn.mean(e - t) * gn.mean(e - t), "coupled"),
    ],
)
def test_loss_kind_tells_means_sums_and_losses_that_couple_rows(loss, kind):
    x, t = gn.input("x", (2,)), gn.input("t", (1,))
    graph = gn.Graph(loss(x @ gn.param("w", (2, 1)), t))
    model = gn.compile(graph, backend="numpy", dtype="float64")
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(5, 2)), "t": rng.normal(size=(5, 1))}

    def loss_of(rows):
        return float(
            model.trainer.forward(model.params, {k: v[rows] for k, v in data.items()})[
                graph.loss_name
            ]
        )

    assert loss_kind(loss_of, 5, np.float64) == kind


@pytest.mark.parametrize(
    "module", ["graphnn.distributed", "graphnn.train.distributed", "graphnn.train.parallel"]
)
def test_docstring_examples_run(module, monkeypatch):
    import doctest
    import importlib

    for name in (*distributed.SIZE_VARIABLES, *distributed.RANK_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    if "mpi4py.MPI" in sys.modules:
        pytest.skip("MPI is running in this process")
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted and not result.failed
