"""Screened derivatives kept on disk, so that a new process skips SymPy's simplify and the screen.

Choosing the stable form of a derivative (``graphnn.formulas.derivative``) simplifies, solves and
evaluates candidates at 50 digits: 0.1-0.3 s per op in every new process, most of a warm start of
a sigmoid or tanh model (SymPy's ``simplify`` alone imports ``sympy.physics.units`` on first
use).  The result is pickled to ``<cache dir>/derivatives/<sha256>.pickle``.  The key is the
formula's ``srepr``, the argument, and a fingerprint of what chose the form: the text of
``graphnn/formulas.py``, and the SymPy, mpmath and NumPy versions.  A change to any of them
derives afresh.

A stored form must be the very tree that was chosen, or a warm process would print and run
different arithmetic than a cold one (unpickling rebuilds ``1.0*(Y + 1)`` as ``1.0*Y + 1.0``
unless SymPy's evaluation is off).  So files are read with evaluation off, and a value is used
only if its ``srepr`` matches the one stored beside it, as well as its key.  Anything else is
derived again and rewritten, atomically.  The files sit next to the kernel modules, which are
imported from the same directory, and are trusted as far as those are.  An unwritable cache
directory only means deriving in every process.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
from collections.abc import Callable
from pathlib import Path

import sympy

from codegen.cache import cache_dir, publish
from graphnn import formulas
from graphnn.formulas import Derivative

PROTOCOL = 5


@functools.cache
def fingerprint(code_file: str = formulas.__file__) -> str:
    """What a stored form depends on besides its key: the screening code and library versions."""
    import mpmath
    import numpy

    try:
        code = Path(code_file).read_bytes()
    except OSError:  # no source file (a frozen install): the package version stands in for it
        from graphnn import __version__

        code = __version__.encode()
    versions = f"sympy {sympy.__version__} mpmath {mpmath.__version__} numpy {numpy.__version__}"
    return hashlib.sha256(code + versions.encode() + bytes([PROTOCOL])).hexdigest()


def structure(d: Derivative) -> str:
    """Every expression of ``d`` as an exact tree (srepr), with the screen's verdicts."""
    candidates = tuple((c.form, c.expr, c.nonfinite, c.inaccurate) for c in d.candidates)
    return sympy.srepr((d.expr, d.form, candidates, d.references))


def load_or_derive(key: str, derive: Callable[[], Derivative]) -> Derivative:
    """The stored derivative for ``key``, or ``derive()``'s, stored for the next process."""
    full_key = f"{fingerprint()} {key}"
    path = cache_dir() / "derivatives" / f"{hashlib.sha256(full_key.encode()).hexdigest()}.pickle"
    stored = _load(path, full_key)
    if stored is not None:
        return stored
    value = derive()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        publish(path, pickle.dumps((full_key, structure(value), value), protocol=PROTOCOL))
    except OSError:
        pass  # a read-only cache: the next process derives again
    return value


def _load(path: Path, full_key: str) -> Derivative | None:
    try:
        with path.open("rb") as f, sympy.evaluate(False):
            stored_key, tree, value = pickle.load(f)
        if stored_key == full_key and isinstance(value, Derivative) and structure(value) == tree:
            return value
    except Exception:  # noqa: BLE001 - absent, truncated, or not ours: derive again
        pass
    return None
