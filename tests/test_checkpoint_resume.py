"""Checkpoints written by fit, resuming an interrupted run bit for bit, and corrupt files."""

import zipfile

import numpy as np
import pytest

import graphnn as gn
from graphnn.optim.schedules import Cosine, Warmup
from graphnn.train import checkpoint as ck

EPOCHS = 6


def linear_graph():
    x, t = gn.input("x", (4,)), gn.input("t", (3,))
    W, b = gn.param("W", (4, 3)), gn.param("b", (3,), init="normal")
    return gn.Graph(gn.mse(x @ W + b, t))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(42)
    X = rng.normal(size=(40, 4)).astype(np.float32)
    T = (X @ rng.normal(size=(4, 3)) + 0.3 * rng.normal(size=(40, 3))).astype(np.float32)
    return {"x": X, "t": T}


def adam():
    """Adam (state buffers and bias correction depend on the step) with a step-based schedule."""
    return gn.Adam(lr=0.05, schedule=Warmup(steps=5, then=Cosine(total_steps=40)))


class Crash(Exception):
    pass


def crash_after(epoch):
    def callback(model, done, logs):
        if done == epoch:
            raise Crash(f"killed after epoch {done}")

    return callback


FIT = dict(epochs=EPOCHS, batch_size=6, shuffle=True, seed=5, validation_split=0.25)


@pytest.mark.parametrize("every", [1, 2])
def test_killed_run_resumes_bit_for_bit(data, tmp_path, every):
    straight = gn.compile(linear_graph(), optimizer=adam(), seed=1)
    want = straight.fit(data, **FIT)

    first = gn.compile(linear_graph(), optimizer=adam(), seed=1)
    with pytest.raises(Crash):
        first.fit(
            data, **FIT, checkpoint_dir=tmp_path, checkpoint_every=every, callbacks=[crash_after(3)]
        )
    resumed = gn.compile(linear_graph(), optimizer=adam(), seed=1)  # a new process, in effect
    got = resumed.fit(data, **FIT, checkpoint_dir=tmp_path, checkpoint_every=every, resume=True)

    assert resumed.epoch == straight.epoch == EPOCHS and resumed.step == straight.step
    for k in straight.params:
        assert np.array_equal(resumed.params[k], straight.params[k]), k
    for k in straight.state:
        assert np.array_equal(resumed.state[k], straight.state[k]), k
    assert got == want  # every recorded loss, val_loss and lr, and the stop reason
    assert not np.array_equal(straight.params["W"], first.params["W"])  # the crash cost epochs


def test_resume_with_early_stopping_matches(data, tmp_path):
    kw = dict(FIT, epochs=40, early_stopping=True, patience=2)
    straight = gn.compile(linear_graph(), optimizer=gn.Adam(lr=0.2), seed=1)
    want = straight.fit(data, **kw)
    best, crash = int(np.argmin(want["val_loss"])) + 1, want.epochs - 1
    assert want["stopped"] == "early_stopping" and best < crash  # the best must come from disk
    first = gn.compile(linear_graph(), optimizer=gn.Adam(lr=0.2), seed=1)
    with pytest.raises(Crash):
        first.fit(data, **kw, checkpoint_dir=tmp_path, callbacks=[crash_after(crash)])
    resumed = gn.compile(linear_graph(), optimizer=gn.Adam(lr=0.2), seed=1)
    got = resumed.fit(data, **kw, checkpoint_dir=tmp_path, resume=True)
    assert got == want
    for k in straight.params:  # the best parameters, restored from best.npz's epoch
        assert np.array_equal(resumed.params[k], straight.params[k]), k


def test_checkpoint_files_and_contents(data, tmp_path):
    model = gn.compile(linear_graph(), optimizer=adam())
    steps_per_epoch = 5  # 40 rows in batches of 8
    model.fit(data, epochs=5, batch_size=8, checkpoint_dir=tmp_path, checkpoint_every=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    expected = [ck.checkpoint_name(e * steps_per_epoch) for e in (2, 4, 5)]  # 5: the last epoch
    assert names == sorted([*expected, "best.npz"])
    arrays, meta = ck.load_checkpoint(tmp_path / expected[0])
    assert (meta["epoch"], meta["step"], meta["optimizer"]) == (2, 10, "adam")
    assert sorted(arrays) == [
        "param/W",
        "param/b",
        "state/m_W",
        "state/m_b",
        "state/v_W",
        "state/v_b",
    ]
    assert len(meta["history"]["loss"]) == 2 and meta["history"]["stopped"] is None
    last = gn.compile(linear_graph(), optimizer=adam())
    last.load(ck.latest_checkpoint(tmp_path))
    assert last.epoch == 5 and last.history["stopped"] == "epochs"
    for k in model.params:
        np.testing.assert_array_equal(last.params[k], model.params[k])
    best = int(np.argmin(model.history["loss"])) + 1
    _, best_meta = ck.load_checkpoint(tmp_path / "best.npz")
    assert best_meta["epoch"] == best


def test_checkpoint_keep_prunes_old_files_and_the_run_still_resumes(data, tmp_path):
    straight = gn.compile(linear_graph(), optimizer=adam(), seed=1)
    want = straight.fit(data, **FIT)
    first = gn.compile(linear_graph(), optimizer=adam(), seed=1)
    kw = dict(checkpoint_dir=tmp_path, checkpoint_every=1, checkpoint_keep=2)
    with pytest.raises(Crash):
        first.fit(data, **FIT, **kw, callbacks=[crash_after(4)])
    names = sorted(p.name for p in tmp_path.iterdir())
    steps = [int(n[5:-4]) for n in names if n.startswith("ckpt-")]
    # the callback raised in epoch 4: fit checkpointed that epoch before passing the error on
    per_epoch = first.step // 4
    assert steps == [3 * per_epoch, 4 * per_epoch] and "best.npz" in names, names
    resumed = gn.compile(linear_graph(), optimizer=adam(), seed=1)
    got = resumed.fit(data, **FIT, **kw, resume=True)
    assert got["loss"] == want["loss"]
    np.testing.assert_array_equal(resumed.params["W"], straight.params["W"])
    assert len(list(tmp_path.glob("ckpt-*.npz"))) == 2
    with pytest.raises(gn.DataError, match="checkpoint_keep must be an int >= 1"):
        resumed.fit(data, **FIT, checkpoint_dir=tmp_path, checkpoint_keep=0, resume=True)


def test_new_run_refuses_a_directory_holding_another(data, tmp_path):
    model = gn.compile(linear_graph(), optimizer=adam())
    model.fit(data, epochs=1, checkpoint_dir=tmp_path)
    other = gn.compile(linear_graph(), optimizer=adam())
    with pytest.raises(gn.CheckpointError, match="pass resume=True") as exc:
        other.fit(data, epochs=2, checkpoint_dir=tmp_path)
    assert str(tmp_path) in str(exc.value) and other.step == 0


def test_resume_with_no_checkpoint_starts_fresh(data, tmp_path):
    a = gn.compile(linear_graph(), optimizer=adam())
    a.fit(data, epochs=2, batch_size=8, checkpoint_dir=tmp_path / "empty", resume=True)
    b = gn.compile(linear_graph(), optimizer=adam())
    b.fit(data, epochs=2, batch_size=8)
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k])


def truncated_checkpoint(data, directory):
    model = gn.compile(linear_graph(), optimizer=adam())
    model.fit(data, epochs=2, batch_size=8, checkpoint_dir=directory)
    path = ck.latest_checkpoint(directory)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def test_truncated_checkpoint_via_load(data, tmp_path):
    path = truncated_checkpoint(data, tmp_path)
    model = gn.compile(linear_graph(), optimizer=adam())
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(gn.CheckpointError, match="truncated") as exc:
        model.load(path)
    assert str(path) in str(exc.value)
    assert not isinstance(exc.value, zipfile.BadZipFile | ValueError | OSError)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__
    for k in before:  # a failed load changes nothing
        assert np.array_equal(model.params[k], before[k])


def test_truncated_checkpoint_via_resume_falls_back_to_the_one_before(data, tmp_path):
    path = truncated_checkpoint(data, tmp_path)
    straight = gn.compile(linear_graph(), optimizer=adam())
    straight.fit(data, epochs=4, batch_size=8)
    model = gn.compile(linear_graph(), optimizer=adam())
    with pytest.warns(gn.GraphnnWarning, match="resuming from an older checkpoint") as caught:
        model.fit(data, epochs=4, batch_size=8, checkpoint_dir=tmp_path, resume=True)
    assert str(path) in str(caught[0].message) and "truncated" in str(caught[0].message)
    for k in straight.params:
        assert np.array_equal(model.params[k], straight.params[k]), k


def test_resume_refuses_when_no_checkpoint_verifies(data, tmp_path):
    path = truncated_checkpoint(data, tmp_path)
    for other in tmp_path.glob("ckpt-*.npz"):
        other.write_bytes(b"garbage")
    model = gn.compile(linear_graph(), optimizer=adam())
    with pytest.warns(gn.GraphnnWarning), pytest.raises(gn.CheckpointError) as exc:
        model.fit(data, epochs=4, batch_size=8, checkpoint_dir=tmp_path, resume=True)
    assert str(path) in str(exc.value) and "no checkpoint" in str(exc.value)
    assert model.step == 0


def test_load_rejects_a_checkpoint_of_another_model(data, tmp_path):
    adam_model = gn.compile(linear_graph(), optimizer=adam())
    path = adam_model.save(tmp_path / "adam.npz")
    sgd_model = gn.compile(linear_graph(), optimizer=gn.SGD(lr=0.1, momentum=0.9))
    with pytest.raises(gn.CheckpointError, match="optimizer 'adam'"):
        sgd_model.load(path)
    sgd_model.load(path, weights_only=True)
    np.testing.assert_array_equal(sgd_model.params["W"], adam_model.params["W"])
    x, t = gn.input("x", (4,)), gn.input("t", (2,))
    narrow = gn.Graph(gn.mse(x @ gn.param("W", (4, 2)) + gn.param("b", (2,)), t))
    with pytest.raises(gn.CheckpointError, match=r"at 'W': expected shape \(4, 2\)"):
        gn.compile(narrow, optimizer=adam(), backend="numpy").load(path)
