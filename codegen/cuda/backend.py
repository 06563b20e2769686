"""The Numba CUDA back end: the CPU's kernel plan as ``@cuda.jit`` kernels, run from the host.

Parameters and optimizer state live in device buffers allocated once per :class:`Trainer`.  The
host arrays stay the truth between epochs (``Model.load``, early-stopping restores and user edits
change them), so each epoch copies them in at the start and back, in place, at the end; the
epoch's data (and its permutation) is uploaded once per epoch; the whole epoch is launched without
a synchronization, and the per-step losses and the NaN/Inf status come back once, at its end.

NaN/Inf: a ``check_step`` kernel looks at the loss and every gradient before the updates of each
step.  The first bad step writes ``status = (code, step)`` with the CPU's codes (-1 the loss, k
the gradient of parameter k); from then on the update kernels do nothing, so the epoch returns
exactly what the CPU's would: the loss sum and step count before the bad step, its status, and
parameters as they were before it.  (Later steps are still launched, but change nothing.)

Without a GPU, set ``NUMBA_ENABLE_CUDASIM=1`` before Python starts to run on Numba's simulator
(slow; for tests).  ``source`` needs neither: it only prints.  The simulator runs ``math.*`` in
Python, so a domain error or an overflow there (``log(-1)``, ``exp(1000)``) raises, where a GPU
gives NaN or Inf; and it computes those calls in float64 (the PTX check catches float64 instead).

>>> import graphnn as gn
>>> x = gn.input("x", (2,)); y = gn.input("y", (1,)); w = gn.param("w", (2, 1))
>>> "def loss_and_grads(ws, x, y, w):" in source(gn.Graph(gn.mse(x @ w, y)))
True
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from codegen.cache import load_module
from codegen.cpu.backend import debug_level
from codegen.cuda.cudasim import lock_shared_arrays
from codegen.cuda.library import GPU, SIMULATOR, Launch
from codegen.cuda.module import cuda_signature, module_source
from codegen.signature import forward_inputs
from graphnn.errors import CudaUnavailableError

SIMULATOR_VAR = "NUMBA_ENABLE_CUDASIM"


def simulator_enabled() -> bool:
    """Whether Numba runs CUDA kernels on its CPU simulator (decided when numba is imported)."""
    import numba

    return bool(numba.config.ENABLE_CUDASIM)


def default_launch() -> Launch:
    return SIMULATOR if simulator_enabled() else GPU


def require_device():
    """``numba.cuda``, or :class:`CudaUnavailableError` saying how to use the simulator."""
    from numba import cuda

    if cuda.is_available():
        lock_shared_arrays()  # a no-op on a real GPU; fixes the simulator's allocation race
        return cuda
    late = ""
    if os.environ.get(SIMULATOR_VAR, "0") not in ("", "0") and not simulator_enabled():
        late = (
            f" ({SIMULATOR_VAR} is set in this process, but only after numba was imported; "
            "numba reads it once, at import)"
        )
    raise CudaUnavailableError(
        "the cuda back end found no CUDA GPU (numba.cuda.is_available() is False). To run it on "
        f"Numba's CUDA simulator instead (slow: for tests and tiny shapes), set {SIMULATOR_VAR}=1 "
        f"in the environment before Python starts, e.g. `{SIMULATOR_VAR}=1 python train.py`"
        f"{late}; or use backend='cpu'."
    )


def source(graph, optimizer=None, dtype="float32", outputs: Sequence[str] = (), launch=None) -> str:
    """The generated module's text (what ``g.source(backend="cuda")`` shows)."""
    launch = launch or default_launch()
    return module_source(graph, optimizer, np.dtype(dtype).name, tuple(outputs), launch)


def build(graph, optimizer=None, dtype="float32", outputs: Sequence[str] = (), launch=None):
    """The imported kernel module; GRAPHNN_DEBUG=2 prints its source first."""
    require_device()
    text = source(graph, optimizer, dtype, outputs, launch)
    if debug_level() >= 2:
        print(text)
    return load_module(text)


def _upload(cuda, array, dtype, out=None):
    """A C-contiguous device copy of ``array`` (shape () as (1,)), into ``out`` if it fits."""
    host = np.ascontiguousarray(array, dtype=dtype)
    host = host.reshape(host.shape or (1,))
    if out is not None and out.shape == host.shape:
        out.copy_to_device(host)
        return out
    return cuda.to_device(host)


def _download(device, shape) -> np.ndarray:
    return device.copy_to_host().reshape(shape)


def value_and_grad(graph, values: Mapping[str, np.ndarray], dtype, launch=None):
    """The loss and every parameter's gradient on one batch, computed on the device."""
    cuda = require_device()
    dtype = np.dtype(dtype)
    module = build(graph, None, dtype, (), launch)
    names = [n.name for n in graph.forward.inputs] + list(graph.kernel_params)
    arrays = [_upload(cuda, values[a], dtype) for a in names]
    rows = arrays[0].shape[0] if graph.forward.inputs else 1
    # dropout's draw: epoch key 0, the rows as samples 0..rows-1
    draw = [0, cuda.to_device(np.arange(rows))] if cuda_signature(graph, None).draws else []
    loss, *grads = module.loss_and_grads(module.Workspace(), *arrays, *draw)
    shapes = {n.name: n.shape for n in graph.forward.params}
    grads = grads[: len(graph.param_names)]  # then come the state parameters' new values
    grads = {p: _download(g, shapes[p]) for p, g in zip(graph.param_names, grads, strict=True)}
    return _download(loss, ())[()], grads


class Trainer:
    """Runs the generated host functions on dicts of host arrays (updated in place per epoch)."""

    def __init__(self, graph, optimizer, dtype="float32", outputs: Sequence[str] = (), launch=None):
        self.cuda = require_device()
        self.graph, self.optimizer, self.dtype = graph, optimizer, np.dtype(dtype)
        self.outputs = tuple(outputs) or (graph.loss_name,)
        self.module = build(graph, optimizer, self.dtype, self.outputs, launch)
        self.sig = cuda_signature(graph, optimizer)
        self.ws = self.module.Workspace(self.dtype.type)
        self.device: dict[str, object] = {}  # "param/W", "state/m_W": buffers allocated once

    def _sync_in(self, kind: str, arrays: Mapping, names, dtype=None) -> list:
        """Copy host arrays into this trainer's device buffers (reallocated only on new shapes)."""
        for name in names:
            key = f"{kind}/{name}"
            dtype_ = dtype or self.dtype
            self.device[key] = _upload(self.cuda, arrays[name], dtype_, self.device.get(key))
        return [self.device[f"{kind}/{name}"] for name in names]

    def _sync_out(self, kind: str, arrays: Mapping, names) -> None:
        for name in names:
            arrays[name][...] = _download(self.device[f"{kind}/{name}"], arrays[name].shape)

    def epoch(self, params, state, data, perm, batch_size, hyper, lrs, t0):
        """One epoch launched without a sync; returns (loss sum, steps done, status)."""
        cuda, dtype = self.cuda, self.dtype
        names = self.graph.kernel_params
        p_dev = self._sync_in("param", params, names)
        s_dev = self._sync_in("state", state, self.sig.state)
        x_dev = self._sync_in("data", data, [n.name for n in self.graph.forward.inputs])
        (perm_dev,) = self._sync_in("perm", {"perm": perm}, ["perm"], np.int64)
        steps = -(-len(perm) // batch_size)
        losses = cuda.device_array(max(steps, 1), dtype=dtype)
        status = cuda.to_device(np.zeros(2, np.int64))
        gscale = cuda.to_device(np.ones(1, dtype))
        others = [dtype.type(hyper[h]) for h in self.sig.hyper if h != "lr"]
        launched = self.module.train_epoch(
            self.ws, *x_dev, perm_dev, int(batch_size),
            *p_dev, *s_dev, np.asarray(lrs, dtype), *others, int(t0), losses, status, gscale,
        )  # fmt: skip
        code, bad_step = (int(v) for v in status.copy_to_host())
        done = launched if code == 0 else bad_step
        step_losses = losses.copy_to_host()[:done].astype(np.float64)
        rows = np.minimum(batch_size, len(perm) - batch_size * np.arange(done))
        self._sync_out("param", params, names)
        self._sync_out("state", state, self.sig.state)
        return float(step_losses @ rows), done, code

    def forward(self, params, data) -> dict[str, np.ndarray]:
        args = self._sync_in("eval", data, forward_inputs(self.graph, self.outputs))
        args += self._sync_in("param", params, self.graph.kernel_params)
        out = self.module.forward(self.ws, *args)
        shapes = [self.graph.forward.node(o).shape for o in self.outputs]
        return {
            o: a.copy_to_host() if s else _download(a, ())
            for o, a, s in zip(self.outputs, out, shapes, strict=True)
        }

    def forward_inputs(self) -> tuple[str, ...]:
        return forward_inputs(self.graph, self.outputs)
