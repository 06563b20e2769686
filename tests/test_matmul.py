"""Generated matrix products against np.dot: every transpose case, edge sizes, both dtypes."""

import itertools

import numpy as np
import pytest

import graphnn as gn
from codegen.cpu import matmul

# (rows, inner, cols) of op(a) @ op(b): sizes 1, primes, sizes that are not a multiple of the
# vector width, and a typical layer.
SIZES = [(1, 1, 1), (1, 8, 1), (7, 13, 5), (3, 17, 2), (32, 64, 10), (5, 1, 9), (2, 31, 33)]
CASES = list(itertools.product(SIZES, [False, True], [False, True], ["float32", "float64"]))


def run_loops(a, b, ta, tb, dtype, batch_axis=None):
    """Execute the generated lines in Python on NumPy scalars of ``dtype`` (same arithmetic)."""
    a_shape, b_shape = list(a.shape), list(b.shape)
    n = None
    if batch_axis is not None:  # the batch size is a run-time n in the generated code
        which, axis = batch_axis
        shape = a_shape if which == "a" else b_shape
        n, shape[axis] = shape[axis], None
    rows = a.shape[1] if ta else a.shape[0]
    cols = b.shape[0] if tb else b.shape[1]
    c = np.full((rows, cols), np.nan, dtype)
    lines = matmul.loop_lines("out", "a", "b", tuple(a_shape), tuple(b_shape), ta, tb, dtype)
    exec("\n".join(lines), {"np": np, "a": a, "b": b, "out": c, "n": n})  # our generated text
    return c


@pytest.mark.parametrize(("size", "ta", "tb", "dtype"), CASES)
def test_loops_match_np_dot(size, ta, tb, dtype):
    rows, inner, cols = size
    rng = np.random.default_rng(sum(size))
    a = rng.normal(size=(inner, rows) if ta else (rows, inner)).astype(dtype)
    b = rng.normal(size=(cols, inner) if tb else (inner, cols)).astype(dtype)
    want = (a.T if ta else a) @ (b.T if tb else b)
    got = run_loops(a, b, ta, tb, dtype)
    assert got.dtype == want.dtype
    rtol = 2e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * inner)


@pytest.mark.parametrize(("ta", "axis"), [(False, 0), (True, 0)])
def test_loops_take_the_batch_size_at_run_time(ta, axis):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 3)).astype(np.float32)  # the batch axis is a's first
    b = rng.normal(size=(5 if ta else 3, 4)).astype(np.float32)  # a^T b contracts the batch
    want = (a.T if ta else a) @ b
    got = run_loops(a, b, ta, False, "float32", batch_axis=("a", axis))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)


def test_choice_follows_the_size_and_the_override(monkeypatch):
    assert matmul.choose((None, 64), (64, 128), False, False)[0] == "blas"
    assert matmul.choose((None, 8), (8, 1), False, False)[0] == "n * 8 <= 128"
    # the batch as the contracted axis (a weight gradient) does as many multiplications
    assert matmul.choose((None, 8), (None, 1), True, False)[0] == "n * 8 <= 128"
    assert matmul.choose((3, 4), (4, 2), False, False)[0] == "loops"  # no batch: decided now
    assert matmul.choose((30, 4), (4, 2), False, False)[0] == "blas"
    monkeypatch.setenv("GRAPHNN_MATMUL_LOOPS_MAX", "0")
    assert matmul.choose((None, 8), (8, 1), False, False)[0] == "blas"
    assert matmul.choose((1, 1), (1, 1), False, False)[0] == "blas"


@pytest.mark.parametrize("loops_max", ["128", "0"])
@pytest.mark.parametrize("rows", [1, 7])  # 30 and 210 multiplications: both sides of the branch
def test_kernels_with_loops_or_blas_match_the_reference(monkeypatch, loops_max, rows):
    monkeypatch.setenv("GRAPHNN_MATMUL_LOOPS_MAX", loops_max)
    x, t = gn.input("x", (6,)), gn.input("t", (3,))
    W, V = gn.param("W", (6, 5)), gn.param("V", (3, 5))
    h = gn.tanh(x @ W)
    g = gn.Graph(gn.mse(gn.matmul(h, V, tb=True), t))
    source = g.source(backend="cpu")
    # x @ W: n * 6 * 5 multiplications, with the sizes as the kernel reads them from x and W
    assert ("if n * dim1 * dim3 <= 128:" in source) == (loops_max != "0")
    assert "np.dot(" in source
    rng = np.random.default_rng(rows)
    data = {"x": rng.normal(size=(rows, 6)), "t": rng.normal(size=(rows, 3))}
    data = {k: v.astype(np.float32) for k, v in data.items()}
    params = g.init_params(0)
    want_loss, want = g.value_and_grad(params, data, backend="numpy")
    loss, grads = g.value_and_grad(params, data, backend="cpu")
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for p in g.param_names:
        np.testing.assert_allclose(grads[p], want[p], rtol=1e-4, atol=1e-6)


def run_rows(a, b, ta, tb, dtype):
    """The product as codegen.cpu.row_loop runs it: row_parts' lines before, then its lines for
    one batch row at a time (the batch is a's rows, or for a^T @ b a's and b's rows)."""
    a_shape = (None, a.shape[1])  # the batch is a's rows in every case
    b_shape = (None, b.shape[1]) if ta else tuple(b.shape)
    rows = a.shape[1] if ta else a.shape[0]
    cols = b.shape[0] if tb else b.shape[1]
    out = np.full((rows, cols), np.nan, dtype)
    parts = matmul.row_parts("out", "a", "b", a_shape, b_shape, ta, tb, dtype, str, "i0")
    assert parts is not None
    before, per_row = parts
    text = "\n".join([*before, f"for i0 in range({a.shape[0]}):", *("    " + s for s in per_row)])
    exec(text, {"np": np, "a": a, "b": b, "out": out})  # our generated text
    return out


# (batch, other, cols): a @ b and a @ b^T with a's rows the batch; a^T @ b with the batch
# contracted.  One column takes the register-sum form, more the row form.
ROW_SIZES = [(1, 8, 1), (3, 5, 2), (7, 13, 4), (2, 3, 5), (5, 1, 9), (4, 17, 33)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("ta", "tb"), [(False, False), (False, True), (True, False)])
@pytest.mark.parametrize("size", ROW_SIZES)
def test_one_row_at_a_time_gives_the_loops_bits(size, ta, tb, dtype):
    """The row loop's product (codegen/cpu/row_loop.py) is bit for bit the separate loop's,
    which is what keeps a small model's written-out step equal to its stepwise kernels."""
    batch, other, cols = size
    rng = np.random.default_rng(sum(size) + 3 * ta + tb)
    a = rng.normal(size=(batch, other)).astype(dtype)
    b = rng.normal(size=(batch, cols) if ta else ((cols, other) if tb else (other, cols)))
    b = b.astype(dtype)
    got = run_rows(a, b, ta, tb, dtype)
    assert np.array_equal(got, run_loops(a, b, ta, tb, dtype))
    want = (a.T if ta else a) @ (b.T if tb else b)
    rtol = 2e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(other, batch))


def test_row_parts_refuse_products_that_are_not_a_loop_over_the_batch():
    assert (
        matmul.row_parts("o", "a", "b", (3, 4), (4, 2), False, False, "float32", str, "i0") is None
    )
    # a^T @ b with a's columns the batch, and a @ b with the batch in b
    assert (
        matmul.row_parts("o", "a", "b", (3, None), (3, 2), True, False, "float32", str, "i0")
        is None
    )
    assert (
        matmul.row_parts("o", "a", "b", (None, 4), (4, None), False, False, "float32", str, "i0")
        is None
    )
