"""Budgets: the time and sizes graphnn allows one model, each with a default and an override.

A few lines of spec can ask for more than a machine has: 20 parameters of [10000, 10000] are
8 GB, a forged ``.npy`` header claims terabytes, ``exp(exp(exp(z)))`` kept SymPy busy for
minutes.  Each budget below is checked before the work or the allocation it bounds, and going
past it is an error that gives the size, the limit and the variable that raises it (the
derivation budget instead keeps the unsimplified derivative and warns).  Set the environment
variable to change a limit, e.g. ``GRAPHNN_MAX_PARAM_BYTES=8e9``.

==========================  =======  ==================================================
variable                    default  bounds
==========================  =======  ==================================================
GRAPHNN_DERIVE_SECONDS      10       simplifying and screening one derivative (wall clock)
GRAPHNN_MAX_NODES           500      nodes of a forward graph built from a spec or compiled
GRAPHNN_MAX_PARAM_BYTES     1 GiB    the parameters and the optimizer's buffers of them
GRAPHNN_MAX_DATA_BYTES      2 GiB    a spec's data file, and the arrays read from it
GRAPHNN_MAX_WORKSPACE_BYTES 4 GiB    the CPU's step buffers for one batch (convolution
                                     patches grow with the batch size)
GRAPHNN_MAX_TOML_DEPTH      32       nesting of arrays and tables in a spec file
GRAPHNN_MAX_FORMULA_CHARS   2000     one expression of a spec
==========================  =======  ==================================================

>>> limit("GRAPHNN_MAX_NODES")
500
"""

from __future__ import annotations

import math
import os

from graphnn.errors import GraphnnError

DEFAULTS = {
    "GRAPHNN_DERIVE_SECONDS": 10.0,
    "GRAPHNN_MAX_NODES": 500,
    "GRAPHNN_MAX_PARAM_BYTES": 1 << 30,
    "GRAPHNN_MAX_DATA_BYTES": 2 << 30,
    "GRAPHNN_MAX_WORKSPACE_BYTES": 4 << 30,
    "GRAPHNN_MAX_TOML_DEPTH": 32,
    "GRAPHNN_MAX_FORMULA_CHARS": 2000,
}


class LimitError(GraphnnError, MemoryError):
    """A model or its data is larger than a budget allows; the message gives the size, the
    limit and the environment variable that raises it."""


def limit(name: str) -> float | int:
    """The budget ``name``: its environment variable if set (a number > 0), else the default."""
    default = DEFAULTS[name]
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:  # also NaN
        raise LimitError(f"{name}={text[:40]!r} is not a number > 0 (default {default:g})")
    return int(value) if isinstance(default, int) and math.isfinite(value) else value


def check(name: str, size: float, what: str) -> None:
    """Raise LimitError if ``size`` is past the budget ``name``; ``what`` says what was
    measured, e.g. "the parameters take 8.0 GB"."""
    bound = limit(name)
    if size > bound:
        raise LimitError(f"{what}; the limit is {_amount(name, bound)} (set {name} to raise it)")


def nbytes(size: float) -> str:
    """A byte count for messages: 8.0 GB, 512.0 kB, 64 bytes."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} bytes"


def _amount(name: str, bound: float) -> str:
    if name.endswith("_BYTES"):
        return nbytes(bound)
    if name.endswith("_SECONDS"):
        return f"{bound:g} s"
    return f"{bound:,}"
