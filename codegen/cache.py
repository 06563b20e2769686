"""The kernel cache: generated modules as content-hashed files, imported so Numba can cache them.

``exec``'d source cannot use Numba's ``cache=True`` (no file to key on), so every module is
written to ``<cache dir>/graphnn_<sha256 prefix>.py`` and imported from there.  Writes are atomic
(a concurrent process never imports half a file); a file whose content does not match its name
is rewritten, never trusted; a file that already holds the right text is never touched, because
Numba's cache index is keyed on the file's mtime and size.  The directory is
``$GRAPHNN_CACHE_DIR`` or a per-user default; one that cannot be used (a file, not writable, a
full disk) is replaced for the process by a private temporary directory, with a warning
(:func:`graphnn.files.cache_dir`).

A damaged compiled file repairs itself: a ``.pyc`` that does not unmarshal is removed and the
module compiled from its text, and Numba's files are watched by :mod:`codegen.cache_repair`.

>>> import os, tempfile
>>> os.environ["GRAPHNN_CACHE_DIR"] = tempfile.mkdtemp()
>>> load_module("X = 1\\n").X
1
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from codegen.cache_repair import removed_because, repair_numba_caches
from graphnn import files
from graphnn.errors import CodegenError

_LOADED: dict[str, object] = {}


def module_path(source: str) -> Path:
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    return files.cache_dir() / f"graphnn_{digest}.py"


def load_module(source: str):
    """Import ``source`` from its content-hashed file, writing the file if absent or stale."""
    path = module_path(source)
    key = str(path)
    if key in _LOADED:
        return _LOADED[key]
    path = _write(path, source.encode("utf-8"))  # not the locale's: the text is not all ASCII
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba's cache locator resolves functions through the module
    try:
        exec(_code(spec.loader, name, path), module.__dict__)  # what exec_module does
    except BaseException:
        del sys.modules[name]
        raise
    repair_numba_caches(module, path)
    _LOADED[key] = module
    return module


def _write(path: Path, data: bytes) -> Path:
    """``path`` holding ``data``; in the fallback directory if the cache directory fails now
    (e.g. a full disk), named after the same content."""
    if files.read_bytes(path) == data:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.publish(path, data)
        return path
    except OSError as exc:
        if files.is_fallback(path.parent):
            raise CodegenError(
                f"cannot write the kernel module {path.name} in the cache directory "
                f"{files.configured_dir()} (GRAPHNN_CACHE_DIR) nor in {path.parent}: "
                f"{exc.strerror or exc}"
            ) from None
        problem = f"failed a write ({exc.strerror or exc})"
        return _write(files.use_instead(path.parent, problem) / path.name, data)


def _code(loader, name: str, path: Path):
    """The module's code object; a damaged ``.pyc`` (truncated, garbled: it passes Python's
    header check, then marshal fails) is removed once and the text compiled instead."""
    try:
        return loader.get_code(name)
    except (EOFError, ValueError, TypeError, ImportError) as exc:
        pyc = Path(importlib.util.cache_from_source(str(path)))
        if not pyc.exists():
            raise
        removed_because(pyc, exc, [pyc])
        return loader.get_code(name)
