"""Time a generated matrix-product loop nest against np.dot (BLAS) inside Numba, per shape.

    python benchmarks/matmul_choice.py

For each (rows, inner, cols) it prints the best of 5 timings of both and their ratio; the
largest ``inner * cols`` where the loops still win at the batch sizes you train with is the value
for ``GRAPHNN_MATMUL_LOOPS_MAX`` (codegen/cpu/matmul.py).  The loops are the text graphnn
generates (codegen.cpu.matmul.loop_lines), compiled the way its kernels are.
"""

import ast
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

from codegen.cpu.matmul import loop_lines  # noqa: E402
from codegen.cpu.module import FASTMATH  # noqa: E402

SHAPES = [(1, 8, 1), (1, 2, 2), (4, 8, 1), (32, 8, 1), (1, 16, 4), (32, 16, 16), (1, 64, 128)]
SHAPES += [(32, 64, 10), (32, 64, 128), (128, 256, 256)]


def kernels(inner: int, cols: int):
    body = loop_lines("out", "a", "b", (None, inner), (inner, cols), False, False, "float32")
    src = "\n".join(
        ["def loops(a, b, out, reps):", "    n = a.shape[0]", "    for _ in range(reps):"]
        + ["        " + line for line in body]
        + ["def blas(a, b, out, reps):", "    for _ in range(reps):", "        np.dot(a, b, out)"]
    )
    ns = {"np": np}
    exec(src, ns)  # our own generated text, as the kernel modules hold it
    jit = njit(fastmath=ast.literal_eval(FASTMATH), error_model="numpy")
    return jit(ns["loops"]), jit(ns["blas"])


def best_time(f, args, reps: int) -> float:
    f(*args, 1)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        f(*args, reps)
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def main() -> None:
    print(f"{'rows x inner x cols':>22}  {'loops':>10}  {'np.dot':>10}  np.dot/loops")
    for rows, inner, cols in SHAPES:
        rng = np.random.default_rng(0)
        a = rng.random((rows, inner), dtype=np.float32)
        b = rng.random((inner, cols), dtype=np.float32)
        out = np.empty((rows, cols), np.float32)
        reps = max(1, int(2e5 / (rows * inner * cols + 50)))
        loops, blas = (best_time(f, (a, b, out), reps) for f in kernels(inner, cols))
        shape = f"{rows} x {inner} x {cols}"
        print(f"{shape:>22}  {loops * 1e9:8.0f}ns  {blas * 1e9:8.0f}ns  {blas / loops:10.2f}")


if __name__ == "__main__":
    main()
