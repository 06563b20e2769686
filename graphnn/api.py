"""``gn.Graph``: a loss and everything it depends on, differentiated once, ready to run.

>>> import numpy as np, graphnn as gn
>>> x = gn.input("x", (3,)); t = gn.input("t", (1,)); w = gn.param("w", (3, 1))
>>> g = gn.Graph(gn.mse(gn.sigmoid(x @ w), t))
>>> params = g.init_params(seed=0)
>>> value, grads = g.value_and_grad(params, {"x": np.ones((4, 3)), "t": np.ones((4, 1))})
>>> grads["w"].shape
(3, 1)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import sympy

from graphnn import budgets
from graphnn.derive import autodiff
from graphnn.errors import GraphError, NameNotFoundError, StabilityWarning, shown
from graphnn.ir import batch_norm
from graphnn.ir.graph import LEAF_OPS, GraphIR
from graphnn.ir.init import init_array
from graphnn.ir.ops import Tensor
from graphnn.train.data import check_data, check_params


class Graph:
    """The forward graph of ``loss`` and the training graph (forward + every gradient)."""

    def __init__(self, loss: Tensor, outputs: Sequence[Tensor] = ()):
        if not isinstance(loss, Tensor):
            raise GraphError(f"Graph needs the loss tensor, got {type(loss).__name__}")
        self.loss = loss
        self.forward = GraphIR([loss, *outputs])
        # trainable parameters; state parameters (batch norm's running statistics) are assigned
        # by each training step instead (graphnn.ir.batch_norm), after the trainable ones
        self.param_names = [n.name for n in self.forward.params if not n.attr("state")]
        self.state_names = [n.name for n in self.forward.params if n.attr("state")]
        if not self.param_names:
            raise GraphError(f"the loss '{loss.label}' depends on no parameter")
        wrt = [self.forward.tensor_by_name[p] for p in self.param_names]
        grads, cotangents = autodiff.backward(loss, wrt)
        updates = batch_norm.state_updates(self.forward, self.state_names)
        outputs = [loss, *grads.values(), *(updates[s] for s in self.state_names)]
        self.training = GraphIR(outputs, names=self.forward.names)
        # state parameter -> the training node holding its value after the step
        self.update_names = {s: self.training.name_of(u) for s, u in updates.items()}
        # δ of every forward node between a parameter and the loss: the training node holding
        # it, or its value where it is a constant folded into its users (1, 1/n under a mean)
        self.cotangents: dict[str, str | sympy.Expr] = {
            self.forward.name_of(t): self.training.names.get(
                id(cotangents[id(t)]), sympy.sympify(cotangents[id(t)].attrs.get("value", 0))
            )
            for t in self.forward.tensors
            if id(t) in cotangents and (t.op not in LEAF_OPS or t.op == "param")
        }
        self.loss_name = self.forward.name_of(loss)
        if any(n.attr("user") is not None for n in self.forward.nodes):
            from graphnn.inspect.audit import user_function_warnings

            for message in user_function_warnings(self):
                warnings.warn(message, StabilityWarning, stacklevel=2)
        self.grad_names = {
            p: self.training.name_of(grads[w]) for p, w in zip(self.param_names, wrt, strict=True)
        }
        self._formulas: dict = {}
        self._assembled: dict = {}  # training node -> its matrix-form formula, for every gradient
        self._forward_names = set(self.forward.by_name)

    # --- inspection -----------------------------------------------------------------------------

    @property
    def kernel_params(self) -> list[str]:
        """The arrays the kernels take after the inputs: the trainable parameters, then the
        state parameters."""
        return [*self.param_names, *self.state_names]

    def _param(self, name: str) -> str:
        if name in self.state_names:
            raise NameNotFoundError(
                f"{shown(name)} is a state parameter (a running statistic): it has no gradient; "
                f"parameters: {', '.join(self.param_names)}"
            )
        if name not in self.param_names:
            raise NameNotFoundError(
                f"no parameter named {shown(name)}; parameters: {', '.join(self.param_names)}"
            )
        return name

    def gradient(self, name: str):
        """dLoss/d(name) as a matrix-form formula assembled from the local rules."""
        from graphnn.derive.matrixform import gradient_formula

        name = self._param(name)
        if name not in self._formulas:
            self._formulas[name] = gradient_formula(
                self.training, self.grad_names[name], self._forward_names, memo=self._assembled
            )
        return self._formulas[name]

    def backprop(self, params: Sequence[str] | None = None):
        """The gradients of ``params`` (default: all) with their shared δ named, textbook style:
        ``δ1 = (δ2 W2^T) ∘ relu'(add1)``, ``dL/dW1 = x^T δ1`` (a ``Backprop``; print it)."""
        from graphnn.derive.deltas import named_deltas

        names = None if params is None else [self._param(p) for p in params]
        return named_deltas(
            self.training, self.grad_names, self._forward_names, self.cotangents, names
        )

    def explain(self, name: str):
        """dLoss/d(name) explained: formula, chain of deltas, derivative forms, kernel lines."""
        from graphnn.inspect.explain import explain

        return explain(self, self._param(name))

    def source(self, backend: str = "cpu", optimizer=None, dtype="float32") -> str:
        """The generated kernel module of a back end, as Python source text."""
        from codegen import get_backend

        return get_backend(backend).source(self, optimizer, dtype)

    def export(
        self,
        path,
        optimizer=None,
        backend: str = "cpu",
        dtype="float32",
        epochs=10,
        batch_size=32,
        blas: bool = True,
    ):
        """Write a standalone training module to ``path``; ``epochs`` and ``batch_size`` are the
        defaults of its command line.  It needs numpy and numba, and SciPy where it calls BLAS
        (its docstring says which); ``blas=False`` generates every product as loops instead."""
        from codegen.export.write import export_module

        return export_module(self, path, optimizer, backend, dtype, epochs, batch_size, blas)

    @property
    def inputs(self) -> dict[str, tuple]:
        return {n.name: n.shape for n in self.forward.inputs}

    @property
    def shapes(self) -> dict[str, tuple]:
        return {n.name: n.shape for n in self.forward.params}

    # --- running -------------------------------------------------------------------------------

    def param_bytes(self, dtype=np.float32, buffers: int = 0) -> int:
        """Bytes of every parameter in ``dtype``, and of ``buffers`` optimizer buffers each."""
        values = sum(math.prod(n.shape) for n in self.forward.params)
        return values * np.dtype(dtype).itemsize * (1 + buffers)

    def check_param_bytes(self, dtype=np.float32, optimizer=None) -> None:
        """LimitError (before anything is allocated) if the parameters, and the optimizer's
        buffers of them, take more than GRAPHNN_MAX_PARAM_BYTES."""
        buffers = len(optimizer.state) if optimizer is not None else 0
        size = self.param_bytes(dtype, buffers)
        state = f" and {optimizer.name}'s {buffers} buffers of them" if buffers else ""
        what = f"the parameters{state} take {budgets.nbytes(size)} in {np.dtype(dtype).name}"
        budgets.check("GRAPHNN_MAX_PARAM_BYTES", size, what)

    def check_node_budget(self) -> None:
        """LimitError if the forward graph has more nodes than GRAPHNN_MAX_NODES: a compiled back
        end then generates and compiles code for minutes (a 1000-node chain took 7 GB)."""
        size = len(self.forward)
        budgets.check("GRAPHNN_MAX_NODES", size, f"the graph has {size:,} nodes")

    def init_params(self, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
        """Fresh parameter arrays from each parameter's initializer."""
        self.check_param_bytes(dtype)
        return {
            n.name: init_array(n.name, n.shape, n.attr("init"), seed, dtype)
            for n in self.forward.params
        }

    def value_and_grad(
        self, params: Mapping, data: Mapping, backend: str = "numpy", dtype=None
    ) -> tuple[float, dict[str, np.ndarray]]:
        """The loss and the gradient of every parameter on one batch of data."""
        from codegen import get_backend

        dtype = np.dtype(dtype or _dtype_of(params))
        values = {
            **check_params(self.training, params, dtype),
            **check_data(self.forward, data, dtype),
        }
        loss, grads = get_backend(backend).value_and_grad(self, values, dtype)
        return float(loss), grads

    def evaluate_nodes(self, params: Mapping, data: Mapping, dtype=None) -> dict[str, np.ndarray]:
        """Every node's value (forward and backward) on the NumPy reference."""
        from codegen.numpy_ref import evaluate

        dtype = np.dtype(dtype or _dtype_of(params))
        values = {
            **check_params(self.training, params, dtype),
            **check_data(self.forward, data, dtype),
        }
        return evaluate(self.training, values, dtype)

    def __repr__(self) -> str:
        return f"Graph(loss={self.loss_name!r}, params={self.param_names})"


def _dtype_of(params: Mapping) -> np.dtype:
    kinds = {np.asarray(v).dtype for v in params.values()}
    return np.dtype(np.float64) if np.dtype(np.float64) in kinds else np.dtype(np.float32)
