"""What every benchmarked trainer provides, and the denormal probes the results record.

A trainer owns its parameters and optimizer state and trains on successive *chunks* of the data
(``workload.chunk`` samples each, cycling through the data set), shuffling within each chunk and
stepping once per minibatch. The harness times calls to ``train_chunk``; a trainer with
asynchronous dispatch must finish its work before ``train_chunk`` returns.
"""

from __future__ import annotations

import numpy as np
from workloads import Workload

TINY = np.finfo(np.float32).tiny  # smallest normal float32


class SkipWorkload(Exception):
    """Raised by a trainer's constructor for a workload it does not implement (a table row
    that says 'skipped', not 'failed')."""


class Trainer:
    """Base class: chunk bookkeeping; subclasses implement ``train_batch`` and ``params_numpy``."""

    name = "?"

    def __init__(self, wl: Workload, X: np.ndarray, Y: np.ndarray, seed: int = 0):
        self.wl, self.X, self.Y = wl, X, Y
        self.n_chunks = max(1, len(X) // wl.chunk)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._chunks_done = 0

    def train_chunk(self) -> int:
        """Train on the next chunk (shuffled, in minibatches); return the number of samples."""
        k = self._chunks_done % self.n_chunks
        start, stop = k * self.wl.chunk, min((k + 1) * self.wl.chunk, len(self.X))
        self._train(start, stop)
        self._chunks_done += 1
        return stop - start

    def _train(self, start: int, stop: int) -> None:
        """One shuffled pass over samples [start, stop) in minibatches."""
        B = self.wl.batch_size
        order = start + self.rng.permutation(stop - start)
        for i in range(0, len(order), B):
            self.train_batch(order[i : i + B])

    def train_batch(self, idx: np.ndarray) -> None:
        """One optimizer step on the samples ``idx`` (may return before the work is done)."""
        raise NotImplementedError

    def params_numpy(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Current (W (in, out), b (out,)) per layer as NumPy arrays."""
        raise NotImplementedError

    def state_arrays(self) -> list[np.ndarray]:
        """Parameters and optimizer state, for counting subnormal values."""
        return [a for layer in self.params_numpy() for a in layer]

    def info(self) -> dict:
        """Framework version, optimizer used, threads, denormal handling."""
        return {}


def count_subnormals(arrays) -> int:
    """How many nonzero values with magnitude below the smallest normal float32."""
    total = 0
    for a in arrays:
        a = np.asarray(a)
        total += int(np.count_nonzero((a != 0) & (np.abs(a) < TINY)))
    return total


def flush_probe(multiply) -> dict:
    """Whether ``multiply(a, b)`` (float32 scalars in, float out) flushes subnormals.

    ftz: a subnormal *result* (1e-20 * 1e-20) becomes 0. daz: a subnormal *input* (1e-40 * 1)
    is treated as 0.
    """
    ftz = float(multiply(np.float32(1e-20), np.float32(1e-20))) == 0.0
    daz = float(multiply(np.float32(1e-40), np.float32(1.0))) == 0.0
    return {"flush_to_zero": ftz, "denormals_are_zero": daz}
