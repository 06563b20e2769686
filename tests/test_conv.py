"""conv2d, pooling and flatten: the indexed contraction against plain loops, its mechanically
derived adjoints against central differences, the CPU kernels against the NumPy reference, and
no kernel index outside its arrays.  (The CUDA kernels run on the rows of ``tests/cases.py``.)"""

import numpy as np
import pytest

import graphnn as gn
from codegen.cpu import backend as cpu_backend
from graphnn.errors import GraphError, ShapeError
from tests.finite_diff import numeric_gradients, relative_error

# (H, W, C, kernel, filters, stride, padding, dilation, batch): odd sizes, a batch of 1
CONVS = [
    (5, 7, 2, (3, 3), 3, 1, 0, 1, 4),
    (7, 6, 3, (3, 2), 2, 2, 1, 1, 1),
    (8, 5, 1, (2, 3), 4, (1, 2), (2, 1), (2, 1), 3),
    (6, 6, 2, (3, 3), 2, 3, 2, 2, 2),
    (4, 9, 2, (1, 1), 3, 2, 0, 1, 1),
]


def pair(v):
    return v if isinstance(v, tuple) else (v, v)


def conv_loops(x, K, stride, padding, dilation):
    """conv2d as the textbook loops, reading zeros outside x."""
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    b, H, W, C = x.shape
    kh, kw, _, filters = K.shape
    oh = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((b, oh, ow, filters))
    for i in range(oh):
        for j in range(ow):
            for k in range(kh):
                for l in range(kw):  # noqa: E741
                    r, c = sh * i + dh * k - ph, sw * j + dw * l - pw
                    if 0 <= r < H and 0 <= c < W:
                        out[:, i, j, :] += x[:, r, c, :] @ K[k, l]
    return out


def pool_loops(x, size, stride, padding, reduce):
    (kh, kw), (sh, sw), (ph, pw) = pair(size), pair(stride), pair(padding)
    b, H, W, C = x.shape
    oh, ow = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    out = np.zeros((b, oh, ow, C))
    for i in range(oh):
        for j in range(ow):
            window = [
                x[:, sh * i + k - ph, sw * j + l - pw, :]
                for k in range(kh)
                for l in range(kw)  # noqa: E741
                if 0 <= sh * i + k - ph < H and 0 <= sw * j + l - pw < W
            ]
            out[:, i, j, :] = reduce(np.stack(window), kh * kw)
    return out


def _conv_graph(case, x_is_param=False):
    H, W, C, kernel, filters, stride, padding, dilation, batch = case
    x = gn.param("X", (batch, H, W, C), "normal") if x_is_param else gn.input("x", (H, W, C))
    K = gn.param("K", (*kernel, C, filters), "normal")
    y = gn.conv2d(x, K, stride, padding, dilation)
    return x, K, y


@pytest.mark.parametrize("case", CONVS)
def test_conv2d_matches_the_loops(case):
    x, K, y = _conv_graph(case)
    rng = np.random.default_rng(0)
    xv = rng.normal(size=(case[-1], *x.shape[1:]))
    Kv = rng.normal(size=K.shape)
    g = gn.Graph(gn.sum(y), outputs=[y])
    got = g.evaluate_nodes({"K": Kv}, {"x": xv}, dtype=np.float64)[g.training.name_of(y)]
    want = conv_loops(xv, Kv, *case[5:8])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CONVS)
def test_conv2d_gradients_of_kernel_and_input(case):
    """Both adjoints (the kernel's correlation, the input's inverted scatter) by central
    differences; the input is a parameter so that its adjoint is exercised."""
    x, K, y = _conv_graph(case, x_is_param=True)
    g = gn.Graph(gn.sum(gn.tanh(y) * y))
    params = {k: v.astype(np.float64) for k, v in g.init_params(1).items()}
    _, grads = g.value_and_grad(params, {}, backend="numpy", dtype=np.float64)
    numeric = numeric_gradients(g, params, {})
    for p in ("X", "K"):
        assert relative_error(grads[p], numeric[p]) < 1e-7, p
    _, cpu = g.value_and_grad({k: v.astype(np.float32) for k, v in params.items()}, {}, "cpu")
    for p in ("X", "K"):
        assert relative_error(cpu[p], grads[p]) < 1e-5, p


POOLS = [((2, 2), None, 0), ((3, 2), (2, 1), (1, 1)), ((3, 3), 1, 1), ((2, 3), 3, 0)]


@pytest.mark.parametrize("size, stride, padding", POOLS)
def test_pools_match_the_loops_and_their_gradients(size, stride, padding):
    X = gn.param("X", (2, 7, 8, 3), "normal")
    mx = gn.max_pool2d(X, size, stride, padding)
    av = gn.avg_pool2d(X, size, stride, padding)
    g = gn.Graph(gn.sum(gn.tanh(mx) * 1.5 + av**2), outputs=[mx, av])
    params = {"X": np.random.default_rng(3).normal(size=X.shape)}
    nodes = g.evaluate_nodes(params, {}, dtype=np.float64)
    st = size if stride is None else stride
    want_max = pool_loops(params["X"], size, st, padding, lambda w, k: w.max(axis=0))
    want_avg = pool_loops(params["X"], size, st, padding, lambda w, k: w.sum(axis=0) / k)
    np.testing.assert_allclose(nodes[g.training.name_of(mx)], want_max, rtol=1e-12)
    np.testing.assert_allclose(nodes[g.training.name_of(av)], want_avg, rtol=1e-12)
    _, grads = g.value_and_grad(params, {}, backend="numpy", dtype=np.float64)
    assert relative_error(grads["X"], numeric_gradients(g, params, {})["X"]) < 1e-7
    _, cpu = g.value_and_grad({"X": params["X"].astype(np.float32)}, {}, "cpu")
    assert relative_error(cpu["X"], grads["X"]) < 1e-5


class Strict(np.ndarray):
    """An array that raises on an integer index outside [0, size) (NumPy wraps negatives)."""

    def _check(self, idx):
        idx = idx if isinstance(idx, tuple) else (idx,)
        for axis, i in enumerate(idx):
            if isinstance(i, int | np.integer) and not 0 <= i < self.shape[axis]:
                raise IndexError(f"index {idx} outside shape {self.shape}")

    def __getitem__(self, idx):
        self._check(idx)
        return super().__getitem__(idx)

    def __setitem__(self, idx, value):
        self._check(idx)
        super().__setitem__(idx, value)


def test_kernels_never_index_outside_their_arrays():
    """The generated CPU step, run as plain Python on arrays that refuse out-of-range indices
    (inputs, parameters and every workspace buffer): padding, strides, dilation, pooling."""
    X = gn.param("X", (1, 5, 4, 2), "normal")
    K = gn.param("K", (3, 2, 2, 3), "normal")
    h = gn.conv2d(X, K, stride=(2, 1), padding=(2, 1), dilation=(1, 2))
    h = gn.max_pool2d(gn.tanh(h), 2, stride=1, padding=1)
    g = gn.Graph(gn.sum(gn.avg_pool2d(h, (2, 1), padding=(1, 0)) ** 2))
    assert_strict_run_agrees(g, {k: v.astype(np.float32) for k, v in g.init_params(2).items()})


def assert_strict_run_agrees(g, params):
    """The CPU step as plain Python on :class:`Strict` arrays matches the reference."""
    module = cpu_backend.build(g, None, "float32")
    args = [params[p] for p in g.param_names]
    ws = tuple(w.view(Strict) for w in module.workspace(1, *args))
    strict = [a.view(Strict) for a in args]
    loss, *grads = module.loss_and_grads.py_func(*strict, ws)
    want_loss, want = g.value_and_grad(params, {}, backend="numpy")
    assert relative_error(loss, want_loss) < 1e-5
    for p, got in zip(g.param_names, grads, strict=True):
        assert relative_error(got, want[p]) < 1e-5, p


def test_strict_array_catches_a_negative_index():
    a = np.zeros((2, 2)).view(Strict)
    with pytest.raises(IndexError):
        a[-1, 0]


def test_bad_layer_arguments_are_named():
    x = gn.input("x", (5, 5, 2))
    with pytest.raises(ShapeError, match="kernel 'K'"):
        gn.conv2d(x, gn.param("K", (3, 3, 4, 2)))
    with pytest.raises(ShapeError, match="does not fit"):
        gn.conv2d(x, gn.param("K", (7, 7, 2, 2)))
    with pytest.raises(GraphError, match="stride"):
        gn.conv2d(x, gn.param("K", (3, 3, 2, 2)), stride=0)
    with pytest.raises(ShapeError, match="must be \\(batch, height, width, channels\\)"):
        gn.max_pool2d(gn.input("v", (5,)), 2)
    with pytest.raises(GraphError, match="at most half"):
        gn.max_pool2d(x, 2, padding=2)


def test_a_contraction_whose_last_output_position_is_inverted():
    """A strided 1-D convolution written with gn.contract: the input's adjoint writes
    dX[b, 2i + k - 1], so its last output position is solved for i per element (the loop form
    that does not run a row innermost); central differences and the CPU agree."""
    from graphnn.ir.indexed import A

    X = gn.param("X", (3, 9), "normal")
    w = gn.param("w", (3,), "normal")
    sizes = {"b": 3, "i": 5, "k": 3}
    y = gn.contract(
        [X, w], [(A("b"), A(("i", 2), "k", const=-1)), (A("k"),)], (A("b"), A("i")), sizes, (3, 5)
    )
    g = gn.Graph(gn.sum(gn.tanh(y) * y))
    params = {k: v.astype(np.float64) for k, v in g.init_params(4).items()}
    _, grads = g.value_and_grad(params, {}, backend="numpy", dtype=np.float64)
    numeric = numeric_gradients(g, params, {})
    _, cpu = g.value_and_grad({k: v.astype(np.float32) for k, v in params.items()}, {}, "cpu")
    source = cpu_backend.source(g)
    assert "solved for i" in source
    assert_strict_run_agrees(g, {k: v.astype(np.float32) for k, v in params.items()})
    for p in ("X", "w"):
        assert relative_error(grads[p], numeric[p]) < 1e-7, p
        assert relative_error(cpu[p], grads[p]) < 1e-5, p


@pytest.mark.parametrize("rows", [1, 3])
def test_batch_input_of_one_row_and_more_on_cpu(rows):
    """The batch axis of an input image (None in the graph) at 1 and 3 rows, CPU vs NumPy."""
    x, K, y = _conv_graph(CONVS[2])
    h = gn.flatten(gn.max_pool2d(gn.relu(y), 2, 1, 1))
    g = gn.Graph(gn.mean(gn.tanh(h @ gn.param("W", (h.shape[1], 2)))))
    params = {k: v.astype(np.float32) for k, v in g.init_params(5).items()}
    data = {"x": np.random.default_rng(rows).normal(size=(rows, *x.shape[1:])).astype(np.float32)}
    want_loss, want = g.value_and_grad(params, data, backend="numpy")
    loss, got = g.value_and_grad(params, data, backend="cpu")
    assert relative_error(loss, want_loss) < 1e-5
    for p in g.param_names:
        assert relative_error(got[p], want[p]) < 1e-5, p
