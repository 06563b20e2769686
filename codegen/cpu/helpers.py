"""The module-level functions generated CPU kernels may call, one table for every module that
prints kernels (the fused module, each stepwise step kernel): name -> its source.

A module defines a helper only when its text calls it, before the first kernel.

>>> sorted(HELPERS)
['dropout_mix', 'tanh_r']
"""

from __future__ import annotations

from codegen.cpu.approx import tanh_source
from codegen.steps import indent
from graphnn.ir.dropout import MIX_LINES


def dropout_source(dtype: str = "float32") -> str:
    """dropout_mix: the integer hash of dropout's counter-based masks (graphnn.ir.dropout)."""
    doc = '"""32-bit integer hash: dropout keeps element e at step t if mix(key ^ e) is large."""'
    body = indent([doc, *MIX_LINES], 1)
    return "\n".join(["@njit(cache=True)", "def dropout_mix(h):", *body]) + "\n"


# name -> source of the helper for a dtype (tanh_r: the float32 rational tanh, codegen.cpu.approx)
HELPERS = {"tanh_r": tanh_source, "dropout_mix": dropout_source}


def with_helpers(text: str, dtype: str) -> str:
    """``text`` with the source of each helper it calls inserted before its first ``@njit``."""
    for name, source in HELPERS.items():
        if f"{name}(" in text and f"def {name}(" not in text:
            first = text.index("@njit")
            text = text[:first] + source(dtype) + "\n\n" + text[first:]
    return text
