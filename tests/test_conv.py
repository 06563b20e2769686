"""conv2d, pooling and flatten: the indexed contraction against plain loops, its mechanically
derived adjoints against central differences, the CPU kernels against the NumPy reference, and
no kernel index outside its arrays.  (The CUDA kernels run on the rows of ``tests/cases.py``.)"""

import numpy as np
import pytest

import graphnn as gn
from codegen.cpu import backend as cpu_backend
from codegen.cpu import im2col
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


@pytest.mark.parametrize("how", ["im2col", "loops"])
def test_kernels_never_index_outside_their_arrays(how):
    """The generated CPU step, run as plain Python on arrays that refuse out-of-range indices
    (inputs, parameters and every workspace buffer): padding, strides, dilation, pooling; with
    each lowering of the convolution."""
    X = gn.param("X", (1, 5, 4, 2), "normal")
    K = gn.param("K", (3, 2, 2, 3), "normal")
    h = gn.conv2d(X, K, stride=(2, 1), padding=(2, 1), dilation=(1, 2))
    h = gn.max_pool2d(gn.tanh(h), 2, stride=1, padding=1)
    g = gn.Graph(gn.sum(gn.avg_pool2d(h, (2, 1), padding=(1, 0)) ** 2))
    with im2col.forced(how):
        assert ("# im2col: " in cpu_backend.source(g)) == (how == "im2col")
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


# --- the CPU's im2col lowering (codegen/cpu/im2col.py) against the loops and the reference -------

# (H, W, C, kernel, filters, stride, padding, dilation, batch): strides 1/2, padding 0/1/'same',
# dilation 1/2, odd sizes, a batch of 1, 1 and 3 channels
IM2COL_CONVS = [
    (5, 7, 1, (3, 3), 3, 1, "same", 1, 2),
    (7, 6, 3, (3, 2), 2, 2, 1, 1, 1),
    (9, 7, 3, (3, 3), 4, 1, 0, 2, 3),
    (8, 5, 1, (2, 3), 4, (1, 2), (2, 1), (2, 1), 1),
    (6, 9, 3, (5, 5), 2, 2, "same", 1, 2),
    # 3 x 26 x 26 = 2,028 rows: the kernels' gradients are summed over row chunks (2, the last
    # one partial)
    (26, 26, 1, (3, 3), 4, 1, "same", 1, 3),
]


def _stacked_conv_graph(case):
    """conv(case) -> tanh -> conv 3x3 'same': the first conv's input is a parameter and the
    second's an intermediate, so all three forms (forward, kernel's and input's adjoints) run."""
    H, W, C, kernel, filters, stride, padding, dilation, batch = case
    if padding == "same" and stride != 1:
        stride = 1
    X = gn.param("X", (batch, H, W, C), "normal")
    K = gn.param("K", (*kernel, C, filters), "normal")
    K2 = gn.param("K2", (3, 3, filters, 2), "normal")
    h = gn.tanh(gn.conv2d(X, K, stride, padding, dilation))
    return gn.Graph(gn.sum(gn.tanh(gn.conv2d(h, K2, padding="same")) * h.shape[1]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", IM2COL_CONVS)
def test_im2col_lowering_matches_the_loops_and_the_reference(case, dtype):
    """The same graph lowered as im2col + BLAS and as loops: both agree with the NumPy
    reference (float64: to rounding), and the im2col source really is the direct lowering."""
    g = _stacked_conv_graph(case)
    params = {k: v.astype(dtype) for k, v in g.init_params(2).items()}
    want_loss, want = g.value_and_grad(params, {}, backend="numpy", dtype=dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for how in ("im2col", "loops"):
        with im2col.forced(how):
            source = cpu_backend.source(g, None, np.dtype(dtype).name)
            g_fresh = _stacked_conv_graph(case)  # value_and_grad keeps one module per graph
            loss, got = g_fresh.value_and_grad(params, {}, backend="cpu", dtype=dtype)
        train = source[source.index("def loss_and_grads") : source.index("def forward")]
        assert ("np.dot(" in train) == (how == "im2col"), how
        assert train.count("# im2col: ") == (2 if how == "im2col" else 0)  # one per conv
        assert train.count("# col2im: ") == (2 if how == "im2col" else 0)  # X's and h's
        assert relative_error(loss, want_loss) < tol, how
        for p in g.param_names:
            assert got[p].dtype == dtype, (how, p)
            assert relative_error(got[p], want[p]) < tol, (how, p)


@pytest.mark.parametrize("case", IM2COL_CONVS[:4])
def test_im2col_kernels_never_index_outside_their_arrays(case):
    """The gather, the products and the col2im scatter as plain Python on arrays that refuse
    out-of-range indices (:class:`Strict`)."""
    g = _stacked_conv_graph(case)
    with im2col.forced("im2col"):
        assert "# col2im: " in cpu_backend.source(g)
        assert_strict_run_agrees(g, {k: v.astype(np.float32) for k, v in g.init_params(2).items()})


def test_the_kernels_gradient_reuses_the_forward_patches():
    """One gather per image and window in a training kernel: the kernel's adjoint multiplies
    the patches the forward convolution gathered."""
    g = _stacked_conv_graph(IM2COL_CONVS[0])
    with im2col.forced("im2col"):
        source = cpu_backend.source(g)
    train = source[source.index("def loss_and_grads") : source.index("def forward")]
    assert train.count("# im2col: ") == 2
    assert train.count("(gathered above)") == 2


def test_a_small_kernels_gradient_sums_row_chunks():
    """Over more than CHUNK_ROWS rows a small kernel's gradient is one product per chunk of
    rows, summed (the values: test_im2col_lowering_matches_the_loops_and_the_reference)."""
    assert 3 * 26 * 26 > im2col.CHUNK_ROWS
    with im2col.forced("im2col"):
        source = cpu_backend.source(_stacked_conv_graph(IM2COL_CONVS[-1]))
    train = source[source.index("def loss_and_grads") : source.index("def forward")]
    assert train.count(f"# in chunks of {im2col.CHUNK_ROWS} rows") == 2


def test_convolutions_are_im2col_unless_the_module_may_not_call_blas():
    """The default lowering of a convolution is im2col + BLAS, at digits' size and at image28's
    (codegen/cpu/im2col.py's measurements), and the generated code says so; a module that may
    not call BLAS (an export with --no-blas) keeps the loops, even when im2col is forced."""
    from codegen.cpu import matmul

    for hw, k in [(8, 3), (28, 5)]:
        x = gn.input("x", (hw, hw, 1))
        K = gn.param("K", (k, k, 1, 32))
        g = gn.Graph(gn.sum(gn.conv2d(x, K, padding="same")))
        source = cpu_backend.source(g)
        assert "# im2col + BLAS (" in source and "# im2col: " in source, hw
        with matmul.only_loops(), im2col.forced("im2col"):
            source = cpu_backend.source(g)
        assert "np.dot(" not in source and "# loops: this module may not call BLAS" in source


def test_a_contraction_that_is_no_convolution_keeps_the_loops():
    """A hand-written contraction of another shape is not recognised: no im2col, even forced."""
    from codegen.conv_pattern import recognise
    from graphnn.ir.indexed import A

    attrs = {"sizes": (("b", None), ("i", 3), ("k", 2)), "out": (A("b"), A("i")),
             "maps": ((A("b"), A("i", "k")), (A("k"),))}  # fmt: skip
    assert recognise(attrs, ["x", "w"]) is None
    X = gn.param("X", (2, 4), "normal")
    w = gn.param("w", (2,), "normal")
    sizes = {"b": 2, "i": 3, "k": 2}
    y = gn.contract([X, w], [(A("b"), A("i", "k")), (A("k"),)], (A("b"), A("i")), sizes, (2, 3))
    with im2col.forced("im2col"):
        assert "im2col" not in cpu_backend.source(gn.Graph(gn.sum(gn.tanh(y))))


@pytest.mark.parametrize("size, stride, padding", POOLS)
def test_max_pool_routes_to_the_first_maximum_on_ties_and_nan(size, stride, padding):
    """The CPU's argmax mask (codegen/cpu/pool_mask.py, channels innermost) marks the same
    window position as the reference's np.argmax: the first of tied maxima, the first NaN;
    the gradient of sum(1.5 · max_pool(X)) is 1.5 times the mask's sum at each position."""
    X = gn.param("X", (2, 7, 8, 5), "normal")
    g = gn.Graph(gn.sum(gn.max_pool2d(X, size, stride, padding) * 1.5))
    rng = np.random.default_rng(7)
    x = rng.integers(-1, 2, size=X.shape).astype(np.float32)  # many ties
    x[0, 1, 2, :3] = np.nan
    x[1, 4, 4, 1] = np.nan
    _, want = g.value_and_grad({"X": x}, {}, backend="numpy")
    _, got = g.value_and_grad({"X": x}, {}, backend="cpu")
    assert np.all(np.isfinite(want["X"])) and np.any(want["X"] == 0) and np.any(want["X"] > 0)
    np.testing.assert_array_equal(got["X"], want["X"])


def test_a_forward_only_convolution_gathers_a_group_of_images_at_a_time(monkeypatch):
    """Where no kernel's gradient reads the patches (the forward kernel of evaluate/predict),
    they are gathered a group of images at a time into a bounded buffer: groups of 2 over 5
    images (the last one partial) match the reference, also on arrays that refuse
    out-of-range indices."""
    x = gn.input("x", (7, 6, 3))
    K = gn.param("K", (3, 2, 3, 4), "normal")
    y = gn.conv2d(x, K, stride=(2, 1), padding=1, dilation=(1, 2))
    g = gn.Graph(gn.sum(gn.tanh(y)), outputs=[y])
    name = g.training.name_of(y)
    _, oh, ow, _ = y.shape
    monkeypatch.setattr(im2col, "GROUP_ENTRIES", 2 * oh * ow * 3 * 2 * 3)
    with im2col.forced("im2col"):
        module = cpu_backend.build(g, None, "float32", outputs=[name])
        source = cpu_backend.source(g, None, "float32", outputs=[name])
    assert "# im2col by groups of" in source[source.index("def forward") :]
    assert "# im2col by groups of" not in source[: source.index("def forward")]
    rng = np.random.default_rng(4)
    xv = rng.normal(size=(5, 7, 6, 3)).astype(np.float32)
    Kv = rng.normal(size=K.shape).astype(np.float32)
    want = g.evaluate_nodes({"K": Kv}, {"x": xv}, dtype=np.float32)[name]
    for run in (module.forward, module.forward.py_func):
        args = (xv, Kv) if run is module.forward else (xv.view(Strict), Kv.view(Strict))
        got = run(*args)
        got = got[0] if isinstance(got, tuple) else got
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
