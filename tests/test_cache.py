"""The kernel cache: content-hashed module files that a later process and Numba both reuse."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from codegen import cache
from graphnn import files
from graphnn.errors import CodegenError, GraphnnWarning

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "_LOADED", {})
    monkeypatch.setattr(files, "_INSTEAD", {})
    return tmp_path


def _source(value: int) -> str:
    return f'"""A test module: ∘ non-ASCII text, as in the gradient docstrings."""\n\nX = {value}\n'


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file())


def test_module_file_is_content_hashed(cache_dir):
    text = _source(1)
    module = cache.load_module(text)
    path = Path(module.__file__)
    assert module.X == 1
    assert path.parent == cache_dir
    assert path.name == f"graphnn_{hashlib.sha256(text.encode()).hexdigest()[:20]}.py"
    assert path.read_text(encoding="utf-8") == text
    other = cache.load_module(_source(2))
    assert other.X == 2 and Path(other.__file__) != path
    assert _files(cache_dir) == sorted([path.name, Path(other.__file__).name])  # no temp files
    assert cache.load_module(text) is module  # one import per process


def test_existing_file_is_reused_untouched(cache_dir):
    text = _source(3)
    path = cache.module_path(text)
    cache.load_module(text)
    before = path.stat()
    cache._LOADED.clear()  # as a new process would
    assert cache.load_module(text).X == 3
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_file_published_meanwhile_by_another_process_is_kept(cache_dir, monkeypatch):
    # The race of two cold processes: both find no file, the other one publishes first.  Ours
    # must not replace it (a new mtime would invalidate the Numba cache the other one writes).
    text = _source(6)
    path = cache.module_path(text)
    path.write_text(text, encoding="utf-8")
    before = path.stat()
    looks = []
    real_read = files.read_bytes

    def read(p):  # our first look saw no file; publish's look, after its link failed, sees theirs
        looks.append(p)
        return None if len(looks) == 1 else real_read(p)

    monkeypatch.setattr(files, "read_bytes", read)
    assert cache.load_module(text).X == 6
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert _files(cache_dir) == [path.name] and len(looks) == 2


@pytest.mark.parametrize(
    "content",
    [b"X = 666\n", b"", b"X = 4\n"[:3], b"\xff\xfe not utf-8 \x80"],
    ids=["wrong", "empty", "truncated", "binary"],
)
def test_stale_or_corrupt_file_is_rewritten(cache_dir, content):
    text = _source(4)
    path = cache.module_path(text)
    path.write_bytes(content)
    assert cache.load_module(text).X == 4
    assert path.read_text(encoding="utf-8") == text


def test_write_is_atomic(cache_dir, monkeypatch):
    text = _source(5)
    path = cache.module_path(text)
    real = os.replace, os.link

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    monkeypatch.setattr(os, "link", fail)
    # the cache directory fails, then the temporary one it falls back to: one clear error
    with pytest.warns(GraphnnWarning), pytest.raises(CodegenError) as exc:
        cache.load_module(text)
    assert "disk full" in str(exc.value) and "GRAPHNN_CACHE_DIR" in str(exc.value)
    assert not path.exists()  # nothing, rather than a partial file, at the final path
    assert _files(cache_dir) == []  # and the temp file is gone
    files._INSTEAD.clear()
    path.write_text("X = 0\n")  # a stale file stays whole when its replacement fails
    with pytest.warns(GraphnnWarning), pytest.raises(CodegenError, match="disk full"):
        cache.load_module(text)
    assert path.read_text() == "X = 0\n" and _files(cache_dir) == [path.name]
    files._INSTEAD.clear()
    monkeypatch.setattr(os, "replace", real[0])
    monkeypatch.setattr(os, "link", real[1])
    assert cache.load_module(text).X == 5  # and is never trusted


def test_failed_import_is_not_left_in_sys_modules(cache_dir):
    text = "raise RuntimeError('broken kernel module')\n"
    with pytest.raises(RuntimeError, match="broken"):
        cache.load_module(text)
    assert cache.module_path(text).stem not in sys.modules
    assert str(cache.module_path(text)) not in cache._LOADED


# --- across processes ---------------------------------------------------------------------------

SCRIPT = """
import json, numpy as np, graphnn as gn
from codegen.cpu import backend as cpu_backend
x, y = gn.input("x", (3,)), gn.input("y", (2,))
g = gn.Graph(gn.mse(gn.tanh(x @ gn.param("W", (3, 2)) + gn.param("b", (2,))), y))
data = {"x": np.ones((4, 3), np.float32), "y": np.zeros((4, 2), np.float32)}
loss, _ = g.value_and_grad(g.init_params(0), data, backend="cpu")
glue = cpu_backend.build_stepwise(g)  # what value_and_grad ran: its step kernels
steps = [getattr(glue, k) for k in dir(glue) if k.startswith("step_")]
steps = [f for f in steps if f.signatures]  # its forward's kernels are not called here
print(json.dumps({"file": glue.__file__, "loss": loss,
                  "kernels": sorted(f.py_func.__module__ for f in steps),
                  "hits": sum(sum(f.stats.cache_hits.values()) for f in steps),
                  "misses": sum(sum(f.stats.cache_misses.values()) for f in steps)}))
"""


def _start(directory: Path) -> subprocess.Popen:
    env = {**os.environ, "GRAPHNN_CACHE_DIR": str(directory), "GRAPHNN_DEBUG": "0"}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


def test_second_process_reuses_module_and_numba_cache(tmp_path):
    first = _result(_start(tmp_path))
    path = Path(first["file"])
    assert path.parent == tmp_path and first["misses"] > 0 and first["hits"] == 0
    pycache = path.parent / "__pycache__"
    assert first["kernels"]
    for stem in first["kernels"]:  # each step kernel's module has its Numba index and code
        names = [p.name for p in pycache.iterdir()]
        assert any(n.startswith(stem + ".step") and n.endswith(".nbi") for n in names), names
        assert any(n.startswith(stem + ".step") and n.endswith(".nbc") for n in names), names
    before = path.stat()
    second = _result(_start(tmp_path))
    after = path.stat()
    assert second["file"] == first["file"] and second["loss"] == first["loss"]
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert second["hits"] > 0 and second["misses"] == 0  # loaded, not compiled


def test_concurrent_processes_both_succeed(tmp_path):
    procs = [_start(tmp_path), _start(tmp_path)]
    results = [_result(p) for p in procs]
    assert results[0]["file"] == results[1]["file"]
    assert results[0]["loss"] == results[1]["loss"]
    path = Path(results[0]["file"])
    assert path.name == cache.module_path(path.read_text(encoding="utf-8")).name
    assert [p for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
    # Whoever published the file first, it was written once: a third process finds both
    # processes' Numba cache valid for it and compiles nothing.
    assert _result(_start(tmp_path))["misses"] == 0
