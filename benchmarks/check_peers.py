"""Check that every trainer computes the same training steps before timing them.

    python benchmarks/check_peers.py [--steps 3] [--workloads neuron,digits,...]

All trainers start from the same initial values and take the same minibatches in the same order;
their parameters are then compared with the NumPy trainer's. graphnn takes part if it imports and
lets its initial values be overwritten in place through ``model.params``.
"""

from __future__ import annotations

import argparse
import os
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (BENCH_DIR, os.path.dirname(BENCH_DIR)) if p not in sys.path]

import numpy as np  # noqa: E402
from run import TRAINER_ORDER, load_factories  # noqa: E402
from trainer_base import SkipWorkload  # noqa: E402
from workloads import WORKLOADS, get_workload, init_params, make_data  # noqa: E402

# Adam divides by sqrt(v): an element whose gradient is near eps moves by up to lr on a rounding
# difference, so Adam workloads get a looser bound.
TOLERANCE = {"sgd": 1e-5, "adam": 1e-4}


def check_workload(wl, factories: dict, steps: int) -> bool:
    X, Y = make_data(wl)
    init = init_params(wl)
    trainers = {}
    for name, factory in factories.items():
        try:
            trainer = factory(wl, X, Y, init, 0)
            if hasattr(trainer, "set_params"):
                trainer.set_params(init)
                if not _same(trainer.params_numpy(), init):
                    raise RuntimeError("writing model.params in place did not change the model")
            trainers[name] = trainer
        except SkipWorkload as e:
            print(f"  {name:13s} skipped: {e}")
        except Exception as e:
            print(f"  {name:13s} not checked: {type(e).__name__}: {e}".splitlines()[0])
    B = wl.batch_size
    for s in range(steps):
        idx = np.arange(s * B, (s + 1) * B) % len(X)
        for name, trainer in list(trainers.items()):
            try:
                trainer.train_batch(idx)
            except Exception as e:
                print(f"  {name:13s} failed at step {s}: {type(e).__name__}: {e}".splitlines()[0])
                del trainers[name]
    # the NumPy trainer is the reference; PyTorch where it has no such model (the CNNs)
    ref_name = next((n for n in ("numpy", "torch") if n in trainers), None)
    if ref_name is None:
        print("  no reference trainer (numpy or torch) ran")
        return False
    if ref_name != "numpy":
        print(f"  (reference: {ref_name})")
    ref = trainers[ref_name].params_numpy()
    moved = max(float(np.abs(a[0] - b[0]).max()) for a, b in zip(ref, init, strict=True))
    tol = TOLERANCE[wl.optimizer.name]
    ok = True
    for name, trainer in trainers.items():
        if name == ref_name:
            continue
        diff = _max_diff(trainer.params_numpy(), ref)
        ok &= diff <= tol
        verdict = "ok" if diff <= tol else f"MISMATCH (tolerance {tol:g})"
        print(f"  {name:13s} max |param - {ref_name} param| = {diff:.3g}  {verdict}")
    print(f"  (parameters moved by up to {moved:.3g} in {steps} steps)")
    return ok


def _max_diff(params, ref) -> float:
    return max(
        float(np.abs(np.asarray(p, np.float64) - r).max())
        for layer, ref_layer in zip(params, ref, strict=True)
        for p, r in zip(layer, ref_layer, strict=True)
    )


def _same(params, init) -> bool:
    return _max_diff(params, init) == 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    factories, _ = load_factories(TRAINER_ORDER)
    ok = True
    for name in args.workloads.split(","):
        wl = get_workload(name.strip(), quick=True)
        print(f"{wl.name}: {args.steps} steps of {wl.optimizer.describe()}, batch {wl.batch_size}")
        ok &= check_workload(wl, factories, args.steps)
    print("all trainers agree" if ok else "SOME TRAINERS DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
