"""The training driver: ``gn.compile`` and ``Model.fit``.

The driver owns parameters, optimizer state, the step count and the shuffling RNG.  Each epoch is
one call into the back end (on the CPU: one compiled function that shuffles, slices batches and
steps); the driver records metrics, checks convergence, writes checkpoints atomically and stops
with :class:`~graphnn.errors.NonFiniteError` on NaN/Inf.

A *run* is one ``fit`` call, or a run resumed from a checkpoint: ``epochs`` counts the run's
epochs in total, so an interrupted ``fit(epochs=10, checkpoint_dir=d)`` is finished by
``fit(epochs=10, checkpoint_dir=d, resume=True)``, with the same result as if it had never
stopped.  A new run (``resume=False``) starts from the current parameters and optimizer state.

>>> import numpy as np, graphnn as gn
>>> x = gn.input("x", (2,)); t = gn.input("t", (1,)); w = gn.param("w", (2, 1))
>>> model = gn.compile(gn.Graph(gn.mse(x @ w, t)), optimizer=gn.SGD(lr=0.1), backend="numpy")
>>> X = np.ones((8, 2), np.float32); T = np.ones((8, 1), np.float32)
>>> model.fit({"x": X, "t": T}, epochs=30, batch_size=None)["loss"][-1] < 1e-3
True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from graphnn.errors import (
    CheckpointError,
    DataError,
    RunExistsError,
    shown,
)
from graphnn.ir.batch_norm import over_rows_only
from graphnn.ir.prediction import accuracy_kind, prediction_node
from graphnn.ir.shapes import show
from graphnn.optim.optimizers import SGD, Optimizer, state_key
from graphnn.train import checkpoint as ckpt
from graphnn.train import distributed as mpi
from graphnn.train import metrics as metric_table
from graphnn.train.data import as_shaped, check_data
from graphnn.train.denormals import flush_denormals
from graphnn.train.history import History, ProgressBar, Watch
from graphnn.train.interrupt import DeferredInterrupt, is_interrupt
from graphnn.train.metrics import accuracy
from graphnn.train.model_files import BEST, ModelFiles, newest_that_verifies
from graphnn.train.nonfinite import broken_names, diagnose, update_overflow
from graphnn.train.packing import Packing
from graphnn.train.parallel import DataParallel
from graphnn.train.preprocess import Preprocessing, resolve_scale
from graphnn.train.seeding import seeded

EVAL_CHUNK = 8192  # rows per forward call in evaluate/predict
PACKED = "packed"  # a snapshot's key for its copy of Packing.flat (others are param/..., state/...)


def compile(
    graph,
    optimizer: Optimizer | None = None,
    backend: str = "cpu",
    dtype="float32",
    predict: str | None = None,
    seed: int = 0,
    flush_denormals: bool = True,
    scale=None,
) -> Model:  # noqa: A001
    """Generate and compile the training kernels of ``graph``; returns a :class:`Model`.

    ``scale``: ``"standard"`` or ``"minmax"`` scales every input but the target (or a dict
    input -> kind names them), with statistics from the first ``fit``'s training rows; the
    model keeps them and applies them in ``fit``, ``evaluate``, ``predict`` and its files.
    ``flush_denormals``: treat denormal floats as zero while ``fit`` runs (x86-64; up to 3x
    faster for Adam, whose buffers drift into denormals; see :mod:`graphnn.train.denormals`).
    """
    optimizer = optimizer or SGD(lr=0.01)
    return Model(graph, optimizer, backend, dtype, predict, seed, flush_denormals, scale)


def _check_seed(seed, none_ok: bool = False) -> None:
    if not (_is_int(seed) and seed >= 0) and not (none_ok and seed is None):
        # NumPy's own errors for these ("expected non-negative integer") name no argument
        more = " (or None for a random shuffle)" if none_ok else ""
        raise DataError(f"seed must be an int >= 0{more}, got {shown(seed)}")


def _checkpoint_dir(directory, make: bool = True) -> Path | None:
    """``directory`` as a Path, made if absent (if ``make``: rank 0 alone writes files under
    MPI); a CheckpointError naming it if it cannot be one (a file, a path through a file, no
    permission), before any epoch is spent."""
    if directory is None:
        return None
    try:
        path = Path(directory)
    except TypeError:
        raise DataError(f"checkpoint_dir must be a path, got {shown(directory)}") from None
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"checkpoint_dir {path} is a file, not a directory")
    try:
        if make:
            path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot make checkpoint_dir {path}: {exc.strerror or exc}") from None
    return path


def _is_int(value) -> bool:
    # type(...) is int first: the ABC check costs 0.2 us, a dozen times a fit call
    return type(value) is int or (
        isinstance(value, numbers.Integral) and not isinstance(value, bool)
    )


def _check_fit_args(epochs, batch_size, patience, tol, checkpoint_every, keep, callbacks) -> None:
    checks = [
        (_is_int(epochs) and epochs >= 0, "epochs must be an int >= 0", epochs),
        (batch_size is None or (_is_int(batch_size) and batch_size >= 1),
         "batch_size must be an int >= 1, or None for the whole data set", batch_size),
        (_is_int(patience) and patience >= 1, "patience must be an int >= 1", patience),
        (tol is None or (isinstance(tol, numbers.Real) and tol >= 0), "tol must be >= 0", tol),
        (_is_int(checkpoint_every) and checkpoint_every >= 1,
         "checkpoint_every must be an int >= 1", checkpoint_every),
        (keep is None or (_is_int(keep) and keep >= 1),
         "checkpoint_keep must be an int >= 1, or None to keep every checkpoint", keep),
    ]  # fmt: skip
    for ok, what, value in checks:
        if not ok:
            raise DataError(f"{what}, got {value!r}")
    for callback in callbacks:
        if not callable(callback):
            raise DataError(f"callbacks must be callables f(model, epoch, logs), got {callback!r}")


def _refuse_one_row_batches(graph) -> None:
    """Batch norm over the rows alone learns nothing from batches of one row (each row is its
    own mean: the output is beta); PyTorch refuses them too."""
    states = over_rows_only(graph.forward)
    if states:
        raise DataError(
            f"batch_norm (running statistics {', '.join(states)}) normalizes over the batch: "
            "a batch of one row has no variance; train with batch_size >= 2 (and >= 2 rows)"
        )


def _rows(arrays) -> int:
    """Rows of the data; 1 when nothing is read from data (parameters and constants only)."""
    return len(next(iter(arrays.values()))) if arrays else 1


class Model(ModelFiles):
    """Parameters, optimizer state and compiled kernels of one graph.

    ``params`` and ``state`` are dicts of arrays that training updates in place.  An entry may be
    replaced by any float array of its shape (float64, a transposed view, nested lists): ``fit``,
    ``evaluate``, ``predict`` and ``load`` first put a C-contiguous copy in the model's dtype in
    its place.
    """

    def __init__(
        self, graph, optimizer, backend, dtype, predict=None, seed=0, flush=True, scale=None
    ):
        from codegen import get_backend

        _check_seed(seed)
        self.graph, self.optimizer, self.backend = graph, optimizer, backend
        self.seed = seed
        self.flush_denormals = bool(flush)
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise DataError(f"dtype must be float32 or float64, got {shown(dtype)}") from None
        if self.dtype not in (np.float32, np.float64):
            raise DataError(f"dtype must be float32 or float64, got {self.dtype}")
        graph.check_param_bytes(self.dtype, optimizer)  # before generating code or arrays
        if backend != "numpy":  # the numpy reference compiles nothing: it runs any size
            graph.check_node_budget()
        fwd = graph.forward
        guess, self.target = prediction_node(fwd, graph.loss_name)
        self.prediction = predict or guess
        fwd.node(self.prediction)  # a clear error for an unknown node name
        self.accuracy_kind = accuracy_kind(fwd, graph.loss_name, self.prediction)
        self._shapes = {n.name: n.shape[1:] for n in fwd.inputs}
        # the input labels may fill: a classifier's target (a regression's integers stay numbers),
        # unless the graph reads it as class ids itself (gn.sparse_softmax_cross_entropy)
        ids = {n.inputs[0] for n in fwd.nodes if n.op == "one_hot"}
        labelled = self.accuracy_kind is not None and self.target not in (None, *ids)
        self._labels = {self.target: self._shapes[self.target]} if labelled else {}
        self.preprocessing = Preprocessing(resolve_scale(scale, self._shapes, self.target))
        self.columns: dict | None = None  # input -> CSV columns, when a spec's [data] named them
        self.metrics: dict = {}  # name -> f(prediction, target, kind), beyond loss and accuracy
        self.stop_training = False  # a callback sets it to end fit after the current epoch
        self.trainer = get_backend(backend).Trainer(
            graph, optimizer, self.dtype, (graph.loss_name, self.prediction)
        )
        self.params = graph.init_params(seed, self.dtype)
        self.state = {
            state_key(s, p): np.zeros_like(self.params[p])
            for p in graph.param_names
            for s in optimizer.state
        }
        # every entry becomes a view of one flat array: one copy and one NaN/Inf check an epoch
        self._packing = Packing(self.params, self.state, self.dtype)
        self._expected = None  # (graph, optimizer, what _trainable_arrays checks) for them
        self.step, self.epoch = 0, 0  # optimizer steps ever taken; epochs of the current run
        self.history = History()
        self._rng = None
        self._best = None  # early stopping: the best parameters of the current run
        self._predictors: dict = {}
        self._snapshot: dict = {}  # parameters and state at the current epoch's start
        self._snapshot_step = -1

    # --- description ---------------------------------------------------------------------------

    def _optimizer_text(self) -> str:
        hyper = ", ".join(f"{k}={v:g}" for k, v in self.optimizer.hyper.items() if v or k == "lr")
        return f"{self.optimizer.name}({hyper})"

    def __repr__(self) -> str:
        count = sum(int(np.prod(v.shape)) for v in self.params.values())
        return (
            f"Model(loss={self.graph.loss_name!r}, params={len(self.params)} ({count:,} values), "
            f"optimizer={self._optimizer_text()}, backend={self.backend!r}, "
            f"dtype={self.dtype.name}, steps={self.step})"
        )

    def summary(self) -> str:
        """A table of the parameters (shape, values) with the inputs, prediction, loss, optimizer
        and back end: ``print(model.summary())``."""
        fwd = self.graph.forward
        states = set(self.graph.state_names)  # marked: assigned by training, not optimized
        rows = [
            (p + (" *" if p in states else ""), "x".join(map(str, v.shape)), int(np.prod(v.shape)))
            for p, v in self.params.items()
        ]
        width = max(len("parameter"), *(len(r[0]) for r in rows))
        lines = [f"{'parameter':<{width}}  {'shape':>12}  {'values':>10}"]
        lines += [f"{p:<{width}}  {s:>12}  {c:>10,}" for p, s, c in rows]
        lines.append(f"{'total':<{width}}  {'':>12}  {sum(r[2] for r in rows):>10,}")
        if states:
            lines.append("* a running statistic (batch norm): assigned by each step, not optimized")
        inputs = ", ".join(f"{n.name} {show(n.shape)}" for n in fwd.inputs)
        lines += [
            "",
            f"inputs: {inputs or '(none)'}",
            f"prediction: {self.prediction}; loss: {self.graph.loss_name}",
            f"optimizer: {self._optimizer_text()}; back end: {self.backend}, {self.dtype.name}",
            f"trained: {self.step} steps",
        ]
        if self.preprocessing.scale or self.preprocessing.classes:
            lines.append(f"preprocessing: {self.preprocessing}")
        last = {
            k: v[-1]
            for k, v in self.history.items()
            if k not in ("lr", "epochs") and isinstance(v, list) and v
        }
        if last:  # the last epoch's loss and metrics
            lines.append("last epoch: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
        return "\n".join(lines)

    def _as_mapping(self, data, targets):
        """``fit(X, Y)``: the arrays for a graph with one feature input and one target input."""
        names = [n.name for n in self.graph.forward.inputs]
        features = [n for n in names if n != self.target]
        how = f"model.fit({{{', '.join(f'{n!r}: ...' for n in names)}}}, epochs=...)"
        if self.target is None or len(features) != 1 or targets is None:
            raise DataError(f"fit takes a dict of arrays by input name: {how}")
        return {features[0]: data, self.target: targets}

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
        checkpoint_keep: int | None = None,
        resume: bool = False,
        callbacks: Sequence[Callable] = (),
        progress: bool = False,
        distributed: str | None = "auto",
        zero: bool = False,
        metrics=None,
    ) -> History:
        """Train until the run has ``epochs`` epochs; ``batch_size=None`` is batch gradient descent.

        Stops early when the training loss changes by less than ``tol`` for ``patience`` epochs
        ("converged"), or (``early_stopping``) when ``monitor`` (default ``val_loss`` with
        validation data, else ``loss``) has not improved for ``patience`` epochs
        ("early_stopping"; the best parameters are restored).  ``history["stopped"]`` says why.
        ``checkpoint_dir``: save every ``checkpoint_every`` epochs, at the end, and ``best.npz``
        whenever ``monitor`` improves; ``checkpoint_keep``: keep only the newest this many
        ``ckpt-*.npz`` files (an older one is deleted after a newer one is on disk).
        ``resume``: continue the run of the latest checkpoint in ``checkpoint_dir`` (or the
        model's own run).  ``callbacks``: ``f(model, epoch, logs)`` after each epoch.
        ``progress``: a tqdm bar on stderr.  ``metrics``: names (``"accuracy"``, ``"precision"``,
        ``"recall"``, ``"f1"`` (macro), ``"top3"``, ``"mae"``, ``"rmse"``, ``"r2"``) or functions
        ``f(prediction, target) -> float``, recorded each epoch on the training rows (and
        ``val_<name>`` on validation data); the model keeps them for ``evaluate``.

        ``distributed``: "auto" trains data-parallel over MPI when an MPI launcher (mpiexec,
        srun) started more than one rank, "mpi" always, None never (see
        :mod:`graphnn.train.parallel`): ``batch_size`` is then the global batch, every rank
        must pass the same data, and only rank 0 writes checkpoints and shows progress
        (callbacks run on every rank: ``gn.distributed.is_main()`` picks rank 0).
        ``zero``: with MPI, each rank updates only its share of the parameters (ZeRO-1).
        """
        comm = mpi.communicator(distributed)  # None: this process trains alone
        main = comm is None or comm.Get_rank() == 0
        with mpi.abort_on_error(comm):  # one rank's exception ends the job instead of hanging it
            with mpi.agreement(comm):  # an error here is raised on every rank alike
                # fit(X, Y, ...): Y arrived as epochs (type() first: the ABC check costs more)
                if type(data) is not dict and not isinstance(data, Mapping):
                    targets = None if isinstance(epochs, numbers.Real) else epochs
                    data, epochs = self._as_mapping(data, targets), 20
                _check_fit_args(
                    epochs, batch_size, patience, tol, checkpoint_every, checkpoint_keep, callbacks
                )
                _check_seed(seed, none_ok=True)
                if metrics is not None:
                    self.metrics = metric_table.resolve(metrics, *self._metric_reading())
                checkpoint_dir = _checkpoint_dir(checkpoint_dir, make=main)
                data = self.preprocessing.encode(data, self._labels, fit=True)
                arrays = check_data(self.graph.forward, data, self.dtype)
                train, val = self._split(arrays, validation_data, validation_split, seed)
                n = _rows(train)
                bs = n if batch_size is None else min(int(batch_size), n)
                if bs == 1:
                    _refuse_one_row_batches(self.graph)
                monitor = self._monitor(monitor, val)
                if comm is not None and self.backend != "cpu":
                    raise DataError(
                        f"data-parallel training runs on the cpu back end, not {self.backend!r} "
                        "(distributed=None trains every rank alone)"
                    )
                files = checkpoint_dir if main else None  # only rank 0 reads and writes files
                if resume:
                    self._resume(files, seed, early_stopping)
                else:
                    self._new_run(files, seed)
                if not self.preprocessing.fitted:  # the training rows only: none held out
                    self.preprocessing.fit_scaling(train)
                train, val = self._scaled(train), self._scaled(val)
                self._trainable_arrays()
            threads = mpi.blas_threads(comm) if comm is not None else None
            # the run's state from rank 0; the model's own arrays hold the values after the block
            dp = DataParallel(self, comm, train, bs, zero) if comm is not None else None
            with (
                dp or mpi.ALONE,
                flush_denormals(self.flush_denormals),
                mpi.limit_blas_threads(threads) if threads else mpi.ALONE,
                ProgressBar(progress and main, self.epoch, epochs) as bar,
                DeferredInterrupt(enabled=comm is None) as interrupt,  # MPI: ranks stop alike
            ):
                watch = Watch(tol, patience, early_stopping, monitor)
                reason = watch.replay(self.history) if resume else None
                self.history["stopped"] = reason
                self.stop_training = False
                saving = (checkpoint_dir if main else None, checkpoint_keep)
                while reason is None and self.epoch < epochs:
                    start = (self.step, self._rng.bit_generator.state)
                    perm = self._rng.permutation(n) if shuffle else np.arange(n)
                    try:
                        logs = self._train_epoch(train, val, perm, bs, checkpoint_dir, dp)
                    except BaseException as exc:
                        if not is_interrupt(exc) or dp is not None:
                            raise
                        self._roll_back(*start)  # a hard Ctrl-C: the epoch is undone
                        self._stopped("interrupted", saving)
                        raise KeyboardInterrupt from None
                    reason = watch.update(logs)
                    if watch.is_best and early_stopping:
                        self._best = {k: v.copy() for k, v in self.params.items()}
                    ended = reason or ("epochs" if self.epoch >= epochs else None)
                    self.history["stopped"] = ended
                    bar.update(logs)
                    # Before the checkpoint: what a callback records in the history is the
                    # epoch's, and a resumed run must find it there.
                    reason = self._callbacks(callbacks, logs, saving) or reason
                    ended = reason or ended
                    self.history["stopped"] = ended
                    if checkpoint_dir is not None and main:
                        every, keep = checkpoint_every, checkpoint_keep
                        self._checkpoint(checkpoint_dir, every, keep, watch.is_best, ended)
                    if interrupt.requested:  # Ctrl-C: this epoch is done and saved; stop here
                        self._stopped("interrupted", saving)
                        raise KeyboardInterrupt
        self.history["stopped"] = reason or "epochs"
        if early_stopping and self._best is not None:
            for name, value in self._best.items():
                self.params[name][...] = value
        return self.history

    def _metric_reading(self) -> tuple[str | None, tuple | None]:
        """(how the loss reads classes, the target's per-sample shape) for metrics.resolve."""
        if self.target is None:
            return None, None
        return self.accuracy_kind, self._shapes[self.target]

    def _callbacks(self, callbacks, logs, files) -> str | None:
        """Run the epoch's callbacks: "callback" when one returns False or sets
        ``model.stop_training``; one that raises ends the run saved, then re-raises."""
        stop = False
        for callback in callbacks:
            try:
                stop = callback(self, self.epoch, logs) is False or stop
            except BaseException as exc:
                self._stopped("interrupted" if is_interrupt(exc) else "error", files)
                raise
        return "callback" if stop or self.stop_training else None

    def _stopped(self, why: str, files) -> None:
        """End a run early with its last complete epoch: say why, and checkpoint it
        (``files``: the checkpoint directory, None on ranks that write none, and how many to
        keep)."""
        self.history["stopped"] = why
        directory, keep = files
        if directory is not None:
            self.save(Path(directory) / ckpt.checkpoint_name(self.step))
            if keep is not None:
                ckpt.prune_checkpoints(directory, keep)

    def _roll_back(self, step: int, rng_state) -> None:
        """Undo an epoch a hard interrupt cut short: parameters, state, steps and shuffle."""
        if self._snapshot_step == step:  # the epoch had started updating
            self._restore_saved(self._snapshot)
        self.step = step
        self._rng.bit_generator.state = rng_state

    def _trainable_arrays(self) -> None:
        """Every parameter and optimizer buffer as a writable C-contiguous array of the model's
        dtype and shape, replaced in its dict by such a copy if it is not one (before fit,
        evaluate, predict and load).

        The kernels update their arguments in place through flat views; a parameter the user
        set to a transposed view or a Fortran-ordered array would be trained through a copy and
        silently keep its values.  A wrong shape or a missing entry raises DataError.
        """
        dtype = self.dtype
        for in_state, name, shape in self._expected_arrays():
            arrays = self.state if in_state else self.params
            value = arrays.get(name)
            if isinstance(value, np.ndarray) and value.dtype == dtype and value.shape == shape:
                flags = value.flags  # (a new object per access: read once)
                if flags.c_contiguous and flags.writeable:
                    continue
            what, where = ("buffer", "state") if in_state else ("parameter", "params")
            if value is None:
                raise DataError(f"model.{where} has no {what} '{name}'")
            fresh = as_shaped(name, what, value, shape, self.dtype)
            arrays[name] = fresh if fresh.flags.writeable else fresh.copy()

    def _expected_arrays(self) -> list[tuple[bool, str, tuple]]:
        """(in ``state``, name, shape) of every array the kernels take; worked out once per
        graph and optimizer (the list took half of _trainable_arrays' 4.4 us a fit call)."""
        graph, optimizer = self.graph, self.optimizer
        known = self._expected
        if known is None or known[0] is not graph or known[1] is not optimizer:
            params = graph.forward.params
            expected = [(False, p.name, p.shape) for p in params]
            expected += [
                (True, state_key(s, p.name), p.shape)
                for p in params
                for s in optimizer.state
                if not p.attr("state")  # running statistics are assigned, never optimized
            ]
            self._expected = known = (graph, optimizer, expected)
        return known[2]

    def _monitor(self, monitor, val) -> str:
        known = ["loss", *self.metrics]
        if val:
            known += ["val_loss"] + (["val_accuracy"] if self.accuracy_kind else [])
            known += [f"val_{k}" for k in self.metrics]
        monitor = monitor or ("val_loss" if val else "loss")
        if monitor not in known:
            hint = "; val_ metrics need validation_data or validation_split" if not val else ""
            raise DataError(f"cannot monitor {monitor!r}: fit records {', '.join(known)}{hint}")
        return monitor

    def _split(self, arrays, validation_data, split, seed):
        if type(split) in (float, int) and split == 0 and validation_data is None:
            return arrays, None  # the usual call, answered before the checks of numbers' ABCs
        if not isinstance(split, numbers.Real) or not 0 <= split < 1:
            raise DataError(f"validation_split must be in [0, 1), got {split!r}")
        if validation_data is not None:
            if split:
                raise DataError("pass validation_data or validation_split, not both")
            validation_data = self.preprocessing.encode(validation_data, self._labels)
            return arrays, check_data(self.graph.forward, validation_data, self.dtype)
        if not split:
            return arrays, None
        n = _rows(arrays)
        cut = n - max(1, int(round(n * split)))
        if cut < 1:
            raise DataError(f"validation_split={split} leaves no training rows of {n}")
        order = np.random.default_rng(seed).permutation(n)
        pick = lambda idx: {k: np.ascontiguousarray(v[idx]) for k, v in arrays.items()}  # noqa: E731
        return pick(order[:cut]), pick(order[cut:])

    def _new_run(self, checkpoint_dir, seed) -> None:
        if checkpoint_dir is not None:
            old = ckpt.latest_checkpoint(checkpoint_dir)
            if old is not None:
                raise RunExistsError(
                    f"checkpoint directory {checkpoint_dir} already holds a run (latest: "
                    f"{old.name}); pass resume=True to continue it, or use an empty directory"
                )
        self.epoch, self.history, self._best = 0, History(), None
        self._rng = seeded(self._rng, seed)  # default_rng(seed)'s stream, reset if seen before

    def _resume(self, checkpoint_dir, seed, early_stopping) -> None:
        latest = newest_that_verifies(checkpoint_dir) if checkpoint_dir is not None else None
        if latest is not None:
            self._restore(*latest)
            self._best = None
            best = Path(checkpoint_dir) / BEST
            if early_stopping and best.exists():
                arrays, meta = ckpt.load_checkpoint(best)
                if int(meta.get("epoch", math.inf)) <= self.epoch:  # not from a lost epoch
                    self._best = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}
        if self._rng is None:  # nothing to resume: a new run
            self._rng = np.random.default_rng(seed)

    def _train_epoch(self, train, val, perm, bs, checkpoint_dir, dp=None) -> dict[str, float]:
        logs = self._run_epoch(train, perm, bs, checkpoint_dir, dp)
        if self.metrics:  # on the epoch's final parameters, as val_ metrics are
            found = dp.evaluate(train) if dp else self._metrics(train)  # MPI: accuracy only
            logs.update({k: v for k, v in found.items() if k != "loss"})
        if val:
            metrics = dp.evaluate(val) if dp else self._metrics(val)
            logs.update({f"val_{k}": v for k, v in metrics.items()})
        self.history.record(**logs)
        self.epoch += 1
        return logs

    def _run_epoch(self, train, perm, bs, checkpoint_dir, dp=None) -> dict[str, float]:
        steps = math.ceil(len(perm) / bs)
        schedule = self.optimizer.schedule
        lr = self.optimizer.hyper["lr"]
        # without a schedule: lr * ones(steps), the same float64 values, in one array not three
        lrs = lr * schedule.multipliers(self.step, steps) if schedule else np.full(steps, lr, float)
        hyper = dict(self.optimizer.hyper)
        if self.optimizer.clip_norm is not None:
            hyper["clip_norm"] = self.optimizer.clip_norm
        before = self._saved(self._snapshot)
        self._snapshot_step = self.step  # which epoch's start it holds (see _roll_back)
        perm = perm.astype(np.int64, copy=False)
        if dp is not None:
            total, done, status = dp.epoch(perm, lrs, self.step)
        else:
            args = (self.params, self.state, train, perm, bs, hyper, lrs, self.step)
            total, done, status = self.trainer.epoch(*args)
        done = int(done)
        if broken_names(self):  # an update overflowed: the loss and gradients never showed it
            # (with MPI every rank holds the same values and raises this alike)
            args = (before, train, perm, bs, hyper, lrs, checkpoint_dir, dp)
            raise mpi.on_every_rank(self._rewind(*args))
        self.step += done
        if status != 0 and dp is not None:
            step, epoch = self.step + 1, self.epoch + 1
            raise dp.diagnose(int(status), step, epoch, checkpoint_dir, lrs[done])
        if status != 0:
            batch = {k: v[perm[done * bs : (done + 1) * bs]] for k, v in train.items()}
            step, epoch = self.step + 1, self.epoch + 1
            raise diagnose(self, batch, int(status), step, epoch, checkpoint_dir, lrs[done])
        return {"loss": total / len(perm), "lr": float(lrs[-1])}

    def packed_values(self) -> np.ndarray | None:
        """Every parameter and optimizer value in one flat array (zeros between them), while
        ``params`` and ``state`` hold the views of it that the model started with; else None."""
        packing = self._packing
        return packing.flat if packing.intact(self.params, self.state) else None

    def _saved(self, buffers: dict) -> dict:
        """Copies of the parameters and optimizer state in ``buffers``, reused from call to call
        (copying into them costs no allocation): one copy of the packed values while the model
        holds them (2 us for digits, 11 us array by array), else one copy per array."""
        flat = self.packed_values()
        if flat is not None:
            kept = buffers.get(PACKED)
            if kept is None or kept.shape != flat.shape or len(buffers) != 1:
                buffers.clear()
                kept = buffers[PACKED] = np.empty_like(flat)
            np.copyto(kept, flat)
            return buffers
        buffers.pop(PACKED, None)
        arrays = {f"param/{k}": v for k, v in self.params.items()}
        arrays |= {f"state/{k}": v for k, v in self.state.items()}
        for key, value in arrays.items():
            if key not in buffers or buffers[key].shape != value.shape:
                buffers[key] = np.empty_like(value)
            np.copyto(buffers[key], value)
        return buffers

    def _restore_saved(self, saved: dict, dp=None) -> None:
        if dp is not None:  # with shared memory: no rank still reads what is overwritten
            dp.x.fence()
        for key, value in saved.items():
            if key == PACKED:
                self._packing.restore(value, self.params, self.state)
                continue
            kind, name = key.split("/", 1)
            np.copyto((self.params if kind == "param" else self.state)[name], value)
        if dp is not None:  # and none reads before every rank has written it
            dp.x.fence()

    def _rewind(self, before, train, perm, bs, hyper, lrs, checkpoint_dir, dp=None) -> Exception:
        """The error for an update that overflowed, with the model as it was before that step.

        The epoch's steps ran in place, so its start is restored and its steps re-run one at a
        time (the same kernels on the same batches give the same values) until the one whose
        update makes a parameter or optimizer buffer NaN/Inf; that step is undone.
        """
        bad, start = broken_names(self), self.step
        self._restore_saved(before, dp)
        good: dict = {}
        for k in range(math.ceil(len(perm) / bs)):
            self._saved(good)
            idx = perm[k * bs : (k + 1) * bs].astype(np.int64, copy=False)
            if dp is not None:  # the ranks' same steps again, together
                _, _, status = dp.epoch(idx, lrs[k : k + 1], self.step)
            else:
                _, _, status = self.trainer.epoch(
                    self.params, self.state, train, idx, bs, hyper, lrs[k : k + 1], self.step
                )
            if status != 0 or broken_names(self):
                bad = broken_names(self) or bad
                self._restore_saved(good, dp)
                break
            self.step += 1
        else:  # the re-run did not break (it cannot, the steps being deterministic): no step
            self._restore_saved(before, dp)  # is known, so the whole epoch is undone
            self.step, k = start, 0
        return update_overflow(self, bad, self.step + 1, self.epoch + 1, checkpoint_dir, lrs[k])

    # --- evaluation ----------------------------------------------------------------------------

    def _forward(self, arrays) -> dict[str, np.ndarray]:
        n = _rows(arrays)
        parts = [
            self.trainer.forward(self.params, {k: v[s : s + EVAL_CHUNK] for k, v in arrays.items()})
            for s in range(0, n, EVAL_CHUNK)
        ]
        sizes = [min(EVAL_CHUNK, n - s) for s in range(0, n, EVAL_CHUNK)]
        loss = sum(float(p[self.graph.loss_name]) * k for p, k in zip(parts, sizes, strict=True))
        pred = np.concatenate([p[self.prediction] for p in parts])
        return {"loss": loss / n, "prediction": pred}

    def evaluate(self, data: Mapping) -> dict[str, float]:
        """Mean loss (and accuracy, for classifiers) on ``data``."""
        data = self.preprocessing.encode(data, self._labels) if isinstance(data, Mapping) else data
        arrays = self._scaled(check_data(self.graph.forward, data, self.dtype))
        self._trainable_arrays()
        return self._metrics(arrays)

    def _metrics(self, arrays) -> dict[str, float]:
        """The metrics of checked, scaled ``arrays``."""
        out = self._forward(arrays)
        metrics = {"loss": out["loss"]}
        if self.accuracy_kind and self.target:
            kind = self.accuracy_kind
            metrics["accuracy"] = accuracy(out["prediction"], arrays[self.target], kind)
        for name, fn in self.metrics.items():
            if self.target is None:
                raise DataError(f"metric {name!r}: the model has no target input to compare with")
            metrics[name] = fn(out["prediction"], arrays[self.target], self.accuracy_kind)
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
        self._trainable_arrays()
        needed = trainer.forward_inputs()
        arrays = check_data(self.graph.forward, data, self.dtype, required=needed)
        arrays = self._scaled(arrays)
        if not needed:  # the node reads no data: one value, with no batch dimension
            return np.asarray(trainer.forward(self.params, {})[node])
        chunks = [
            trainer.forward(self.params, {k: v[s : s + EVAL_CHUNK] for k, v in arrays.items()})
            for s in range(0, _rows(arrays), EVAL_CHUNK)
        ]
        return np.concatenate([c[node] for c in chunks])

    def predict_labels(self, data: Mapping) -> np.ndarray:
        """The class of each row, as the labels ``fit`` was given (strings, ints) or as class
        indices; for classifiers (softmax or sigmoid/BCE outputs) only."""
        if not (self.accuracy_kind and self.target):
            raise DataError(
                f"predict_labels: the prediction '{self.prediction}' is no classifier's"
            )
        pred = self.predict(data)
        return self.preprocessing.labels(self.target, pred, self.accuracy_kind)

    def _scaled(self, arrays):
        """``arrays`` (checked data, or None) with the model's input scaling applied."""
        if arrays is None or not self.preprocessing.scale:
            return arrays
        if not self.preprocessing.fitted:
            raise DataError(
                "the model scales its inputs but has not fitted the scaling yet: fit it first "
                "(or load a trained model)"
            )
        return self.preprocessing.transform(arrays, self.dtype)

    def export(self, path, backend="cpu", epochs=None, batch_size=None, blas=True) -> Path:
        """Write a standalone module of this model (``g.export``'s kernels and optimizer) whose
        ``predict`` takes raw rows: the scaling and classes are written into it, with
        ``load_params(model_file)`` to read trained parameters.  See
        :mod:`graphnn.train.export_model`."""
        from graphnn.train.export_model import export_model

        return export_model(self, path, backend, epochs, batch_size, blas)
