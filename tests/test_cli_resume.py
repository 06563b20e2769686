"""``graphnn train`` never deletes a run: --resume continues it, --overwrite replaces it.

The kill test runs the real console entry point in a subprocess, SIGKILLs it at random moments
(while it imports, trains, writes a checkpoint or the model), and resumes each time; the
finished run must equal one that was never interrupted, bit for bit.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from graphnn.cli import main
from graphnn.train import checkpoint as ck

ROOT = Path(__file__).resolve().parents[1]

SPEC = """
[inputs]
x = [3]
y = [2]
[params]
W1 = { shape = [3, 16], init = "he_normal" }
b1 = { shape = [16], init = "zeros" }
W2 = { shape = [16, 2] }
b2 = { shape = [2], init = "zeros" }
[graph]
h = "tanh(x @ W1 + b1)"
logits = "h @ W2 + b2"
loss = "softmax_cross_entropy(logits, y)"
[train]
optimizer = "adam"
lr = 0.01
batch_size = 4
epochs = EPOCHS
seed = 3
backend = "numpy"
[data]
source = "d.csv"
x = ["a", "b", "c"]
y = ["label"]
one_hot = "y"
validation_split = 0.25
"""


@pytest.fixture
def spec(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(96, 3))
    rows = [",".join(f"{v:.4f}" for v in r) + f",{int(r.sum() > 0)}" for r in X]
    (tmp_path / "d.csv").write_text("a,b,c,label\n" + "\n".join(rows) + "\n")

    def write(epochs):
        path = tmp_path / "s.toml"
        path.write_text(SPEC.replace("EPOCHS", str(epochs)))
        return path

    return write


# The console command, dying by SIGKILL at its KILL_AT-th file replace (each file graphnn writes
# is a temp file replaced onto its name): before it (the temp file is left) or just after.
KILLING = """
import os, signal, sys
from graphnn.cli import main
at, when, count, real_replace = int(os.environ["KILL_AT"]), os.environ["KILL_WHEN"], 0, os.replace
def replace(src, dst, *args, **kwargs):
    global count
    count += str(src).endswith(".tmp")
    if count == at and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst, *args, **kwargs)
    if count == at:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
sys.exit(main())
"""


def start(spec_path, out, *flags, kill=None):
    env = {**os.environ, "GRAPHNN_DEBUG": "0", "PYTHONPATH": str(ROOT)}
    code = ["-m", "graphnn.cli"]
    if kill is not None:
        env |= {"KILL_AT": str(kill[0]), "KILL_WHEN": kill[1]}
        code = ["-c", KILLING]
    argv = [sys.executable, *code, "train", str(spec_path), "--out", str(out), "--quiet", *flags]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc):
    out, err = proc.communicate(timeout=300)
    return proc.returncode, err.decode()


def state(run: Path):
    arrays, meta = ck.load_checkpoint(run / "model.npz")
    return arrays, {k: meta[k] for k in ("epoch", "step", "history", "rng")}


def test_killed_runs_resume_to_the_uninterrupted_result(spec, tmp_path):
    path = spec(100)
    started = time.monotonic()
    code, err = finish(start(path, tmp_path / "straight"))
    assert code == 0, err
    whole = time.monotonic() - started
    want_arrays, want_meta = state(tmp_path / "straight")

    run = tmp_path / "killed"
    pick = random.Random(16)
    # Killed at random file writes (mid-training, mid-checkpoint, between the model and the
    # history): a whole run replaces 27 files, 4 kills at the 6th at most leave some to write.
    for _ in range(4):
        kill = (pick.randint(1, 6), pick.choice(["before", "after"]))
        code, err = finish(start(path, run, "--resume", kill=kill))
        assert code == -signal.SIGKILL, (kill, code, err)
    # and from outside, at a random moment (if the run is still going by then)
    proc = start(path, run, "--resume")
    try:
        proc.wait(timeout=pick.uniform(0.0, whole))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    finish(proc)
    code, err = finish(start(path, run, "--resume"))
    assert code == 0, err

    got_arrays, got_meta = state(run)
    assert got_meta == want_meta
    assert sorted(got_arrays) == sorted(want_arrays)
    for name, value in want_arrays.items():
        assert np.array_equal(got_arrays[name], value), name
    leftovers = [p.name for p in run.rglob("*.tmp")]
    assert not leftovers, f"temp files of killed writes were left: {leftovers}"


def test_a_new_run_into_a_run_is_refused_and_deletes_nothing(spec, tmp_path, capsys):
    path = spec(3)
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    assert any(name.startswith("ckpt-") for name in before)
    capsys.readouterr()

    assert main(["train", str(path), "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and "--overwrite" in err[0], err
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before

    assert main(["train", str(path), "--out", str(run), "--quiet", "--overwrite"]) == 0
    assert main(["train", str(path), "--out", str(run), "--resume", "--overwrite"]) == 2


def test_resume_extends_a_finished_run_with_more_epochs(spec, tmp_path, capsys):
    path = spec(6)
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert main(["train", str(path), "--out", str(straight), "--quiet"]) == 0
    assert main(["train", str(path), "--out", str(run), "--quiet", "--epochs", "3"]) == 0
    # --epochs 3 wrote checkpoints every epoch, the 6-epoch run every 1 too: max(1, 6 // 10)
    assert main(["train", str(path), "--out", str(run), "--quiet", "--resume"]) == 0
    want, got = state(straight), state(run)
    assert got[1] == want[1]
    for name in want[0]:
        assert np.array_equal(got[0][name], want[0][name]), name


def test_resume_falls_back_to_the_newest_checkpoint_that_verifies(spec, tmp_path, capsys):
    path = spec(4)
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert main(["train", str(path), "--out", str(straight), "--quiet"]) == 0
    assert main(["train", str(path), "--out", str(run), "--quiet", "--epochs", "3"]) == 0
    newest = ck.latest_checkpoint(run / "checkpoints")
    raw = newest.read_bytes()
    newest.write_bytes(raw[: len(raw) // 2])
    capsys.readouterr()
    assert main(["train", str(path), "--out", str(run), "--quiet", "--resume"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("graphnn: warning: checkpoint "), err
    assert newest.name in err[0] and "older checkpoint" in err[0]
    want, got = state(straight), state(run)
    assert got[1] == want[1]
