"""Explanations: why each gradient is what it is, chains of deltas, the stability audit,
reports, Graphviz drawings, finite-difference checks.

The names below are the inspection API ``gn.Graph`` and the ``graphnn`` command use.
"""

from graphnn.inspect.audit import Audit, stability_audit
from graphnn.inspect.dot import GraphvizError, render_png, to_dot
from graphnn.inspect.explain import Explanation, explain, kernel_blocks, why
from graphnn.inspect.report import html_report, markdown_report, report

__all__ = [
    "Audit",
    "Explanation",
    "GraphvizError",
    "explain",
    "html_report",
    "kernel_blocks",
    "markdown_report",
    "render_png",
    "report",
    "stability_audit",
    "to_dot",
    "why",
]
