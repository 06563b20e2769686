"""Damaged compiled files of a kernel module are removed once and the kernels compiled again.

Numba loads a kernel's machine code from ``__pycache__/<module>.<function>-<line>.*.nbi|.nbc``
(a pickled index and pickled code) on the kernel's first call.  A truncated or garbled file
(a process killed mid-write on a file system without atomic rename, a full disk, a bad copy)
raised ``UnpicklingError`` or ``EOFError`` from that call in every later process, naming
neither the file nor the cache.  :func:`repair_numba_caches` wraps the cache of every cached
kernel of a module as it is imported: when loading from it fails, the module's compiled files
are removed, a one-line :class:`~graphnn.errors.GraphnnWarning` names the file, and Numba
compiles the kernel as if nothing had been cached (and caches it again).  A compile error is
not a cache error: it is raised as before.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from graphnn.errors import GraphnnWarning

# Numba's cache methods that read a file, and the frame variable that names it
_READERS = {"_load_index": "self._index_path", "_load_data": "path"}


def repair_numba_caches(module, path: Path) -> None:
    """Make every disk-cached Numba dispatcher of ``module`` (imported from ``path``) repair
    its cache instead of failing on a damaged file."""
    repaired = []  # once per module: its files are all gone after the first repair
    for value in list(vars(module).values()):
        cache = getattr(value, "_cache", None)
        load = getattr(cache, "load_overload", None)
        if load is not None and getattr(load, "_graphnn_repairs", False) is False:
            cache.load_overload = _repairing(load, path, repaired)


def _repairing(load, path: Path, repaired: list):
    def load_overload(sig, target_context):
        try:
            return load(sig, target_context)
        except Exception as exc:  # noqa: BLE001 - any failure to read a cache file
            if repaired:  # already removed: this one is not a damaged file of ours
                raise
            repaired.append(True)
            damaged = _file_of(exc) or path.parent / "__pycache__" / f"{path.stem}.*"
            removed_because(damaged, exc, compiled_files(path))
            return None  # not cached: Numba compiles, then saves fresh files

    load_overload._graphnn_repairs = True
    return load_overload


def compiled_files(path: Path) -> list[Path]:
    """The compiled files Python and Numba keep for the module file ``path``."""
    pycache = path.parent / "__pycache__"
    return [p for p in pycache.glob(f"{path.stem}.*") if p.suffix in (".pyc", ".nbi", ".nbc")]


def removed_because(damaged: Path, exc: BaseException, files: list[Path]) -> None:
    """Remove ``files`` and warn, in one line, that ``damaged`` could not be read."""
    left = []
    for file in files:
        try:
            file.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            left.append(file)
    reason = f"{type(exc).__name__}: {exc}"
    reason = reason if len(reason) <= 120 else reason[:117] + "..."
    what = "removed its module's compiled files" if not left else f"could not remove {left[0]}"
    warnings.warn(
        f"damaged kernel cache file {damaged} ({reason}); {what} and compiling again",
        GraphnnWarning,
        stacklevel=2,
    )


def _file_of(exc: BaseException) -> Path | None:
    """The cache file Numba was reading when ``exc`` was raised, from the traceback."""
    tb, found = exc.__traceback__, None
    while tb is not None:
        frame = tb.tb_frame
        where = _READERS.get(frame.f_code.co_name)
        if where is not None:
            name, _, attr = where.partition(".")
            value = frame.f_locals.get(name)
            value = getattr(value, attr, None) if attr else value
            found = Path(value) if isinstance(value, str | Path) else found
        tb = tb.tb_next
    return found
