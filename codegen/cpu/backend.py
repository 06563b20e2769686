"""The Numba CPU back end: the generated module, compiled with ``numba.njit`` and cached on disk.

>>> import numpy as np, graphnn as gn
>>> x = gn.input("x", (2,)); t = gn.input("t", (1,)); w = gn.param("w", (2, 1))
>>> g = gn.Graph(gn.mse(x @ w, t))
>>> loss, grads = value_and_grad(g, {"x": np.ones((3, 2), np.float32),
...     "t": np.zeros((3, 1), np.float32), "w": np.ones((2, 1), np.float32)}, np.float32)
>>> float(loss)
4.0
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from codegen.cache import load_module
from codegen.cpu.fused_compile import FusedEpoch
from codegen.cpu.module import module_source, stepwise_source, update_kernels_source
from codegen.signature import forward_inputs, signature
from graphnn import budgets


def source(graph, optimizer=None, dtype="float32", outputs: Sequence[str] = ()) -> str:
    """The generated module's text (what ``g.source(backend="cpu")`` shows)."""
    return module_source(graph, optimizer, np.dtype(dtype).name, tuple(outputs))


def build(graph, optimizer=None, dtype="float32", outputs: Sequence[str] = ()):
    """The imported kernel module; GRAPHNN_DEBUG=2 prints its source first."""
    text = source(graph, optimizer, dtype, outputs)
    if debug_level() >= 2:
        print(text)
    return load_module(text)


def build_stepwise(graph, optimizer=None, dtype="float32", outputs: Sequence[str] = ()):
    """The stepwise module (:mod:`codegen.cpu.stepwise`) with its step kernels bound to it.

    Each step kernel is a module of its own, content-addressed: a model that shares a block
    with one compiled before (any layer of any model) loads it from Numba's cache."""
    text, kernels = stepwise_source(graph, optimizer, np.dtype(dtype).name, tuple(outputs))
    if debug_level() >= 2:
        print(text)
        for k in kernels:
            print(f"# {k.name}\n{k.source}")
    glue = load_module(text)
    for k in kernels:
        setattr(glue, k.name, load_module(k.source).step)
    shared = load_module(update_kernels_source(optimizer, np.dtype(dtype).name))
    for name in ("apply_update", "all_finite", "sum_squares"):
        if hasattr(shared, name):
            setattr(glue, name, getattr(shared, name))
    return glue


def debug_level() -> int:
    """GRAPHNN_DEBUG as an int (unset or not a number: 0)."""
    try:
        return int(os.environ.get("GRAPHNN_DEBUG", "0"))
    except ValueError:
        return 0


# graph -> {dtype name: module}: value_and_grad in a finite-difference loop builds once.
_GRAD_MODULES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def value_and_grad(graph, values: Mapping[str, np.ndarray], dtype):
    modules = _GRAD_MODULES.setdefault(graph, {})
    key = np.dtype(dtype).name
    if key not in modules:
        modules[key] = build_stepwise(graph, None, dtype)
    module = modules[key]
    args = [values[n.name] for n in graph.forward.inputs]
    # A parameter the loss does not depend on (it feeds only an extra output) has a zero
    # gradient and no value among the training graph's; the kernel takes it but never reads it.
    shapes = graph.shapes
    args += [values[p] if p in values else np.zeros(shapes[p], dtype) for p in graph.kernel_params]
    batch = args[0].shape[0] if graph.forward.inputs else 1
    # dropout's draw: epoch key 0, the rows as samples 0..batch-1
    draw = [0, np.arange(batch)] if signature(graph, None).draws else []
    loss, *grads = module.loss_and_grads(*args, *draw, module.workspace(batch, *args))
    # after the gradients come the state parameters' new values (batch norm's running stats)
    return loss, dict(zip(graph.param_names, grads[: len(graph.param_names)], strict=True))


class Trainer:
    """Runs the generated step and epoch functions on dicts of arrays (updated in place)."""

    def __init__(self, graph, optimizer, dtype="float32", outputs: Sequence[str] = ()):
        self.graph, self.optimizer, self.dtype = graph, optimizer, np.dtype(dtype)
        self.outputs = tuple(outputs) or (graph.loss_name,)
        # The fused module is imported, not compiled: Numba compiles its train_epoch on first
        # use, here or in a background process (codegen.cpu.fused_compile).  Until then every
        # step, and always forward and value_and_grad, run on the stepwise module.
        self.module = load_module(source(graph, optimizer, dtype, self.outputs))
        # the file it was imported from: the cache directory's, or the fallback one's
        self.fused = FusedEpoch(self.module, Path(self.module.__file__))
        # Built on first use: a warm start whose fused epoch is in the cache never needs the
        # stepwise module, and importing it is a dozen modules and Numba dispatchers.
        self._stepwise = self._all_finite = None
        self.sig = signature(graph, optimizer)
        self._ws = None  # (rows, buffers) of the last workspace
        # epoch()'s argument names, in the kernels' order (found once: the graph never changes)
        self._inputs = [n.name for n in graph.forward.inputs]
        self._params = list(graph.kernel_params)

    @property
    def stepwise(self):
        """The stepwise module (:func:`build_stepwise`), built the first time it is asked for."""
        if self._stepwise is None:
            self._stepwise = build_stepwise(self.graph, self.optimizer, self.dtype, self.outputs)
        return self._stepwise

    @property
    def all_finite(self):
        """The steps' NaN/Inf test, for the driver's check of parameters after an epoch: the
        shared update kernels' (compiled for flat arrays of this dtype by the first step), which
        the stepwise module binds too; loaded alone, without the stepwise module."""
        if self._all_finite is None:
            shared = load_module(update_kernels_source(self.optimizer, self.dtype.name))
            self._all_finite = shared.all_finite
        return self._all_finite

    def _hyper(self, hyper: Mapping[str, float]) -> list:
        return [self.dtype.type(hyper[h]) for h in self.sig.hyper if h != "lr"]

    def epoch(self, params, state, data, perm, batch_size, hyper, lrs, t0):
        """One epoch inside one compiled function; returns (loss sum, steps done, status)."""
        inputs = [data[name] for name in self._inputs]
        weights = [params[p] for p in self._params]
        args = [*inputs, perm, batch_size, *weights, *[state[s] for s in self.sig.state]]
        args += [np.asarray(lrs, dtype=self.dtype), *self._hyper(hyper), t0]
        ws = self._workspace(min(batch_size, len(perm)), inputs + weights)
        args.append(ws)
        if self.fused.ready(args):
            return self.module.train_epoch(*args)
        result = self.stepwise.train_epoch(*args)
        self.fused.start(args)  # after a stepwise epoch: its kernels need no compiler now
        return result

    def _workspace(self, rows: int, arrays):
        """The step buffers, kept across epochs and fit calls (remade for a larger batch).

        ``arrays``: the inputs, then the parameters; the buffers' sizes are read from them."""
        if self._ws is None or self._ws[0] < rows:
            # the fused module's workspace(): the same text as the stepwise module's
            # (tests/test_stepwise.py), so the buffers suit either train_epoch
            self._ws = (rows, _bounded(self.module.workspace(rows, *arrays), rows, "step"))
        return self._ws[1]

    def forward(self, params, data) -> dict[str, np.ndarray]:
        names = forward_inputs(self.graph, self.outputs)
        arrays = [*(data[i] for i in names), *(params[p] for p in self.graph.kernel_params)]
        rows = len(arrays[0]) if names else 1
        # a new workspace per call: the outputs are views of it, and the caller keeps them
        ws = _bounded(self.stepwise.forward_workspace(rows, *arrays), rows, "prediction")
        out = self.stepwise.forward(*arrays, ws)
        out = out if isinstance(out, tuple) else (out,)
        return dict(zip(self.outputs, out, strict=True))

    def forward_inputs(self) -> tuple[str, ...]:
        return forward_inputs(self.graph, self.outputs)


def _bounded(buffers: tuple, rows: int, what: str) -> tuple:
    """``buffers``, unless they take more than GRAPHNN_MAX_WORKSPACE_BYTES: np.empty has only
    reserved their pages, so a LimitError here comes before the kernels would touch them (an
    im2col patch buffer grows with the batch: about 1.3 GB for image28 at batch 1024)."""
    total = sum(b.nbytes for b in buffers)
    budgets.check(
        "GRAPHNN_MAX_WORKSPACE_BYTES",
        total,
        f"the {what} buffers for a batch of {rows} rows take {budgets.nbytes(total)} "
        "(a smaller batch_size takes less)",
    )
    return buffers
