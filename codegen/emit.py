"""Assemble a self-contained kernel module (forward, backward, update, step, epoch) as source text.

The module imports only numpy, numba and math, so Numba's on-disk cache can key on its text
alone, and ``export`` can hand the same text to users.  Every block starts with a comment naming
the graph node it computes.

>>> import graphnn as gn
>>> x = gn.input("x", (2,)); t = gn.input("t", (1,)); w = gn.param("w", (2, 1))
>>> src = module_source(gn.Graph(gn.mse(x @ w, t)), gn.SGD(lr=0.1))
>>> "def train_epoch(" in src
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sympy

from codegen.plan import make_plan
from codegen.printer import print_expr
from codegen.steps import EMITTERS, Scope, indent

FASTMATH = "{'nsz', 'arcp', 'contract', 'afn', 'reassoc'}"  # no nnan/ninf: NaN and Inf stay visible
JIT = '@njit(cache=True, fastmath=FASTMATH, error_model="numpy")'


@dataclass(frozen=True)
class Signature:
    """Argument names of the generated functions, in order."""

    inputs: tuple[str, ...]
    params: tuple[str, ...]
    state: tuple[str, ...]  # "<buffer>_<param>" for each optimizer buffer and parameter
    hyper: tuple[str, ...]

    @property
    def grads(self) -> tuple[str, ...]:
        return tuple(f"grad_{p}" for p in self.params)


def signature(graph, optimizer) -> Signature:
    params = tuple(graph.param_names)
    state = tuple(f"{s}_{p}" for p in params for s in optimizer.state) if optimizer else ()
    hyper = tuple(optimizer.hyper) if optimizer else ()
    if optimizer is not None and optimizer.clip_norm is not None:
        hyper += ("clip_norm",)
    inputs = tuple(n.name for n in graph.forward.inputs)
    return Signature(inputs, params, state, hyper)


def kernel(name: str, ir, outputs: Sequence[str], args: Sequence[str], dtype: str) -> list[str]:
    """One njit function computing ``outputs`` of ``ir`` from ``args``."""
    plan = make_plan(ir, outputs)
    scope = Scope(dtype, ir, plan)
    batch = next((a for a in args if ir.node(a).op == "input"), None)
    body = [f"n = {batch}.shape[0]" if batch else "n = 1", f"nf = np.{dtype}(n)"]
    for step in plan.steps:
        lines = EMITTERS[step.kind](step, scope)
        body += lines + ([""] if lines else [])
    body.append("return " + ", ".join(outputs))
    return [JIT, f"def {name}({', '.join(args)}):", *indent(body, 1)]


def _update_function(optimizer, dtype: str) -> list[str]:
    """apply_update(P, G, <state>, <hyper>, t, gscale): the optimizer's formulas, in place."""
    sym = optimizer.symbols
    flat = ["P", "G", *optimizer.state]
    args = [*flat, *optimizer.hyper, "t", "gscale"]
    body = [f"{s}_ = {s}.ravel()" if s == "P" else f"{s}_ = {s}.ravel()" for s in flat]
    body += [f"{k} = {print_expr(e, dtype=dtype)}" for k, e in optimizer.scalars()]
    loop = [f"G = G_[i] * gscale"] + [f"{s} = {s}_[i]" for s in ["P", *optimizer.state]]
    for target, expr in optimizer.assignments():
        loop.append(f"{target} = {print_expr(expr.xreplace({sym['t']: sympy.Symbol('t')}), dtype=dtype)}")
    targets = dict.fromkeys(str(t) for t, _ in optimizer.assignments())
    loop += [f"{s}_[i] = {s}" for s in targets]
    body += ["for i in range(P_.shape[0]):", *indent(loop, 1)]
    head = f"# {optimizer.name}: " + "; ".join(f"{t} <- {e}" for t, e in optimizer.assignments())
    return [head, JIT, f"def apply_update({', '.join(args)}):", *indent(body, 1)]


def _step_function(sig: Signature, optimizer, dtype: str) -> list[str]:
    lit = f"np.{dtype}"
    body = [f"loss, {', '.join(sig.grads)} = loss_and_grads({', '.join(sig.inputs + sig.params)})"]
    body += ["if not np.isfinite(loss):", "    return loss, -1"]
    sq = " + ".join(f"np.sum({g} * {g})" for g in sig.grads)
    if optimizer.clip_norm is not None:
        body += [f"norm = np.sqrt({sq})", f"gscale = min({lit}(1.0), clip_norm / (norm + {lit}(1e-6)))"]
    else:
        body.append(f"gscale = {lit}(1.0)")
    for k, g in enumerate(sig.grads):
        body += [f"if not np.isfinite(np.sum({g})):", f"    return loss, {k + 1}"]
    n_state = len(optimizer.state)
    for k, (p, g) in enumerate(zip(sig.params, sig.grads, strict=True)):
        state = sig.state[k * n_state : (k + 1) * n_state]
        args = [p, g, *state, *optimizer.hyper, "t", "gscale"]
        body.append(f"apply_update({', '.join(args)})")
    body.append("return loss, 0")
    args = [*sig.inputs, *sig.params, *sig.state, *sig.hyper, "t"]
    return [JIT, f"def train_step({', '.join(args)}):", *indent(body, 1)]


def _epoch_function(sig: Signature, dtype: str) -> list[str]:
    batches = [f"{i}_all" for i in sig.inputs]
    hyper = ["lrs" if h == "lr" else h for h in sig.hyper]
    step_args = [*sig.inputs, *sig.params, *sig.state]
    step_args += ["lrs[steps]" if h == "lr" else h for h in sig.hyper]
    loop = ["idx = perm[start : start + batch_size]"]
    loop += [f"{i} = {i}_all[idx]" for i in sig.inputs]
    loop += [
        f"loss, status = train_step({', '.join(step_args)}, np.{dtype}(t0 + steps + 1))",
        "if status != 0:",
        "    return total, steps, status",
        "total += loss * idx.shape[0]",
        "steps += 1",
    ]
    body = ["total = 0.0  # float64: only the reported epoch mean", "steps = 0"]
    body += ["for start in range(0, perm.shape[0], batch_size):", *indent(loop, 1)]
    body.append("return total, steps, 0")
    args = [*batches, "perm", "batch_size", *sig.params, *sig.state, *hyper, "t0"]
    doc = '"""One epoch of mini-batch steps in the order of perm; returns (loss sum, steps, status)."""'
    return [JIT, f"def train_epoch({', '.join(args)}):", *indent([doc, *body], 1)]


def forward_inputs(graph, outputs: Sequence[str]) -> tuple[str, ...]:
    """The data inputs that ``outputs`` depend on (a prediction needs no targets)."""
    needed = make_plan(graph.forward, outputs).needed
    return tuple(n.name for n in graph.forward.inputs if n.name in needed)


def forward_kernel(graph, outputs: Sequence[str], sig: Signature, dtype: str) -> list[str]:
    args = [*forward_inputs(graph, outputs), *sig.params]
    return kernel("forward", graph.forward, list(outputs), args, dtype)


def header(graph, optimizer, dtype: str) -> list[str]:
    from graphnn.shapes import show

    lines = [f'"""graphnn kernels for loss \'{graph.loss_name}\' ({dtype}).', ""]
    lines += ["Generated by graphnn; needs only numpy and numba. Shapes:"]
    lines += [f"    {n.name}: {show(n.shape)}" for n in graph.forward.inputs + graph.forward.params]
    lines += ["", "Gradients (matrix form; n is the batch size):"]
    lines += [f"    dL/d{p} = {graph.gradient(p)}" for p in graph.param_names]
    if optimizer is not None:
        lines += ["", f"Optimizer: {optimizer.name}"]
    return lines + ['"""', "", "import numpy as np", "from numba import njit", ""]


def module_source(graph, optimizer=None, dtype: str = "float32", outputs: Sequence[str] = ()) -> str:
    """The whole kernel module for a graph (and its optimizer) as Python source text."""
    sig = signature(graph, optimizer)
    lines = header(graph, optimizer, dtype)
    lines += [f"FASTMATH = {FASTMATH}  # no nnan/ninf: NaN and Inf stay visible", "", ""]
    grad_nodes = [graph.grad_names[p] for p in sig.params]
    lines += kernel("loss_and_grads", graph.training, [graph.loss_name, *grad_nodes],
                    [*sig.inputs, *sig.params], dtype)
    lines += ["", ""] + forward_kernel(graph, outputs or [graph.loss_name], sig, dtype)
    if optimizer is not None:
        lines += ["", ""] + _update_function(optimizer, dtype)
        lines += ["", ""] + _step_function(sig, optimizer, dtype)
        lines += ["", ""] + _epoch_function(sig, dtype)
    text = "\n".join(lines) + "\n"
    if "math." in text:  # erf; imported only when used so the module lints clean
        text = text.replace("import numpy as np\n", "import math\n\nimport numpy as np\n", 1)
    return text
