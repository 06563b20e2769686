"""The fixed part of a generated CUDA module: launch sizes, host helpers and library kernels.

Graph-specific kernels come from :mod:`codegen.cuda.steps`; what every module shares is here as
source text: the launch configuration, ``blocks``/``tiles`` (grid sizes), the ``Workspace`` of
device buffers, the tiled matmul in its transposed variants, the mini-batch gather and the
batch mean.  Block reductions are printed inline (:func:`block_sum`) rather than as a
``cuda.jit(device=True)`` function, because ``compile_ptx`` of a kernel that calls a device
function needs a GPU to pick the compute capability; inline, every kernel compiles to PTX anywhere.

>>> print(matmul_kernel(False, True, "float32").splitlines()[2])
def matmul_nt(A, B, C):
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    """Block sizes baked into a module (shared-memory shapes must be compile-time constants)."""

    tile: int = 16  # matmul tile edge: TILE x TILE threads per block
    threads: int = 256  # threads per block of grid-stride (elementwise) kernels
    max_blocks: int = 1024  # grid-stride loops cover whatever this many blocks do not
    reduce_threads: int = 128  # threads per block of reductions; a power of two

    def __post_init__(self):
        r = self.reduce_threads
        if r < 1 or r & (r - 1):
            raise ValueError(f"reduce_threads must be a power of two, got {r}")


GPU = Launch()
# The simulator runs every thread as a Python thread (~0.3 ms each): tiny blocks, and few enough
# of them that grid-stride loops and multi-tile matmuls are exercised on tiny shapes.
SIMULATOR = Launch(tile=4, threads=16, max_blocks=2, reduce_threads=8)


def array_type(dtype: str, ndim: int) -> str:
    """The Numba type of a C-contiguous array: ``float32[:, ::1]``."""
    return f"{dtype}[{', '.join([':'] * (ndim - 1) + ['::1'])}]"


def block_sum(value: str, total: str) -> list[str]:
    """Lines summing ``value`` over the threads of a block into ``total`` (every thread gets it).

    Needs ``part = cuda.shared.array(REDUCE_THREADS, ...)`` and ``tid`` in the kernel, and every
    thread of the block must reach these lines (they synchronize).
    """
    return [
        f"part[tid] = {value}",
        "cuda.syncthreads()",
        "s = REDUCE_THREADS // 2",
        "while s > 0:  # tree: halve the active threads each round",
        "    if tid < s:",
        "        part[tid] += part[tid + s]",
        "    cuda.syncthreads()",
        "    s //= 2",
        f"{total} = part[0]",
        "cuda.syncthreads()  # everyone has read part[0] before it is overwritten",
    ]


def launch_config(launch: Launch) -> list[str]:
    return [
        f"TILE = {launch.tile}  # matmul tile edge (TILE x TILE threads per block)",
        "TILE_PAD = TILE + 1  # shared rows one longer: no bank conflicts on transposed loads",
        f"THREADS = {launch.threads}  # threads per block of elementwise kernels",
        f"MAX_BLOCKS = {launch.max_blocks}  # grid-stride loops cover the rest",
        f"REDUCE_THREADS = {launch.reduce_threads}  # threads per reduction block (power of two)",
    ]


HOST_HELPERS = '''
def blocks(total):
    """Blocks for a grid-stride launch over ``total`` elements."""
    return max(1, min(MAX_BLOCKS, (total + THREADS - 1) // THREADS))


def tiles(rows, cols):
    """Grid of a matmul: row tiles on x (up to 2**31 - 1), column tiles on y."""
    return ((rows + TILE - 1) // TILE, (cols + TILE - 1) // TILE)


class Workspace:
    """Device buffers for intermediate values, allocated once per (name, shape) and reused."""

    def __init__(self, dtype=np.{dtype}):
        self.dtype = dtype
        self.arrays = {{}}
        self.views = {{}}

    def array(self, name, shape):
        key = (name, shape)
        if key not in self.arrays:
            if len(self.arrays) > 1024:  # many batch sizes seen (predict on odd chunks)
                self.arrays.clear()
            self.arrays[key] = cuda.device_array(shape, dtype=self.dtype)
        return self.arrays[key]

    def view(self, a, shape):
        """A cached reshaped view of ``a`` (a new view costs Python time at every launch)."""
        key = (id(a), shape)
        if key not in self.views:
            if len(self.views) > 1024:  # views of short-lived arrays (reshape outputs)
                self.views.clear()
            self.views[key] = (a, a.reshape(shape))  # holding a keeps id(a) unique
        return self.views[key][1]

    def flat(self, a):
        return self.view(a, (a.size,))

    def rows(self, a):
        return a if a.ndim == 2 else self.view(a, (a.shape[0], a.size // a.shape[0]))
'''

GATHER = """
# x = x_all[perm[start : start + n]]: the rows of one mini-batch, in the order of perm
@cuda.jit(cache=True)
def gather_rows(src, perm, start, dst):
    width = dst.shape[1]
    for k in range(cuda.grid(1), dst.shape[0] * width, cuda.gridsize(1)):
        dst[k // width, k % width] = src[perm[start + k // width], k % width]
"""

BATCH_MEAN = """
# out = sum(values[:count]) / denominator, in one block (a loss: the mean over rows)
@cuda.jit(cache=True)
def batch_mean(values, out, count, denominator):
    part = cuda.shared.array(REDUCE_THREADS, np.{dtype})
    tid = cuda.threadIdx.x
    acc = np.{dtype}(0.0)
    for r in range(tid, count, REDUCE_THREADS):
        acc += values[r]
{reduce}
    if tid == 0:
        out[0] = total / denominator
"""


def batch_mean(dtype: str) -> str:
    reduce = "\n".join("    " + line for line in block_sum("acc", "total"))
    return BATCH_MEAN.format(dtype=dtype, reduce=reduce)


def matmul_kernel(ta: bool, tb: bool, dtype: str) -> str:
    """C = op(A) @ op(B) with TILE x TILE tiles of op(A) and op(B) staged in shared memory.

    Thread (ty, tx) computes C[row0 + ty, col0 + tx].  Global loads always run along the last
    axis of the array read (tx varies fastest), so they coalesce; a transposed operand is
    written transposed into shared memory instead, where TILE_PAD avoids bank conflicts.
    """
    name = "matmul_" + ("t" if ta else "n") + ("t" if tb else "n")
    k_size = "A.shape[0]" if ta else "A.shape[1]"
    zero = f"np.{dtype}(0.0)"
    if ta:  # op(A)[row0 + tx, k0 + ty] = A[k0 + ty, row0 + tx]
        load_a = f"sa[tx, ty] = A[k0 + ty, row0 + tx] if k0 + ty < K and row0 + tx < M else {zero}"
    else:
        load_a = f"sa[ty, tx] = A[row0 + ty, k0 + tx] if row0 + ty < M and k0 + tx < K else {zero}"
    if tb:  # op(B)[k0 + tx, col0 + ty] = B[col0 + ty, k0 + tx]
        load_b = f"sb[tx, ty] = B[col0 + ty, k0 + tx] if col0 + ty < N and k0 + tx < K else {zero}"
    else:
        load_b = f"sb[ty, tx] = B[k0 + ty, col0 + tx] if k0 + ty < K and col0 + tx < N else {zero}"
    op_a, op_b = "A^T" if ta else "A", "B^T" if tb else "B"
    shared = f"cuda.shared.array((TILE, TILE_PAD), np.{dtype})"
    body = [
        f"sa = {shared}  # sa[r, c] = {op_a}[row0 + r, k0 + c]",
        f"sb = {shared}  # sb[r, c] = {op_b}[k0 + r, col0 + c]",
        "tx, ty = cuda.threadIdx.x, cuda.threadIdx.y",
        "row0, col0 = cuda.blockIdx.x * TILE, cuda.blockIdx.y * TILE",
        "M, N = C.shape",
        f"K = {k_size}",
        f"acc = {zero}",
        "for k0 in range(0, K, TILE):",
        f"    {load_a}",
        f"    {load_b}",
        "    cuda.syncthreads()",
        "    for kk in range(TILE):",
        "        acc += sa[ty, kk] * sb[kk, tx]",
        "    cuda.syncthreads()",
        "if row0 + ty < M and col0 + tx < N:",
        "    C[row0 + ty, col0 + tx] = acc",
    ]
    head = [f"# C = {op_a} @ {op_b}, tiled", "@cuda.jit(cache=True)", f"def {name}(A, B, C):"]
    return "\n".join(head + ["    " + line for line in body]) + "\n"


def matmul_signature(dtype: str) -> str:
    matrix = array_type(dtype, 2)
    return f"void({matrix}, {matrix}, {matrix})"


def library(dtype: str, matmuls: set[tuple[bool, bool]], launch: Launch) -> tuple[str, dict]:
    """The shared module text (after the imports) and the signatures of its kernels."""
    matrix, vector = array_type(dtype, 2), array_type(dtype, 1)
    parts = ["\n".join(launch_config(launch)), HOST_HELPERS.format(dtype=dtype)]
    parts += [GATHER, batch_mean(dtype)]
    signatures = {
        "gather_rows": f"void({matrix}, int64[::1], int64, {matrix})",
        "batch_mean": f"void({vector}, {vector}, int64, {dtype})",
    }
    for ta, tb in sorted(matmuls):
        parts.append("\n" + matmul_kernel(ta, tb, dtype))
        signatures["matmul_" + ("t" if ta else "n") + ("t" if tb else "n")] = matmul_signature(
            dtype
        )
    return "\n".join(parts), signatures
