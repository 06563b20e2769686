"""Model files: what ``Model.save`` writes and ``Model.load`` (and ``fit``'s checkpoints and
``gn.load_model``) read back.

A model file is a checkpoint (:mod:`graphnn.train.checkpoint`): the parameters and optimizer
state under their names, the preprocessing's statistics, and JSON meta with the counters,
history, shuffling RNG, preprocessing, metrics, CSV columns, and the graph and optimizer as data
(:mod:`graphnn.ir.serialize`), from which :func:`graphnn.load_model` rebuilds the model.

>>> model.save("m.npz"); model.load("m.npz")  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from graphnn.errors import CheckpointError, DataError, GraphError, GraphnnWarning
from graphnn.ir.serialize import graph_to_data
from graphnn.optim.optimizers import optimizer_to_data
from graphnn.train import checkpoint as ckpt
from graphnn.train import metrics as metric_table
from graphnn.train.history import History
from graphnn.train.preprocess import Preprocessing

BEST = "best.npz"


class ModelFiles:
    """The saving and restoring half of :class:`~graphnn.train.driver.Model`."""

    def save(self, path) -> Path:
        """Write parameters, optimizer state, counters and RNG state atomically to ``path``."""
        arrays = {f"param/{k}": v for k, v in self.params.items()}
        arrays |= {f"state/{k}": v for k, v in self.state.items()}
        prep_arrays, prep_meta = self.preprocessing.to_file()
        arrays |= prep_arrays
        meta = {
            "preprocessing": prep_meta,
            "epoch": self.epoch,
            "step": self.step,
            "rng": self._rng.bit_generator.state if self._rng is not None else None,
            "history": dict(self.history),
            "optimizer": self.optimizer.name,
            "dtype": self.dtype.name,
            "columns": self.columns,
            "metrics": [k for k in self.metrics if metric_table.is_builtin(k)],
            **self._description(),
        }
        ckpt.save_checkpoint(path, arrays=arrays, meta=meta)
        return Path(path)

    def _description(self) -> dict:
        """What ``gn.load_model`` rebuilds the model from: the graph, optimizer and settings as
        data (formulas as SymPy trees; never code).  Computed once per model."""
        if not hasattr(self, "_described"):
            settings = {
                "backend": self.backend,
                "dtype": self.dtype.name,
                "predict": self.prediction,
                "seed": self.seed,
                "flush_denormals": self.flush_denormals,
            }
            try:
                graph = graph_to_data(self.graph.forward.outputs)
                optimizer = optimizer_to_data(self.optimizer)
            except GraphError as exc:  # a formula of a class no file can hold: weights only
                warnings.warn(
                    f"model files will hold no graph for gn.load_model ({exc})", GraphnnWarning, 3
                )
                graph = optimizer = None
            self._described = {"graph": graph, "optimizer_data": optimizer, "model": settings}
        return self._described

    def load(self, path, weights_only: bool = False) -> None:
        """Restore a checkpoint written by :meth:`save`: parameters, and unless ``weights_only``
        the optimizer state, counters, history and shuffling RNG.  Raises CheckpointError naming
        ``path`` for a missing, corrupt or mismatched file; the model is unchanged then."""
        self._restore(path, *ckpt.load_checkpoint(path), weights_only)

    def _restore(self, path, arrays, meta, weights_only: bool = False) -> None:
        self._trainable_arrays()  # the checkpoint is written into these arrays
        params = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}
        state = {k[6:]: v for k, v in arrays.items() if k.startswith("state/")}
        if not weights_only and meta.get("optimizer") != self.optimizer.name:
            raise CheckpointError(
                f"checkpoint {path} holds the state of optimizer {meta.get('optimizer')!r}, "
                f"this model uses {self.optimizer.name!r} (load(..., weights_only=True) "
                "takes only the parameters)"
            )
        wanted = [(params, self.params)] + ([] if weights_only else [(state, self.state)])
        for saved, current in wanted:
            for name, value in current.items():
                if name not in saved or saved[name].shape != value.shape:
                    got = saved[name].shape if name in saved else "nothing"
                    raise CheckpointError(
                        f"checkpoint {path} does not match this model at '{name}': "
                        f"expected shape {value.shape}, found {got}"
                    )
        if not weights_only and not all(k in meta for k in ("epoch", "step", "history")):
            raise CheckpointError(f"checkpoint {path} is not a model checkpoint (no counters)")
        prep = self.preprocessing
        if "preprocessing" in meta:  # the parameters were trained on inputs scaled so
            prep = Preprocessing.from_file(arrays, meta["preprocessing"], path)
        metrics = self.metrics
        if meta.get("metrics") and not self.metrics:  # evaluate reports them again
            try:
                metrics = metric_table.resolve(meta["metrics"], *self._metric_reading())
            except DataError as exc:
                raise CheckpointError(f"{path}: {exc}") from None
        # checked: from here on nothing fails, so a bad file leaves the model unchanged
        for saved, current in wanted:
            for name, value in current.items():
                value[...] = saved[name]
        self.preprocessing, self.metrics = prep, metrics
        if isinstance(meta.get("columns"), dict):
            self.columns = meta["columns"]
        if weights_only:
            return
        self.epoch, self.step = int(meta["epoch"]), int(meta["step"])
        self.history = History(meta["history"])
        self._rng = None
        if meta.get("rng") is not None:
            self._rng = np.random.default_rng()
            self._rng.bit_generator.state = meta["rng"]

    def _checkpoint(self, directory, every: int, keep: int | None, is_best: bool, last) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.epoch % every == 0 or last:
            self.save(directory / ckpt.checkpoint_name(self.step))
            if keep is not None:
                ckpt.prune_checkpoints(directory, keep)
        if is_best:
            self.save(directory / BEST)


def newest_that_verifies(directory) -> tuple[Path, dict, dict] | None:
    """(path, arrays, meta) of the newest checkpoint in ``directory`` that loads and verifies,
    warning about each newer one that does not; None if there is none at all."""
    found = ckpt.checkpoints_newest_first(directory)
    failed = []
    for path in found:
        try:
            return (path, *ckpt.load_checkpoint(path))
        except CheckpointError as exc:
            failed.append(exc)
            if path != found[-1]:
                warnings.warn(f"{exc}; resuming from an older checkpoint", GraphnnWarning, 3)
    if failed:
        more = f" (and {len(failed) - 1} older ones)" if len(failed) > 1 else ""
        raise CheckpointError(f"{failed[0]}{more}; no checkpoint of {directory} can be resumed")
    return None
