"""One end-to-end run of the README's digits training in this (new) process. Run by run.py.

    python benchmarks/end_to_end.py readme          # the README's 30-line example, as written
    python benchmarks/end_to_end.py numpy|torch|jax # the same training with a peer trainer

``readme`` executes the example block of README.md (graph, printed gradient formulas, compile,
20 epochs of mini-batch 32 with a 20% validation split evaluated every epoch, a prediction).  A
peer trains the same model (64 -> 128 relu -> 10, softmax cross-entropy, SGD lr 0.1 momentum
0.9, the harness's initial weights) on the same 80% of the scaled digits for 20 shuffled epochs
of mini-batch 32, and evaluates the held-out 20% after every epoch with the harness's NumPy
forward pass.  The clock starts at the first line of this script body, so imports count; the
result is one JSON line prefixed with ``RESULT_PREFIX`` (wall and CPU seconds, held-out
accuracy).  ``graphnn demo`` runs as its own command (run.py times it from spawn to exit).
"""

import time

T0, C0 = time.perf_counter(), time.process_time()

import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from dataclasses import replace  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
sys.path[:0] = [BENCH_DIR, REPO_DIR]

RESULT_PREFIX = "END_TO_END "
EPOCHS, SPLIT, SEED = 20, 0.2, 0


def readme_example() -> str:
    with open(os.path.join(REPO_DIR, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return re.search(r"## A 30-line example\n\n```python\n(.*?)```", text, re.S).group(1)


def run_readme() -> float:
    """Run the example; its last-but-one printed line is ``loss val_accuracy``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example(), "README example", "exec"), {})  # our own README
    return float(out.getvalue().splitlines()[2].split()[1])


def run_peer(name: str) -> float:
    import numpy as np
    from peer_numpy import evaluate
    from workloads import get_workload, init_params, make_data

    if name == "numpy":
        from peer_numpy import NumpyTrainer as cls
    elif name == "torch":
        from peer_torch import TorchTrainer as cls
    else:
        from peer_jax import JaxTrainer as cls
    wl = get_workload("digits")
    X, Y = make_data(wl, SEED)
    order = np.random.default_rng(SEED).permutation(len(X))  # the split fit(...) makes
    cut = len(X) - max(1, int(round(len(X) * SPLIT)))
    train, val = order[:cut], order[cut:]
    wl = replace(wl, n_samples=cut, chunk=cut)  # a chunk is one epoch over the training rows
    trainer = cls(wl, np.ascontiguousarray(X[train]), np.ascontiguousarray(Y[train]),
                  init_params(wl, SEED), SEED)  # fmt: skip
    accuracy = 0.0
    for _ in range(EPOCHS):
        trainer.train_chunk()
        accuracy = evaluate(wl, trainer.params_numpy(), X[val], Y[val])["accuracy"]
    return accuracy


def main() -> None:
    name = sys.argv[1]
    accuracy = run_readme() if name == "readme" else run_peer(name)
    result = {
        "total_s": time.perf_counter() - T0,
        "cpu_s": time.process_time() - C0,
        "accuracy": accuracy,
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
