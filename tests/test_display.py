"""How gradients read: short numbers, constants in sight, relu' as an Iverson bracket.

Each display change is checked twice: the text a reader sees, and that the displayed formula still
evaluates to the back end's gradient (so a prettier formula is never a different one).
"""

import doctest
import html
import importlib
import re

import numpy as np
import pytest
import sympy
from matplotlib.mathtext import MathTextParser

import graphnn as gn
from graphnn.derive.formula import short_float, show, show_latex
from graphnn.derive.readable import readable
from graphnn.inspect import explain
from tests.finite_diff import relative_error


def parse_mathtext(tex):
    MathTextParser("path").parse("$" + tex + "$")


def focal():
    x, y = gn.input("x", (4,)), gn.input("y", (3,))
    p = gn.sigmoid(x @ gn.param("W", (4, 3)))
    return gn.Graph(gn.mean(-(y * (1 - p) ** 2 * gn.log(p))))


def decayed_relu():
    x, y = gn.input("x", (4,)), gn.input("y", (3,))
    W1, W2 = gn.param("W1", (4, 5)), gn.param("W2", (5, 3))
    h = gn.relu(x @ W1)
    return gn.Graph(gn.softmax_cross_entropy(h @ W2, y) + 1e-4 * gn.sum(W1 * W1))


def assert_shown_is_computed(g, seed=3):
    rng = np.random.default_rng(seed)
    data = {"x": rng.normal(size=(6, 4)), "y": rng.uniform(size=(6, 3))}
    params = {k: v.astype(np.float64) for k, v in g.init_params(seed=seed).items()}
    values = g.evaluate_nodes(params, data, dtype=np.float64)
    _, grads = g.value_and_grad(params, data, dtype=np.float64)
    for p in g.param_names:
        formula = g.gradient(p)
        assert relative_error(formula.evaluate(values), grads[p]) < 1e-6, (p, str(formula))
        parse_mathtext(formula.latex())


def test_floats_print_short():
    assert [short_float(v) for v in (1e-4, 2e-4, 0.5, 3.0, 2.5e-7)] == [
        "1e-4",
        "2e-4",
        "0.5",
        "3",
        "2.5e-7",
    ]
    a = sympy.Symbol("W")
    assert show(sympy.Float(1e-4) * a) == "1e-4*W"
    parse_mathtext(show_latex(sympy.Float(1e-4) * a))


def test_weight_decay_shows_its_scalar():
    g = decayed_relu()
    text = str(g.gradient("W1"))
    assert text.startswith("2e-4*W1 + x^T "), text
    assert "0.000" not in text
    e = explain(g, "W1").text().split("Generated kernel lines")[0]  # the kernel is codegen's
    assert "0.000100000" not in e and "mul2 = 1e-4*reduce_sum1" in e, e
    assert_shown_is_computed(g)


def test_relu_derivative_is_an_iverson_bracket():
    relu = sympy.Piecewise((1, sympy.Symbol("z") > 0), (0, True))
    assert show(relu) == "[z > 0]"
    assert show_latex(relu) == r"\left[z > 0\right]"
    parse_mathtext(show_latex(relu))
    e = explain(decayed_relu(), "W1").text()
    assert "Piecewise" not in e
    assert "∂relu1/∂matmul1 = [relu1 > 0]" in e, e


def test_a_piecewise_that_is_not_an_indicator_keeps_its_cases():
    z = sympy.Symbol("z")
    expr = sympy.Piecewise((z, z > 0), (0, True))
    assert show(expr) == "Piecewise((z, z > 0), (0, True))"
    parse_mathtext(show_latex(expr))


def test_focal_loss_shows_its_constants_and_scalars():
    g = focal()
    text = str(g.gradient("W"))
    # 1 - p in sight (not a hidden sub1), scalars as factors (not "-1/(3*n) ∘ log1", "*-1")
    assert "(1 - sigmoid1)" in text and "sub1" not in text, text
    assert "∘ (log1)" not in text and "*-1" not in text and "/(3*n) ∘" not in text, text
    assert "sub1 = 1 - sigmoid1" in explain(g, "W").text()
    assert_shown_is_computed(g)


def three_hidden_layers():
    x, y = gn.input("x", (4,)), gn.input("y", (3,))
    widths = [4, 5, 6, 5, 3]
    h, ws = x, []
    for k in range(1, 5):
        W = gn.param(f"W{k}", (widths[k - 1], widths[k]))
        b = gn.param(f"b{k}", (widths[k],), init="normal")
        ws.append(W)
        h = h @ W + b if k == 4 else gn.relu(h @ W + b)
    return gn.Graph(gn.softmax_cross_entropy(h, y) + 1e-4 * gn.sum(ws[0] * ws[0]))


def test_a_deep_chain_reads_as_named_deltas():
    g = three_hidden_layers()
    bp = g.backprop()
    lines = bp.text().splitlines()
    assert [d.name for d in bp.deltas] == ["δ4", "δ3", "δ2", "δ1"]
    assert lines[0] == "δ4 = dL/d(add4) = (softmax(add4) ∘ rowsum(y) - y)/n"
    assert lines[1] == "δ3 = dL/d(add3) = (δ4 W4^T) ∘ relu'(add3)"
    assert lines[3] == "δ1 = dL/d(add1) = (δ2 W2^T) ∘ relu'(add1)"
    assert "dL/dW1 = 2e-4*W1 + x^T δ1" in lines
    assert "dL/dW2 = relu1^T δ2" in lines and "dL/db3 = 1^T δ3" in lines
    # the shared chain is written once: no line nests parentheses
    assert max(line.count("((") for line in lines) == 0, lines
    assert str(g.gradient("W1")).count("((((") > 0  # the expanded form it replaces
    for line in bp.latex():
        parse_mathtext(line)


def test_named_gradients_evaluate_to_the_kernels_values():
    g = three_hidden_layers()
    rng = np.random.default_rng(5)
    data = {"x": rng.normal(size=(7, 4)), "y": np.eye(3)[rng.integers(0, 3, 7)]}
    params = {k: v.astype(np.float64) for k, v in g.init_params(seed=5).items()}
    values = g.evaluate_nodes(params, data, dtype=np.float64)
    _, grads = g.value_and_grad(params, data, dtype=np.float64)
    bp = g.backprop()
    for p, formula in bp.gradients.items():
        assert np.abs(grads[p]).max() > 0, p
        assert relative_error(formula.evaluate(values), grads[p]) < 1e-6, (p, str(formula))
    # δ1 is dL/d(add1): x^T δ1 + 2e-4 W1 is dL/dW1, so a wrong δ1 would fail above; and
    # the bias gradient is its column sum
    d1 = next(d for d in bp.deltas if d.name == "δ1").formula.evaluate(values)
    assert relative_error(d1.sum(axis=0), grads["b1"]) < 1e-6


def test_one_parameters_chain_keeps_the_names_of_all():
    g = three_hidden_layers()
    one = g.backprop(["W2"]).text().splitlines()
    assert one == [
        line
        for line in g.backprop().text().splitlines()
        if line.split(" = ")[0] in ("δ4", "δ3", "δ2", "dL/dW2")
    ]


@pytest.mark.parametrize("module", ["formula", "matrixform", "deltas", "readable"])
def test_module_examples_run(module):
    result = doctest.testmod(importlib.import_module(f"graphnn.derive.{module}"))
    assert result.attempted > 0 and result.failed == 0


def test_a_chosen_form_is_shown_simplified_and_the_kernel_keeps_the_screened_one():
    x, t = gn.input("x", (3,)), gn.input("t", (2,))
    g = gn.Graph(gn.mse(gn.silu(x @ gn.param("W", (3, 2))), t))
    e = explain(g, "W")
    (silu,) = [loc for loc in e.forms if loc.node == "silu1"]
    assert silu.derivative.form == "sigmoid"
    shown = readable(silu.expr)
    assert show(shown) == "(matmul1*(1 - σ(matmul1)) + 1)*σ(matmul1)"
    text = e.text()
    assert f"chosen form 'sigmoid' = {show(shown)}" in text
    assert f"∂silu1/∂matmul1 = {show(shown)}" in text
    parse_mathtext(show_latex(shown))
    # the same function: equal to the screened form wherever that is finite in float64
    z = sympy.Symbol("matmul1")
    back = sympy.lambdify(z, shown.rewrite(sympy.exp), "numpy")
    screened = sympy.lambdify(z, silu.expr, "numpy")
    points = np.array([-30.0, -3.0, -0.5, 0.0, 0.7, 4.0, 30.0])
    np.testing.assert_allclose(back(points), screened(points), rtol=1e-12, atol=1e-300)
    # display only: the kernel computes the screened form (exponentials, no σ, no factoring)
    kernel = "\n".join(b.text() for b in e.blocks)
    (line,) = [s for s in kernel.splitlines() if s.strip().startswith("d_silu1[")]
    assert "σ" not in kernel
    assert line.count("np.exp(-matmul1[i0, i1])") == 2, line  # -(-z + z s - 1) s, s = 1/(1+e^-z)


def test_readable_keeps_what_factoring_would_not_simplify():
    y = sympy.Symbol("Y")
    assert show(readable(1 - y**2)) == "1 - Y**2"
    assert show(readable(-y * (y - 1))) == "Y*(1 - Y)"
    relu = sympy.Piecewise((1, y > 0), (0, True))
    assert readable(relu) == relu


def test_html_math_is_sized_to_body_text():
    from graphnn.inspect.report import report

    page = report(three_hidden_layers(), "html")
    styles = re.findall(
        r'<img src="data:image/svg\+xml;base64,[^"]*" alt="[^"]*" style="([^"]*)"', page
    )
    assert len(styles) == page.count("<img ")  # every formula image is sized
    for style in styles:
        height = float(re.search(r"height:([\d.]+)em", style).group(1))
        assert 1.0 <= height < 4.0, style  # at least a line of body text, never a 6 px fraction
    # a formula without fractions renders about one em high: the scale is body text's
    one_line = re.search(r'alt="1\^T δ1" style="[^"]*height:([\d.]+)em', page)
    assert 1.0 <= float(one_line.group(1)) <= 1.6, one_line.group(0)


def test_html_report_shows_shared_chain_parts_once():
    from graphnn.inspect import explain as explain_of
    from graphnn.inspect.report import report

    g = three_hidden_layers()
    page = report(g, "html")
    # each δ defined once, and each gradient reads it
    for d in g.backprop().deltas:
        line = f"{d.name} = dL/d({d.of}) = {d.formula}"
        assert page.count(html.escape(line) + "</code>") == 1, line
    assert "<code>2e-4*W1 + x^T δ1</code>" in page
    # a chain step row and a kernel block appear once, however many gradients share them
    assert page.count("<tr><td><code>add4</code></td>") == 1
    for p in g.param_names:
        for b in explain_of(g, p).blocks:
            assert page.count(html.escape(b.text())) == 1, b.nodes
    assert 'as under <a href="#W1">dL/dW1</a>' in page  # b1's chain is W1's


def test_markdown_report_defines_the_shared_deltas_once():
    from graphnn.inspect.report import report

    g = three_hidden_layers()
    md = report(g, "markdown")
    for d in g.backprop().deltas:
        assert md.count(f"{d.name} = dL/d({d.of}) = {d.formula}\n") == 1, d.name
    assert "| `W1` | (4, 5) | `2e-4*W1 + x^T δ1` |" in md
    assert "| `b3` | (5,) | `1^T δ3` |" in md


def test_readable_forms_of_every_activation_are_the_same_functions():
    x, t = gn.input("x", (3,)), gn.input("t", (2,))
    seen = {}
    for act in gn.ACTIVATIONS:
        g = gn.Graph(gn.mse(gn.apply(act, x @ gn.param("W", (3, 2))), t))
        for loc in explain(g, "W").forms:
            if loc.node != "power1":
                seen[act] = (loc.expr, readable(loc.expr))
    assert show(seen["tanh"][1]) == "1 - tanh1**2"
    assert show(seen["sigmoid"][1]) == "sigmoid1*(1 - sigmoid1)"
    assert show(seen["softplus"][1]) == "σ(matmul1)"  # was a Piecewise of exponentials
    assert "1*exp" not in show(seen["elu"][1])
    for act, (expr, shown) in seen.items():
        back = shown.rewrite(sympy.exp)
        for v in (-7.5, -1.0, -0.25, 0.3, 2.0, 9.0):
            at = {s: sympy.Rational(str(v)) for s in expr.free_symbols}
            a, b = complex(expr.subs(at).evalf(30)), complex(back.subs(at).evalf(30))
            assert abs(a - b) <= 1e-20 * max(1.0, abs(a)), (act, v, str(expr), str(shown))


def test_a_node_the_user_named_keeps_its_name():
    x, y = gn.input("x", (4,)), gn.input("y", (3,))
    p = gn.sigmoid(x @ gn.param("W", (4, 3)))
    q = (1 - p).named("q")
    g = gn.Graph(gn.mean(-(y * q**2 * gn.log(p))))
    text = str(g.gradient("W"))
    assert "(2*q)" in text and "1 - sigmoid1" not in text, text
    assert_shown_is_computed(g)


def test_explain_shows_the_chain_with_named_deltas():
    g = three_hidden_layers()
    text = explain(g, "W2").text()
    named = text.split("With the shared δ named (δ1 nearest the inputs):\n")[1].split("\n\n")[0]
    assert named.splitlines() == ["  " + line for line in g.backprop(["W2"]).text().splitlines()]
    assert "  dL/dW2 = relu1^T δ2" in named
