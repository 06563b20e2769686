"""The NumPy reference back end: evaluates a graph node by node. It is the oracle of the tests.

Every op has one evaluation rule in :data:`RULES`; elementwise formulas are turned into NumPy
functions by ``sympy.lambdify`` (our own expressions, never user text).  It runs in any dtype, so
the finite-difference tests run it in float64.

>>> import numpy as np, graphnn as gn
>>> x = gn.input("x", (2,)); w = gn.param("w", (2, 1))
>>> from graphnn.graph import GraphIR
>>> ir = GraphIR([x @ w])
>>> evaluate(ir, {"x": np.ones((3, 2)), "w": np.ones((2, 1))})["matmul1"].ravel()
array([2., 2., 2.])
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import numpy as np
import scipy.special
import sympy

from graphnn.errors import CodegenError
from graphnn.formulas import ARGS, BATCH
from graphnn.graph import GraphIR, Node


@functools.cache
def _lambdified(expr: sympy.Expr, nargs: int) -> Callable:
    return sympy.lambdify(
        (*ARGS[:nargs], BATCH), expr, modules=[{"erf": scipy.special.erf}, "numpy"]
    )


def concrete(shape, n: int) -> tuple[int, ...]:
    """A shape with the batch dimension replaced by n."""
    return tuple(n if d is None else d for d in shape)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_ce(z, t):
    m = z.max(axis=-1, keepdims=True)
    lse = m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True))
    rows = lse[:, 0] - (t * z).sum(axis=-1)
    return np.asarray(rows.mean(), dtype=z.dtype)


def _ewise(node: Node, args, n: int, dtype):
    expr = node.attr("expr")
    with np.errstate(all="ignore"):
        out = _lambdified(expr, len(args))(*args, n)
    return np.broadcast_to(np.asarray(out, dtype=dtype), concrete(node.shape, n)).copy()


def _const(node: Node, args, n: int, dtype):
    value = float(sympy.sympify(node.attr("value")).subs(BATCH, n))
    return np.full(concrete(node.shape, n), value, dtype=dtype)


RULES: dict[str, Callable] = {
    "const": _const,
    "ewise": _ewise,
    "matmul": lambda node, a, n, dt: (
        (a[0].T if node.attr("ta") else a[0]) @ (a[1].T if node.attr("tb") else a[1])
    ),
    "reduce_sum": lambda node, a, n, dt: a[0].sum(
        axis=node.attr("axes"), keepdims=node.attr("keepdims")
    ),
    "reshape": lambda node, a, n, dt: a[0].reshape(concrete(node.shape, n)),
    "softmax": lambda node, a, n, dt: _softmax(a[0]),
    "softmax_grad": lambda node, a, n, dt: (
        a[0] * (a[1] - (a[0] * a[1]).sum(axis=-1, keepdims=True))
    ),
    "softmax_ce": lambda node, a, n, dt: _softmax_ce(*a),
    "softmax_ce_grad": lambda node, a, n, dt: (_softmax(a[0]) - a[1]) / n,
}


def batch_size(ir: GraphIR, values: Mapping[str, np.ndarray]) -> int:
    sizes = {len(values[node.name]) for node in ir.inputs if node.name in values}
    return sizes.pop() if sizes else 1


def evaluate(ir: GraphIR, values: Mapping[str, np.ndarray], dtype=None) -> dict[str, np.ndarray]:
    """Every node's value, given arrays for the graph's inputs and parameters."""
    env: dict[str, np.ndarray] = {}
    dtype = np.dtype(dtype) if dtype is not None else next(iter(values.values())).dtype
    n = batch_size(ir, values)
    for node in ir.nodes:
        if node.op in ("input", "param"):
            env[node.name] = np.asarray(values[node.name], dtype=dtype)
            continue
        rule = RULES.get(node.op)
        if rule is None:
            raise CodegenError(f"the numpy back end has no rule for op '{node.op}' ({node.name})")
        out = rule(node, [env[i] for i in node.inputs], n, dtype)
        env[node.name] = np.asarray(out, dtype=dtype)
    return env


def value_and_grad(graph, values: Mapping[str, np.ndarray], dtype):
    """Back-end entry point: the loss and every parameter's gradient on one batch."""
    env = evaluate(graph.training, values, dtype)
    return env[graph.loss_name], {p: env[g].copy() for p, g in graph.grad_names.items()}
