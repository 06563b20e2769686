"""The training driver: ``gn.compile`` and ``Model.fit``.

The driver owns parameters, optimizer state, the step count and the shuffling RNG.  Each epoch is
one call into the back end (on the CPU: one compiled function that shuffles, slices batches and
steps); the driver records metrics, checks convergence, writes checkpoints atomically and stops
with :class:`~graphnn.errors.NonFiniteError` on NaN/Inf.

>>> import numpy as np, graphnn as gn
>>> x = gn.input("x", (2,)); t = gn.input("t", (1,)); w = gn.param("w", (2, 1))
>>> model = gn.compile(gn.Graph(gn.mse(x @ w, t)), optimizer=gn.SGD(lr=0.1), backend="numpy")
>>> X = np.ones((8, 2), np.float32); T = np.ones((8, 1), np.float32)
>>> model.fit({"x": X, "t": T}, epochs=30, batch_size=None)["loss"][-1] < 1e-3
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from graphnn import checkpoint as ckpt
from graphnn.data import check_data
from graphnn.errors import DataError, GraphError
from graphnn.history import History
from graphnn.metrics import accuracy, accuracy_kind, prediction_node
from graphnn.nonfinite import diagnose
from graphnn.optim import SGD, Optimizer

EVAL_CHUNK = 8192  # rows per forward call in evaluate/predict


def compile(
    graph,
    optimizer: Optimizer | None = None,
    backend: str = "cpu",
    dtype="float32",
    predict: str | None = None,
    seed: int = 0,
) -> Model:  # noqa: A001
    """Generate and compile the training kernels of ``graph``; returns a :class:`Model`."""
    return Model(graph, optimizer or SGD(lr=0.01), backend, dtype, predict, seed)


class Model:
    """Parameters, optimizer state and compiled kernels of one graph."""

    def __init__(self, graph, optimizer, backend, dtype, predict=None, seed=0):
        from codegen import get_backend

        self.graph, self.optimizer, self.backend = graph, optimizer, backend
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise DataError(f"dtype must be float32 or float64, got {self.dtype}")
        fwd = graph.forward
        guess, self.target = prediction_node(fwd, graph.loss_name)
        self.prediction = predict or guess
        fwd.node(self.prediction)  # a clear error for an unknown node name
        self.accuracy_kind = accuracy_kind(fwd, graph.loss_name, self.prediction)
        self.trainer = get_backend(backend).Trainer(
            graph, optimizer, self.dtype, (graph.loss_name, self.prediction)
        )
        self.params = graph.init_params(seed, self.dtype)
        self.state = {
            f"{s}_{p}": np.zeros_like(self.params[p])
            for p in graph.param_names
            for s in optimizer.state
        }
        self.step, self.epoch = 0, 0
        self.history = History()
        self._rng = None
        self._predictors: dict = {}

    # --- training ------------------------------------------------------------------------------

    def fit(
        self,
        data: Mapping,
        epochs: int = 20,
        batch_size: int | None = 32,
        shuffle=True,
        seed: int = 0,
        validation_data: Mapping | None = None,
        validation_split: float = 0.0,
        tol: float | None = None,
        patience: int = 5,
        early_stopping: bool = False,
        monitor: str | None = None,
        checkpoint_dir=None,
        checkpoint_every: int = 1,
        resume: bool = False,
        callbacks: Sequence[Callable] = (),
        progress: bool = False,
    ) -> History:
        """Train for up to ``epochs`` epochs; ``batch_size=None`` is batch gradient descent.

        Stops early when the training loss changes by less than ``tol`` for ``patience`` epochs,
        or (``early_stopping``) when ``monitor`` stops improving, restoring the best parameters.
        ``history["stopped"]`` says why training stopped.
        """
        arrays = check_data(self.graph.forward, data, self.dtype)
        train, val = self._split(arrays, validation_data, validation_split, seed)
        n = len(next(iter(train.values())))
        bs = n if batch_size is None else int(batch_size)
        if not 1 <= bs:
            raise DataError(f"batch_size must be a positive int or None, got {batch_size!r}")
        bs = min(bs, n)
        if resume and checkpoint_dir is not None:
            self._resume(checkpoint_dir)
        if self._rng is None or not resume:
            self._rng = np.random.default_rng(seed)
        monitor = monitor or ("val_loss" if val else "loss")
        watch = _Watch(tol, patience, early_stopping, monitor)
        for value in self.history.get(monitor, []):
            watch.best_value = min(watch.best_value, value)
        bar = _progress(progress, self.epoch, epochs)
        while self.epoch < epochs:
            perm = self._rng.permutation(n) if shuffle else np.arange(n)
            logs = self._run_epoch(train, perm, bs, checkpoint_dir)
            if val:
                logs.update({f"val_{k}": v for k, v in self.evaluate(val).items()})
            self.history.record(**logs)
            self.epoch += 1
            if watch.improved(logs) and early_stopping:
                self._best = {k: v.copy() for k, v in self.params.items()}
            if checkpoint_dir is not None:
                self._checkpoint(checkpoint_dir, checkpoint_every, watch.is_best)
            bar.update(logs)
            for callback in callbacks:
                callback(self, self.epoch, logs)
            reason = watch.should_stop(logs)
            if reason:
                self.history["stopped"] = reason
                break
        else:
            self.history["stopped"] = "epochs"
        if early_stopping and getattr(self, "_best", None) is not None:
            self.params.update(self._best)
        bar.close()
        return self.history

    def _split(self, arrays, validation_data, split, seed):
        if validation_data is not None:
            return arrays, check_data(self.graph.forward, validation_data, self.dtype)
        if not split:
            return arrays, None
        if not 0 < split < 1:
            raise DataError(f"validation_split must be in (0, 1), got {split}")
        n = len(next(iter(arrays.values())))
        order = np.random.default_rng(seed).permutation(n)
        cut = n - max(1, int(round(n * split)))
        pick = lambda idx: {k: np.ascontiguousarray(v[idx]) for k, v in arrays.items()}  # noqa: E731
        return pick(order[:cut]), pick(order[cut:])

    def _run_epoch(self, train, perm, bs, checkpoint_dir) -> dict[str, float]:
        steps = math.ceil(len(perm) / bs)
        schedule = self.optimizer.schedule
        mult = schedule.multipliers(self.step, steps) if schedule else np.ones(steps)
        lrs = self.optimizer.hyper["lr"] * mult
        hyper = dict(self.optimizer.hyper)
        if self.optimizer.clip_norm is not None:
            hyper["clip_norm"] = self.optimizer.clip_norm
        total, done, status = self.trainer.epoch(
            self.params, self.state, train, perm.astype(np.int64), bs, hyper, lrs, self.step
        )
        self.step += int(done)
        if status != 0:
            batch = {k: v[perm[done * bs : (done + 1) * bs]] for k, v in train.items()}
            raise diagnose(self, batch, int(status), self.step + 1, self.epoch + 1, checkpoint_dir)
        return {"loss": total / len(perm), "lr": float(lrs[-1])}

    # --- evaluation ----------------------------------------------------------------------------

    def _forward(self, arrays) -> dict[str, np.ndarray]:
        n = len(next(iter(arrays.values())))
        parts = [
            self.trainer.forward(self.params, {k: v[s : s + EVAL_CHUNK] for k, v in arrays.items()})
            for s in range(0, n, EVAL_CHUNK)
        ]
        sizes = [min(EVAL_CHUNK, n - s) for s in range(0, n, EVAL_CHUNK)]
        loss = (
            sum(float(p[self.graph.loss_name]) * k for p, k in zip(parts, sizes, strict=True)) / n
        )
        pred = np.concatenate([p[self.prediction] for p in parts])
        return {"loss": loss, "prediction": pred}

    def evaluate(self, data: Mapping) -> dict[str, float]:
        """Mean loss (and accuracy, for classifiers) on ``data``."""
        arrays = check_data(self.graph.forward, data, self.dtype)
        out = self._forward(arrays)
        metrics = {"loss": out["loss"]}
        if self.accuracy_kind and self.target:
            metrics["accuracy"] = accuracy(
                out["prediction"], arrays[self.target], self.accuracy_kind
            )
        return metrics

    def predict(self, data: Mapping, node: str | None = None) -> np.ndarray:
        """Values of the prediction node (or any named forward ``node``) for ``data``."""
        from codegen import get_backend

        node = node or self.prediction
        self.graph.forward.node(node)
        if node not in self._predictors:
            backend = get_backend(self.backend)
            self._predictors[node] = backend.Trainer(
                self.graph, self.optimizer, self.dtype, (node,)
            )
        trainer = self._predictors[node]
        needed = trainer.forward_inputs()
        arrays = check_data(self.graph.forward, data, self.dtype, required=needed)
        n = len(next(iter(arrays.values())))
        chunks = [
            trainer.forward(self.params, {k: v[s : s + EVAL_CHUNK] for k, v in arrays.items()})[
                node
            ]
            for s in range(0, n, EVAL_CHUNK)
        ]
        return np.concatenate(chunks)

    # --- checkpoints ---------------------------------------------------------------------------

    def save(self, path) -> Path:
        """Write parameters, optimizer state, counters and RNG state atomically to ``path``."""
        arrays = {f"param/{k}": v for k, v in self.params.items()}
        arrays |= {f"state/{k}": v for k, v in self.state.items()}
        meta = {
            "epoch": self.epoch,
            "step": self.step,
            "rng": self._rng.bit_generator.state if self._rng is not None else None,
            "history": dict(self.history),
            "optimizer": self.optimizer.name,
            "dtype": self.dtype.name,
        }
        ckpt.save_checkpoint(path, arrays=arrays, meta=meta)
        return Path(path)

    def load(self, path) -> None:
        """Restore a checkpoint written by :meth:`save` (shapes and names are checked)."""
        arrays, meta = ckpt.load_checkpoint(path)
        params = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}
        state = {k[6:]: v for k, v in arrays.items() if k.startswith("state/")}
        for name, current in [*self.params.items(), *self.state.items()]:
            saved = params.get(name, state.get(name))
            if saved is None or saved.shape != current.shape:
                raise GraphError(f"checkpoint {path} does not match this model at '{name}'")
        for name, value in params.items():
            self.params[name][...] = value
        for name, value in state.items():
            self.state[name][...] = value
        self.epoch, self.step = int(meta["epoch"]), int(meta["step"])
        self.history = History(meta.get("history", {}))
        if meta.get("rng") is not None:
            self._rng = np.random.default_rng()
            self._rng.bit_generator.state = meta["rng"]

    def _checkpoint(self, directory, every: int, is_best: bool) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.epoch % every == 0:
            self.save(directory / ckpt.checkpoint_name(self.step))
        if is_best:
            self.save(directory / "best.npz")

    def _resume(self, directory) -> None:
        latest = ckpt.latest_checkpoint(directory)
        if latest is not None:
            self.load(latest)


class _Watch:
    """Convergence (loss change < tol for ``patience`` epochs) and early stopping."""

    def __init__(self, tol, patience, early_stopping, monitor):
        self.tol, self.patience, self.early, self.monitor = tol, patience, early_stopping, monitor
        self.best_value, self.is_best = math.inf, False
        self.flat = self.stale = 0
        self.last = None

    def improved(self, logs) -> bool:
        value = logs.get(self.monitor)
        if value is None:
            raise GraphError(f"cannot monitor '{self.monitor}'; metrics: {sorted(logs)}")
        self.is_best = value < self.best_value
        self.best_value = min(self.best_value, value)
        self.stale = 0 if self.is_best else self.stale + 1
        return self.is_best

    def should_stop(self, logs) -> str | None:
        loss = logs["loss"]
        if self.tol is not None and self.last is not None:
            self.flat = self.flat + 1 if abs(self.last - loss) < self.tol else 0
            if self.flat >= self.patience:
                return "converged"
        self.last = loss
        if self.early and self.stale >= self.patience:
            return "early_stopping"
        return None


class _progress:
    """A tqdm bar over epochs when asked for; otherwise nothing."""

    def __init__(self, enabled: bool, start: int, total: int):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="epoch", dynamic_ncols=True)

    def update(self, logs):
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k != "lr"})
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()
