"""How the ranks of a data-parallel step combine their gradients and share the parameters.

Three ways behind one interface; :func:`exchange` picks one for ``fit(zero=...)``:

- :class:`AllReduce` (``zero=False``, DDP): one in-place ``Allreduce`` of every gradient and the
  loss; every rank then updates every parameter.
- :class:`SharedMemory` (``zero=True``, every rank on one node): the parameters, the optimizer
  state and every rank's gradient buffer live in one MPI shared-memory window.  After a barrier
  each rank sums its 1/N of all ranks' gradients straight from their buffers and updates that
  part of the one shared copy of the parameters: no message carries gradients, and no
  all-gather is needed.
- :class:`ReduceScatter` (``zero=True`` across nodes, ZeRO-1): a reduce-scatter of the
  gradients, each rank updates its 1/N of the parameters and optimizer state, then an
  all-gather of the parameters (of the optimizer state once per epoch, for checkpoints).

The sharded ones decide the NaN/Inf guard and clipping on every rank alike from a few numbers per
rank (its part's finite flags and sum of squares); the update is then the generated
``apply_update`` on the rank's part, whose formulas are elementwise.
"""

from __future__ import annotations

import math

import numpy as np

from graphnn.train import distributed as mpi


def block(n: int, parts: int, k: int) -> tuple[int, int]:
    """[lo, hi) of the k-th of ``parts`` nearly equal contiguous blocks of ``range(n)``."""
    return n * k // parts, n * (k + 1) // parts


def exchange(comm, zero: bool, dtype, total: int, n_state: int, spans):
    """The exchange for ``fit(zero=zero)`` over ``comm`` (``spans``: each parameter's [a, b) in
    the flat arrays of ``total`` numbers; ``n_state`` optimizer buffers per parameter)."""
    if not zero:
        return AllReduce(comm, dtype, total, n_state, spans)
    MPI = mpi._mpi()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    if node.Get_size() == comm.Get_size():
        return SharedMemory(comm, node, dtype, total, n_state, spans)
    node.Free()
    return ReduceScatter(comm, dtype, total, n_state, spans)


class AllReduce:
    """Every rank holds and updates every parameter; ``G`` is reduced whole in place.

    ``P``, ``S`` (one per optimizer buffer) and ``G`` (every gradient, then the loss) are flat
    arrays laid out alike; ``lo:hi`` is the part of them this rank updates.
    """

    def __init__(self, comm, dtype, total, n_state, spans):
        self.MPI, self.comm, self.dtype = mpi._mpi(), comm, np.dtype(dtype)
        self.spans, self.total = list(spans), total
        self.P, self.S, self.G = self._arrays(n_state)
        self.lo, self.hi = 0, total

    def _arrays(self, n_state):
        total, dtype = self.total, self.dtype
        states = [np.empty(total, dtype) for _ in range(n_state)]
        return np.empty(total, dtype), states, np.zeros(total + 1, dtype)

    def holds_own_copy(self) -> bool:
        """True when this rank's initial values go into P and S (rank 0's are then shared)."""
        return True

    def share(self) -> None:
        """Collective: rank 0's parameters and optimizer state on every rank."""
        for flat in [self.P, *self.S]:
            self.comm.Bcast(flat, root=0)

    def reduce(self, module, clip: bool) -> tuple[int, float, float]:
        """Collective: (status as train_step's, the loss sum, the gradients' sum of squares)."""
        self.comm.Allreduce(self.MPI.IN_PLACE, self.G, op=self.MPI.SUM)
        loss = float(self.G[-1])
        if not module.all_finite(self.G):
            return _status(loss, _bad(module, self.G[:-1], self.spans, 0)), loss, 0.0
        return 0, loss, module.sum_squares(self.G[:-1]) if clip else 0.0

    def part(self) -> list[np.ndarray]:
        """The arrays of this rank's update, in apply_update's order (P, G, state...)."""
        return [self.P, self.G[:-1], *self.S]

    def gather_parameters(self) -> None:
        """Collective: after the update, every rank's parameters whole."""

    def gather_state(self) -> None:
        """Collective: every rank's optimizer state whole (for checkpoints)."""

    def fence(self) -> None:
        """Collective where the ranks share memory: every rank's loads and stores of the
        parameters and optimizer state so far are done.  Around a write outside the steps."""

    def close(self, clean: bool) -> None:
        """Collective when ``clean`` (no rank is aborting): release the buffers."""


def _bad(module, flat, spans, lo: int) -> list[int]:
    """Indexes of the parameters whose part of ``flat`` (starting at ``lo``) is not finite."""
    bad = []
    for j, (a, b) in enumerate(spans):
        a, b = max(a - lo, 0), min(b - lo, len(flat))
        if a < b and not module.all_finite(flat[a:b]):
            bad.append(j)
    return bad


def _status(loss: float, bad) -> int:
    """train_step's status: -1 the loss is not finite, k > 0 parameter k's gradient, 0 fine."""
    if not math.isfinite(loss):
        return -1
    return int(bad[0]) + 1 if len(bad) else 0


class ReduceScatter(AllReduce):
    """ZeRO-1 over MPI: each rank reduces and updates its 1/N; parameters are all-gathered."""

    def __init__(self, comm, dtype, total, n_state, spans):
        super().__init__(comm, dtype, total, n_state, spans)
        parts = [block(total, comm.Get_size(), k) for k in range(comm.Get_size())]
        self.counts = [hi - lo for lo, hi in parts]
        self.displs = [lo for lo, _ in parts]
        self.lo, self.hi = parts[comm.Get_rank()]
        self.reduced = np.zeros(self.hi - self.lo, self.dtype)

    def reduce(self, module, clip):
        self.comm.Reduce_scatter(self.G[:-1], self.reduced, self.counts, op=self.MPI.SUM)
        return self._agree(module, clip, self.G[-1], self.reduced)

    def _agree(self, module, clip, loss, reduced):
        """Collective: the loss summed, and the guard and norm decided from every rank's part."""
        small = np.zeros(2 + len(self.spans))
        small[0] = loss
        if not module.all_finite(reduced):
            small[2 + np.array(_bad(module, reduced, self.spans, self.lo), int)] = 1.0
        elif clip:
            small[1] = module.sum_squares(reduced)
        self.comm.Allreduce(self.MPI.IN_PLACE, small, op=self.MPI.SUM)
        return _status(float(small[0]), np.flatnonzero(small[2:])), float(small[0]), small[1]

    def part(self):
        lo, hi = self.lo, self.hi
        return [self.P[lo:hi], self.reduced, *(s[lo:hi] for s in self.S)]

    def _parts(self, flat):
        kind = self.MPI.FLOAT if self.dtype == np.float32 else self.MPI.DOUBLE
        return [flat, self.counts, self.displs, kind]

    def gather_parameters(self):
        self.comm.Allgatherv(self.MPI.IN_PLACE, self._parts(self.P))

    def gather_state(self):
        for flat in self.S:
            self.comm.Allgatherv(self.MPI.IN_PLACE, self._parts(flat))


class SharedMemory(AllReduce):
    """ZeRO-1 on one node: one shared copy of the parameters and optimizer state, and every
    rank's gradient buffer, in one MPI shared-memory window.

    The ranks meet at a barrier (``_sync``) when every gradient buffer is written, when every
    part's finite flags and sum of squares are, and when every part is updated (so no rank's
    next forward pass reads half-updated parameters).
    """

    def __init__(self, comm, node, dtype, total, n_state, spans):
        self.node = node
        self.local, self.locals = node.Get_rank(), node.Get_size()
        self.windows = []
        super().__init__(comm, dtype, total, n_state, spans)
        self.lo, self.hi = block(total, self.locals, self.local)
        # per rank: loss, sum of squares of its part, a not-finite flag per parameter
        self.stats = self._window(np.float64, (self.locals, 2 + len(self.spans)))

    def _window(self, dtype, shape) -> np.ndarray:
        """A shared array: rank 0 of the node allocates it, every rank maps it."""
        dtype = np.dtype(dtype)
        size = int(np.prod(shape)) * dtype.itemsize
        win = self.MPI.Win.Allocate_shared(
            size if self.local == 0 else 0, dtype.itemsize, comm=self.node
        )
        win.Lock_all(self.MPI.MODE_NOCHECK)  # passive epoch: loads and stores, synced by _sync
        self.windows.append(win)
        buffer, _ = win.Shared_query(0)
        return np.ndarray(shape, dtype, buffer=buffer)

    def _arrays(self, n_state):
        total = self.total
        data = self._window(self.dtype, ((1 + n_state) * total + self.locals * (total + 1),))
        states = [data[(1 + k) * total : (2 + k) * total] for k in range(n_state)]
        self.slots = data[(1 + n_state) * total :].reshape(self.locals, total + 1)
        return data[:total], states, self.slots[self.local]

    def _sync(self) -> None:
        """Every rank's stores seen by every rank (memory barrier, barrier, memory barrier)."""
        for win in self.windows:
            win.Sync()
        self.node.Barrier()
        for win in self.windows:
            win.Sync()

    def holds_own_copy(self) -> bool:
        return self.local == 0

    def share(self):
        self._sync()  # rank 0 has written the values every rank reads

    def reduce(self, module, clip):
        self._sync()  # every rank's gradients are in its slot
        lo, hi = self.lo, self.hi
        mine = self.G[lo:hi]
        for k in range(self.locals):  # this rank's part: summed into its own slot
            if k != self.local:
                np.add(mine, self.slots[k, lo:hi], out=mine)
        row = self.stats[self.local]
        row[:] = 0.0
        if not module.all_finite(mine):
            row[2 + np.array(_bad(module, mine, self.spans, lo), int)] = 1.0
        elif clip:
            row[1] = module.sum_squares(mine)
        self._sync()  # every part's flags and sum of squares are written
        loss = float(np.sum(self.slots[:, -1], dtype=np.float64))
        combined = self.stats.sum(axis=0)
        return _status(loss, np.flatnonzero(combined[2:])), loss, combined[1]

    def part(self):
        lo, hi = self.lo, self.hi
        return [self.P[lo:hi], self.G[lo:hi], *(s[lo:hi] for s in self.S)]

    def gather_parameters(self):
        self._sync()  # every part is updated before any rank reads the parameters again

    def fence(self):
        self._sync()

    def close(self, clean):
        if not clean:  # a rank is aborting the job: no collective may run
            return
        for win in self.windows:
            win.Unlock_all()
            win.Free()
        self.windows = []
        self.node.Free()
