"""Screened derivatives kept on disk, so that a new process skips SymPy's simplify and the screen.

Choosing the stable form of a derivative (``graphnn.derive.screen.derivative``) simplifies,
solves and evaluates candidates at 50 digits: 0.1-0.3 s per op in every new process, most of a
warm start of a sigmoid or tanh model (SymPy's ``simplify`` alone imports ``sympy.physics.units``
on first use).  The result is pickled to ``<cache dir>/derivatives/<sha256>.pickle``.  The key is
the formula's ``srepr``, the argument, and a fingerprint of what chose the form: the text of
``graphnn/derive/screen.py`` as it was imported, and the SymPy, mpmath, NumPy and SciPy versions
(SciPy's erf screens gelu).  A change to any of them derives afresh.

A stored form must be the very tree that was chosen, or a warm process would print and run
different arithmetic than a cold one: unpickled the usual way, through each class's constructor,
``1.0*(Y + 1)`` comes back evaluated as ``1.0*Y + 1.0``.  So every SymPy node is stored as its
class and arguments and rebuilt with ``evaluate=False`` passed to that one call (switching SymPy's
global evaluation off instead would leak unevaluated trees through its shared cache into other
threads), and a value is used only if its ``srepr`` matches the one stored beside it, as well as
its key.  Anything else is derived again and rewritten, atomically, with a warning naming the
file.

The files sit next to the kernel modules and Numba's cache of them (itself pickled index files
and machine code), and are trusted as far as those are: the cache directory must be writable by
its user only, as the default ``~/.cache/graphnn`` is.  An unwritable cache directory only means
deriving in every process.  ``graphnn cache`` lists and prunes them (``codegen.cache_files``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import sympy

from graphnn.derive import screen
from graphnn.derive.screen import Derivative
from graphnn.errors import GraphnnWarning
from graphnn.files import derivatives_dir, publish
from graphnn.ir.elementwise import ARGS

PROTOCOL = 5


@functools.cache
def _versions() -> bytes:
    import mpmath
    import numpy

    versions = f"sympy {sympy.__version__} mpmath {mpmath.__version__} numpy {numpy.__version__}"
    return versions.encode() + _scipy_version_file() + bytes([PROTOCOL])


def _scipy_version_file() -> bytes:
    """scipy/version.py as bytes: its version without importing scipy (0.1 s) or reading package
    metadata (0.04 s)."""
    spec = importlib.util.find_spec("scipy")
    try:
        return Path(spec.origin).with_name("version.py").read_bytes()
    except (AttributeError, TypeError, OSError):
        return b"scipy version unknown"


@functools.cache
def derivative(f: sympy.Expr, i: int, nargs: int | None = None) -> Derivative:
    """The screened, stable form of df/d(a_i). f is an expression in ARGS[:nargs].

    Kept on disk: a new process reads it instead of screening again.
    """
    nargs = (
        nargs if nargs is not None else 1 + max(ARGS.index(s) for s in f.free_symbols & set(ARGS))
    )
    key = f"derivative {sympy.srepr(f)} {i} {nargs}"
    return load_or_derive(key, lambda: screen.derive_form(f, i, nargs))


def fingerprint() -> str | None:
    """What a stored form depends on besides its key; None (store off) without formulas' text."""
    if screen.CODE_DIGEST is None:
        return None
    return hashlib.sha256(screen.CODE_DIGEST.encode() + _versions()).hexdigest()


def structure(d: Derivative) -> str:
    """Every expression of ``d`` as an exact tree (srepr), with the screen's verdicts."""
    candidates = tuple((c.form, c.expr, c.nonfinite, c.inaccurate) for c in d.candidates)
    return sympy.srepr((d.expr, d.form, candidates, d.references))


def load_or_derive(key: str, derive: Callable[[], Derivative]) -> Derivative:
    """The stored derivative for ``key``, or ``derive()``'s, stored for the next process."""
    code = fingerprint()
    if code is None:
        return derive()
    full_key = f"{code} {key}"
    path = derivatives_dir() / f"{hashlib.sha256(full_key.encode()).hexdigest()}.pickle"
    try:
        raw = path.read_bytes()
    except OSError:  # absent (or unreadable): derive
        raw = None
    if raw is not None:
        try:
            stored_key, tree, value = pickle.loads(raw)
            # screen.Derivative, not the name imported above: a reload of the screen makes a
            # new class
            fresh_type = isinstance(value, screen.Derivative)
            if stored_key == full_key and fresh_type and structure(value) == tree:
                return value
            problem = "holds another form than its name says"
        except Exception as exc:  # noqa: BLE001 - truncated, garbled, or not ours
            problem = f"cannot be read ({type(exc).__name__})"
        warnings.warn(
            f"damaged cache file {path}: {problem}; deriving again and rewriting it",
            GraphnnWarning,
            stacklevel=3,
        )
    value = derive()
    if value.over_budget:  # a faster or quieter machine may screen it: not for the next process
        return value
    try:
        data = dumps((full_key, structure(value), value))
        path.parent.mkdir(parents=True, exist_ok=True)
        publish(path, data)
    except OSError:
        pass  # a read-only cache: the next process derives again
    except (pickle.PicklingError, AttributeError, TypeError):
        pass  # not storable (a formula with a Function class defined inside a function)
    return value


def dumps(obj) -> bytes:
    """Pickle ``obj`` with every SymPy node stored as (class, args), rebuilt unevaluated."""
    out = io.BytesIO()
    _TreePickler(out, protocol=PROTOCOL).dump(obj)
    return out.getvalue()


class _TreePickler(pickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, sympy.Basic) and not obj.is_Atom:
            return rebuild, (type(obj), obj.args)
        return NotImplemented


def rebuild(cls, args):
    """``cls(*args)`` exactly as stored: no evaluation, where the class has any."""
    try:
        return cls(*args, evaluate=False)
    except TypeError:  # a class without the option (ExprCondPair) does not rewrite its args
        return cls(*args)
