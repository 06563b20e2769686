"""A graph as plain data (JSON-ready dicts and lists), and back, for self-describing model files.

Nothing is pickled and nothing is evaluated: a SymPy formula is stored as a tree of class names
and arguments, and read back by looking each name up in a fixed table of SymPy classes
(:data:`SYMPY_CLASSES`); any other name is an error.  Numbers keep their exact values (a Float
its binary mantissa and precision), symbols their assumptions, so a graph read back is the same
graph: the same node names, formulas and generated kernels.

>>> import graphnn as gn
>>> x = gn.input("x", (3,)); w = gn.param("w", (3, 1))
>>> loss = gn.mse(gn.sigmoid(x @ w), gn.input("t", (1,)))
>>> data = graph_to_data([loss])
>>> [n["op"] for n in data["nodes"]][:3]
['input', 'param', 'matmul']
>>> outputs = graph_from_data(data, ["matmul", "reduce_sum"])
>>> outputs[0].shape
()
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import sympy
from sympy.codegen.cfunctions import expm1, log1p

from graphnn.errors import GraphError
from graphnn.ir import elementwise
from graphnn.ir.graph import GraphIR
from graphnn.ir.ops import Tensor

FORMAT = "graphnn-graph"
VERSION = 1

_CLASSES = [
    sympy.Add, sympy.Mul, sympy.Pow, sympy.exp, sympy.log, sympy.tanh, sympy.sinh, sympy.cosh,
    sympy.sin, sympy.cos, sympy.atan, sympy.erf, sympy.erfc, sympy.Abs, sympy.sign, sympy.Max,
    sympy.Min, sympy.Heaviside, sympy.Piecewise, sympy.functions.elementary.piecewise.ExprCondPair,
    sympy.StrictGreaterThan, sympy.GreaterThan, sympy.StrictLessThan, sympy.LessThan,
    sympy.Equality, sympy.Unequality, sympy.And, sympy.Or, sympy.Not, sympy.floor, sympy.ceiling,
    log1p, expm1, elementwise.Phi,
]  # fmt: skip
SYMPY_CLASSES = {cls.__name__: cls for cls in _CLASSES}
_UNEVALUATED = (sympy.Add, sympy.Mul, sympy.Pow)  # rebuilt exactly as stored, not re-simplified
_CONSTANTS = {"pi": sympy.pi, "E": sympy.E, "true": sympy.true, "false": sympy.false}
_CONSTANTS |= {"half": sympy.S.Half, "one": sympy.S.One, "zero": sympy.S.Zero}
_ASSUMPTIONS = ("real", "positive", "integer", "nonnegative", "negative", "finite")


# --- SymPy formulas -------------------------------------------------------------------------------


def expr_to_data(expr) -> object:
    """A SymPy expression as nested lists/dicts of str, int and bool."""
    expr = sympy.sympify(expr)
    for name, value in _CONSTANTS.items():
        if expr is value:
            return {"const": name}
    if isinstance(expr, sympy.Symbol):
        return {"symbol": expr.name, "assume": dict(expr._assumptions_orig)}
    if isinstance(expr, sympy.Integer):
        return {"int": str(expr.p)}
    if isinstance(expr, sympy.Rational):
        return {"rational": [str(expr.p), str(expr.q)]}
    if isinstance(expr, sympy.Float):
        sign, mantissa, exponent, bits = expr._mpf_
        return {"float": [sign, hex(mantissa), exponent, bits], "prec": expr._prec}
    name = type(expr).__name__
    if SYMPY_CLASSES.get(name) is not type(expr):
        raise GraphError(f"cannot store the formula {expr}: {name} is not a storable SymPy class")
    return {"f": name, "args": [expr_to_data(a) for a in expr.args]}


def expr_from_data(data, where: str = "formula") -> sympy.Basic:
    """The expression :func:`expr_to_data` stored; GraphError naming ``where`` if malformed."""
    try:
        return _expr(data)
    except GraphError as exc:
        raise GraphError(f"{where}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise GraphError(f"{where}: malformed formula ({type(exc).__name__}: {exc})") from None


def _expr(data) -> sympy.Basic:
    if not isinstance(data, dict):
        raise GraphError(f"a formula node must be a table, got {type(data).__name__}")
    if "const" in data:
        return _CONSTANTS[data["const"]]
    if "symbol" in data:
        assume = data.get("assume", {})
        if not isinstance(data["symbol"], str) or not all(
            k in _ASSUMPTIONS and isinstance(v, bool) for k, v in assume.items()
        ):
            raise GraphError(f"bad symbol {data['symbol']!r}")
        return sympy.Symbol(data["symbol"], **assume)
    if "int" in data:
        return sympy.Integer(int(data["int"]))
    if "rational" in data:
        p, q = data["rational"]
        return sympy.Rational(int(p), int(q))
    if "float" in data:
        sign, mantissa, exponent, bits = data["float"]
        mpf = (int(sign), int(mantissa, 16), int(exponent), int(bits))
        if not all(isinstance(v, int) for v in (sign, exponent, bits)) or sign not in (0, 1):
            raise GraphError("bad float")
        return sympy.Float._new(mpf, int(data["prec"]))
    cls = SYMPY_CLASSES.get(data.get("f"))
    if cls is None:
        raise GraphError(f"unknown SymPy class {data.get('f')!r}")
    args = [_expr(a) for a in data["args"]]
    if cls in _UNEVALUATED:
        return cls(*args, evaluate=False)
    return cls(*args)


# --- attributes -----------------------------------------------------------------------------------


def _value_to_data(value):
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, sympy.Basic):
        return {"number": float(value)}
    if isinstance(value, sympy.Basic):
        return {"sympy": expr_to_data(value)}
    if isinstance(value, tuple | list):
        return {"tuple": [_value_to_data(v) for v in value]}
    raise GraphError(f"cannot store an attribute of type {type(value).__name__}")


def _value_from_data(data, where: str):
    if data is None or isinstance(data, bool | str | int):
        return data
    if isinstance(data, dict) and len(data) == 1:
        kind, body = next(iter(data.items()))
        if kind == "number" and isinstance(body, int | float):
            return float(body)
        if kind == "sympy":
            return expr_from_data(body, where)
        if kind == "tuple" and isinstance(body, list):
            return tuple(_value_from_data(v, where) for v in body)
    raise GraphError(f"{where}: malformed attribute")


# --- graphs ---------------------------------------------------------------------------------------


def graph_to_data(outputs: Sequence[Tensor]) -> dict:
    """The graph of ``outputs`` as data: every node (name, op, inputs, shape, attrs, label), in
    topological order, and the output names."""
    ir = GraphIR(list(outputs))
    nodes = [
        {
            "name": n.name,
            "op": n.op,
            "inputs": list(n.inputs),
            "shape": list(n.shape),
            "attrs": {k: _value_to_data(v) for k, v in n.attrs},
            "label": n.label,
        }
        for n in ir.nodes
    ]
    names = [ir.name_of(t) for t in ir.outputs]
    return {"format": FORMAT, "version": VERSION, "nodes": nodes, "outputs": names}


def graph_from_data(data, structural_ops=()) -> list[Tensor]:
    """The output tensors of a graph :func:`graph_to_data` stored, every node under its stored
    name; GraphError naming the node for anything malformed or of an op neither a leaf,
    elementwise nor in ``structural_ops`` (the ops the caller can differentiate)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise GraphError("not a graphnn graph description")
    if data.get("version") != VERSION:
        raise GraphError(f"unsupported graph description version {data.get('version')!r}")
    known = {"input", "param", "const", "ewise", *structural_ops}
    tensors: dict[str, Tensor] = {}
    for record in data["nodes"]:
        name = record.get("name") if isinstance(record, dict) else None
        where = f"node {name!r}"
        if not isinstance(name, str) or not name.isidentifier() or name in tensors:
            raise GraphError(f"{where}: a node needs a new identifier as its name")
        op = record.get("op")
        if op not in known:
            raise GraphError(f"{where}: unknown op {op!r}")
        inputs = record.get("inputs", [])
        missing = [i for i in inputs if i not in tensors]
        if missing:
            raise GraphError(f"{where}: reads {missing[0]!r}, which no earlier node is")
        shape = tuple(record.get("shape", []))
        if not all(d is None or (isinstance(d, int) and d > 0) for d in shape):
            raise GraphError(f"{where}: bad shape {list(shape)}")
        attrs = {k: _value_from_data(v, where) for k, v in record.get("attrs", {}).items()}
        label = str(record.get("label", name))
        tensors[name] = Tensor(op, tuple(tensors[i] for i in inputs), shape, attrs, name, label)
    outputs = data.get("outputs", [])
    if not outputs or any(o not in tensors for o in outputs):
        raise GraphError("the graph description names no valid outputs")
    return [tensors[o] for o in outputs]
