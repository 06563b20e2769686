"""Derivation is width-independent: a 4096-wide MLP derives the same formulas as an 8-wide one.

Nothing is scalarized, so the training graph and every gradient formula depend on the network's
structure only.  (No timing assertions: the point is the equality of what is derived.)
"""

import pytest

import graphnn as gn


def mlp3(width, act="relu", loss="softmax_ce"):
    x, y = gn.input("x", (64,)), gn.input("y", (10,))
    W1, b1 = gn.param("W1", (64, width), init="he_normal"), gn.param("b1", (width,), "zeros")
    W2, b2 = gn.param("W2", (width, width), init="he_normal"), gn.param("b2", (width,), "zeros")
    W3, b3 = gn.param("W3", (width, 10)), gn.param("b3", (10,), "zeros")
    h1 = gn.apply(act, x @ W1 + b1)
    h2 = gn.apply(act, h1 @ W2 + b2)
    out = h2 @ W3 + b3
    if loss == "softmax_ce":
        return gn.Graph(gn.softmax_cross_entropy(out, y))
    return gn.Graph(gn.mse(out, y))


@pytest.mark.parametrize("act, loss", [("relu", "softmax_ce"), ("tanh", "mse")])
def test_formulas_do_not_depend_on_width(act, loss):
    narrow, wide = mlp3(8, act, loss), mlp3(4096, act, loss)
    assert wide.shapes["W2"] == (4096, 4096) and narrow.shapes["W2"] == (8, 8)
    assert narrow.param_names == wide.param_names == ["W1", "b1", "W2", "b2", "W3", "b3"]
    for p in narrow.param_names:
        small, big = narrow.gradient(p), wide.gradient(p)
        assert small.count_ops() == big.count_ops(), p
        assert small.count_ops() >= 2, p  # a real formula, not a bare symbol
        assert str(small) == str(big), p
        assert small.latex() == big.latex(), p
        assert "4096" not in str(big) and "4096" not in big.latex(), p
    # The deepest gradient goes through every layer.
    assert str(wide.gradient("W1")).count("W3^T") == 1
    assert str(wide.gradient("W1")).count("W2^T") == 1


def test_graphs_do_not_depend_on_width():
    narrow, wide = mlp3(8), mlp3(4096)
    assert len(narrow.forward) == len(wide.forward)
    assert len(narrow.training) == len(wide.training)
    assert [n.name for n in narrow.training.nodes] == [n.name for n in wide.training.nodes]
    assert [n.op for n in narrow.training.nodes] == [n.op for n in wide.training.nodes]
    assert narrow.grad_names == wide.grad_names
    # Same structure, but the shapes really are the declared widths.
    widths = {n.shape for n in wide.training.nodes}
    assert (4096, 4096) in widths and (8, 8) not in widths
