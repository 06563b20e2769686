"""How many rows per rank keep data-parallel efficiency >= 85% on p ranks: an alpha-beta model.

    python benchmarks/scaling_model.py                     # 64 ranks, this machine's mnist_mlp
    python benchmarks/scaling_model.py --ranks 64 --row-us 5 --update-ms 0.1

A step on a rank is ``b c`` (its b rows' loss and gradients, c seconds a row), the gradient
all-reduce ``T`` and the update ``u`` (all of it with the all-reduce; ``u / p`` sharded, ZeRO-1).
Rabenseifner's all-reduce (reduce-scatter, then all-gather; what MPICH and Open MPI use for large
messages) of n bytes over p ranks costs::

    T = 2 log2(p) alpha + 2 (p - 1) / p n beta + (p - 1) / p n gamma

alpha: latency per message; beta: seconds per byte on the wire; gamma: seconds per byte to add.
Efficiency against p times one rank's speed on the same global batch is
``(b c + u / p) / (b c + T + u_rank)``; it reaches 85% once ``b c >= 5.7 (T + u_rank - u / p)``
(roughly).  The defaults for c and u are mnist_mlp's on one AVX2 core of the machine this was
measured on (the fastest of 300 calls: 0.55 ms for 64 rows' loss and gradients, 0.10 ms for the
Adam update of its 269,322 parameters); gamma = 0.04 ns/B is numpy's float32 add there.
"""

from __future__ import annotations

import argparse
import math

NETWORKS = {  # alpha (s), beta (s/byte): typical MPI figures between nodes
    "InfiniBand HDR 200 Gb/s": (1.5e-6, 1 / 24e9),
    "100 GbE (RoCE)": (3e-6, 1 / 11e9),
    "25 GbE (TCP)": (15e-6, 1 / 2.8e9),
    "10 GbE (TCP)": (25e-6, 1 / 1.1e9),
}
GAMMA = 0.04e-9
MODELS = {"mnist_mlp": 269_322 * 4, "wide": 3_159_050 * 4}  # gradient bytes (float32)


def allreduce_seconds(n: float, p: int, alpha: float, beta: float, gamma: float = GAMMA) -> float:
    """Rabenseifner's all-reduce of n bytes over p ranks."""
    share = (p - 1) / p
    return 2 * math.log2(p) * alpha + 2 * share * n * beta + share * n * gamma


def rows_needed(row_s, update_s, comm_s, p, sharded, target=0.85) -> int:
    """The fewest rows per rank whose step reaches ``target`` efficiency."""
    own_update = update_s / p if sharded else update_s
    b = 1
    while (b * row_s + update_s / p) / (b * row_s + comm_s + own_update) < target:
        b += 1
    return b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--model", choices=MODELS, default="mnist_mlp")
    parser.add_argument("--row-us", type=float, default=8.5, help="compute per row, microseconds")
    parser.add_argument("--update-ms", type=float, default=0.10, help="whole update, ms")
    args = parser.parse_args()
    n, p = MODELS[args.model], args.ranks
    print(f"{args.model}: {n / 1e6:.2f} MB of gradients, {p} ranks, c = {args.row_us} us/row")
    print("| network | all-reduce | rows/rank, all-reduce | rows/rank, ZeRO-1 |")
    print("|---|---:|---:|---:|")
    for name, (alpha, beta) in NETWORKS.items():
        t = allreduce_seconds(n, p, alpha, beta)
        # ZeRO-1 adds one small all-reduce (loss, norm, finite flags): latency only
        t_zero = t + 2 * math.log2(p) * alpha
        row, u = args.row_us * 1e-6, args.update_ms * 1e-3
        ddp = rows_needed(row, u, t, p, sharded=False)
        zero = rows_needed(row, u, t_zero, p, sharded=True)
        print(f"| {name} | {t * 1e3:.3f} ms | {ddp} | {zero} |")


if __name__ == "__main__":
    main()
