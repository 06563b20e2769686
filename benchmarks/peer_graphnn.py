"""graphnn plugged into the harness through its public API only.

``build_model`` writes each workload as a user would (gn.input / gn.param / ops / gn.Graph /
gn.compile); ``GraphnnTrainer`` trains chunks with ``model.fit``. graphnn picks its own initial
values from the same init schemes the peers use (he_normal / glorot_uniform / zeros). The
harness's ``graphnn_noftz`` trainer is graphnn with ``flush_denormals=False``, to measure what
flushing denormals buys.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time

import numpy as np
from trainer_base import Trainer
from workloads import Workload


def graphnn_optimizer(gn, wl: Workload):
    """(graphnn optimizer object, description); Adam falls back if graphnn lacks it."""
    opt = wl.optimizer
    if opt.name == "adam" and not hasattr(gn, "Adam") and wl.fallback_optimizer:
        opt = wl.fallback_optimizer
        note = " (fallback: gn.Adam missing)"
    else:
        note = ""
    if opt.name == "adam":
        return gn.Adam(lr=opt.lr), opt.describe() + note
    if opt.momentum:
        return gn.SGD(lr=opt.lr, momentum=opt.momentum), opt.describe() + note
    return gn.SGD(lr=opt.lr), opt.describe() + note


def build_conv_graph(gn, wl: Workload):
    """A convolutional workload as examples/digits_cnn.toml writes it: per conv layer
    relu(conv2d(x, W, padding) + b) -> max_pool2d, then flatten -> dense -> softmax CE."""
    h = gn.input("x", wl.image)
    y = gn.input("y", (wl.sizes[-1],))
    layers = zip(wl.param_names(), wl.weight_shapes(), wl.init_schemes(), strict=True)
    for i, ((wn, bn), shape, scheme) in enumerate(layers):
        W = gn.param(wn, shape, init=scheme)
        b = gn.param(bn, (shape[-1],), init="zeros")
        if i < len(wl.convs):
            h = gn.relu(gn.conv2d(h, W, padding=wl.pad) + b)
            h = gn.max_pool2d(h, wl.pool)
        else:
            h = gn.flatten(h) @ W + b
    return gn.Graph(gn.softmax_cross_entropy(h, y))


def build_graph(gn, wl: Workload):
    """The workload's training loss as a gn.Graph."""
    if wl.image:
        return build_conv_graph(gn, wl)
    x = gn.input("x", (wl.sizes[0],))
    y = gn.input("y", (wl.sizes[-1],))
    act = {"relu": gn.relu, "tanh": gn.tanh}.get(wl.activation)
    h = x
    names, schemes = wl.param_names(), wl.init_schemes()
    for i, ((wn, bn), scheme) in enumerate(zip(names, schemes, strict=True)):
        W = gn.param(wn, (wl.sizes[i], wl.sizes[i + 1]), init=scheme)
        b = gn.param(bn, (wl.sizes[i + 1],), init="zeros")
        h = h @ W + b
        if i < len(names) - 1:
            h = act(h)
    if wl.loss == "softmax_ce":
        loss = gn.softmax_cross_entropy(h, y)
    else:
        loss = gn.mse(gn.sigmoid(h), y)
    return gn.Graph(loss)


BACKEND = "cpu"  # run.py --backend sets it ("cuda" needs a GPU)


def build_model(gn, wl: Workload, flush: bool | None = None) -> tuple[object, str, dict]:
    """Compiled model, optimizer description, and seconds spent building / compiling.

    ``flush`` sets ``gn.compile(..., flush_denormals=flush)``; None keeps graphnn's default.
    """
    t0 = time.perf_counter()
    graph = build_graph(gn, wl)
    t1 = time.perf_counter()
    optimizer, opt_desc = graphnn_optimizer(gn, wl)
    kwargs = {} if flush is None else {"flush_denormals": flush}
    model = gn.compile(graph, optimizer=optimizer, backend=BACKEND, **kwargs)
    t2 = time.perf_counter()
    return model, opt_desc, {"graph_s": t1 - t0, "compile_s": t2 - t1}


def has_flush_option(gn) -> bool:
    return "flush_denormals" in inspect.signature(gn.compile).parameters


@contextlib.contextmanager
def _fused_in_process():
    """GRAPHNN_FUSED=wait for this call: the steady state is the fused epoch's, so the first
    (warm-up) call compiles it here rather than in the background, which on a busy machine may
    not be done before the timed repeats.  Start-up is timed elsewhere (graphnn_startup.py),
    with the default; the variable is restored so the processes it starts get the default."""
    before = os.environ.get("GRAPHNN_FUSED")
    os.environ["GRAPHNN_FUSED"] = "wait"
    try:
        yield
    finally:
        if before is None:
            del os.environ["GRAPHNN_FUSED"]
        else:
            os.environ["GRAPHNN_FUSED"] = before


class GraphnnTrainer(Trainer):
    name = "graphnn"

    def __init__(self, gn, wl, X, Y, seed=0, flush: bool | None = None):
        super().__init__(wl, X, Y, seed)
        self.gn = gn
        self.model, self.opt_desc, self.build_times = build_model(gn, wl, flush)
        self.cumulative_epochs = None  # does fit(epochs=n) mean "up to epoch n"? found on 1st call

    def _x(self, rows):
        """Rows of X as the model's input: flat, or (n, h, w, c) images (a view)."""
        return rows.reshape(-1, *self.wl.image) if self.wl.image else rows

    def _train(self, start, stop):
        data = {"x": self._x(self.X[start:stop]), "y": self.Y[start:stop]}
        seed = int(self.rng.integers(2**31))
        self._fit_one_epoch(data, self.wl.batch_size, shuffle=True, seed=seed)

    def train_batch(self, idx):
        data = {"x": self._x(self.X[idx]), "y": self.Y[idx]}
        self._fit_one_epoch(data, len(idx), shuffle=False, seed=0)

    def _fit_one_epoch(self, data, batch_size, **kw) -> None:
        """One more epoch over ``data``, whether fit's ``epochs`` counts per call or in total.

        Keras trains ``epochs`` epochs per call; a model that counts epochs across calls (and
        stops once ``model.epoch`` reaches ``epochs``) needs ``epochs=model.epoch + 1``. The step
        counter, when the model has one, tells which, and that every call really trained.
        """
        model = self.model
        n = len(data["x"])
        expected = -(-n // batch_size)
        before = getattr(model, "step", None)
        epochs = model.epoch + 1 if self.cumulative_epochs else 1
        with _fused_in_process():
            model.fit(data, epochs=epochs, batch_size=batch_size, **kw)
        if before is None:
            return
        if model.step == before and not self.cumulative_epochs and hasattr(model, "epoch"):
            self.cumulative_epochs = True
            with _fused_in_process():
                model.fit(data, epochs=model.epoch + 1, batch_size=batch_size, **kw)
        elif before > 0 and self.cumulative_epochs is None:
            self.cumulative_epochs = False  # a later call with epochs=1 trained again
        if model.step - before != expected:
            raise RuntimeError(
                f"model.fit ran {model.step - before} steps on {n} samples, expected {expected}"
            )

    def set_params(self, init) -> None:
        """Overwrite graphnn's initial values in place (for check_peers; may be unsupported)."""
        p = self.model.params
        for (wn, bn), (W, b) in zip(self.wl.param_names(), init, strict=True):
            p[wn][...] = W
            p[bn][...] = b

    def params_numpy(self):
        p = self.model.params
        return [(np.asarray(p[w]), np.asarray(p[b])) for w, b in self.wl.param_names()]

    def state_arrays(self):
        state = getattr(self.model, "state", None)  # optimizer state, if the model exposes it
        extra = list(state.values()) if isinstance(state, dict) else []
        return [a for layer in self.params_numpy() for a in layer] + extra

    def info(self):
        flush = getattr(self.model, "flush_denormals", None)
        return {
            "version": getattr(self.gn, "__version__", "?"),
            "optimizer": self.opt_desc,
            "flush_to_zero": "not exposed"
            if flush is None
            else f"{'yes' if flush else 'no'} (flag)",
            "fit_epochs_cumulative": self.cumulative_epochs,
            **{k: round(v, 3) for k, v in self.build_times.items()},
        }
