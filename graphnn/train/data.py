"""Checks on the arrays users pass in: data for the graph's inputs, and parameter values.

Errors name the input or parameter, the expected shape and what arrived, so a wrong array never
turns into a silent broadcast or a Numba typing error deep inside a kernel.

>>> import numpy as np, graphnn as gn
>>> g = gn.Graph(gn.mse(gn.input("x", (2,)) @ gn.param("w", (2, 1)), gn.input("y", (1,))))
>>> check_data(g.forward, {"x": np.zeros((4, 2)), "y": np.zeros((4, 1))})["x"].dtype
dtype('float32')
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import numpy as np

from graphnn.errors import DataError
from graphnn.ir.graph import GraphIR
from graphnn.ir.shapes import show


def as_float(name: str, what: str, value, dtype, ids: bool = False) -> np.ndarray:
    """``value`` as a C-contiguous ``dtype`` array; ``ids``: integers are taken too (class or
    token ids that the graph reads through one_hot, exact as floats below 2**24)."""
    if type(value) is np.ndarray and value.dtype == dtype and value.flags.c_contiguous:
        return value  # what np.asarray(value, dtype, order="C") returns, found in 0.3 us not 1.5
    arr = np.asarray(value)
    if ids and arr.dtype.kind in "iu" and arr.size and np.abs(arr).max() >= 2**24:
        raise DataError(f"{what} '{name}' holds ids of 2**24 or more: not exact as floats")
    if not np.issubdtype(arr.dtype, np.floating) and not (ids and arr.dtype.kind in "iu"):
        raise DataError(f"{what} '{name}' must hold floats, got an array of dtype {arr.dtype}")
    return np.asarray(arr, dtype=dtype, order="C")  # keeps 0-d (ascontiguousarray would not)


def as_shaped(name: str, what: str, value, shape, dtype) -> np.ndarray:
    """``value`` as a C-contiguous ``dtype`` array of ``shape``; a DataError naming it otherwise."""
    arr = as_float(name, what, value, dtype)
    if arr.shape != shape:
        raise DataError(f"{what} '{name}' has shape {show(shape)}, got {arr.shape}")
    return arr


def check_data(ir: GraphIR, data: Mapping, dtype=np.float32, required=None) -> dict:
    """Data arrays as contiguous ``dtype`` arrays, checked against the inputs' shapes."""
    if type(data) is not dict and not isinstance(data, Mapping):  # type(): the ABC check is slow
        raise DataError(f"data must be a dict of input name -> array, got {type(data).__name__}")
    names = [n.name for n in ir.inputs] if required is None else list(required)
    missing = [n for n in names if n not in data]
    if missing:
        raise DataError(f"data has no array for input(s) {missing}; inputs: {names}")
    out, batch = {}, None
    ids = _id_inputs(ir)
    for name in names:
        node = ir.node(name)
        arr = as_float(name, "input", data[name], dtype, ids=name in ids)
        if arr.shape[1:] != node.shape[1:] or arr.ndim != len(node.shape):
            raise DataError(
                f"input '{name}' expects shape {show(node.shape)}, "
                f"got an array of shape {arr.shape}"
            )
        if batch is not None and len(arr) != batch:
            raise DataError(f"input '{name}' has {len(arr)} rows but other inputs have {batch}")
        batch = len(arr)
        out[name] = arr
    if batch == 0:
        raise DataError("data holds no samples (batch of size 0)")
    return out


# GraphIR -> its inputs read only through one_hot; a graph never changes, and the scan of its
# nodes was a third of check_data's 5.4 us in every fit call
_ID_INPUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _id_inputs(ir: GraphIR) -> frozenset[str]:
    """The inputs read only through one_hot (class labels, token ids): they may hold integers."""
    found = _ID_INPUTS.get(ir)
    if found is None:
        ids = {n.inputs[0] for n in ir.nodes if n.op == "one_hot"}
        ids -= {i for n in ir.nodes if n.op != "one_hot" for i in n.inputs}
        found = _ID_INPUTS[ir] = frozenset(ids)
    return found


def check_params(ir: GraphIR, params: Mapping, dtype=np.float32) -> dict:
    """Parameter arrays as contiguous ``dtype`` arrays, checked against their declared shapes."""
    expected = {n.name: n.shape for n in ir.params}
    missing = sorted(set(expected) - set(params))
    if missing:
        raise DataError(f"no value for parameter(s) {missing}; parameters: {sorted(expected)}")
    out = {}
    for name, shape in expected.items():
        out[name] = as_shaped(name, "parameter", params[name], shape, dtype)
    return out
