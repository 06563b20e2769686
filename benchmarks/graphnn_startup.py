"""Time one graphnn start: import, graph, compile, first training step. Run by run.py.

    python benchmarks/graphnn_startup.py WORKLOAD BATCH.npz [--quick] [--sibling]

run.py points GRAPHNN_CACHE_DIR (and NUMBA_CACHE_DIR) at a fresh directory for the cold run and
reuses it for the warm runs. The clock starts at the first line of this script body; BATCH.npz
holds one minibatch (x, y), so the first ``fit`` is exactly one training step. The result is
printed as one JSON line prefixed with ``RESULT_PREFIX``.

``--sibling`` starts a new model instead: the workload with one more hidden layer, the last
hidden layer 16 wider and half the learning rate (a model with no hidden layer: only the learning
rate).  Run on the cache another model filled, it is the start of a model graphnn has never
compiled, whose blocks it has (codegen/cpu/stepwise.py).
"""

import time

T0, C0 = time.perf_counter(), time.process_time()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [BENCH_DIR, os.path.dirname(BENCH_DIR)]

import numpy as np  # noqa: E402
from peer_graphnn import build_model  # noqa: E402
from workloads import get_workload  # noqa: E402

RESULT_PREFIX = "GRAPHNN_STARTUP "


def sibling(wl):
    """A new model close to ``wl``: deeper, another width and learning rate."""
    from dataclasses import replace

    sizes = wl.sizes
    if len(sizes) > 2:  # (n_in, hidden..., n_out): one more hidden layer, the last one wider
        sizes = (*sizes[:-1], sizes[-2] + 16, sizes[-1])
    opt = replace(wl.optimizer, lr=wl.optimizer.lr / 2)
    return replace(wl, sizes=sizes, optimizer=opt)


def main() -> None:
    wl = get_workload(sys.argv[1], quick="--quick" in sys.argv)
    wl = sibling(wl) if "--sibling" in sys.argv else wl
    batch = np.load(sys.argv[2])
    data = {"x": batch["x"], "y": batch["y"]}
    t = time.perf_counter()
    import graphnn as gn

    import_s = time.perf_counter() - t
    model, opt_desc, build = build_model(gn, wl)
    t = time.perf_counter()
    model.fit(data, epochs=1, batch_size=wl.batch_size, shuffle=True, seed=0)
    first_step_s = time.perf_counter() - t
    result = {
        "total_s": time.perf_counter() - T0,
        "cpu_s": time.process_time() - C0,  # this process's CPU time: steadier on a busy host
        "import_s": import_s,
        **build,
        "first_step_s": first_step_s,
        # True: the first step ran the fused epoch (from the cache), False: the step kernels
        "fused": bool(getattr(getattr(model.trainer, "fused", None), "_ready", False)),
        "optimizer": opt_desc,
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
