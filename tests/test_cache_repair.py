"""A damaged cache file costs one compile and a warning, never every later run.

Each case damages one kind of file in a warm cache (Numba's index ``.nbi`` and code ``.nbc``,
Python's ``.pyc``, a stored derivative form), then runs ``graphnn train`` on it in a new process:
the run must succeed with the result of an undamaged one and one warning line naming the file,
and the run after it must find the cache whole again (no warning).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SPEC = """
[inputs]
x = [2]
y = [1]
[params]
w = { shape = [2, 1], init = "ones" }
[graph]
pred = "tanh(x @ w)"
loss = "mse(pred, y)"
[train]
epochs = 2
batch_size = 2
backend = "cpu"
[data]
source = "d.csv"
x = ["a", "b"]
y = ["c"]
validation_split = 0
"""


def train(where: Path, cache: Path, **env):
    """(exit code, stdout lines after the first (which has the time), stderr lines)."""
    env = {**os.environ, "GRAPHNN_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT), **env}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # the .pyc files are part of what is tested
    argv = [sys.executable, "-m", "graphnn.cli", "train", "s.toml", "--out", "run", "--overwrite"]
    proc = subprocess.run(argv, cwd=where, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout.splitlines()[1:], proc.stderr.splitlines()


def workdir(tmp_path: Path, name: str) -> Path:
    where = tmp_path / name
    where.mkdir()
    (where / "s.toml").write_text(SPEC)
    (where / "d.csv").write_text("a,b,c\n0.1,0.2,0.3\n0.4,0.5,0.6\n-0.1,0.3,0.0\n")
    return where


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A cache holding the spec's module, its .pyc, Numba's files and derivative forms, and
    what training on it prints."""
    tmp = tmp_path_factory.mktemp("warm")
    cache = tmp / "cache"
    code, out, err = train(workdir(tmp, "first"), cache)
    assert code == 0 and err == [], err
    return cache, out


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garble(path: Path, keep: int = 0) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep] + bytes(b ^ 0x5A for b in data[keep:]))


PYC_HEADER = 16  # magic, flags, source mtime and size: kept, so Python trusts the file
DAMAGE = {
    "nbi-truncated": ("__pycache__/*.step-*.nbi", truncate),
    "nbi-garbled": ("__pycache__/*apply_update*.nbi", garble),
    "nbc-truncated": ("__pycache__/*all_finite*.nbc", truncate),
    "nbc-garbled": ("__pycache__/*.step-*.nbc", garble),
    "pyc-truncated": ("__pycache__/*.pyc", lambda p: truncate(p)),
    "pyc-garbled": ("__pycache__/*.pyc", lambda p: garble(p, PYC_HEADER)),
    "derivative-garbled": ("derivatives/*.pickle", garble),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_cache_file_is_removed_and_compiled_again(warm, tmp_path, kind):
    cache, want = warm
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)  # copy2: the module keeps its mtime, Numba's index stays valid
    pattern, damage = DAMAGE[kind]
    damaged = sorted(copy.glob(pattern))[0]
    damage(damaged)

    code, out, err = train(workdir(tmp_path, "run"), copy)
    assert code == 0, err
    assert out == want
    assert len(err) == 1 and err[0].startswith("graphnn: warning: damaged"), err
    assert str(damaged) in err[0]

    code, out, err = train(tmp_path / "run", copy)
    assert (code, out, err) == (0, want, [])  # repaired: the next run finds nothing wrong


@pytest.mark.parametrize("kind", ["a file", "under a file"])
def test_an_unusable_cache_directory_falls_back_to_a_private_one(warm, tmp_path, kind):
    _, want = warm
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    cache = blocker if kind == "a file" else blocker / "cache"
    temp = tmp_path / "tmp"
    temp.mkdir()
    code, out, err = train(workdir(tmp_path, "run"), cache, TMPDIR=str(temp))
    assert code == 0, err
    assert out == want
    assert len(err) == 1 and "GRAPHNN_CACHE_DIR" in err[0] and str(cache) in err[0], err
    assert list(temp.iterdir()) == []  # the private directory went with its process
    assert blocker.read_text() == "not a directory"
