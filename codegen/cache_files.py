"""What the cache directory holds, and removing it: the ``graphnn cache`` command.

The directory (``graphnn.files.configured_dir``: the one asked for, not a temporary one a
process fell back to) holds three kinds of entry, each recognized by its
full name, so that nothing else in a directory ``$GRAPHNN_CACHE_DIR`` points at is touched:

- a **kernel module** ``graphnn_<20 hex>.py``, with the files Python and Numba keep for it in
  ``__pycache__/graphnn_<20 hex>.*.pyc|.nbi|.nbc`` (bytecode, Numba's index and machine code);
  compiled files whose module is gone are an entry of their own;
- a **derivative form** ``derivatives/<64 hex>.pickle`` (``graphnn.derive.store``);
- a **temp file**: one that ``graphnn.files.publish`` (``.<name>.<random>.tmp``) or Numba
  (``<name>.tmp.<uuid>``) is writing, or left behind when its process was killed.

Nothing prunes them by itself, so the directory grows with every model and graphnn version.
An entry's last use is the latest access or modification time of its files: every process that
loads a module reads its file and Numba's index.  On a file system mounted ``noatime`` that is
the time they were written, so ``--older-than`` may remove an entry still in use, which costs
it one compile.  A temp file is removed only once it is an hour old: a running process may be
about to rename it into place.  With ``NUMBA_CACHE_DIR`` set, Numba keeps its files there
instead, outside this listing.
"""

from __future__ import annotations

import math
import os
import re
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from graphnn.files import configured_dir as cache_dir

KINDS = ("module", "derivative", "temp")
TEMP_GRACE_S = 3600.0  # a live process's temp file exists for milliseconds; an hour is safe

_MODULE = r"graphnn_[0-9a-f]{20}"
_FORM = r"[0-9a-f]{64}\.pickle"
# folder -> (pattern, kind) of every file name that is graphnn's; group 1 of a module pattern
# is the module's name, which its .py and its compiled files share
_NAMES = {
    "root": [
        (re.compile(rf"({_MODULE})\.py"), "module"),
        # codegen.cpu.fused_compile's job and done marker for one signature of a module
        (re.compile(rf"({_MODULE})\.[0-9a-f]{{12}}\.(?:fused|job|failed)"), "module"),
        (re.compile(rf"\.{_MODULE}\.(?:py|[0-9a-f]{{12}}\.(?:fused|job|failed))\..+\.tmp"), "temp"),
    ],
    "pycache": [
        (re.compile(rf"({_MODULE})\..+\.(?:pyc|nbi|nbc)"), "module"),
        (re.compile(rf"{_MODULE}\..+\.tmp\..+"), "temp"),  # Numba's, while it writes
    ],
    "derivatives": [
        (re.compile(_FORM), "derivative"),
        (re.compile(rf"\.{_FORM}\..+\.tmp"), "temp"),
    ],
}


@dataclass(frozen=True)
class Entry:
    kind: str  # one of KINDS
    files: tuple[Path, ...]  # a module's own .py last, so that it goes last
    size: int  # bytes, all files together
    last_use: float  # seconds since the epoch


def entries() -> list[Entry]:
    """Every entry in the cache directory (none if it does not exist)."""
    root = cache_dir()
    folders = {"root": root, "pycache": root / "__pycache__", "derivatives": root / "derivatives"}
    modules: dict[str, list[tuple[Path, os.stat_result]]] = {}
    found = []
    for folder, patterns in _NAMES.items():
        for path, st in _files(folders[folder]):
            for pattern, kind in patterns:
                match = pattern.fullmatch(path.name)
                if match is None:
                    continue
                if kind == "module":
                    modules.setdefault(match.group(1), []).append((path, st))
                else:
                    found.append(_entry(kind, [(path, st)]))
                break
    for name in sorted(modules):
        files = sorted(modules[name], key=lambda f: (f[0].suffix == ".py", f[0].name))
        found.append(_entry("module", files))
    return found


def _files(folder: Path):
    """(path, lstat) of the regular files and symbolic links directly in ``folder``."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:  # absent or unreadable: nothing of ours to list
        return
    for name in names:
        path = folder / name
        try:
            st = path.lstat()  # a link is an entry itself, never followed
        except OSError:  # removed meanwhile by another process
            continue
        if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            yield path, st


def _entry(kind: str, files: list[tuple[Path, os.stat_result]]) -> Entry:
    size = sum(st.st_size for _, st in files)
    last_use = max(max(st.st_atime, st.st_mtime) for _, st in files)
    return Entry(kind, tuple(p for p, _ in files), size, last_use)


def stale(found: Iterable[Entry], older_than_days: float | None):
    """The entries to remove: all (``None``), or those unused for ``older_than_days`` days.

    A temp file is litter once it is an hour old, and never taken before, whatever
    ``older_than_days`` says.
    """
    now = time.time()
    cutoff = math.inf if older_than_days is None else now - older_than_days * 86400.0
    return [
        e
        for e in found
        if (now - e.last_use >= TEMP_GRACE_S if e.kind == "temp" else e.last_use <= cutoff)
    ]


@dataclass(frozen=True)
class Removal:
    entries: int = 0  # entries with every file gone
    size: int = 0  # their bytes
    failed: tuple[str, ...] = ()  # "path: reason" for each file that could not be removed


def remove(found: Iterable[Entry]) -> Removal:
    """Delete the entries' files, a module's compiled files before its source, going on past a
    file that cannot be removed (``failed`` names it).  A file already gone counts as removed."""
    count = size = 0
    failed = []
    for entry in found:
        ok = True
        for path in entry.files:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:  # e.g. permissions; compiled files left are listed still
                failed.append(f"{path}: {exc.strerror or exc}")
                ok = False
        if ok:
            count, size = count + 1, size + entry.size
    return Removal(count, size, tuple(failed))


def summary(found: Iterable[Entry]) -> dict[str, tuple[int, int]]:
    """kind -> (entries, bytes)."""
    totals = {kind: (0, 0) for kind in KINDS}
    for e in found:
        n, size = totals[e.kind]
        totals[e.kind] = (n + 1, size + e.size)
    return totals
