"""Data-parallel training over MPI: each rank steps on its share of every global batch, and one
in-place all-reduce of one flat buffer (every gradient, then the loss) per step makes the step the
global batch's.

The global batch is ``batch_size`` rows of one permutation that every rank draws from the same
seed; rank r takes rows r, r+N, ... of it.  The generated kernels return the mean loss and
gradients over the rows they are given, so a rank weights its share by its rows over the global
batch's: the sum over ranks is the global batch's mean, uneven splits included.  (When the split
is even, the 1/N goes into the update's gradient scale instead, which saves a pass over the
buffer.)  The gradient buffers the kernel writes are views of the flat buffer: no copy.

Every branch is decided on reduced values, so every rank takes the same one: the NaN/Inf guard,
clipping, the epoch's loss, the validation metrics.  The update is the generated ``apply_update``
that the fused step calls, on one flat array: with one rank the steps are bitwise those of
``fit`` without MPI.  ``zero=True`` shards the optimizer (ZeRO-1): each rank reduces and updates
its 1/N of the parameters and optimizer state (:mod:`graphnn.train.exchange` says how).

This module is the engine of ``Model.fit(distributed=...)``; ``graphnn.train.distributed`` holds
the MPI plumbing.
"""

from __future__ import annotations

import math
import time
import zlib

import numpy as np

from graphnn.errors import DataError, DistributedError, NonFiniteError
from graphnn.ir.dropout import has_dropout
from graphnn.optim.optimizers import state_key
from graphnn.train import distributed as mpi
from graphnn.train.exchange import block, exchange
from graphnn.train.history import History
from graphnn.train.metrics import accuracy
from graphnn.train.nonfinite import diagnose


def _rows(arrays) -> int:
    return len(next(iter(arrays.values()))) if arrays else 1


def loss_kind(loss_of, n: int, dtype) -> str:
    """'mean' if the loss is a mean over rows (plus terms without data), 'sum' if it is a sum
    over rows, else 'coupled'; ``loss_of(rows)`` is the loss on those rows of the data.

    It says how a rank's share must be weighted.  A coupled loss (say, the square of a batch
    mean) is not made of its rows' losses, and splitting its batches would silently train
    another model.  Two rows a, b tell: L(a, b) is (L(a) + L(b)) / 2 for a mean, their sum for a
    sum (two equal rows with a zero loss cannot tell, and pass as a mean).

    >>> loss_kind(lambda rows: sum(r + 1.0 for r in rows) / len(rows), 5, np.float64)
    'mean'
    """
    one, two, both = loss_of([0]), loss_of([n - 1]), loss_of([0, n - 1])
    tol = (1e-3 if np.dtype(dtype) == np.float32 else 1e-9) * max(abs(one), abs(two), 1e-30)
    if abs(both - (one + two) / 2) <= tol:
        return "mean"
    if abs(both - (one + two)) <= tol:
        return "sum"
    return "coupled"


class DataParallel:
    """Flat buffers, kernels and collectives of one distributed ``fit`` call.

    While it is open, ``model.params`` and ``model.state`` entries are views of flat arrays
    (one for the parameters, one per optimizer buffer) laid out like the gradient buffer;
    :meth:`close` copies the values back into the model's own arrays.
    """

    def __init__(self, model, comm, train, batch_size: int, zero: bool = False):
        self.model, self.comm = model, comm
        self.MPI = mpi._mpi()
        self.ranks, self.rank = comm.Get_size(), comm.Get_rank()
        self.dtype, self.train, self.batch_size = model.dtype, train, batch_size
        if model.graph.state_names:  # each rank's batch statistics differ: no agreed update
            raise DistributedError(
                "data-parallel training does not support batch_norm yet (running statistics "
                f"{', '.join(model.graph.state_names)})"
            )
        # The stepwise module (shared step kernels, codegen.cpu.stepwise): a rank starts without
        # compiling the fused module, and computes the same bits; per step it adds a Numba call
        # per block, microseconds against a distributed step's collectives.
        module = model.trainer.stepwise
        # dropout's masks depend on the epoch and each row's sample id only (graphnn.ir.dropout):
        # a rank draws for its rows the masks one process draws for them
        self.dropout = has_dropout(model.graph.training)
        self.draw = 0  # the epoch's first step, set by epoch()
        self.module = module
        graph = model.graph
        self.inputs = [n.name for n in graph.forward.inputs]
        self.names = list(graph.param_names)
        self.shapes = [model.params[p].shape for p in self.names]
        sizes = [int(np.prod(s)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.total = int(self.offsets[-1])
        buffers = model.optimizer.state
        spans = list(zip(self.offsets[:-1], self.offsets[1:], strict=True))
        self.x = exchange(comm, zero, self.dtype, self.total, len(buffers), spans)
        self.P, self.S, self.G = self.x.P, self.x.S, self.x.G  # G: every gradient, then the loss
        self._originals = []  # (dict, key, the model's own array) for close()
        self._flatten(model.params, self.names, self.P)
        for s, flat in zip(buffers, self.S, strict=True):
            self._flatten(model.state, [state_key(s, p) for p in self.names], flat)
        self.grads = [self.G[a:b].reshape(s) for a, b, s in self._spans()]
        rows = -(-batch_size // self.ranks)  # the most rows a rank takes from one global batch
        self.batch = {i: np.empty((rows, *train[i].shape[1:]), self.dtype) for i in self.inputs}
        arrays = [*self.batch.values(), *(model.params[p] for p in self.names)]
        self.ws = module.workspace(rows, *arrays)  # the sizes of its buffers are theirs
        self.copied = list(range(len(self.names)))  # gradients not written into G's views
        self.local_rows = np.arange(0)
        self.kind = "mean"
        opt = model.optimizer
        self.other_hyper = [self.dtype.type(opt.hyper[h]) for h in opt.hyper if h != "lr"]
        clip = opt.clip_norm
        self.clip = None if clip is None else float(self.dtype.type(clip))
        # seconds of the steps so far: the rows' loss and gradients (compute), the collectives
        # and checks on reduced values (communication), apply_update (update)
        self.seconds = {"compute": 0.0, "communication": 0.0, "update": 0.0}
        try:
            self._compile_in_rank_order()
            self._check_ranks_agree()
            self._share_run_state()
        except BaseException as exc:
            self.__exit__(type(exc), exc, None)
            raise

    # --- setup ---------------------------------------------------------------------------------

    def _spans(self):
        return zip(self.offsets[:-1], self.offsets[1:], self.shapes, strict=True)

    def _flatten(self, arrays: dict, keys: list[str], flat: np.ndarray) -> None:
        """``arrays[k]`` for ``keys`` into ``flat`` (unless another rank's copy is shared), and
        the dict entries become views of it."""
        own = self.x.holds_own_copy()
        for key, (a, b, shape) in zip(keys, self._spans(), strict=True):
            self._originals.append((arrays, key, arrays[key]))
            if own:
                flat[a:b] = arrays[key].reshape(-1)
            arrays[key] = flat[a:b].reshape(shape)

    def close(self, clean: bool = True) -> None:
        """The trained values back in the model's own arrays (``fit`` hands back the arrays it
        was given, updated in place), and the flat buffers released (collective if ``clean``:
        no rank is aborting the job)."""
        for arrays, key, own in self._originals:
            own[...] = arrays[key]
            arrays[key] = own
        self._originals = []
        self.x.close(clean)

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        self.close(clean=exc is None or getattr(exc, "graphnn_every_rank", False))

    def _compile_in_rank_order(self) -> None:
        """Rank 0 compiles the kernels (into the shared cache) while the others wait; then they
        load them from the cache instead of compiling the same code at the same time."""
        if self.rank == 0:
            self._warm_up()
        self.comm.Barrier()
        if self.rank != 0:
            self._warm_up()

    def _warm_up(self) -> None:
        """Call every kernel the steps call, with the steps' argument types, on scratch or
        read-only data; place the gradients in G; find what kind of mean the loss is."""
        first = np.arange(min(self.batch_size, _rows(self.train)))[self.rank :: self.ranks]
        if len(first):
            self._gradients(first)  # the kernel returns its workspace buffers: make them views
            self._place_gradients()
        one = [np.zeros(1, self.dtype) for _ in range(2 + len(self.S))]
        scalar = self.dtype.type(1.0)
        self.module.apply_update(*one, scalar, *self.other_hyper, scalar, scalar)
        self.module.all_finite(self.G)
        self.module.sum_squares(self.G[:-1])
        self.kind = self._loss_kind()

    def _place_gradients(self) -> None:
        """Make the workspace buffers that the kernel returns gradients in views of G."""
        args = self._kernel_args(len(self.local_rows))
        _, *grads = self.module.loss_and_grads(*args)
        ws, where = list(self.ws), {b.ctypes.data: k for k, b in enumerate(self.ws)}
        for j, g in enumerate(grads):
            k = where.pop(g.ctypes.data, None)
            if k is not None and ws[k].shape == g.shape:
                ws[k] = self.grads[j]
        self.ws = tuple(ws)
        _, *grads = self.module.loss_and_grads(*args)  # check: which ones land in G now
        views = [v.ctypes.data for v in self.grads]
        self.copied = [j for j, g in enumerate(grads) if g.ctypes.data != views[j]]

    def _loss_kind(self) -> str:
        n, trainer = _rows(self.train), self.model.trainer
        if n < 2 or not self.inputs:
            return "mean"

        def loss_of(rows):
            data = {k: np.ascontiguousarray(self.train[k][rows]) for k in self.inputs}
            return float(trainer.forward(self.model.params, data)[self.model.graph.loss_name])

        return loss_kind(loss_of, n, self.dtype)

    def _check_ranks_agree(self) -> None:
        """Collective: the ranks compiled the same kernels and hold data of the same shapes."""
        mine = {
            "kernels": self.module.__name__,
            "data": {k: v.shape for k, v in self.train.items()},
            "batch_size": self.batch_size,
            "loss": self.kind,
        }
        every = self.comm.allgather(mine)
        problems = []
        for key, what in (("kernels", "kernels (graph, optimizer or dtype)"), ("data", "data")):
            if any(e[key] != every[0][key] for e in every):
                shown = "; ".join(f"rank {r}: {e[key]}" for r, e in enumerate(every))
                problems.append(f"the ranks hold different {what} ({shown})")
        if problems:
            raise mpi.on_every_rank(
                DistributedError(
                    "data-parallel training needs the same model and data on every rank: "
                    + "; ".join(problems)
                )
            )
        if self.batch_size < self.ranks:
            raise mpi.on_every_rank(
                DataError(
                    f"the global batch of {self.batch_size} rows is smaller than the "
                    f"{self.ranks} ranks: every rank needs rows of every batch (batch_size >= "
                    f"{self.ranks}, or fewer ranks)"
                )
            )
        if every[0]["loss"] == "coupled":
            raise mpi.on_every_rank(
                DataError(
                    f"the loss '{self.model.graph.loss_name}' is neither a mean nor a sum over "
                    "rows, so a batch's loss is not made of its rows' losses and cannot be "
                    "split across ranks: train it with distributed=None"
                )
            )
        self.kind = every[0]["loss"]

    def _share_run_state(self) -> None:
        """Collective: rank 0's parameters, optimizer state, counters, history and RNG (a new
        run's, or the checkpoint's it resumed from) on every rank."""
        model = self.model
        self.x.share()
        rng = model._rng.bit_generator.state if model._rng is not None else None
        run = (model.epoch, model.step, dict(model.history), rng, model._best)
        run = self.comm.bcast(run if self.rank == 0 else None, root=0)
        if self.rank != 0:
            model.epoch, model.step, history, rng, model._best = run
            model.history = History(history)
            model._rng = None if rng is None else np.random.default_rng()
            if rng is not None:
                model._rng.bit_generator.state = rng

    # --- steps ---------------------------------------------------------------------------------

    def _kernel_args(self, n: int) -> list:
        data = [self.batch[i][:n] for i in self.inputs]
        draw = [self.draw, self.local_rows[:n]] if self.dropout else []
        return [*data, *(self.model.params[p] for p in self.names), *draw, self.ws]

    def _gradients(self, rows) -> None:
        """This rank's rows ``rows``: their loss and gradients into G, unweighted."""
        self.local_rows = rows = np.ascontiguousarray(rows, dtype=np.int64)  # dropout's ids too
        n = len(rows)
        if n == 0:  # the last batch of an epoch may have fewer rows than there are ranks
            self.G[:] = 0
            return
        for i in self.inputs:
            np.take(self.train[i], rows, axis=0, out=self.batch[i][:n])
        loss, *grads = self.module.loss_and_grads(*self._kernel_args(n))
        for j in self.copied:
            self.grads[j][...] = grads[j]
        self.G[-1] = loss

    def _weigh(self, n_local: int, n_batch: int) -> float:
        """Weight this rank's G for a sum over ranks; returns the factor still to apply to it."""
        if self.kind == "sum":
            return 1.0
        if n_batch % self.ranks == 0:
            return 1.0 / self.ranks  # every rank has n_batch / ranks rows
        if n_local:
            self.G *= self.dtype.type(n_local / n_batch)
        return 1.0

    def gradients(self, rows_of_batch) -> tuple[float, dict[str, np.ndarray]]:
        """Collective: the global batch's loss and gradients (rows ``rows_of_batch`` of the
        training data), reduced over the ranks; for tests and inspection."""
        rows_of_batch = np.asarray(rows_of_batch, np.int64)
        self._gradients(rows_of_batch[self.rank :: self.ranks])
        unit = self._weigh(len(self.local_rows), len(rows_of_batch))
        self.comm.Allreduce(self.MPI.IN_PLACE, self.G, op=self.MPI.SUM)
        grads = {p: g * self.dtype.type(unit) for p, g in zip(self.names, self.grads, strict=True)}
        return float(self.G[-1] * self.dtype.type(unit)), grads

    def _step(self, rows_of_batch, lr, t) -> tuple[int, float]:
        """One optimizer step on a global batch; (status as train_step's, reduced loss)."""
        started = time.perf_counter()
        self._gradients(rows_of_batch[self.rank :: self.ranks])
        unit = self._weigh(len(self.local_rows), len(rows_of_batch))
        computed = time.perf_counter()
        status, loss, sumsq = self.x.reduce(self.module, self.clip is not None)
        loss *= unit
        reduced = time.perf_counter()
        self.seconds["compute"] += computed - started
        self.seconds["communication"] += reduced - computed
        if status != 0:
            return status, loss
        gscale = unit
        if self.clip is not None:
            norm = math.sqrt(sumsq) * unit
            gscale = unit * min(1.0, self.clip / (norm + 1e-6))
        gscale = self.dtype.type(gscale)
        hyper = [lr, *self.other_hyper, self.dtype.type(t), gscale]
        self.module.apply_update(*self.x.part(), *hyper)
        updated = time.perf_counter()
        self.x.gather_parameters()
        self.seconds["update"] += updated - reduced
        self.seconds["communication"] += time.perf_counter() - updated
        return 0, loss

    def epoch(self, perm, lrs, t0: int) -> tuple[float, int, int]:
        """Collective: the epoch's steps; (loss sum, steps done, status) as the fused epoch."""
        bs, total, done, status = self.batch_size, 0.0, 0, 0
        lrs = np.asarray(lrs, dtype=self.dtype)
        self.draw = t0  # dropout: this epoch's masks
        for start in range(0, len(perm), bs):
            rows = perm[start : start + bs]
            status, loss = self._step(rows, lrs[done], t0 + done + 1)
            if status != 0:
                break
            total += loss * len(rows)
            done += 1
        self.x.gather_state()  # every rank's optimizer state whole, for checkpoints and checks
        self._check_same_parameters()
        return total, done, status

    def _check_same_parameters(self) -> None:
        """Collective: a CRC-32 of the parameters, compared across ranks."""
        hashes = self.comm.allgather(zlib.crc32(self.P))
        if len(set(hashes)) > 1:
            shown = ", ".join(f"rank {r}: {h:08x}" for r, h in enumerate(hashes))
            raise mpi.on_every_rank(
                DistributedError(
                    f"after epoch {self.model.epoch + 1} the ranks' parameters differ "
                    f"(CRC-32 {shown}): the ranks no longer train one model (something changed "
                    "parameters on one rank, or the MPI reduction is not the same on every rank)"
                )
            )

    # --- results shared by every rank ----------------------------------------------------------

    def diagnose(self, status: int, step: int, epoch: int, checkpoint_dir, lr):
        """Collective: the NonFiniteError of a failed step, the same on every rank (diagnosed on
        the first rank whose rows show where the NaN/Inf starts)."""
        n = len(self.local_rows)
        mine = None
        if n:
            batch = {i: self.batch[i][:n] for i in self.inputs}
            err = diagnose(self.model, batch, status, step, epoch, checkpoint_dir, lr)
            mine = (str(err), err.step, err.param, err.node)
        every = self.comm.allgather(mine)
        found = [(r, e) for r, e in enumerate(every) if e is not None]
        rank, (message, step, param, node) = next(
            ((r, e) for r, e in found if e[3] is not None), found[0]
        )
        if self.ranks > 1:
            message += f" (diagnosed on rank {rank}'s rows of the batch)"
        return mpi.on_every_rank(NonFiniteError(message, step=step, param=param, node=node))

    def evaluate(self, data) -> dict[str, float]:
        """Collective: mean loss (and accuracy) on ``data``, each rank evaluating a block."""
        model, n = self.model, _rows(data)
        lo, hi = block(n, self.ranks, self.rank)
        sums = np.zeros(3)
        if hi > lo:
            part = {k: v[lo:hi] for k, v in data.items()}
            out = model._forward(part)
            sums[0] = out["loss"] * (hi - lo)
            if model.accuracy_kind and model.target:
                hit = accuracy(out["prediction"], part[model.target], model.accuracy_kind)
                sums[1] = round(hit * (hi - lo))
        self.comm.Allreduce(self.MPI.IN_PLACE, sums, op=self.MPI.SUM)
        metrics = {"loss": float(sums[0] / n)}
        if model.accuracy_kind and model.target:
            metrics["accuracy"] = float(sums[1] / n)
        return metrics
