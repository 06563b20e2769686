"""The roofline bound of each workload: how fast its training could run on this machine.

A training step does two kinds of work. Its matrix products (and convolutions) are bounded by
the machine's measured GEMM peak; its parameter updates and elementwise passes are bounded by
the measured memory bandwidth. The bound on a step's time is the sum of the two:

    bound = products' FLOPs / GEMM peak + bytes moved / bandwidth

and a trainer's *fraction of the roofline* is the bound over its measured time (1.0 = at the
limit). Both machine figures are measured here, in this process, just before the table:

- **GEMM peak**: the best of a few float32 ``np.dot`` calls on 1536x1536 matrices (OpenBLAS with
  its default threads): 2n³ FLOPs per call.
- **Bandwidth**: the best of a few ``np.add(a, b, out=c)`` over 16M-float arrays (64 MB each,
  far above the caches): 3 x 64 MB moved per call.

What is counted per training step, per sample of the batch (``B``):

- products: a dense layer (``in -> out``) costs ``2·in·out`` FLOPs forward, as many for its
  weight gradient and, except for the first layer, as many for its input gradient; a convolution
  costs ``2·k·k·c_in·c_out`` per output position, three times likewise;
- elementwise passes: 5 float accesses per element of each layer's output (bias and activation
  forward: read and write; their backward: read the cotangent and the saved value, write), 4 per
  element entering a max pool, and the input read once;
- updates, per step (not per sample): 3 float accesses per parameter for SGD, 5 for SGD with
  momentum, 7 for Adam (read parameter, gradient and state, write parameter and state).

It is a bound, not a prediction: small products (a batch of 1, a 64x128 layer) cannot reach a
peak measured on large ones, and a per-step call overhead is not in it. That gap is what the
column shows.

    >>> from workloads import get_workload
    >>> work = step_work(get_workload("digits"))
    >>> work.flops_per_sample == 2 * 64 * 128 * 2 + 2 * 128 * 10 * 3
    True
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from workloads import Workload

ITEM = 4  # float32 bytes
UPDATE_ACCESSES = {"sgd": 3, "sgd_momentum": 5, "adam": 7}


@dataclass(frozen=True)
class Machine:
    gemm_flops: float  # float32 GEMM peak, FLOP/s
    bandwidth: float  # bytes/s


@dataclass(frozen=True)
class StepWork:
    flops_per_sample: float  # products and convolutions, forward and backward
    bytes_per_sample: float  # elementwise passes and the input read
    update_bytes: float  # the optimizer's pass over the parameters, once per step
    batch: int

    def bound_samples_per_s(self, machine: Machine) -> float:
        step = (
            self.batch * self.flops_per_sample / machine.gemm_flops
            + (self.batch * self.bytes_per_sample + self.update_bytes) / machine.bandwidth
        )
        return self.batch / step


def measure_machine(repeats: int = 5) -> Machine:
    """The float32 GEMM peak and the memory bandwidth, best of ``repeats`` (about a second)."""
    n = 1536
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    np.dot(a, b)  # threads started, pages touched
    gemm = min(_seconds(lambda: np.dot(a, b)) for _ in range(repeats))
    m = 16 * 2**20
    x, y, z = np.ones(m, np.float32), np.ones(m, np.float32), np.empty(m, np.float32)
    np.add(x, y, out=z)
    stream = min(_seconds(lambda: np.add(x, y, out=z)) for _ in range(repeats))
    return Machine(gemm_flops=2 * n**3 / gemm, bandwidth=3 * m * ITEM / stream)


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def step_work(wl: Workload) -> StepWork:
    """FLOPs and bytes of one training step of ``wl`` (see the module docstring)."""
    flops, accesses, params = 0.0, float(wl.sizes[0]), 0
    if wl.image:
        h, w, c = wl.image
    for i, shape in enumerate(wl.weight_shapes()):
        passes = 2 if i == 0 else 3  # forward, weight gradient, input gradient (not the first)
        if len(shape) == 4:  # conv (k, k, c_in, c_out), then relu and a max pool
            k, _, c_in, c_out = shape
            h, w = h + 2 * wl.pad - k + 1, w + 2 * wl.pad - k + 1
            flops += passes * 2 * k * k * c_in * c_out * h * w
            accesses += (5 + 4) * h * w * c_out
            h, w = h // wl.pool, w // wl.pool
        else:
            n_in, n_out = shape
            flops += passes * 2 * n_in * n_out
            accesses += 5 * n_out
        params += int(np.prod(shape)) + shape[-1]
    opt = wl.optimizer
    kind = "adam" if opt.name == "adam" else ("sgd_momentum" if opt.momentum else "sgd")
    update = UPDATE_ACCESSES[kind] * params * ITEM
    return StepWork(flops, accesses * ITEM, update, wl.batch_size)


def roofline_table(results: dict, workloads: dict, machine: Machine) -> str:
    """One row per workload: its bound and each trainer's fraction of it."""
    lines = [
        f"GEMM peak {machine.gemm_flops / 1e9:.0f} GFLOP/s (float32, 1536³ np.dot), "
        f"memory bandwidth {machine.bandwidth / 1e9:.1f} GB/s (np.add over 64 MB arrays)\n",
        "| workload | products MFLOP/sample | memory KB/sample (+ update MB/step) "
        "| bound samples/s | graphnn samples/s | graphnn / bound | best peer / bound |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in results.items():
        work = step_work(workloads[name])
        bound = work.bound_samples_per_s(machine)
        speeds = {t: r["samples_per_s"] for t, r in res.items() if r.get("status") == "ok"}
        g = speeds.pop("graphnn", None)
        speeds.pop("graphnn_noftz", None)
        peer = max(speeds.items(), key=lambda kv: kv[1], default=None)
        lines.append(
            f"| {name} | {work.flops_per_sample / 1e6:.3f} "
            f"| {work.bytes_per_sample / 1e3:.1f} (+ {work.update_bytes / 1e6:.2f}) "
            f"| {bound:,.0f} | {f'{g:,.0f}' if g else 'n/a'} "
            f"| {f'{g / bound:.2f}' if g else 'n/a'} "
            f"| {f'{peer[1] / bound:.2f} ({peer[0]})' if peer else 'n/a'} |"
        )
    return "\n".join(lines)
