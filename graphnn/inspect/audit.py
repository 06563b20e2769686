"""The stability audit: every formula of a training graph, evaluated where float32 breaks.

Each derived local derivative of the training graph is probed in every candidate form the screen
considered (``graphnn.derive.screen``), each forward elementwise formula as written, at the float32
extremes of :data:`~graphnn.derive.screen.SCREEN_POINTS` against a 50-digit reference.  A probe ends
as overflow (Inf), NaN, precision loss (finite but off by more than 1e-3 relative) or ok.  For
each failing candidate the audit says whether the chosen form - the one the kernels run - fixes
it.  Softmax and softmax cross-entropy get a structural check at z = (100, 0, -100), where the
textbook exp(z)/sum(exp(z)) is inf/inf = NaN in float32.

The audit is ``ok`` when nothing that runs is non-finite where the exact value is finite and
every structural check passes.  Precision loss in a chosen form is a warning, not a failure:
sigmoid'(20) = 2e-9 rounding to 0 in float32 is harmless next to sigmoid'(0) = 0.25.

>>> import graphnn as gn
>>> x = gn.input("x", (3,)); t = gn.input("t", (2,)); W = gn.param("W", (3, 2))
>>> stability_audit(gn.Graph(gn.softmax_cross_entropy(x @ W, t))).ok
True
"""

from __future__ import annotations

from dataclasses import dataclass

import mpmath
import numpy as np
import sympy

from codegen.printer import kernel_float32  # what the kernels run, tanh_r included
from graphnn.budgets import limit
from graphnn.deadline import DeadlineExceeded, deadline, restore_defaults
from graphnn.derive.screen import SCREEN_POINTS, Probe, probe
from graphnn.derive.store import derivative
from graphnn.inspect.chain import local
from graphnn.ir.elementwise import ARGS, BATCH
from graphnn.ir.graph import Node
from graphnn.ir.rewrites import EXP_LIMIT, HINT

AUDIT_BATCH = 32  # the batch size n substituted into formulas such as mean's 1/n
_BAD = {"nan": "NaN", "overflow": "overflow (Inf)", "precision": "precision loss"}
Z_SOFTMAX = (100.0, 0.0, -100.0)
FORWARD_HINT = (
    "forward formulas run as written (only derivatives are rewritten): write that formula in a "
    "stable form; for sigmoid + binary cross-entropy use gn.binary_cross_entropy_with_logits"
)
T_SOFTMAX = (0.0, 0.0, 1.0)


@dataclass(frozen=True)
class FormProbe:
    """One candidate form of a derivative (or a forward formula) at every screen point."""

    form: str
    expr: sympy.Expr  # in node names
    probes: tuple[Probe, ...]
    chosen: bool = True

    def failing(self, kinds=("nan", "overflow", "precision")) -> list[Probe]:
        return [p for p in self.probes if p.status in kinds]

    def nonfinite(self) -> list[Probe]:
        return self.failing(("nan", "overflow"))


@dataclass(frozen=True)
class FormulaAudit:
    """A derivative in all its candidate forms, or a forward formula in its one form."""

    title: str  # "∂relu1/∂add1" or, for a forward formula, "add1 = add(matmul1, b1)"
    equation: str  # the consumer's equation for a derivative; "" for a forward formula
    nodes: tuple[str, ...]  # the training-graph nodes that compute it
    forms: tuple[FormProbe, ...]
    varied: str  # the argument the probes vary

    @property
    def chosen(self) -> FormProbe:
        return next(f for f in self.forms if f.chosen)

    def fix(self, form: FormProbe) -> str:
        """Whether the chosen form fixes the failures of ``form``."""
        bad = {p.point for p in form.failing()}
        still = [p.point for p in self.chosen.probes if p.point in bad and p.status != "ok"]
        if not still:
            return f"-> fixed by the chosen '{self.chosen.form}' form"
        return f"-> the chosen '{self.chosen.form}' form also fails at {_pts(still)}"


@dataclass(frozen=True)
class SoftmaxCheck:
    """Naive vs graphnn softmax (and cross-entropy) at z = (100, 0, -100) in float32."""

    node: str
    op: str
    values: dict  # name -> (naive, graphnn, exact) arrays

    @property
    def ok(self) -> bool:
        return all(_close(g, e) for _, g, e in self.values.values())

    def lines(self) -> list[str]:
        out = [f"  {self.node} ({self.op}) at z = {Z_SOFTMAX}, t = {T_SOFTMAX}:"]
        for name, (naive, ours, exact) in self.values.items():
            out.append(
                f"    {name}: naive {_arr(naive)}  graphnn {_arr(ours)}  exact {_arr(exact)}"
            )
        verdict = "finite and correct" if self.ok else "WRONG"
        out.append(f"    -> graphnn's max-subtracted (log-sum-exp) rule is {verdict}")
        return out


@dataclass(frozen=True)
class Audit:
    """The stability audit of a graph; ``str()`` is the report, ``ok`` the verdict."""

    loss: str
    derivatives: tuple[FormulaAudit, ...]
    formulas: tuple[FormulaAudit, ...]
    checks: tuple[SoftmaxCheck, ...]

    @property
    def errors(self) -> list[str]:
        """What runs and is non-finite where the exact value is finite; failed checks."""
        out = [
            f"{a.title}: {_describe(a.chosen.nonfinite())}"
            for a in self.derivatives + self.formulas
            if a.chosen.nonfinite()
        ]
        return out + [
            f"{c.node}: {c.op} is not finite and correct" for c in self.checks if not c.ok
        ]

    @property
    def warnings(self) -> list[str]:
        return [
            f"{a.title}: {_describe(a.chosen.failing(('precision',)))}"
            for a in self.derivatives + self.formulas
            if a.chosen.failing(("precision",))
        ]

    @property
    def ok(self) -> bool:
        return not self.errors

    def __str__(self) -> str:
        out = [f"Stability audit of loss '{self.loss}': float32 at {_pts(SCREEN_POINTS)}"]
        out += [f"(other arguments 0.3, batch size n = {AUDIT_BATCH}; * = the form that runs)", ""]
        out += ["Derivatives (every candidate form the screen considered):"]
        out += [line for a in self.derivatives for line in _section(a)] or ["  (none)"]
        out += ["", "Forward elementwise formulas (as written; no rewrite):"]
        out += [line for a in self.formulas for line in _section(a)] or ["  (none)"]
        if self.checks:
            out += ["", "Structural checks:"] + [line for c in self.checks for line in c.lines()]
        out += ["", "Result: " + ("OK" if self.ok else "FAILED")]
        out += [f"  error: {e}" for e in self.errors]
        if any(a.chosen.nonfinite() for a in self.formulas):
            out.append(f"  note: {FORWARD_HINT}")
        out += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(out) + "\n"


def stability_audit(graph) -> Audit:
    """Probe every derivative and forward formula of ``graph`` at extreme float32 inputs."""
    seen: dict[tuple[str, int], list[str]] = {}
    for node in graph.training.nodes:
        of = node.attr("of")
        if of is not None:
            key = (graph.training.name_of(of), node.attr("wrt"))
            seen.setdefault(key, []).append(node.name)
    derivatives = tuple(
        _derivative_audit(graph.forward.node(c), i, tuple(nodes)) for (c, i), nodes in seen.items()
    )
    formulas = tuple(_formula_audit(n) for n in graph.forward.nodes if n.op == "ewise")
    checks = tuple(
        softmax_check(n) for n in graph.forward.nodes if n.op in ("softmax", "softmax_ce")
    )
    return Audit(graph.loss_name, derivatives, formulas, checks)


def _batch(e: sympy.Expr) -> sympy.Expr:
    return e.xreplace({BATCH: sympy.Integer(AUDIT_BATCH)})


def _derivative_audit(consumer: Node, i: int, nodes: tuple[str, ...]) -> FormulaAudit:
    loc = local(consumer, consumer.inputs[i])
    d, f, nargs = loc.derivative, _batch(consumer.attr("expr")), len(consumer.inputs)
    refs = tuple(_batch(r) for r in d.references)
    forms = tuple(
        FormProbe(
            c.form,
            loc.named(c.expr),
            probe(_batch(c.expr), refs, f, i, nargs, kernel_float32),
            c.form == d.form,
        )
        for c in d.candidates
    )
    forms = tuple(sorted(forms, key=lambda fp: not fp.chosen))
    return FormulaAudit(f"∂{loc.node}/∂{loc.wrt}", loc.equation, nodes, forms, loc.wrt)


def _formula_audit(node: Node) -> FormulaAudit:
    """A forward formula probed in each argument; the worst argument is reported."""
    f, nargs = _batch(node.attr("expr")), len(node.inputs)
    runs = [probe(f, (f,), f, i, nargs, kernel_float32) for i in range(nargs)]
    k = max(range(nargs), key=lambda i: sum(p.status != "ok" for p in runs[i]) * 10 - i)
    names = {ARGS[j]: sympy.Symbol(x) for j, x in enumerate(node.inputs)}
    expr = sympy.sympify(node.attr("expr")).xreplace(names)
    equation = f"{node.name} = {node.attr('fn')}({', '.join(node.inputs)})"
    form = FormProbe("as written", expr, runs[k])
    return FormulaAudit(equation, "", (node.name,), (form,), node.inputs[k])


def softmax_check(node: Node) -> SoftmaxCheck:
    """graphnn's softmax (cross-entropy) rule against the naive formula at z = (100, 0, -100)."""
    from codegen.numpy_ref import RULES

    z = np.array([Z_SOFTMAX], np.float32)
    t = np.array([T_SOFTMAX], np.float32)
    with np.errstate(all="ignore"):
        naive = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
        naive_loss = -(t * np.log(naive)).sum(axis=-1).mean()
    with mpmath.workdps(50):
        e = [mpmath.exp(v) for v in Z_SOFTMAX]
        exact = np.array([[float(v / sum(e)) for v in e]])
        picked = sum(a * b for a, b in zip(T_SOFTMAX, Z_SOFTMAX, strict=True))
        exact_loss = float(mpmath.log(sum(e)) - picked)
    ours = RULES["softmax"](node, [z], 1, np.float32)
    values = {"softmax": (naive, ours, exact)}
    if node.op == "softmax_ce":
        values["loss"] = (naive_loss, RULES["softmax_ce"](node, [z, t], 1, np.float32), exact_loss)
        grad = RULES["softmax_ce_grad"](node, [z, t], 1, np.float32)
        values["gradient"] = (naive - t, grad, exact - np.array([T_SOFTMAX]))
    return SoftmaxCheck(node.name, node.op, values)


def _section(a: FormulaAudit) -> list[str]:
    where = f"  ({a.equation})" if a.equation else ""
    if len(a.forms) == 1 and not a.chosen.failing():
        return [f"  {a.title} = {a.chosen.expr}{where}: ok"]
    out = [f"  {a.title}{where}   [{', '.join(a.nodes)}; varying {a.varied}]"]
    for f in a.forms:
        mark = "*" if f.chosen and len(a.forms) > 1 else " "
        bad = f.failing()
        out.append(f"    {mark} {f.form:<10} {f.expr}" + ("" if bad else "   ok"))
        if bad:
            fix = "" if f.chosen else f" {a.fix(f)}"
            out.append(f"        {_describe(bad)}{fix}")
    return out


def _describe(probes: list[Probe]) -> str:
    parts = []
    for kind, word in _BAD.items():
        hits = [p for p in probes if p.status == kind]
        if kind == "precision" and hits:
            detail = ", ".join(f"{p.point:g} (got {p.got:.4g}, exact {p.exact:.4g})" for p in hits)
            parts.append(f"{word} at {detail}")
        elif hits:
            parts.append(f"{word} at {_pts([p.point for p in hits])}")
    return "; ".join(parts)


def _close(got, exact) -> bool:
    got, exact = np.asarray(got, np.float64), np.asarray(exact, np.float64)
    tiny = float(np.finfo(np.float32).tiny)
    return bool(
        np.all(np.isfinite(got))
        and np.all(np.abs(got - exact) <= 1e-5 * np.abs(exact) + 1e3 * tiny)
    )


def _arr(a) -> str:
    a = np.atleast_1d(np.asarray(a, np.float64)).ravel()
    return "[" + ", ".join(f"{v:.3g}" for v in a) + "]" if a.size > 1 else f"{a[0]:.4g}"


def _pts(points) -> str:
    return ", ".join(f"{p:g}" for p in points) if points else "-"


def user_function_warnings(graph) -> list[str]:
    """What is NaN or Inf in float32 in the user functions of ``graph`` where the exact value
    is finite: a function's value, or the chosen form of a derivative (the best the screen
    found, so every form fails there), each probed as the kernels print it.  One message per
    function, naming the points, the ``exp`` that overflows there and the rewrite to write."""
    out, seen = [], set()
    for node in graph.forward.nodes:
        user = node.attr("user") if node.op == "ewise" else None
        if user is None or (node.attr("fn"), user[0]) in seen:
            continue
        seen.add((node.attr("fn"), user[0]))
        out += _within_budget(node.attr("fn"), *user)
    return out


def _within_budget(name: str, f: sympy.Expr, args: tuple[str, ...]) -> list[str]:
    """check_function within GRAPHNN_DERIVE_SECONDS: a 50-digit reference of exp(exp(exp(z)))
    runs for minutes, so past the budget the function is reported as not screened.  A function
    whose derivative already ran out of the budget (and was warned about) is not probed at all:
    its unscreened derivative would only spend the budget again, for a second warning."""
    # each derivative within its own budget, outside this one (and memoized for check_function)
    if any(derivative(f, i, len(args)).over_budget for i in range(len(args))):
        return []
    seconds = limit("GRAPHNN_DERIVE_SECONDS")
    try:
        with deadline(seconds):
            return check_function(name, f, args)
    except DeadlineExceeded:
        restore_defaults()
    return [
        f"function '{name}': its float32 stability was not screened: that took over "
        f"{seconds:g} s (GRAPHNN_DERIVE_SECONDS)"
    ]


def check_function(name: str, f: sympy.Expr, args: tuple[str, ...]) -> list[str]:
    """The warning for function ``name`` (formula ``f`` in ARGS, arguments named ``args``), or
    none when it is finite in float32 wherever its exact value is."""
    nargs, problems = len(args), []
    for i, arg in enumerate(args):
        value = _nonfinite(probe(f, (f,), f, i, nargs, kernel_float32))
        if value:
            problems.append((f"its value is NaN or Inf at {arg} = {_pts(value)}", value, i))
        d = derivative(f, i, nargs)
        chosen = next(c for c in d.candidates if c.form == d.form)
        bad = _nonfinite(probe(chosen.expr, d.references, f, i, nargs, kernel_float32))
        if bad:
            what = f"every form of its derivative in {arg} is NaN or Inf"
            problems.append((f"{what} at {arg} = {_pts(bad)}", bad, i))
    if not problems:
        return []
    names = {ARGS[k]: sympy.Symbol(a) for k, a in enumerate(args)}
    overflow = {str(e.xreplace(names)) for _, pts, i in problems for e in _overflows(f, i, pts)}
    where = f" (exp overflows float32 there: {', '.join(sorted(overflow))})" if overflow else ""
    text = "; ".join(p for p, _, _ in problems)
    return [
        f"function '{name}': in float32 {text}, where the exact value is finite{where}. "
        f"No known rewrite applies: {HINT}"
    ]


def _nonfinite(probes) -> tuple[float, ...]:
    return tuple(p.point for p in probes if p.status in ("nan", "overflow"))


def _overflows(f: sympy.Expr, i: int, points) -> list[sympy.Expr]:
    """The exp(...) atoms of f whose argument exceeds EXP_LIMIT at one of the points (the other
    arguments 0.3, as the screen has them)."""
    out = []
    for e in f.atoms(sympy.exp):
        for p in points:
            at = {a: sympy.Float(p if k == i else 0.3) for k, a in enumerate(ARGS)}
            value = sympy.sympify(e.args[0].xreplace(at))
            if value.is_number and value.is_real and float(value) > EXP_LIMIT:
                out.append(e)
                break
    return out
