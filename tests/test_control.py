"""Control of a running fit: a callback stops it (returning False or setting
model.stop_training); an exception in a callback or Ctrl-C ends it cleanly, with the last complete
epoch's parameters, the history and a checkpoint, from which --resume finishes to the same
result as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import graphnn as gn
from graphnn.cli import main
from graphnn.train import checkpoint

ROOT = Path(__file__).resolve().parents[1]


def model(backend="numpy"):
    x, y = gn.input("x", (4,)), gn.input("y", (3,))
    h = gn.tanh(x @ gn.param("W1", (4, 8)) + gn.param("b1", (8,), init="zeros"))
    logits = h @ gn.param("W2", (8, 3))
    graph = gn.Graph(gn.softmax_cross_entropy(logits, y))
    return gn.compile(graph, optimizer=gn.Adam(lr=0.01), backend=backend)


def data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4))
    return {"x": x, "y": (x[:, 0] > 0).astype(int) + (x[:, 1] > 0)}


def test_a_callback_returning_false_stops_after_its_epoch():
    m = model()
    history = m.fit(data(), epochs=10, callbacks=[lambda model, epoch, logs: epoch < 3])
    assert history.epochs == 3 and history["stopped"] == "callback"


def test_a_callback_setting_stop_training_stops():
    def enough(model, epoch, logs):
        model.stop_training = epoch >= 2

    history = model().fit(data(), epochs=10, callbacks=[enough])
    assert history.epochs == 2 and history["stopped"] == "callback"


def test_an_exception_in_a_callback_keeps_the_epoch_history_and_a_checkpoint(tmp_path):
    def fails(model, epoch, logs):
        if epoch == 4:
            raise RuntimeError("disk full")

    m = model()
    with pytest.raises(RuntimeError, match="disk full"):
        m.fit(data(), epochs=10, checkpoint_dir=tmp_path, checkpoint_every=3, callbacks=[fails])
    assert m.history.epochs == 4 and m.history["stopped"] == "error"
    arrays, meta = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(tmp_path))
    assert meta["epoch"] == 4
    np.testing.assert_array_equal(arrays["param/W1"], m.params["W1"])
    # resumed, the run ends where an uninterrupted one does
    again = model()
    again.fit(data(), epochs=10, checkpoint_dir=tmp_path, checkpoint_every=3, resume=True)
    whole = model()
    whole.fit(data(), epochs=10)
    for name, value in whole.params.items():
        np.testing.assert_array_equal(again.params[name], value)
    assert again.history["loss"] == whole.history["loss"]


def test_a_hard_interrupt_inside_an_epoch_rolls_it_back(tmp_path, monkeypatch):
    m = model()
    m.fit(data(), epochs=2, checkpoint_dir=tmp_path)
    before = {k: v.copy() for k, v in m.params.items()}
    real = m.trainer.epoch

    def cut_short(params, *args):
        real(params, *args)  # the parameters move, then the KeyboardInterrupt lands
        raise SystemError("CPUDispatcher returned a result with an exception set") from (
            KeyboardInterrupt()
        )

    monkeypatch.setattr(m.trainer, "epoch", cut_short)
    with pytest.raises(KeyboardInterrupt):
        m.fit(data(), epochs=6, checkpoint_dir=tmp_path, resume=True)
    for name, value in before.items():
        np.testing.assert_array_equal(m.params[name], value)
    assert m.history.epochs == 2 and m.history["stopped"] == "interrupted"
    monkeypatch.undo()
    m.fit(data(), epochs=6, checkpoint_dir=tmp_path, resume=True)
    whole = model()
    whole.fit(data(), epochs=6)
    for name, value in whole.params.items():
        np.testing.assert_array_equal(m.params[name], value)


def test_ctrl_c_in_an_epoch_stops_fit_after_it_in_every_call_and_restores_the_handler():
    """The handler is installed by each fit (not left over from the last) and put back."""
    m = model()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    for call in range(3):  # every call defers, not only the first

        def ctrl_c(model, epoch, logs):
            if epoch == 2:
                signal.raise_signal(signal.SIGINT)  # lands in the handler: no exception here

        with pytest.raises(KeyboardInterrupt):
            m.fit(data(), epochs=5, callbacks=[ctrl_c])
        assert m.history.epochs == 2 and m.history["stopped"] == "interrupted", call
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    m.fit(data(), epochs=2)  # a Ctrl-C between calls is the default one again
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_a_sigint_handler_of_the_program_is_left_alone():
    seen = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:

        def ctrl_c(model, epoch, logs):
            if epoch == 1:
                signal.raise_signal(signal.SIGINT)

        history = model().fit(data(), epochs=3, callbacks=[ctrl_c])
        assert history.epochs == 3 and seen == [signal.SIGINT]
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, old)


SPEC = """
[inputs]
x = [16]
y = [4]
[params]
W1 = { shape = [16, 32], init = "he_normal" }
b1 = { shape = [32], init = "zeros" }
W2 = { shape = [32, 4] }
[graph]
logits = "relu(x @ W1 + b1) @ W2"
loss = "softmax_cross_entropy(logits, y)"
[train]
optimizer = "adam"
lr = 0.001
batch_size = 8
epochs = 4000
backend = "cpu"
[data]
source = "d.npz"
one_hot = "y"
validation_split = 0.2
"""


def test_ctrl_c_saves_the_run_exits_130_and_resume_finishes_it(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 16))
    np.savez(tmp_path / "d.npz", x=x, y=np.argmax(x[:, :4], axis=1))
    (tmp_path / "m.toml").write_text(SPEC)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "graphnn.cli", "train", "m.toml", "--out", "run", "--quiet"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not checkpoint.latest_checkpoint(tmp_path / "run" / "checkpoints"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "continue it with: graphnn train m.toml --out run --resume" in err
    assert "Traceback" not in err and "SystemError" not in err
    saved = gn.load_model(tmp_path / "run" / "model.npz")
    stopped_at = saved.history.epochs
    assert 0 < stopped_at < 4000 and saved.history["stopped"] == "interrupted"
    assert (tmp_path / "run" / "history.json").is_file()
    latest = checkpoint.latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert checkpoint.load_checkpoint(latest)[1]["epoch"] == stopped_at
    monkeypatch.chdir(tmp_path)
    assert main(["train", "m.toml", "--out", "run", "--resume", "--quiet"]) == 0
    assert main(["train", "m.toml", "--out", "whole", "--quiet"]) == 0
    resumed = gn.load_model(tmp_path / "run" / "model.npz")
    whole = gn.load_model(tmp_path / "whole" / "model.npz")
    for name, value in whole.params.items():
        np.testing.assert_array_equal(resumed.params[name], value)
    assert resumed.history["loss"] == whole.history["loss"]
