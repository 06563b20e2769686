"""Where a training step goes: the time of each block (graph node) of ``loss_and_grads``.

    python benchmarks/block_profile.py image28 [--repeats 10]

Builds the workload's stepwise module (codegen/cpu/stepwise.py: one compiled step kernel per
block, the same arithmetic as the fused step), wraps every step kernel with a timer and runs
``loss_and_grads`` on one batch of the workload's size.  Prints the fastest whole step and, per
block, its fastest time over the repeats (named by the nodes it computes and the comment the
generated code gives it, e.g. which lowering a convolution got), largest first.  A block's time
includes a Numba dispatch (1-3 us), negligible beside a convolution.  The optimizer's update is
not included.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peer_graphnn import build_graph  # noqa: E402
from workloads import get_workload  # noqa: E402

import graphnn as gn  # noqa: E402
from codegen.cpu import backend  # noqa: E402
from codegen.cpu.module import stepwise_source  # noqa: E402


def block_labels(text: str) -> dict[str, str]:
    """step kernel name -> the comments above its call in loss_and_grads (node names first)."""
    body = text[text.index("def loss_and_grads") : text.index("def forward")]
    labels, pending = {}, []
    for line in body.splitlines():
        s = line.strip()
        if s.startswith("# "):
            pending.append(s[2:].split(" = ")[0])
        found = re.search(r"(step_[0-9a-f]{12})\(", s)
        if found:
            labels.setdefault(found.group(1), " | ".join(pending))
            pending = []
    return labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workload")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    wl = get_workload(args.workload)
    g = build_graph(gn, wl)
    glue = backend.build_stepwise(g, None, "float32")
    labels = block_labels(stepwise_source(g, None, "float32")[0])
    spent: dict[str, float] = {}

    def timer(kernel, label: str):
        def timed(*a):
            t = time.perf_counter()
            out = kernel(*a)
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t
            return out

        return timed

    for name, label in labels.items():
        setattr(glue, name, timer(getattr(glue, name), label))
    rng = np.random.default_rng(0)
    params = {k: v.astype(np.float32) for k, v in g.init_params(0).items()}
    n = wl.batch_size
    shape = wl.image or (wl.sizes[0],)
    data = [rng.random((n, *shape), dtype=np.float32)]
    data.append(np.eye(wl.sizes[-1], dtype=np.float32)[rng.integers(0, wl.sizes[-1], n)])
    arrays = data + [params[p] for p in g.param_names]
    ws = glue.workspace(n, *arrays)
    glue.loss_and_grads(*arrays, ws)  # compiles or loads every step kernel
    best_step, best = float("inf"), {}
    for _ in range(args.repeats):
        spent.clear()
        t = time.perf_counter()
        glue.loss_and_grads(*arrays, ws)
        best_step = min(best_step, time.perf_counter() - t)
        for label, s in spent.items():
            best[label] = min(best.get(label, float("inf")), s)
    print(f"{args.workload}: fastest loss_and_grads {best_step * 1e3:.2f} ms for {n} rows")
    for label, s in sorted(best.items(), key=lambda kv: -kv[1]):
        print(f"  {s * 1e3:8.2f} ms  {label[:100]}")


if __name__ == "__main__":
    main()
