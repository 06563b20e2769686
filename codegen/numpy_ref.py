"""The NumPy reference back end: evaluates a graph node by node. It is the oracle of the tests.

Every op has one evaluation rule in :data:`RULES`; elementwise formulas are turned into NumPy
functions by ``sympy.lambdify`` (our own expressions, never user text).  It runs in any dtype, so
the finite-difference tests run it in float64.

>>> import numpy as np, graphnn as gn
>>> x = gn.input("x", (2,)); w = gn.param("w", (2, 1))
>>> from graphnn.ir.graph import GraphIR
>>> ir = GraphIR([x @ w])
>>> evaluate(ir, {"x": np.ones((3, 2)), "w": np.ones((2, 1))})["matmul1"].ravel()
array([2., 2., 2.])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import sympy

from graphnn.derive.structural import STRUCTURAL, concrete
from graphnn.errors import CodegenError
from graphnn.ir.elementwise import BATCH, numpy_function, numpy_lambdify
from graphnn.ir.graph import GraphIR, Node
from graphnn.optim.optimizers import state_key


def _ewise(node: Node, args, n: int, dtype):
    expr = node.attr("expr")
    with np.errstate(all="ignore"):
        out = numpy_function(expr, len(args))(*args, n)
    return np.broadcast_to(np.asarray(out, dtype=dtype), concrete(node.shape, n)).copy()


def _const(node: Node, args, n: int, dtype):
    value = float(sympy.sympify(node.attr("value")).subs(BATCH, n))
    return np.full(concrete(node.shape, n), value, dtype=dtype)


RULES: dict[str, Callable] = {
    "const": _const,
    "ewise": _ewise,
    **{op: rule.numpy for op, rule in STRUCTURAL.items()},
}


def batch_size(ir: GraphIR, values: Mapping[str, np.ndarray]) -> int:
    sizes = {len(values[node.name]) for node in ir.inputs if node.name in values}
    return sizes.pop() if sizes else 1


def evaluate(
    ir: GraphIR, values: Mapping[str, np.ndarray], dtype=None, outputs=None, draw=(0, None)
) -> dict[str, np.ndarray]:
    """Every node's value (or only what ``outputs`` need), given inputs' and parameters' arrays.

    ``draw``: which dropout masks the training form draws, (the epoch's first step, each batch
    row's sample id; None: 0..n-1), see graphnn.ir.dropout; None runs the eval form (dropout
    is the identity, a running statistic its state), as prediction and evaluation do."""
    env: dict[str, np.ndarray] = {}
    dtype = np.dtype(dtype) if dtype is not None else next(iter(values.values())).dtype
    n = batch_size(ir, values)
    needed = ir.ancestors(outputs) if outputs is not None else None
    for node in ir.nodes:
        if needed is not None and node.name not in needed:
            continue
        if node.op in ("input", "param"):
            env[node.name] = np.asarray(values[node.name], dtype=dtype)
            continue
        rule = RULES.get(node.op)
        if rule is None:
            raise CodegenError(f"the numpy back end has no rule for op '{node.op}' ({node.name})")
        args = [env[i] for i in node.inputs]
        if node.op in ("dropout", "running"):
            out = rule(node, args, n, dtype, draw)
        else:
            out = rule(node, args, n, dtype)
        env[node.name] = np.asarray(out, dtype=dtype)
    return env


def value_and_grad(graph, values: Mapping[str, np.ndarray], dtype, draw=(0, None)):
    """Back-end entry point: the loss and every parameter's gradient on one batch."""
    env = evaluate(graph.training, values, dtype, draw=draw)
    return env[graph.loss_name], {p: env[g].copy() for p, g in graph.grad_names.items()}


class Trainer:
    """The reference trainer: the same epoch/step contract as the compiled back ends, in NumPy.

    Slow but independent of code generation: the optimizer formulas are evaluated by
    ``sympy.lambdify`` and the step runs node by node.
    """

    def __init__(self, graph, optimizer, dtype="float32", outputs=()):
        self.graph, self.optimizer, self.dtype = graph, optimizer, np.dtype(dtype)
        self.outputs = tuple(outputs) or (graph.loss_name,)
        self._scalars, self._updates, self._names = [], [], []
        if optimizer is None:  # forward only (predict)
            return
        sym = optimizer.symbols
        order = list(sym.values())
        self._scalars = [(str(k), numpy_lambdify(order, e)) for k, e in optimizer.scalars()]
        self._updates = [(str(k), numpy_lambdify(order, e)) for k, e in optimizer.assignments()]
        self._names = list(sym)

    def apply_update(self, p, g, state: dict, hyper: Mapping, t: int, gscale) -> None:
        """One optimizer update of parameter array ``p`` (and its state buffers) in place."""
        cast = self.dtype.type
        env = dict.fromkeys(self._names, cast(0))
        env.update({k: cast(v) for k, v in hyper.items() if k in env})
        env.update(P=p, G=g * cast(gscale), t=cast(t), **state)
        for name, fn in self._scalars + self._updates:
            with np.errstate(all="ignore"):
                env[name] = np.asarray(fn(*(env[k] for k in self._names)), dtype=self.dtype)
        p[...] = env["P"]
        for name in state:
            state[name][...] = env[name]

    def step(self, params, state, batch, hyper, lr, t, draw=(0, None)) -> tuple[float, int]:
        values = {**params, **batch}
        graph = self.graph
        with np.errstate(all="ignore"):  # NaN/Inf are reported through the status, as compiled
            env = evaluate(graph.training, values, self.dtype, draw=draw)
        loss = env[graph.loss_name]
        grads = {p: env[g] for p, g in graph.grad_names.items()}
        new = {s: env[u] for s, u in graph.update_names.items()}  # running statistics
        if not np.isfinite(loss):
            return float(loss), -1
        names = graph.param_names
        # status k: the k-th gradient, then the state parameters' new values, is not finite
        for k, value in enumerate(
            [*(grads[p] for p in names), *(new[s] for s in graph.state_names)]
        ):
            if not np.all(np.isfinite(value)):
                return float(loss), k + 1
        gscale = 1.0
        if self.optimizer.clip_norm is not None:  # the norm in float64, as the kernels do
            norm = np.sqrt(sum(np.sum(np.square(grads[p], dtype=np.float64)) for p in names))
            gscale = min(1.0, self.optimizer.clip_norm / (norm + 1e-6))
        for p in names:
            buffers = {s: state[state_key(s, p)] for s in self.optimizer.state}
            self.apply_update(params[p], grads[p], buffers, {**hyper, "lr": lr}, t, gscale)
        for s, value in new.items():  # assigned, not optimized
            params[s][...] = value
        return float(loss), 0

    def epoch(self, params, state, data, perm, batch_size, hyper, lrs, t0):
        total, steps = 0.0, 0
        for start in range(0, len(perm), batch_size):
            idx = perm[start : start + batch_size]
            batch = {k: v[idx] for k, v in data.items()}
            draw = (t0, idx)  # dropout: the epoch's masks of these samples
            loss, status = self.step(params, state, batch, hyper, lrs[steps], t0 + steps + 1, draw)
            if status != 0:
                return total, steps, status
            total += loss * len(idx)
            steps += 1
        return total, steps, 0

    def forward_inputs(self) -> tuple[str, ...]:
        from codegen.plan import make_plan

        needed = make_plan(self.graph.forward, self.outputs).needed
        return tuple(n.name for n in self.graph.forward.inputs if n.name in needed)

    def forward(self, params, data) -> dict[str, np.ndarray]:
        env = evaluate(self.graph.forward, {**params, **data}, self.dtype, self.outputs, None)
        return {k: env[k] for k in self.outputs}


def source(graph, optimizer=None, dtype="float32") -> str:
    """The reference back end generates no code; it shows the graph it interprets instead."""
    lines = [f"# numpy reference: interprets {len(graph.training)} nodes, no generated code"]
    lines += [f"# {n.name} = {n.op}({', '.join(n.inputs)})" for n in graph.training.nodes]
    return "\n".join(lines) + "\n"
