"""embedding (a one-hot contraction whose table gradient is the derived adjoint), one_hot's NaN
rows for bad ids, layer_norm, and their spec forms.  (Gradients, CPU and CUDA: the
``embedding`` and ``layer_norm`` rows of tests/cases.py.)"""

import numpy as np
import pytest

import graphnn as gn
from graphnn.spec.build import loads_spec
from tests.finite_diff import numeric_gradients, relative_error


def _graph():
    ids, E = gn.input("ids", (4,)), gn.param("E", (7, 3), "normal")
    emb = gn.embedding(ids, E)
    return gn.Graph(gn.sum(gn.tanh(emb) * emb), [emb]), emb


def test_embedding_picks_the_rows_and_its_table_gradient_is_derived():
    g, emb = _graph()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, size=(5, 4)).astype(float)
    params = {"E": rng.normal(size=(7, 3))}
    rows = g.evaluate_nodes(params, {"ids": ids}, np.float64)[g.training.name_of(emb)]
    np.testing.assert_array_equal(rows, params["E"][ids.astype(int)])
    _, grads = g.value_and_grad(params, {"ids": ids}, backend="numpy", dtype=np.float64)
    assert relative_error(grads["E"], numeric_gradients(g, params, {"ids": ids})["E"]) < 1e-7
    # the table gradient is a contraction over the one-hot ids, shown as such
    assert str(g.gradient("E")).startswith("Σ_{b,s} one_hot1[b, s, v] · ")


@pytest.mark.parametrize("bad", [7.0, -1.0, 2.5, np.nan])
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_an_id_outside_the_table_is_nan_not_a_wrong_row(bad, backend):
    g, _ = _graph()
    params = {"E": np.ones((7, 3), np.float32)}
    ids = np.zeros((2, 4), np.float32)
    loss, _ = g.value_and_grad(params, {"ids": ids}, backend=backend)
    assert np.isfinite(loss)
    ids[1, 2] = bad
    loss, _ = g.value_and_grad(params, {"ids": ids}, backend=backend)
    assert np.isnan(loss)


def test_layer_norm_normalizes_the_last_axis():
    h = gn.input("h", (6,))
    y = gn.layer_norm(h)
    g = gn.Graph(gn.sum(y * gn.param("w", (6,))), [y])
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(4, 6))
    out = g.evaluate_nodes({"w": np.ones(6)}, {"h": x}, np.float64)[g.training.name_of(y)]
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, want, rtol=1e-10)


SPEC = """
[inputs]
ids = [3]
y = [2]
[model]
input = "ids"
target = "y"
loss = "softmax_cross_entropy"
[[layers]]
embedding = { vocab = 5, dim = 4 }
[[layers]]
flatten = true
[[layers]]
units = 2
"""


def test_embedding_layer_kind_and_formula():
    g = loads_spec(SPEC, "e.toml").graph
    assert g.shapes == {"E1": (5, 4), "W3": (12, 2), "b3": (2,)}
    assert g.forward.node("h1").attr("fn") == "embedding"
    text = SPEC.replace("[model]", "[params]\nT = { shape = [5, 4] }\n[graph]\n"
                        'h = "layer_norm(flatten(embedding(ids, T)))"\n'
                        'loss = "sum(h)"\n[model]').split("[model]")[0]  # fmt: skip
    g2 = loads_spec(text + '[train]\nloss = "loss"\n', "f.toml").graph
    assert g2.forward.node("h").shape == (None, 12)
