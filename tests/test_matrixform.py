"""The displayed formula is the one that runs.

Each parameter's matrix-form formula is evaluated with NumPy on the forward values and compared
with the back end's gradient and with central finite differences; its LaTeX must parse in
matplotlib's mathtext.
"""

import re

import numpy as np
import pytest
import sympy
from matplotlib.mathtext import MathTextParser

import graphnn as gn
from graphnn.errors import DataError
from tests.finite_diff import numeric_gradients, relative_error

TOL = 1e-6

LOSSES = {
    "mse": gn.mse,
    "softmax_cross_entropy": gn.softmax_cross_entropy,
    "binary_cross_entropy_with_logits": gn.binary_cross_entropy_with_logits,
}


def parse_mathtext(tex):
    MathTextParser("path").parse("$" + tex + "$")


def mlp(act, loss):
    x, y = gn.input("x", (3,)), gn.input("y", (2,))
    W1, b1 = gn.param("W1", (3, 4)), gn.param("b1", (4,), init="normal")
    W2, b2 = gn.param("W2", (4, 2)), gn.param("b2", (2,), init="normal")
    h = gn.apply(act, x @ W1 + b1)
    return gn.Graph(LOSSES[loss](h @ W2 + b2, y))


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("act", gn.ACTIVATIONS)
def test_formula_evaluates_to_the_gradient(act, loss):
    g = mlp(act, loss)
    rng = np.random.default_rng(7)
    data = {"x": rng.normal(size=(6, 3)) * 1.5, "y": np.eye(2)[rng.integers(0, 2, 6)]}
    params = {k: v.astype(np.float64) for k, v in g.init_params(seed=1).items()}
    values = g.evaluate_nodes(params, data, dtype=np.float64)
    _, grads = g.value_and_grad(params, data, dtype=np.float64)
    numeric = numeric_gradients(g, params, data)
    for p in g.param_names:
        formula = g.gradient(p)
        shown = formula.evaluate(values)
        assert shown.shape == params[p].shape, p
        assert np.abs(grads[p]).max() > 0, p
        assert relative_error(shown, grads[p]) < TOL, (p, str(formula))
        assert relative_error(shown, numeric[p]) < TOL, (p, str(formula))
        assert relative_error(grads[p], numeric[p]) < TOL, p
        parse_mathtext(formula.latex())


def test_formula_evaluation_sees_changed_values():
    """evaluate really computes from the values given (a wrong value gives a wrong gradient)."""
    g = mlp("tanh", "softmax_cross_entropy")
    rng = np.random.default_rng(8)
    data = {"x": rng.normal(size=(5, 3)), "y": np.eye(2)[rng.integers(0, 2, 5)]}
    params = {k: v.astype(np.float64) for k, v in g.init_params(seed=2).items()}
    values = g.evaluate_nodes(params, data, dtype=np.float64)
    _, grads = g.value_and_grad(params, data, dtype=np.float64)
    bad = dict(values)
    bad["x"] = values["x"] * 2
    assert relative_error(g.gradient("W1").evaluate(bad), grads["W1"]) > 1e-3


def test_formula_evaluation_names_a_node_value_it_lacks():
    g = mlp("tanh", "softmax_cross_entropy")
    params = g.init_params(seed=2)
    data = {"x": np.ones((4, 3)), "y": np.eye(2)[[0, 1, 0, 1]]}
    with pytest.raises(DataError, match=r"^formula x\^T .*: no value for node '(add2|tanh1)'; g\."):
        g.gradient("W1").evaluate(params | data)  # parameters and inputs, not the nodes' values


def two_layer_relu_named():
    x, y = gn.input("x", (64,)), gn.input("y", (10,))
    W1, b1 = gn.param("W1", (64, 128), init="he_normal"), gn.param("b1", (128,), init="zeros")
    W2, b2 = gn.param("W2", (128, 10)), gn.param("b2", (10,))
    z1 = (x @ W1 + b1).named("z1")
    z2 = (gn.relu(z1) @ W2 + b2).named("z2")
    return gn.Graph(gn.softmax_cross_entropy(z2, y))


def normalized(text):
    return re.sub(r"[\s()]", "", text)


def test_relu_softmax_ce_w1_text():
    g = two_layer_relu_named()
    text = str(g.gradient("W1"))
    expected = "x^T ((((softmax(z2) ∘ rowsum(y) - y)/n) W2^T) ∘ relu'(z1))"
    assert normalized(text) == normalized(expected), text
    assert normalized(str(g.gradient("W2"))) == normalized(
        "relu1^T ((softmax(z2) ∘ rowsum(y) - y)/n)"
    )
    assert normalized(str(g.gradient("b2"))) == normalized("1^T ((softmax(z2) ∘ rowsum(y) - y)/n)")
    assert normalized(str(g.gradient("b1"))).startswith("1^Tsoftmaxz2∘rowsumy-y/nW2^T∘relu'z1")


def test_relu_softmax_ce_latex_parses():
    g = two_layer_relu_named()
    tex = g.gradient("W1").latex()
    for piece in (
        "x^{T}",
        r"\operatorname{softmax}",
        r"\circ",
        r"\operatorname{relu}",
        "W_{2}^{T}",
    ):
        assert piece in tex, piece
    for p in g.param_names:
        parse_mathtext(g.gradient(p).latex())


def test_latex_renders_with_agg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = two_layer_relu_named()
    fig = plt.figure(figsize=(8, 1))
    try:
        fig.text(0.01, 0.5, "$" + g.gradient("W1").latex() + "$")
        fig.canvas.draw()
    finally:
        plt.close(fig)


def test_bad_latex_is_rejected_by_the_parser():
    """The mathtext check is real: the environment SymPy uses for Piecewise does not parse."""
    with pytest.raises(ValueError):
        parse_mathtext(r"\begin{cases} a & x > 0 \\ b & \text{otherwise} \end{cases}")


def test_piecewise_latex_parses():
    """bce_with_logits' derivative is a Piecewise; its LaTeX must avoid the cases environment."""
    x, t = gn.input("x", (3,)), gn.input("t", (2,))
    W = gn.param("W", (3, 2))
    g = gn.Graph(gn.binary_cross_entropy_with_logits(x @ W, t))
    tex = g.gradient("W").latex()
    assert "cases" not in tex
    parse_mathtext(tex)


def test_ops_of_several_inputs_show_their_derivative_by_name_and_argument():
    x, y = gn.input("x", (3,)), gn.input("y", (1,))
    W, V = gn.param("W", (3, 1)), gn.param("V", (3, 1))
    logit = (x @ W).named("logit")
    g = gn.Graph(gn.binary_cross_entropy_with_logits(logit, y))
    assert str(g.gradient("W")) == "x^T (bce_with_logits'(logit, y)/n)"
    a, b = sympy.symbols("a b")
    scaled = gn.elementwise("scaled", a * sympy.exp(b), [a, b])
    u, v = (x @ W).named("u"), (x @ V).named("v")
    g = gn.Graph(gn.mse(scaled(u, v), y))
    assert "scaled'(u, v)" in str(g.gradient("W"))
    assert "scaled'_1(u, v)" in str(g.gradient("V"))  # with respect to its second argument
    rng = np.random.default_rng(3)
    data = {"x": rng.normal(size=(5, 3)), "y": rng.normal(size=(5, 1))}
    params = {k: v.astype(np.float64) for k, v in g.init_params(seed=4).items()}
    values = g.evaluate_nodes(params, data, dtype=np.float64)
    numeric = numeric_gradients(g, params, data)
    for p in ("W", "V"):
        assert relative_error(g.gradient(p).evaluate(values), numeric[p]) < TOL, p
        parse_mathtext(g.gradient(p).latex())
    assert r"\operatorname{scaled}'_{1}\left(u, v\right)" in g.gradient("V").latex()


def test_derivative_names_in_latex_are_escaped_and_parse():
    x, y, W = gn.input("x", (3,)), gn.input("y", (1,)), gn.param("W", (3, 1))
    g = gn.Graph(gn.binary_cross_entropy_with_logits((x @ W).named("logit"), y))
    tex = g.gradient("W").latex()
    assert r"\operatorname{bce\_with\_logits}'\left(logit, y\right)" in tex
    parse_mathtext(tex)


def test_a_function_with_a_constant_argument_shows_its_formula():
    # f3(u, 0.5, v) keeps two inputs: a name with a prime would point at the wrong argument
    x, y = gn.input("x", (3,)), gn.input("y", (1,))
    W, V = gn.param("W", (3, 1)), gn.param("V", (3, 1))
    a, b, c = sympy.symbols("a b c")
    f3 = gn.elementwise("f3", a * sympy.exp(c) + b, [a, b, c])
    g = gn.Graph(gn.mse(f3((x @ W).named("u"), 0.5, (x @ V).named("v")), y))
    assert str(g.gradient("V")) == "x^T ((2*sub1/n) ∘ (u*exp(v)))"
    assert "f3'" not in str(g.gradient("W"))


def test_a_sum_loss_shows_the_bare_derivative():
    x, W = gn.input("x", (3,)), gn.param("W", (3, 1))
    assert str(gn.Graph(gn.sum(gn.relu(x @ W))).gradient("W")) == "x^T relu'(matmul1)"


def test_the_batch_size_comes_from_a_batched_node_even_after_parameters():
    # evaluate_nodes lists W before x here; W's 3 rows are not the batch size 5
    x, y, W = gn.input("x", (3,)), gn.input("y", (1,)), gn.param("W", (3, 1))
    g = gn.Graph(0.1 * gn.sum(W * W) + gn.mse(x @ W, y))
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(5, 3)), "y": rng.normal(size=(5, 1))}
    params = {"W": rng.normal(size=(3, 1))}
    values = g.evaluate_nodes(params, data, dtype=np.float64)
    assert next(iter(values)) == "W"
    _, grads = g.value_and_grad(params, data, dtype=np.float64)
    assert relative_error(g.gradient("W").evaluate(values), grads["W"]) < TOL


def test_cross_entropy_formula_holds_for_targets_that_are_not_distributions():
    """rowsum(y) is part of the formula: a zero (padding) row and a row summing to 2."""
    x, y, W = gn.input("x", (3,)), gn.input("y", (2,)), gn.param("W", (3, 2))
    g = gn.Graph(gn.softmax_cross_entropy(x @ W, y))
    assert str(g.gradient("W")) == "x^T ((softmax(matmul1) ∘ rowsum(y) - y)/n)"
    rng = np.random.default_rng(5)
    data = {"x": rng.normal(size=(3, 3)), "y": np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])}
    params = {"W": rng.normal(size=(3, 2))}
    values = g.evaluate_nodes(params, data, dtype=np.float64)
    numeric = numeric_gradients(g, params, data)
    assert relative_error(g.gradient("W").evaluate(values), numeric["W"]) < TOL
    parse_mathtext(g.gradient("W").latex())
