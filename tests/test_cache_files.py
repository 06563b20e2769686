"""``graphnn cache``: listing the cache directory's entries and removing old or all of them."""

import os
import time
from pathlib import Path

import pytest

from codegen import cache, cache_files
from graphnn.cli import main

DAY = 86400.0


@pytest.fixture
def cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "_LOADED", {})
    return tmp_path


def _write(path: Path, size: int, age_days: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    when = time.time() - age_days * DAY
    os.utime(path, (when, when))
    return path


def _populate(root: Path) -> dict[str, Path]:
    """One recent and one old module (with compiled files), a derivative form, two temp files,
    and a file that is not graphnn's."""
    recent = cache.load_module("X = 1\n")
    recent_py = Path(recent.__file__)
    old_py = _write(root / "graphnn_0123456789abcdef0123.py", 100, age_days=40)
    return {
        "recent": recent_py,
        "recent_index": _write(root / "__pycache__" / f"{recent_py.stem}.f-1.py311.nbi", 10),
        "recent_pyc": _write(root / "__pycache__" / f"{recent_py.stem}.cpython-311.pyc", 10),
        "old": old_py,
        "old_index": _write(root / "__pycache__" / f"{old_py.stem}.f-1.py311.nbi", 20, 40),
        "old_code": _write(root / "__pycache__" / f"{old_py.stem}.f-1.py311.1.nbc", 30, 40),
        # the background compile's marker (codegen.cpu.fused_compile) goes with its module
        "old_fused": _write(root / f"{old_py.stem}.0123456789ab.fused", 1, 40),
        "derivative": _write(root / "derivatives" / f"{'a' * 64}.pickle", 50, age_days=10),
        "old_temp": _write(root / ".graphnn_0123456789abcdef0123.py.k2j.tmp", 5, age_days=1),
        "live_temp": _write(root / "derivatives" / f".{'b' * 64}.pickle.q.tmp", 5),
        "foreign": _write(root / "notes.txt", 7, age_days=400),
        "foreign_pycache": _write(root / "__pycache__" / "other.cpython-311.pyc", 7, 400),
        # names close to graphnn's that are not: never listed, never removed
        "lookalike_py": _write(root / "graphnn_notes.py", 7, age_days=400),
        "lookalike_pyc": _write(root / "__pycache__" / "graphnn_notes.cpython-311.pyc", 7, 400),
        "lookalike_tmp": _write(root / ".session.tmp", 7, age_days=400),
        "lookalike_pickle": _write(root / "derivatives" / "mydata.pickle", 7, age_days=400),
    }


FOREIGN = ("foreign", "foreign_pycache", "lookalike_py", "lookalike_pyc", "lookalike_tmp")
FOREIGN += ("lookalike_pickle",)


def test_entries_group_each_module_with_its_compiled_files(cache_dir):
    files = _populate(cache_dir)
    found = {e.files[-1].name: e for e in cache_files.entries()}  # a module's .py is last
    old = found[files["old"].name]
    assert old.kind == "module"
    assert set(old.files) == {
        files["old"],
        files["old_index"],
        files["old_code"],
        files["old_fused"],
    }
    assert old.size == 151
    assert abs(old.last_use - (time.time() - 40 * DAY)) < 60
    recent = found[files["recent"].name]
    assert {files["recent_index"], files["recent_pyc"]} <= set(recent.files)
    assert found[files["derivative"].name].kind == "derivative"
    assert found[files["old_temp"].name].kind == "temp"
    assert found[files["live_temp"].name].kind == "temp"
    everything = {p for e in found.values() for p in e.files}
    assert not everything & {files[k] for k in FOREIGN}
    assert cache_files.summary(found.values())["module"] == (2, old.size + recent.size)


def test_older_than_removes_only_what_was_unused_that_long(cache_dir):
    files = _populate(cache_dir)
    removed = cache_files.remove(cache_files.stale(cache_files.entries(), 30))
    assert (removed.entries, removed.size, removed.failed) == (
        2,
        156,
        (),
    )  # the old module (with its marker) and the day-old temp file
    left = {p.name for p in cache_dir.rglob("*")}
    for gone in ("old", "old_index", "old_code", "old_fused", "old_temp"):
        assert files[gone].name not in left
    for kept in ("recent", "recent_index", "recent_pyc", "derivative", "live_temp", *FOREIGN):
        assert files[kept].name in left, kept


def test_clear_removes_all_but_live_temp_files_and_foreign_files(cache_dir):
    files = _populate(cache_dir)
    cache_files.remove(cache_files.stale(cache_files.entries(), None))
    remaining = sorted(str(p.relative_to(cache_dir)) for p in cache_dir.rglob("*") if p.is_file())
    expected = [files[k] for k in ("live_temp", *FOREIGN)]
    assert remaining == sorted(str(p.relative_to(cache_dir)) for p in expected)
    # the cache still works: a module is written and imported again
    cache._LOADED.clear()
    assert cache.load_module("X = 1\n").X == 1


def test_a_recently_read_module_is_in_use_though_written_long_ago(cache_dir):
    old = _write(cache_dir / "graphnn_0123456789abcdef0123.py", 10, age_days=90)
    os.utime(old, (time.time(), old.stat().st_mtime))  # read today
    assert cache_files.stale(cache_files.entries(), 30) == []


def test_missing_cache_directory_lists_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path / "absent"))
    assert cache_files.entries() == []


def test_cache_command_reports_and_prunes(cache_dir, capsys):
    files = _populate(cache_dir)
    assert main(["cache"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"cache directory: {cache_dir}"
    assert out[1].split()[:3] == ["kernel", "modules", "2"]
    assert out[2].split()[:3] == ["derivative", "forms", "1"]
    assert out[3].split()[:3] == ["temp", "files", "2"]
    assert len(out) == 4 and files["old"].exists()  # listing removes nothing
    assert main(["cache", "--older-than", "30"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "removed 2 entries (0.2 kB, unused for 30 days)"
    )
    assert not files["old"].exists() and files["recent"].exists()
    assert main(["cache", "--clear"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("removed 2 entries (")
    assert not files["recent"].exists() and files["foreign"].exists()


def test_compiled_files_without_their_module_are_an_entry(cache_dir):
    # left by a module file deleted by hand, or by a removal that failed half-way
    index = _write(cache_dir / "__pycache__" / "graphnn_0123456789abcdef0123.f-1.py311.nbi", 5)
    (entry,) = cache_files.entries()
    assert entry.kind == "module" and entry.files == (index,)
    cache_files.remove(cache_files.stale([entry], None))
    assert not index.exists()


def test_numba_temp_files_wait_an_hour(cache_dir):
    pycache = cache_dir / "__pycache__"
    name = "graphnn_0123456789abcdef0123.f-1.py311.nbi.tmp.5f2a"
    writing = _write(pycache / name, 5)
    left = _write(pycache / name.replace("5f2a", "9c1b"), 5, age_days=0.5)
    assert {e.kind for e in cache_files.entries()} == {"temp"}
    cache_files.remove(cache_files.stale(cache_files.entries(), None))
    assert writing.exists() and not left.exists()


def test_clear_takes_entries_dated_in_the_future(cache_dir):
    module = _write(cache_dir / "graphnn_0123456789abcdef0123.py", 5, age_days=-2)
    cache_files.remove(cache_files.stale(cache_files.entries(), None))
    assert not module.exists()


def test_a_link_is_removed_not_its_target(cache_dir, tmp_path_factory):
    target = _write(tmp_path_factory.mktemp("elsewhere") / "keep.py", 5, age_days=90)
    link = cache_dir / "graphnn_0123456789abcdef0123.py"
    link.symlink_to(target)
    dangling = cache_dir / "graphnn_fedcba9876543210fedc.py"
    dangling.symlink_to(cache_dir / "gone.py")
    assert {e.files for e in cache_files.entries()} == {(link,), (dangling,)}
    cache_files.remove(cache_files.stale(cache_files.entries(), None))
    assert target.exists() and not link.is_symlink() and not dangling.is_symlink()


def test_a_file_that_cannot_be_removed_is_reported_and_the_rest_go(cache_dir, monkeypatch, capsys):
    files = _populate(cache_dir)
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if self == files["old_index"]:
            raise PermissionError(13, "Permission denied")
        return real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert main(["cache", "--older-than", "5"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "removed 2 entries (0.1 kB, unused for 5 days)"
    assert (
        err.strip() == f"graphnn: error: could not remove {files['old_index']}: Permission denied"
    )
    assert files["old_index"].exists()
    assert not files["old_code"].exists() and not files["derivative"].exists()
    # what was left is still listed, so a later run can remove it
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert [e.files for e in cache_files.entries() if e.kind == "module"] == [
        (files["old_index"],),
        (files["recent_pyc"], files["recent_index"], files["recent"]),
    ]
