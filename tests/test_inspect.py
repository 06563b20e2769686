"""Gradient inspection: explain, report, DOT/PNG and the stability audit.

The explanation must be true, not just printable: every δ in the chain evaluates (with NumPy, on
the forward and backward values) to the backward node it names, every node it names is in the
graph, and every kernel line it shows is in the generated module.  The audit must find the
classic float32 failures and show that the forms graphnn runs fix them.
"""

import doctest
import html.parser
import importlib
import re
import shutil
import stat
import sys
import textwrap

import numpy as np
import pytest
import sympy

import graphnn as gn
from codegen.cpu import backend as cpu_backend
from codegen.printer import kernel_float32 as kernel32
from codegen.signature import signature
from graphnn import inspect as gi
from graphnn.derive.store import derivative
from graphnn.inspect.chain import backward_nodes
from graphnn.ir.elementwise import ARGS

# --- graphs ---------------------------------------------------------------------------------------


def digits_mlp():
    """The README's digits classifier: 64 -> 128 relu -> 10, softmax cross-entropy."""
    x, y = gn.input("x", (64,)), gn.input("y", (10,))
    W1, b1 = gn.param("W1", (64, 128), init="he_normal"), gn.param("b1", (128,), init="zeros")
    W2, b2 = gn.param("W2", (128, 10)), gn.param("b2", (10,), init="zeros")
    h = gn.relu(x @ W1 + b1)
    return gn.Graph(gn.softmax_cross_entropy((h @ W2 + b2).named("logits"), y))


def residual():
    x, y = gn.input("x", (4,)), gn.input("y", (4,))
    W1, W2 = gn.param("W1", (4, 4)), gn.param("W2", (4, 4))
    h = gn.tanh(x @ W1).named("h")
    return gn.Graph(gn.mse(h + h @ W2, y))  # fan-out: δ(h) accumulates two contributions


def shared_weight():
    x, y = gn.input("x", (3,)), gn.input("y", (3,))
    W = gn.param("W", (3, 3))
    return gn.Graph(gn.mse(gn.sigmoid(x @ W) @ W, y))


def softmax_mse():
    x, y = gn.input("x", (3,)), gn.input("y", (2,))
    W, b = gn.param("W", (3, 2)), gn.param("b", (2,), init="normal")
    return gn.Graph(gn.mse(gn.softmax(x @ W + b), y))


def reserved_names():
    """Nodes named like the kernel's own variables are renamed in the generated code."""
    data, n = gn.input("loss", (3,)), gn.input("n", (2,))
    W = gn.param("W", (3, 2))
    return gn.Graph(gn.binary_cross_entropy_with_logits((data @ W).named("m"), n))


def naive_bce_fn():
    zs, ts = sympy.symbols("z t")
    s = 1 / (1 + sympy.exp(-zs))
    return gn.elementwise("naive_bce", -ts * sympy.log(s) - (1 - ts) * sympy.log(1 - s), [zs, ts])


def naive_bce():
    x, t = gn.input("x", (3,)), gn.input("t", (1,))
    W = gn.param("W", (3, 1))
    return gn.Graph(gn.mean(naive_bce_fn()((x @ W).named("z"), t)))


def softplus_mse():
    x, t = gn.input("x", (3,)), gn.input("t", (1,))
    return gn.Graph(gn.mse(gn.softplus(x @ gn.param("W", (3, 1))), t))


def small_cnn():
    """conv (strided, padded) -> relu -> max pool -> avg pool -> flatten -> dense: every δ of
    the chain is an indexed contraction, the argmax mask or a reshape."""
    x, y = gn.input("x", (6, 5, 2)), gn.input("y", (3,))
    h = gn.relu(gn.conv2d(x, gn.param("K", (3, 3, 2, 4)), stride=(1, 2), padding=1))
    h = gn.avg_pool2d(gn.max_pool2d(h, 2, stride=1), (2, 1))
    return gn.Graph(gn.softmax_cross_entropy(gn.flatten(h) @ gn.param("W", (16, 3)), y))


GRAPHS = {
    "small_cnn": small_cnn,
    "digits_mlp": digits_mlp,
    "residual": residual,
    "shared_weight": shared_weight,
    "softmax_mse": softmax_mse,
    "reserved_names": reserved_names,
    "naive_bce": naive_bce,
}


def node_values(g, seed=0):
    rng = np.random.default_rng(seed)
    data = {k: rng.uniform(0.1, 0.9, size=(5, *s[1:])) for k, s in g.inputs.items()}
    params = {k: v.astype(np.float64) for k, v in g.init_params(seed=1).items()}
    return g.evaluate_nodes(params, data, dtype=np.float64)


# --- explain --------------------------------------------------------------------------------------


def test_explain_digits_w1():
    g = digits_mlp()
    e = g.explain("W1")
    assert isinstance(e, gi.Explanation)
    assert e.formula is g.gradient("W1")
    assert [s.node for s in e.steps] == [
        "softmax_ce1",
        "logits",
        "matmul2",
        "relu1",
        "add1",
        "matmul1",
        "W1",
    ]
    delta = {s.node: s.delta for s in e.steps}
    assert delta == {
        "softmax_ce1": None,
        "logits": "softmax_ce_grad1",
        "matmul2": "softmax_ce_grad1",
        "relu1": "matmul3",
        "add1": "d_relu1",
        "matmul1": "d_relu1",
        "W1": "matmul4",
    }
    shown = {s.node: str(s.formula) for s in e.steps}
    assert shown["relu1"] == "δ(matmul2) W2^T"
    assert shown["add1"] == "δ(relu1) ∘ relu'(add1)"
    assert shown["W1"] == "x^T δ(matmul1)"
    (relu,) = e.forms
    assert (relu.node, relu.wrt, relu.derivative.form) == ("relu1", "add1", "output")
    assert str(relu.expr) == "Piecewise((1, relu1 > 0), (0, True))"
    text = e.text()
    assert str(e) == text
    for piece in (str(g.gradient("W1")), g.gradient("W1").latex(), "δ(add1) = δ(relu1) ∘"):
        assert piece in text, piece
    assert "why: input as good; output preferred" in text
    assert "np.dot(x.T, d_relu1, matmul4)" in text
    assert "matmul5" not in text  # W2's gradient is not on W1's path


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_every_delta_evaluates_to_its_backward_node(name):
    """Each chain step, evaluated on the node values, is the value of the node it names."""
    g = GRAPHS[name]()
    values = node_values(g)
    checked = 0
    for p in g.param_names:
        for s in gi.explain(g, p).steps:
            got = s.formula.evaluate(values)
            want = values[s.delta] if s.delta else None
            if want is None:
                assert s.node == g.loss_name or not s.formula.operands
                continue
            np.testing.assert_allclose(np.broadcast_to(got, want.shape), want, rtol=1e-10)
            checked += 1
    assert checked >= len(g.param_names)


def test_a_wrong_delta_would_be_caught():
    """The evaluation above is sensitive: a changed backward value changes the chain's value."""
    g = digits_mlp()
    values = node_values(g)
    step = next(s for s in gi.explain(g, "W1").steps if s.node == "relu1")
    bad = dict(values, softmax_ce_grad1=values["softmax_ce_grad1"] * 2)
    assert not np.allclose(step.formula.evaluate(bad), values["matmul3"])


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_chain_nodes_are_graph_nodes_and_kernel_lines_are_generated(name):
    g = GRAPHS[name]()
    source = cpu_backend.source(g)
    ident = signature(g, None).ident
    for p in g.param_names:
        e = gi.explain(g, p)
        named = set().union(*(s.nodes() for s in e.steps))
        assert named <= set(g.training.by_name), named - set(g.training.by_name)
        assert e.steps[-1].node == p and e.steps[-1].delta == g.grad_names[p]
        assert e.steps[0].node == g.loss_name
        for b in e.blocks:
            assert "\n".join(b.lines) in source
            assert b.lines[0].lstrip().startswith("# ")
        path = {ident[n] for n in backward_nodes(g, p)}
        assert path <= {n for b in e.blocks for n in b.nodes}
        # Only blocks that compute this gradient (a fused block may compute others too).
        assert all(path & set(b.nodes) for b in e.blocks)
        assert len(e.blocks) < len(gi.kernel_blocks(source))


def test_kernel_lines_use_renamed_identifiers():
    g = reserved_names()
    e = gi.explain(g, "W")
    code = "\n".join(b.text() for b in e.blocks)
    assert "# matmul1 = loss_1^T @ d_bce_with_logits1" in code
    assert "np.dot(loss_1.T, d_bce_with_logits1, matmul1)" in code


def test_kernel_blocks_parse_a_module():
    source = textwrap.dedent(
        """\
        def loss_and_grads(x):
            n = x.shape[0]
            # a = f(x)
            # b = g(a)
            b = x + 1

            # c = h(b)
            c = b * 2

            return c


        def forward(x):
            # d = f(x)
            d = x
        """
    )
    blocks = gi.kernel_blocks(source)
    assert [b.nodes for b in blocks] == [("a", "b"), ("c",)]
    assert blocks[0].lines == ("    # a = f(x)", "    # b = g(a)", "    b = x + 1")
    assert blocks[1].text() == "# c = h(b)\nc = b * 2"


def test_forms_say_why():
    g = naive_bce()
    (form,) = [f for f in gi.explain(g, "W").forms if f.node == "naive_bce1"]
    assert form.derivative.form == "sigmoid"
    assert sympy.simplify(form.expr - (1 / (1 + sympy.exp(-sympy.Symbol("z"))))) != 0
    reasons = gi.why(form.derivative)
    assert "simplified rejected: NaN/Inf at 89, 10000" in reasons
    assert any(r.startswith("input rejected: NaN/Inf at") for r in reasons)
    sig = gi.explain(shared_weight(), "W").forms
    assert any(f.derivative.form == "output" and "sigmoid1" in str(f.expr) for f in sig)


def test_markdown_and_jupyter():
    e = digits_mlp().explain("W1")
    md = e.markdown()
    assert e._repr_markdown_() == md
    assert md.startswith("## dL/dW1")
    assert f"$$\n{e.formula.latex()}\n$$" in md
    assert "| `add1` | `δ(relu1) ∘ relu'(add1)` | `d_relu1` |" in md
    assert "```python\n# softmax_ce1 = softmax_ce(logits, y)" in md
    assert e.formula._repr_latex_() == f"${e.formula.latex()}$"


def test_unknown_parameter_is_named():
    with pytest.raises(KeyError, match="W9.*W1, b1, W2, b2"):
        digits_mlp().explain("W9")


# --- reports --------------------------------------------------------------------------------------


def test_markdown_report_covers_every_parameter():
    g = digits_mlp()
    md = gi.report(g, "markdown")
    for p in g.param_names:
        assert f"## dL/d{p}" in md
        assert f"| `{p}` | " in md
        assert str(g.gradient(p)) in md
    assert "## Stability audit" in md and "Result: OK" in md


def test_reports_of_chosen_parameters_leave_the_others_out():
    g = digits_mlp()
    md = gi.report(g, "markdown", ["b2"])
    assert "## dL/db2" in md and str(g.gradient("b2")) in md
    assert [p for p in g.param_names if f"## dL/d{p}" in md] == ["b2"]
    assert "## Stability audit" in md
    page = gi.report(g, "html", ["W1", "b2"])
    assert [p for p in g.param_names if f'id="{p}"' in page] == ["W1", "b2"]
    with pytest.raises(KeyError, match="no parameter named 'W9'"):
        gi.report(g, "markdown", ["W9"])


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.stack, self.unbalanced = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in ("meta", "img", "br", "link"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.unbalanced.append(tag)


def test_html_report_is_self_contained():
    g = digits_mlp()
    page = gi.report(g, "html")
    parser = _Tags()
    parser.feed(page)
    assert not parser.unbalanced and not parser.stack
    tags = [t for t, _ in parser.tags]
    assert "script" not in tags and "link" not in tags
    assert not re.search(r"(src|href)=\"(https?:|//)", page)
    assert "@import" not in page and "url(" not in page
    images = [a["src"] for t, a in parser.tags if t == "img"]
    assert len(images) == len(g.param_names) + len(g.backprop().deltas)  # each δ once
    import base64

    for src in images:
        assert src.startswith("data:image/svg+xml;base64,")
        svg = base64.b64decode(src.split(",", 1)[1]).decode()
        assert "<svg" in svg and "<script" not in svg
        assert not re.search(r"(href|src)=\"(https?:|//)", svg)
    for p in g.param_names:
        assert html.escape(str(g.gradient(p))) in page
        assert html.escape(g.gradient(p).latex()) in page
    assert "Stability audit" in page


def test_html_formula_falls_back_to_text():
    from graphnn.inspect.report import mathtext_svg

    assert mathtext_svg(r"\begin{cases} a \end{cases}") is None
    assert mathtext_svg("x^{T}").startswith("data:image/svg+xml;base64,")
    assert mathtext_svg("x^{T}") == mathtext_svg("x^{T}")  # no date, fixed ids: reproducible
    assert mathtext_svg("x^{T}") != mathtext_svg("y^{T}")


def test_report_format_is_checked():
    with pytest.raises(ValueError, match="markdown, html"):
        gi.report(digits_mlp(), "pdf")


# --- DOT and PNG ----------------------------------------------------------------------------------


def parse_dot(text):
    nodes = dict(re.findall(r'^  "(\w+)" \[(.*)\];$', text, re.M))
    edges = re.findall(r'^  "(\w+)" -> "(\w+)" \[(.*)\];$', text, re.M)
    return nodes, edges


def test_to_dot_shows_forward_and_gradient_flow():
    g = digits_mlp()
    text = gi.to_dot(g)
    assert text.startswith("digraph graphnn {") and text.rstrip().endswith("}")
    nodes, edges = parse_dot(text)
    assert set(nodes) == set(g.training.by_name)
    for a, b, _ in edges:
        assert a in nodes and b in nodes
    assert 'label="add1\\nadd (batch, 128)"' in nodes["add1"]
    assert "doubleoctagon" in nodes["softmax_ce1"]
    backward = set(g.training.by_name) - set(g.forward.by_name)
    for n in backward:
        assert "color=red" in nodes[n] and "dashed" in nodes[n]
    assert "δ(relu1)" in nodes["matmul3"]
    style = {(a, b): s for a, b, s in edges}
    assert style[("add1", "relu1")] == "color=black"
    assert "dashed" in style[("matmul3", "d_relu1")]
    assert 'label="δ=1"' in style[("softmax_ce1", "softmax_ce_grad1")]
    for p, grad in g.grad_names.items():
        assert f'label="dL/d{p}"' in style[(grad, p)]
    assert "dotted" in style[("x", "matmul4")]  # a forward value read by the backward pass


def test_to_dot_forward_only_leaves_out_the_gradient_flow():
    g = digits_mlp()
    nodes, edges = parse_dot(gi.to_dot(g, forward_only=True))
    assert set(nodes) == set(g.forward.by_name)
    assert all("red" not in s and "dotted" not in s for _, _, s in edges)
    forward_edges = {(i, n.name) for n in g.forward.nodes for i in n.inputs}
    assert {(a, b) for a, b, _ in edges} == forward_edges


def test_render_png_forward_only(monkeypatch, tmp_path):
    exe = fake_dot(tmp_path)
    monkeypatch.setattr(shutil, "which", lambda name: exe if name == "dot" else None)
    g = digits_mlp()
    gi.render_png(g, tmp_path / "g.png", forward_only=True)
    assert (tmp_path / "stdin.dot").read_text() == gi.to_dot(g, forward_only=True)
    assert gi.to_dot(g, forward_only=True) != gi.to_dot(g)


def test_render_png_without_graphviz(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(gi.GraphvizError) as info:
        gi.render_png(digits_mlp(), tmp_path / "g.png")
    assert isinstance(info.value, gn.GraphnnError)
    message = str(info.value)
    assert "Graphviz is not installed" in message
    assert "apt-get install graphviz" in message
    assert "'pip install graphviz' installs only the Python bindings" in message
    assert not (tmp_path / "g.png").exists()


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_dot(tmp_path, exit_code=0):
    """A stand-in for Graphviz's dot: saves its stdin, writes a PNG header to -o."""
    script = tmp_path / "dot"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"open({str(tmp_path / 'stdin.dot')!r}, 'w').write(sys.stdin.read())\n"
        f"if {exit_code}:\n"
        "    sys.stderr.write('syntax error in line 1')\n"
        f"    sys.exit({exit_code})\n"
        "assert sys.argv[1] == '-Tpng' and sys.argv[2] == '-o'\n"
        f"open(sys.argv[3], 'wb').write({PNG_MAGIC!r})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_render_png_runs_dot(monkeypatch, tmp_path):
    exe = fake_dot(tmp_path)
    monkeypatch.setattr(shutil, "which", lambda name: exe if name == "dot" else None)
    g = digits_mlp()
    out = gi.render_png(g, tmp_path / "g.png")
    assert out == tmp_path / "g.png"
    assert out.read_bytes() == PNG_MAGIC
    assert (tmp_path / "stdin.dot").read_text() == gi.to_dot(g)


def test_render_png_reports_dot_failure(monkeypatch, tmp_path):
    exe = fake_dot(tmp_path, exit_code=1)
    monkeypatch.setattr(shutil, "which", lambda name: exe if name == "dot" else None)
    with pytest.raises(gi.GraphvizError, match="exit code 1: syntax error in line 1"):
        gi.render_png(digits_mlp(), tmp_path / "g.png")


def test_render_png_with_the_system(tmp_path):
    """With Graphviz installed a real PNG; without it, the installation hint (never a skip)."""
    g = digits_mlp()
    if shutil.which("dot") is None:
        with pytest.raises(gi.GraphvizError, match="apt-get install graphviz"):
            gi.render_png(g, tmp_path / "g.png")
        return
    data = gi.render_png(g, tmp_path / "g.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


# --- stability audit ------------------------------------------------------------------------------


def test_audit_softmax_naive_is_nan_graphnn_is_right():
    audit = gi.stability_audit(digits_mlp())
    (check,) = audit.checks
    assert check.op == "softmax_ce"
    naive, ours, exact = check.values["softmax"]
    assert np.isnan(naive).any()
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, exact, rtol=1e-6, atol=1e-40)
    naive_loss, loss, exact_loss = check.values["loss"]
    assert np.isnan(naive_loss) and exact_loss == pytest.approx(200.0)
    assert float(loss) == pytest.approx(200.0, rel=1e-6)
    naive_grad, grad, exact_grad = check.values["gradient"]
    assert np.isnan(naive_grad).any()
    np.testing.assert_allclose(grad, exact_grad, rtol=1e-6, atol=1e-40)
    assert check.ok and audit.ok
    text = str(audit)
    assert "softmax: naive [nan, 0, 0]" in text and "Result: OK" in text
    (softmax,) = gi.stability_audit(softmax_mse()).checks
    assert softmax.op == "softmax" and set(softmax.values) == {"softmax"} and softmax.ok


def test_softmax_ce_kernel_at_100_0_minus_100():
    """What the audit says of graphnn's rule holds for the compiled kernel too."""
    z, t = gn.input("z", (3,)), gn.input("t", (3,))
    g = gn.Graph(gn.softmax_cross_entropy(z @ gn.param("W", (3, 3)), t))
    data = {"z": np.array([[100.0, 0.0, -100.0]], np.float32), "t": np.array([[0, 0, 1.0]])}
    loss, grads = g.value_and_grad({"W": np.eye(3, dtype=np.float32)}, data, backend="cpu")
    assert loss == pytest.approx(200.0, rel=1e-6)
    expected = np.outer([100.0, 0.0, -100.0], [1.0, 0.0, -1.0])
    np.testing.assert_allclose(grads["W"], expected, rtol=1e-6, atol=1e-30)


def test_audit_naive_bce_simplified_form_fixed_by_chosen_form():
    audit = gi.stability_audit(naive_bce())
    (d,) = [a for a in audit.derivatives if a.title == "∂naive_bce1/∂z"]
    forms = {f.form: f for f in d.forms}
    assert d.chosen.form == "sigmoid" and not d.chosen.failing()
    simplified = {p.point: p.status for p in forms["simplified"].failing()}
    assert simplified == {89.0: "nan", 1e4: "nan"}  # exp(z)/(exp(z) + 1) is inf/inf from 88.7
    assert forms["input"].nonfinite()
    assert "fixed by the chosen 'sigmoid' form" in d.fix(forms["simplified"])
    text = str(audit)
    assert "NaN at 89, 10000 -> fixed by the chosen 'sigmoid' form" in text
    # The forward formula runs as written and overflows: the audit fails and says why.
    assert not audit.ok
    assert any(e.startswith("naive_bce1 = naive_bce(z, t): overflow (Inf)") for e in audit.errors)
    assert "binary_cross_entropy_with_logits" in text


def test_screen_judges_points_where_the_raw_reference_fails():
    """At z = 1e4 the raw derivative is 0/0 even at 50 digits; the screen used to skip it."""
    zs, ts = ARGS[0], ARGS[1]
    s = 1 / (1 + sympy.exp(-zs))
    d = derivative(-ts * sympy.log(s) - (1 - ts) * sympy.log(1 - s), 0, 2)
    simplified = next(c for c in d.candidates if c.form == "simplified")
    assert 1e4 in simplified.nonfinite
    assert d.form == "sigmoid"


def test_audit_softplus_output_form_loses_precision_at_minus_20():
    audit = gi.stability_audit(softplus_mse())
    (d,) = [a for a in audit.derivatives if a.title == "∂softplus1/∂matmul1"]
    forms = {f.form: f for f in d.forms}
    at = {p.point: p for p in forms["output"].probes}
    assert at[-20.0].status == "precision"
    assert at[-20.0].got == 0.0 and at[-20.0].exact == pytest.approx(2.0611536e-9, rel=1e-6)
    chosen = {p.point: p for p in d.chosen.probes}
    assert d.chosen.form == "input" and chosen[-20.0].status == "ok"
    assert chosen[-20.0].got == pytest.approx(2.0611536e-9, rel=1e-5)
    assert "precision loss at -20 (got 0, exact 2.061e-09)" in str(audit)
    assert audit.ok and not audit.warnings


def test_audit_evaluates_what_the_kernel_prints():
    """log(1 + x) prints as log1p: softplus(-20) is 2e-9 in the kernel, 0 via lambdify."""
    f = sympy.log(1 + sympy.exp(ARGS[0]))
    assert kernel32(f, ARGS[:1])(-20.0) == pytest.approx(2.0611536e-9, rel=1e-6)
    assert sympy.lambdify(ARGS[:1], f, "numpy")(np.float32(-20.0)) == 0.0


def test_audit_fails_when_every_form_overflows():
    z = sympy.Symbol("z")
    soft = gn.elementwise("soft", sympy.sqrt(1 + sympy.exp(2 * z)), [z])
    x = gn.input("x", (2,))
    audit = gi.stability_audit(gn.Graph(gn.sum(soft(x @ gn.param("W", (2, 1))))))
    assert not audit.ok
    assert any(e.startswith("∂soft1/∂matmul1: NaN at 88") for e in audit.errors), audit.errors
    assert "Result: FAILED" in str(audit)


def test_audit_lists_every_derivative_and_formula():
    g = residual()
    audit = gi.stability_audit(g)
    derived = {n.name for n in g.training.nodes if n.attr("of") is not None}
    assert {n for a in audit.derivatives for n in a.nodes} == derived
    ewise = {n.name for n in g.forward.nodes if n.op == "ewise"}
    assert {n for a in audit.formulas for n in a.nodes} == ewise
    assert audit.ok and not audit.checks


# --- docs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["explain", "chain", "audit", "dot", "report"])
def test_module_examples_run(module):
    result = doctest.testmod(importlib.import_module(f"graphnn.inspect.{module}"))
    assert result.attempted > 0 and result.failed == 0
