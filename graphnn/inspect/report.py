"""Reports of every parameter's gradient: Markdown, and HTML that renders offline.

The HTML page is one self-contained file: inline CSS, no script, no network.  Formulas are
pre-rendered by matplotlib's mathtext (the LaTeX the tests already parse) to SVG and inlined as
``data:`` images - vector, so they stay sharp at any zoom - with the LaTeX source and the plain
text formula beside them; a formula mathtext cannot parse is shown as text only.  This avoids
MathJax/KaTeX, which would need either the network or a megabyte of bundled JavaScript.

>>> import graphnn as gn
>>> x = gn.input("x", (3,)); t = gn.input("t", (2,)); W = gn.param("W", (3, 2))
>>> markdown_report(gn.Graph(gn.softmax_cross_entropy(x @ W, t))).splitlines()[0]
"# Gradients of loss 'softmax_ce1'"
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

from codegen.cpu.module import training_kernel
from codegen.signature import signature
from graphnn.derive.formula import show as show_expr
from graphnn.derive.readable import readable
from graphnn.inspect.audit import stability_audit
from graphnn.inspect.explain import explain, why
from graphnn.ir.shapes import show

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 70em; margin: 2em auto; color: #222; }
code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.9em; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: top; text-align: left; }
.formula { overflow-x: auto; }
.formula img { max-width: none; } /* sized in em by the page: math at body-text size */
.chosen { font-weight: bold; }
.ok { color: #1a7f37; } .bad { color: #cf222e; }
"""


def explanations(graph, params=None) -> list:
    """``explain`` of each parameter in ``params`` (default: all, in graph order)."""
    source = "\n".join(training_kernel(signature(graph, None)))
    return [explain(graph, p, source) for p in (graph.param_names if params is None else params)]


def markdown_report(graph, params=None) -> str:
    """Summary table, one section per parameter, then the stability audit."""
    out = [f"# Gradients of loss '{graph.loss_name}'", ""]
    out += ["| parameter | shape | dL/dparameter |", "|---|---|---|"]
    exps = explanations(graph, params)
    backprop = graph.backprop([e.param for e in exps])
    for e in exps:
        out.append(
            f"| `{e.param}` | {show(e.shape)} | `{_cell(str(backprop.gradients[e.param]))}` |"
        )
    out.append("")
    if backprop.deltas:  # the shared chain, once: the table above reads these δ
        out += ["## Backpropagated signals", "", "δk = dL/d(node); δ1 is nearest the inputs.", ""]
        out += ["```text", *(backprop.text().splitlines()[: len(backprop.deltas)]), "```", ""]
        out += ["$$\n" + "\\\\\n".join(backprop.latex()[: len(backprop.deltas)]) + "\n$$", ""]
    out += [e.markdown(level=2) for e in exps]
    out += ["## Stability audit", "", "```text", str(stability_audit(graph)).rstrip(), "```", ""]
    return "\n".join(out)


def mathtext_svg(tex: str) -> str | None:
    """``tex`` rendered by matplotlib's mathtext as an SVG data URI; None if it cannot parse.

    As ``matplotlib.mathtext.math_to_image``, but without the SVG's date and with fixed element
    ids, so the same graph always gives the same report.
    """
    rendered = _mathtext(tex)
    return None if rendered is None else rendered[0]


def _mathtext(tex: str) -> tuple[str, float, float, float] | None:
    """The SVG data URI of ``tex`` and its width, height and depth in em of mathtext's font
    size, so the page can show it at body-text size (unscaled, a 10 pt SVG has 6 px numerators)."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties
    from matplotlib.mathtext import MathTextParser

    text = f"${tex}$"
    font = FontProperties()
    try:
        width, height, depth, _, _ = MathTextParser("path").parse(text, 72, font)
    except (ValueError, RuntimeError):
        return None
    fig = Figure(figsize=(width / 72, height / 72))
    fig.text(0, depth / height, text)
    buf = io.BytesIO()
    with rc_context({"svg.hashsalt": "graphnn", "svg.fonttype": "path"}):
        fig.savefig(buf, dpi=100, format="svg", metadata={"Date": None})
    uri = "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    size = font.get_size_in_points()  # at 72 dpi one point is one unit of width/height
    return uri, width / size, height / size, depth / size


def _math_img(tex: str, alt: str) -> str:
    """An inline SVG of ``tex`` sized in em (body-text size), or "" if mathtext cannot parse."""
    rendered = _mathtext(tex)
    if rendered is None:
        return ""
    uri, width, height, depth = rendered
    style = f"width:{width:.3f}em;height:{height:.3f}em;vertical-align:-{depth:.3f}em"
    return f'<img src="{uri}" alt="{html.escape(alt)}" style="{style}">'


def _formula_html(formula, named=None) -> str:
    """The formula as math, text and LaTeX; with ``named`` (the same gradient reading the δ
    defined once at the top), that is shown and the expanded formula folded away."""
    shown = formula if named is None else named
    out = (
        f'<div class="formula">{_math_img(shown.latex(), str(shown))}</div>'
        f"<p><code>{html.escape(str(shown))}</code></p>"
        f"<details><summary>LaTeX</summary><pre>{html.escape(shown.latex())}</pre></details>"
    )
    if shown is not formula and str(shown) != str(formula):
        out += (
            "<details><summary>expanded (every δ written out)</summary>"
            f"<p><code>{html.escape(str(formula))}</code></p>"
            f"<pre>{html.escape(formula.latex())}</pre></details>"
        )
    return out


def _deltas_html(backprop) -> list[str]:
    """The shared δ, each defined once (textbook style); the gradients below read them."""
    if not backprop.deltas:
        return []
    h = html.escape
    out = ["<h2>Backpropagated signals</h2>"]
    out.append("<p>δk = dL/d(node), defined once from the loss down; δ1 is nearest the inputs.</p>")
    for d, tex in zip(backprop.deltas, backprop.latex(), strict=False):
        line = f"{d.name} = dL/d({d.of}) = {d.formula}"
        out.append(f'<div class="formula">{_math_img(tex, line)}</div>')
        out.append(f"<p><code>{h(line)}</code></p>")
    return out


def _section(e, named=None, shown: dict | None = None) -> list[str]:
    """One parameter's section.  ``shown`` (node or kernel block -> the parameter whose section
    showed it) is filled in: a chain step or kernel block shared with an earlier section is
    referred to, not repeated."""
    h = html.escape
    shown = {} if shown is None else shown
    out = [f'<h2 id="{h(e.param)}">dL/d{h(e.param)} <small>{h(show(e.shape))}</small></h2>']
    out += [_formula_html(e.formula, named)]
    out += ["<h3>Chain rule (δ(v) = dL/dv), from the loss down</h3>"]
    earlier = [s for s in e.steps if s.node in shown]
    if earlier:
        where = {shown[s.node] for s in earlier}
        links = ", ".join(f'<a href="#{h(p)}">dL/d{h(p)}</a>' for p in sorted(where))
        out.append(
            f"<p>δ of {', '.join(f'<code>{h(s.node)}</code>' for s in earlier)}: "
            f"as under {links}.</p>"
        )
    out += ["<table><tr><th>node</th><th>δ</th><th>held in</th><th>local rule</th></tr>"]
    for s in e.steps:
        if s.node in shown:
            continue
        shown[s.node] = e.param
        rules = "<br>".join(f"<code>{h(loc.equation)}</code>: {h(loc.rule)}" for loc in s.locals)
        held = f"<code>{h(s.delta)}</code>" if s.delta else s.holder()
        out.append(
            f"<tr><td><code>{h(s.node)}</code></td><td><code>{h(str(s.formula))}</code></td>"
            f"<td>{held}</td><td>{rules}</td></tr>"
        )
    out += ["</table>", "<h3>Elementwise derivative forms</h3>"]
    before = sorted(
        {
            shown[("form", loc.node, loc.wrt)]
            for loc in e.forms
            if ("form", loc.node, loc.wrt) in shown
        }
    )
    if before:
        links = ", ".join(f'<a href="#{h(p)}">dL/d{h(p)}</a>' for p in before)
        out.append(f"<p>Forms on the shared part of the chain: under {links}.</p>")
    for loc in e.forms:
        key = ("form", loc.node, loc.wrt)
        if key in shown:
            continue
        shown[key] = e.param
        d = loc.derivative
        simple = show_expr(readable(loc.expr))
        out.append(
            f"<p><b>∂{h(loc.node)}/∂{h(loc.wrt)}</b> (<code>{h(loc.equation)}</code>) = "
            f"<code>{h(simple)}</code></p>"
        )
        out.append("<table><tr><th>form</th><th>expression</th><th>NaN/Inf at</th>")
        out.append("<th>precision lost at</th></tr>")
        for c in d.candidates:
            cls = ' class="chosen"' if c.form == d.form else ""
            bad = "bad" if c.nonfinite or c.inaccurate else "ok"
            out.append(
                f"<tr{cls}><td>{h(c.form)}{' (chosen)' if cls else ''}</td>"
                f"<td><code>{h(show_expr(loc.named(c.expr)))}</code></td>"
                f'<td class="{bad}">{_pts(c.nonfinite)}</td>'
                f'<td class="{bad}">{_pts(c.inaccurate)}</td></tr>'
            )
        out += ["</table><ul>"] + [f"<li>{h(line)}</li>" for line in why(d)] + ["</ul>"]
    blocks = [b for b in e.blocks if ("block", b.nodes) not in shown]
    where = sorted({shown[("block", b.nodes)] for b in e.blocks if b not in blocks})
    shown.update({("block", b.nodes): e.param for b in blocks})
    code = "\n\n".join(b.text() for b in blocks)
    out += ["<h3>Generated kernel lines (<code>loss_and_grads</code>)</h3>"]
    if where:
        links = ", ".join(f'<a href="#{h(p)}">dL/d{h(p)}</a>' for p in where)
        out.append(f"<p>Earlier blocks of this gradient: under {links}.</p>")
    return out + ([f"<pre>{h(code)}</pre>"] if code else [])


def html_report(graph, params=None) -> str:
    """One self-contained HTML page (no network, no script)."""
    h = html.escape
    title = f"Gradients of loss '{graph.loss_name}'"
    exps = explanations(graph, params)
    backprop = graph.backprop([e.param for e in exps])
    named = backprop.gradients
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">']
    out += [f"<title>{h(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{h(title)}</h1>"]
    out += ["<table><tr><th>parameter</th><th>shape</th><th>dL/dparameter</th></tr>"]
    out += [
        f'<tr><td><a href="#{h(e.param)}">{h(e.param)}</a></td><td>{h(show(e.shape))}</td>'
        f"<td><code>{h(str(named[e.param]))}</code></td></tr>"
        for e in exps
    ]
    out.append("</table>")
    out += _deltas_html(backprop)
    shown: dict = {}
    for e in exps:
        out += _section(e, named[e.param], shown)
    audit = stability_audit(graph)
    verdict = '<span class="ok">OK</span>' if audit.ok else '<span class="bad">FAILED</span>'
    out += [f"<h2>Stability audit: {verdict}</h2>", f"<pre>{h(str(audit))}</pre>"]
    return "\n".join(out + ["</body></html>"]) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _pts(points) -> str:
    return ", ".join(f"{p:g}" for p in points) if points else "-"


def report(graph, fmt: str = "markdown", params: Sequence[str] | None = None) -> str:
    """Each parameter's gradient explained (``params``, default all), then the stability audit,
    as Markdown or self-contained HTML."""
    for p in params or ():
        graph._param(p)  # an unknown name fails before any work
    if fmt == "markdown":
        return markdown_report(graph, params)
    if fmt == "html":
        return html_report(graph, params)
    raise ValueError(f"unknown report format {fmt!r}; formats: markdown, html")
