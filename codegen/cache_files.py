"""What the cache directory holds, and removing it: the ``graphnn cache`` command.

The directory (``codegen.cache.cache_dir``) holds three kinds of entry:

- a **kernel module** ``graphnn_<hash>.py``, with the files Python and Numba keep for it in
  ``__pycache__/graphnn_<hash>.*`` (bytecode, Numba's index and machine code);
- a **derivative form** ``derivatives/<sha256>.pickle`` (``graphnn.derivative_store``);
- a **temp file** ``.<name>.<random>.tmp`` that a process killed while publishing left behind.

Nothing prunes them by itself, so the directory grows with every model and every graphnn
version.  An entry's last use is the latest access or modification time of its files (Numba
reads a module's index in every process that loads it; on a file system mounted ``noatime`` this
is the time it was written, and ``--older-than`` may remove an entry still in use, which costs
one compile).  Only files named like these are counted or removed, since ``$GRAPHNN_CACHE_DIR``
may point at a directory that holds other things.  With ``NUMBA_CACHE_DIR`` set, Numba keeps its
files there instead, outside this listing.

>>> import os, tempfile
>>> os.environ["GRAPHNN_CACHE_DIR"] = tempfile.mkdtemp()
>>> summary(entries())
{'module': (0, 0), 'derivative': (0, 0), 'temp': (0, 0)}
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from codegen.cache import cache_dir, derivatives_dir

KINDS = ("module", "derivative", "temp")
TEMP_GRACE_S = 3600.0  # a live process's temp file exists for milliseconds; an hour is safe


@dataclass(frozen=True)
class Entry:
    kind: str  # one of KINDS
    files: tuple[Path, ...]
    size: int  # bytes, all files together
    last_use: float  # seconds since the epoch


def entries() -> list[Entry]:
    """Every entry in the cache directory (none if it does not exist)."""
    root, store = cache_dir(), derivatives_dir()
    found = []
    for module in sorted(root.glob("graphnn_*.py")):
        compiled = sorted((root / "__pycache__").glob(module.stem + ".*"))
        found.append(_entry("module", [module, *compiled]))
    found += [_entry("derivative", [p]) for p in sorted(store.glob("*.pickle"))]
    for folder in (root, store):
        found += [_entry("temp", [p]) for p in sorted(folder.glob(".*.tmp"))]
    return [e for e in found if e.files]


def _entry(kind: str, paths: list[Path]) -> Entry:
    files, size, last_use = [], 0, 0.0
    for path in paths:
        try:
            st = path.stat()
        except OSError:  # removed meanwhile by another process
            continue
        files.append(path)
        size += st.st_size
        last_use = max(last_use, st.st_atime, st.st_mtime)
    return Entry(kind, tuple(files), size, last_use)


def stale(found: Iterable[Entry], older_than_days: float | None, now: float | None = None):
    """The entries to remove: all (``None``), or those unused for ``older_than_days`` days.

    A temp file is litter once it is an hour old, whatever ``older_than_days`` says, and never
    taken before: a running process may be about to publish it.
    """
    now = time.time() if now is None else now
    cutoff = now if older_than_days is None else now - older_than_days * 86400.0
    return [
        e
        for e in found
        if (now - e.last_use >= TEMP_GRACE_S if e.kind == "temp" else e.last_use <= cutoff)
    ]


def remove(found: Iterable[Entry]) -> tuple[int, int]:
    """Delete the entries' files; returns (entries, bytes) removed.  Missing files are skipped."""
    count = size = 0
    for entry in found:
        for path in entry.files:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
        count, size = count + 1, size + entry.size
    return count, size


def summary(found: Iterable[Entry]) -> dict[str, tuple[int, int]]:
    """kind -> (entries, bytes)."""
    totals = {kind: (0, 0) for kind in KINDS}
    for e in found:
        n, size = totals[e.kind]
        totals[e.kind] = (n + 1, size + e.size)
    return totals
