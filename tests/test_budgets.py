"""Budgets (graphnn/budgets.py): each bounds time or memory before the work, with an override."""

import io
import struct
import threading
import time
import zipfile

import numpy as np
import pytest
import sympy

import graphnn as gn
from graphnn import budgets
from graphnn.budgets import LimitError
from graphnn.deadline import DeadlineExceeded, deadline
from graphnn.derive import store
from graphnn.errors import GraphnnWarning, SpecError
from graphnn.ir.elementwise import ARGS
from graphnn.spec.build import load_spec, loads_spec

z = ARGS[0]
SPEC = """
[inputs]
x = [2]
y = [1]
[params]
w = [2, 1]
[graph]
pred = "PRED"
loss = "mse(pred, y)"
"""


def spec(pred="sigmoid(x @ w)", head="", tail=""):
    return head + SPEC.replace("PRED", pred) + tail


# --- time: the derivative screen -------------------------------------------------------------


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """No stored derivatives and no in-process memo; a short budget."""
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GRAPHNN_DERIVE_SECONDS", "1.5")
    store.derivative.cache_clear()
    yield tmp_path
    store.derivative.cache_clear()


@pytest.mark.parametrize(
    "f",
    [
        sympy.exp(sympy.exp(sympy.exp(z))),
        sympy.tanh(sympy.tanh(sympy.tanh(sympy.tanh(sympy.tanh(z))))),
    ],
    ids=["exp-exp-exp", "tanh-5"],
)
def test_a_formula_past_the_budget_keeps_its_plain_derivative(fresh, f):
    started = time.monotonic()
    with pytest.warns(
        GraphnnWarning, match=r"took over 1.5 s .*GRAPHNN_DERIVE_SECONDS.*unsimplified"
    ):
        d = store.derivative(f, 0)
    assert time.monotonic() - started < 6
    assert d.over_budget and d.form == "input" and d.expr == sympy.diff(f, z)
    assert not list((fresh / "derivatives").glob("*.pickle"))  # not kept for the next process
    import mpmath

    assert mpmath.mp.dps == 15


def test_a_spec_function_past_the_budget_builds(fresh, tmp_path):
    text = '[functions]\nf = "exp(exp(exp(z)))"\n' + spec("f(x @ w)")
    with pytest.warns(GraphnnWarning) as caught:
        built = loads_spec(text, tmp_path / "s.toml")
    assert built.graph.param_names == ["w"]
    # one warning, and the budget spent once: the graph's stability audit does not probe the
    # unscreened derivative again (which ran out of the budget a second time)
    budget = [str(w.message) for w in caught if "GRAPHNN_DERIVE_SECONDS" in str(w.message)]
    assert len(budget) == 1 and "exp(exp(exp(z)))" in budget[0], budget


def test_an_ordinary_derivative_is_screened_within_the_budget(fresh):
    d = store.derivative(1 / (1 + sympy.exp(-z)), 0)
    assert not d.over_budget and d.form == "output"


def test_a_deadline_never_fires_after_its_block():
    for _ in range(20):  # a block ending about when the deadline does
        try:
            with deadline(0.002):
                time.sleep(0.002)
        except DeadlineExceeded:
            pass
    time.sleep(0.05)  # any late exception would be raised here


def test_a_deadline_stops_only_its_own_thread():
    caught = []

    def other():
        try:
            with deadline(0.05):
                while True:
                    pass
        except DeadlineExceeded:
            caught.append(True)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(5)
    assert caught == [True]


# --- size: graph nodes, parameter bytes ------------------------------------------------------


def chain(n):
    h = gn.input("x", (2,)) @ gn.param("w", (2, 1))
    for _ in range(n):
        h = gn.tanh(h)
    return gn.mse(h, gn.input("t", (1,)))


def test_the_node_budget(monkeypatch):
    graph = gn.Graph(chain(1000))  # building and differentiating it is cheap
    with pytest.raises(LimitError, match=r"has 1,00\d nodes; the limit is 500 .*GRAPHNN_MAX_NODES"):
        gn.compile(graph, backend="cpu")  # generating and compiling its code is not
    assert gn.compile(graph, backend="numpy").step == 0  # the reference compiles nothing
    monkeypatch.setenv("GRAPHNN_MAX_NODES", "2000")
    graph.check_node_budget()


def test_the_node_budget_in_a_spec(tmp_path):
    lines = ['h0 = "tanh(x @ w)"'] + [f'h{k} = "tanh(h{k - 1})"' for k in range(1, 600)]
    text = spec().replace('pred = "sigmoid(x @ w)"', "\n".join(lines)).replace("(pred", "(h599")
    with pytest.raises(SpecError, match=r"s.toml \[graph\]: the graph has .* GRAPHNN_MAX_NODES"):
        loads_spec(text, tmp_path / "s.toml")


def test_the_parameter_budget_is_checked_before_allocating():
    x, t = gn.input("x", (2,)), gn.input("t", (1,))
    big = [gn.sum(gn.param(f"p{k}", (10000, 10000))) for k in range(20)]
    graph = gn.Graph(gn.mse(x @ gn.param("w", (2, 1)), t), big)
    with pytest.raises(LimitError, match=r"parameters and adam's 2 buffers of them take 24.0 GB"):
        gn.compile(graph, optimizer=gn.Adam(), backend="numpy")
    with pytest.raises(LimitError, match=r"take 16.0 GB in float64.*GRAPHNN_MAX_PARAM_BYTES"):
        graph.init_params(dtype=np.float64)
    assert isinstance(LimitError("x"), MemoryError)


def test_the_parameter_budget_in_a_spec(tmp_path, monkeypatch):
    params = "w = [2, 1]\n" + "".join(f"p{k} = [10000, 10000]\n" for k in range(3))
    uses = 'q = "sum(p0) + sum(p1) + sum(p2)"\nloss = "mse(pred, y)"'
    text = spec().replace("w = [2, 1]\n", params).replace('loss = "mse(pred, y)"', uses)
    with pytest.raises(
        SpecError, match=r"s.toml \[params\]: the parameters take 1.2 GB in float32"
    ):
        loads_spec(text, tmp_path / "s.toml")
    monkeypatch.setenv("GRAPHNN_MAX_PARAM_BYTES", "2e9")
    loads_spec(text, tmp_path / "s.toml")


def test_a_bad_budget_value_says_so(monkeypatch):
    monkeypatch.setenv("GRAPHNN_MAX_NODES", "lots")
    with pytest.raises(LimitError, match="GRAPHNN_MAX_NODES='lots' is not a number > 0"):
        budgets.limit("GRAPHNN_MAX_NODES")


# --- spec text: nesting and formula length ---------------------------------------------------


def test_the_toml_depth_budget_names_the_line(tmp_path):
    deep = "x = " + "[" * 33 + "]" * 33 + "\n"
    with pytest.raises(SpecError, match=r"s.toml line 10: .*more than 32 levels .*TOML_DEPTH"):
        loads_spec(spec() + deep, tmp_path / "s.toml")
    brackets_in_strings = spec(tail='[train]\nloss = "loss" # ' + "[" * 40 + "\n")
    loads_spec(brackets_in_strings.replace('"PRED"', '"sigmoid(x @ w)"'), tmp_path / "s.toml")


def test_the_formula_length_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHNN_MAX_FORMULA_CHARS", "10")
    with pytest.raises(SpecError, match=r"14 characters; limit 10 \(GRAPHNN_MAX_FORMULA_CHARS\)"):
        loads_spec(spec(), tmp_path / "s.toml")


# --- data: CSV and .npz ----------------------------------------------------------------------

DATA = '[data]\nsource = "SOURCE"\nvalidation_split = 0\n'


def data_spec(tmp_path, source, columns=""):
    path = tmp_path / "s.toml"
    path.write_text(spec(tail=DATA.replace("SOURCE", source) + columns))
    return load_spec(path)


def test_the_data_budget_for_csv(tmp_path, monkeypatch):
    (tmp_path / "d.csv").write_text("a,b,c\n" + "1,2,0\n" * 8)
    built = data_spec(tmp_path, "d.csv", 'x = ["a", "b"]\ny = ["c"]\n')
    monkeypatch.setenv("GRAPHNN_MAX_DATA_BYTES", "100")
    with pytest.raises(SpecError, match=r"8 rows of 3 columns take 192 bytes.*MAX_DATA_BYTES"):
        built.load_data()
    monkeypatch.setenv("GRAPHNN_MAX_DATA_BYTES", "20")
    with pytest.raises(SpecError, match=r"d.csv has 54 bytes; the limit is 20 bytes"):
        built.load_data()


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def forged(shape) -> bytes:
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(16)


def test_a_forged_npy_header_is_refused_before_allocating(tmp_path):
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as z:
        z.writestr("x.npy", forged((10**12, 2)))
        z.writestr("y.npy", npy(np.zeros((1, 1))))
    built = data_spec(tmp_path, "d.npz")
    with pytest.raises(SpecError, match=r"x.npy's header says shape \(1000000000000, 2\)"):
        built.load_data()


def test_only_the_members_a_spec_uses_are_read(tmp_path, monkeypatch):
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as z:
        z.writestr("x.npy", npy(np.ones((4, 2))))
        z.writestr("y.npy", npy(np.zeros((4, 1))))
        z.writestr("unused.npy", forged((10**12, 2)))  # would fail, and be huge, if read
        z.writestr("notes.txt", "not an array at all")
    built = data_spec(tmp_path, "d.npz")
    train, _ = built.load_data()
    assert train["x"].shape == (4, 2)
    monkeypatch.setenv("GRAPHNN_MAX_DATA_BYTES", "90")
    with pytest.raises(SpecError, match=r"the arrays x, y of .* take 96 bytes; the limit is 90"):
        built.load_data()


def test_an_npz_that_is_no_zip(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(SpecError, match=r"cannot read .*d.npz as a .npz file \(BadZipFile"):
        data_spec(tmp_path, "d.npz").load_data()


def test_deadline_stops_a_block_that_swallows_the_first_request():
    """SymPy has bare except clauses: a block that swallows one request is asked again (1 s on)."""
    from graphnn.deadline import DeadlineExceeded, deadline

    swallowed = 0
    with pytest.raises(DeadlineExceeded):
        with deadline(0.05):
            while True:
                try:
                    time.sleep(0.001)
                except BaseException:  # noqa: BLE001 - what the block under test does
                    swallowed += 1
                    if swallowed > 1:
                        raise
    assert swallowed == 2
    time.sleep(0.3)  # no request arrives after the block ended


# --- memory: the CPU's step buffers ------------------------------------------------------------


def test_step_buffers_past_the_budget_stop_before_training(monkeypatch):
    """A convolution's patch buffer grows with the batch: past GRAPHNN_MAX_WORKSPACE_BYTES the
    fit stops with the size, the batch and the variable, and leaves the parameters alone; a
    smaller batch trains under the same budget."""
    x, y = gn.input("x", (6, 6, 2)), gn.input("y", (3,))
    K = gn.param("K", (3, 3, 2, 4))
    h = gn.flatten(gn.relu(gn.conv2d(x, K, padding=1)))
    g = gn.Graph(gn.softmax_cross_entropy(h @ gn.param("W", (144, 3)), y))
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(64, 6, 6, 2)), "y": np.eye(3)[rng.integers(0, 3, 64)]}
    model = gn.compile(g, gn.SGD(lr=0.1), backend="cpu", seed=0)
    before = {k: v.copy() for k, v in model.params.items()}
    monkeypatch.setenv("GRAPHNN_MAX_WORKSPACE_BYTES", "200000")
    with pytest.raises(LimitError, match=r"for a batch of 64 rows take .*GRAPHNN_MAX_WORKSPACE"):
        model.fit(data, epochs=1, batch_size=64)
    assert all(np.array_equal(before[k], model.params[k]) for k in before)
    model.fit(data, epochs=1, batch_size=4)
    assert not np.array_equal(before["K"], model.params["K"])
