"""Random graphnn programs for the property-based fuzzer (``tests/test_fuzz.py``), and reproducers.

A :class:`Program` is Python source: the ``gn.*`` calls that declare its inputs and parameters
and build the graph, one statement per line.  The fuzzer executes exactly that text, and a
failure prints it with the batch size and the seed of the data, so the reproducer is the program
that failed, not a description of it.  Data come from the seed through expressions kept as text
as well (:meth:`Program.value_sources`), for the same reason.

The strategy tracks shapes itself (:func:`broadcast`, independent of ``graphnn.shapes``) and
draws operands that fit, so almost every program is one the builder accepts; a few deliberate
misfits (a binary op of two arbitrary nodes) check that a refusal is a graphnn error.  What it
covers: every row of the elementwise op table (``neg``, ``power`` and user numbers included),
matmul (either operand transposed), broadcasting ``+ - * /`` against parameters, inputs, nodes,
numbers and constants, ``sum``/``mean`` over any axes with and without ``keepdims`` (0-d values
included), softmax, and the losses (softmax cross-entropy, mse, binary cross-entropy on logits)
anywhere in the graph, not only at its end.  Inputs carry the batch axis; parameters do not.
log, a divisor and a fractional or negative power usually get an operand that keeps them in their
domain (sigmoid, softplus, exp, ``h ** 2 + 0.5``), and sometimes a raw one, so NaN appears too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

import graphnn as gn

SIZES = (1, 2, 3)
MAX_RANK = 3  # dimensions of any value, the batch axis included
MAX_SAMPLE = 18  # elements of any value per sample (the batch axis not counted)
MAX_PARAM_ELEMENTS = 40  # over all parameters: central differences cost 2 losses per element

UNARY = ("neg", "exp", "log", "sigmoid", "tanh", "relu", "leaky_relu", "softplus", "elu", "gelu")
UNARY += ("silu", "power", "log")  # log twice: with a raw operand, the usual source of NaN
GUARDED_POWERS = (0.5, 1.5, -1, -2)  # exponents that need a positive or a non-zero base
POWERS = (2, 3, *GUARDED_POWERS)
NUMBERS = (2.0, 0.5, -1.5, 3.0, 0.25)
KINDS = ("unary", "binary", "matmul", "reduce", "softmax", "loss", "bce_ewise")


def broadcast(a: tuple, b: tuple) -> tuple | None:
    """NumPy broadcasting where None (the batch) meets only itself or 1; None if they misfit."""
    out = []
    for k in range(1, max(len(a), len(b)) + 1):
        da = a[-k] if k <= len(a) else 1
        db = b[-k] if k <= len(b) else 1
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            return None
    return tuple(reversed(out))


def fits(shape: tuple | None) -> bool:
    return shape is not None and len(shape) <= MAX_RANK and per_sample(shape) <= MAX_SAMPLE


def per_sample(shape: tuple) -> int:
    return math.prod(d for d in shape if d is not None)


@dataclass
class Leaf:
    name: str
    shape: tuple  # per-sample shape of an input; the whole shape of a parameter
    kind: str  # "param", or how an input's data are drawn: "normal", "dist", "prob"


@dataclass
class Value:
    var: str
    shape: tuple  # None marks the batch axis
    dep: bool  # depends on a parameter
    uses: int = 0


@dataclass
class Program:
    """A graph as the source text of the gn calls that build it."""

    lines: list[str] = field(default_factory=list)
    leaves: list[Leaf] = field(default_factory=list)
    deliberate_misfit: bool = False  # a step that ignored the shape rules on purpose

    def __repr__(self) -> str:
        return "Program(<<<\n" + self.source() + "\n>>>)"

    def _repr_pretty_(self, printer, cycle) -> None:  # how Hypothesis shows a failing example
        printer.text(repr(self))

    def source(self) -> str:
        return "\n".join([*self.lines, "g = gn.Graph(loss)"])

    def build(self):
        """The gn.Graph; raises whatever the builder raises."""
        scope = {"gn": gn}
        exec(compile(self.source(), "<fuzz program>", "exec"), scope)  # our own text
        return scope["g"]

    # --- data ---------------------------------------------------------------------------------

    def value_sources(self, batch: int) -> list[tuple[str, str]]:
        """(leaf name, NumPy expression in ``rng`` and ``np``) for every leaf, in draw order."""
        out = []
        for leaf in self.leaves:
            if leaf.kind == "param":
                out.append((leaf.name, f"rng.normal(0.0, 0.8, {leaf.shape})"))
                continue
            full = (batch, *leaf.shape)
            if leaf.kind == "dist":  # rows of the last axis are distributions
                expr = f"rng.dirichlet(np.ones({full[-1]}), {full[:-1]})"
            elif leaf.kind == "prob":
                expr = f"rng.uniform(0.0, 1.0, {full})"
            else:
                expr = f"rng.normal(0.0, 1.0, {full})"
            out.append((leaf.name, expr))
        return out

    def values(self, batch: int, seed: int) -> tuple[dict, dict]:
        """(params, data) in float64, drawn from ``seed`` by :meth:`value_sources`."""
        rng = np.random.default_rng(seed)
        arrays = {
            n: np.asarray(eval(e, {"np": np, "rng": rng})) for n, e in self.value_sources(batch)
        }
        params = {leaf.name: arrays[leaf.name] for leaf in self.leaves if leaf.kind == "param"}
        data = {leaf.name: arrays[leaf.name] for leaf in self.leaves if leaf.kind != "param"}
        return params, data

    def reproducer(self, batch: int, seed: int, check: str, what: str = "", dtype=np.float64):
        """A standalone script that rebuilds the graph and data and runs ``check`` on them.

        ``check`` is Python using ``g``, ``params`` and ``data`` (``dtype`` arrays, as the
        fuzzer passed them).
        """
        lines = [
            f"# graphnn fuzz reproducer{': ' + what if what else ''} (batch {batch}, seed {seed})",
            "import numpy as np",
            "import graphnn as gn",
            "",
            *self.lines,
            "g = gn.Graph(loss)",
            "",
            f"rng = np.random.default_rng({seed})",
            "arrays = {",
            *(f"    {name!r}: {expr}," for name, expr in self.value_sources(batch)),
            "}",
            f"arrays = {{k: np.asarray(v, np.{np.dtype(dtype).name}) for k, v in arrays.items()}}",
            "params = {k: arrays[k] for k in g.param_names}",
            "data = {k: arrays[k] for k in g.inputs}",
            check,
        ]
        return "\n".join(lines)


class _Draw:
    """The state of one program being drawn: its lines, leaves and the values it can use."""

    def __init__(self, draw):
        self.draw = draw
        self.program = Program()
        self.pool: list[Value] = []
        self.counts: dict[str, int] = {}

    def pick(self, options):
        return self.draw(st.sampled_from(options))

    def chance(self, p: float) -> bool:
        # integers shrink towards 0, so a shrunk program leans to the plain choice
        return self.draw(st.integers(0, 99)) < 100 * p

    def fresh(self, prefix: str) -> str:
        k = self.counts[prefix] = self.counts.get(prefix, -1) + 1
        return f"{prefix}{k}"

    def param_elements(self) -> int:
        return sum(math.prod(x.shape) for x in self.program.leaves if x.kind == "param")

    # --- leaves -----------------------------------------------------------------------------

    def new_param(self, shape: tuple) -> Value:
        shape = tuple(shape) or (1,)  # parameters of shape () are not supported (gn says so)
        name = self.fresh("p")
        self.program.leaves.append(Leaf(name, shape, "param"))
        self.program.lines.append(f"{name} = gn.param({name!r}, {shape})")
        return self.add(Value(name, shape, True))

    def new_input(self, sample_shape: tuple, kind: str = "normal") -> Value:
        name = self.fresh("x")
        self.program.leaves.append(Leaf(name, tuple(sample_shape), kind))
        self.program.lines.append(f"{name} = gn.input({name!r}, {tuple(sample_shape)})")
        return self.add(Value(name, (None, *sample_shape), False))

    def add(self, v: Value) -> Value:
        self.pool.append(v)
        return v

    def emit(self, expr: str, shape: tuple, dep: bool, uses=()) -> Value:
        for u in uses:
            u.uses += 1
        var = self.fresh("h")
        self.program.lines.append(f"{var} = {expr}")
        return self.add(Value(var, tuple(shape), dep))

    def random_shape(self, min_rank: int, max_rank: int) -> tuple:
        rank = self.draw(st.integers(min_rank, max_rank))
        return tuple(self.pick(SIZES) for _ in range(rank))

    # --- operands -----------------------------------------------------------------------------

    def operand(self, want=None) -> Value | None:
        """A value from the pool, or None: mostly one that depends on a parameter (the others
        reach the loss less often), and the newest one half the time (chains of ops)."""
        pool = [v for v in self.pool if want is None or want(v)]
        dep = [v for v in pool if v.dep]
        if dep and self.chance(0.85):
            pool = dep
        if not pool:
            return None
        if self.chance(0.5):
            return pool[-1]
        return self.pick(pool)

    def partner_shape(self, shape: tuple, batch: bool) -> tuple | None:
        """A shape that broadcasts against ``shape``: trailing dims kept, or 1, or 1s expanded.

        With ``batch``, the shape of an input (it leads with the batch axis, None).
        """
        keep = self.draw(st.integers(0, len(shape)))
        dims = []
        for d in shape[len(shape) - keep :]:
            if d is None:
                dims.append(None if batch and not dims else 1)
            elif d == 1:
                dims.append(self.pick(SIZES))
            else:
                dims.append(self.pick((d, 1)))
        if keep == len(shape) and len(shape) < MAX_RANK and self.chance(0.2):
            dims.insert(0, self.pick(SIZES))  # a new leading axis
        if batch:
            dims = dims if dims and dims[0] is None else [None, *dims]
            if any(d is None for d in dims[1:]):
                return None
        out = tuple(dims)
        return out if fits(broadcast(shape, out)) else None

    def partner(
        self, a: Value, kind: str = "normal", choice=None
    ) -> tuple[str, Value | None, tuple]:
        """The other operand of a binary op with ``a``: (source text, value or None, shape)."""
        choice = choice or self.pick(("param", "node", "input", "number", "constant"))
        if choice == "node":
            b = self.operand(lambda v: v is not a and fits(broadcast(a.shape, v.shape)))
            if b is not None:
                return b.var, b, b.shape
            choice = "param"
        if choice == "param" and self.param_elements() < MAX_PARAM_ELEMENTS - 9:
            shape = self.partner_shape(a.shape, batch=False)
            if shape is not None:
                b = self.new_param(shape)
                return b.var, b, b.shape
        if choice in ("input", "param"):
            shape = self.partner_shape(a.shape, batch=True)
            if shape is not None:
                b = self.new_input(shape[1:], kind)
                return b.var, b, b.shape
        if choice == "constant":
            shape = self.partner_shape(a.shape, batch=False)
            if shape is not None:
                return f"gn.constant({self.pick(NUMBERS)}, {shape})", None, shape
        if kind == "prob":
            return repr(self.pick((0.0, 0.25, 1.0))), None, ()
        return repr(self.pick(NUMBERS)), None, ()

    def guarded(self, a: Value) -> Value:
        """``a`` moved into a positive range, or (one time in three) left as it is."""
        how = self.pick(("sigmoid", "softplus", "square", "exp", "raw", "raw"))
        if how == "raw":
            return a
        if how == "square":
            return self.emit(f"{a.var} ** 2 + 0.5", a.shape, a.dep, [a])
        return self.emit(f"gn.{how}({a.var})", a.shape, a.dep, [a])

    def two_d(self) -> Value:
        """A 2-D value from the pool, or a new (batch, k) input."""
        a = self.operand(lambda v: len(v.shape) == 2)
        return a if a is not None else self.new_input((self.pick(SIZES),))

    # --- steps --------------------------------------------------------------------------------

    def step(self) -> None:
        getattr(self, "step_" + self.pick(KINDS))()

    def join(self) -> None:
        """The first step: the input with a new parameter, through matmul or a broadcasting op."""
        x = self.pool[-1]
        if len(x.shape) == 2 and self.chance(0.5):
            self.step_matmul(x)
        else:
            self.step_binary(x)

    def step_unary(self) -> None:
        a = self.operand()
        fn = self.pick(UNARY)
        if fn == "neg":
            self.emit(f"-{a.var}", a.shape, a.dep, [a])
        elif fn == "power":
            e = self.pick(POWERS)
            base = self.guarded(a) if e in GUARDED_POWERS else a
            self.emit(f"{base.var} ** {e}", a.shape, a.dep, [base])
        elif fn == "log":
            b = self.guarded(a)
            self.emit(f"gn.log({b.var})", a.shape, a.dep, [b])
        elif fn == "leaky_relu" and self.chance(0.3):
            self.emit(f"gn.leaky_relu({a.var}, slope=0.2)", a.shape, a.dep, [a])
        elif fn == "elu" and self.chance(0.3):
            self.emit(f"gn.elu({a.var}, alpha=0.5)", a.shape, a.dep, [a])
        else:
            self.emit(f"gn.{fn}({a.var})", a.shape, a.dep, [a])

    def step_binary(self, a: Value | None = None) -> None:
        joining = a is not None
        a = a or self.operand()
        op = self.pick(("+", "*", "-", "/"))
        if not joining and self.chance(0.05):
            # a deliberate misfit: two arbitrary values, the builder decides
            b = self.pick(self.pool)
            self.program.deliberate_misfit = True
            shape = broadcast(a.shape, b.shape) or a.shape
            self.emit(f"{a.var} {op} {b.var}", shape, a.dep or b.dep, [a, b])
            return
        text, b, b_shape = self.partner(a, choice="param" if joining else None)
        uses = [a] + ([b] if b is not None else [])
        swap = self.chance(0.3)
        if op == "/" and swap:  # the partner over a
            a = self.guarded(a)
            uses[0] = a
        elif op == "/" and b is not None:
            b = self.guarded(b)
            text, uses[1] = b.var, b
        left, right = (text, a.var) if swap else (a.var, text)
        dep = a.dep or (b is not None and b.dep)
        self.emit(f"{left} {op} {right}", broadcast(a.shape, b_shape), dep, uses)

    def step_matmul(self, a: Value | None = None) -> None:
        joining = a is not None
        a = a or self.two_d()
        how = "plain" if joining else self.pick(("plain", "plain", "ta", "tb"))
        inner = a.shape[0] if how == "ta" else a.shape[1]
        outer = a.shape[1] if how == "ta" else a.shape[0]

        def right_ok(v: Value) -> bool:
            return len(v.shape) == 2 and v.shape[1 if how == "tb" else 0] == inner

        b = self.operand(right_ok) if not joining and self.chance(0.4) else None
        if b is None:
            m = self.pick(SIZES)
            if inner is None:
                if how == "tb":
                    return self.step_unary()
                b = self.new_input((m,))
            elif self.param_elements() + inner * m <= MAX_PARAM_ELEMENTS:
                b = self.new_param((m, inner) if how == "tb" else (inner, m))
            else:
                return self.step_unary()
        cols = b.shape[0] if how == "tb" else b.shape[1]
        shape = (outer, cols)
        if not fits(shape):
            return self.step_unary()
        dep = a.dep or b.dep
        if how == "plain":
            self.emit(f"{a.var} @ {b.var}", shape, dep, [a, b])
        else:
            flag = "ta=True" if how == "ta" else "tb=True"
            self.emit(f"gn.matmul({a.var}, {b.var}, {flag})", shape, dep, [a, b])

    def step_reduce(self) -> None:
        a = self.operand()
        fn = self.pick(("sum", "mean"))
        nd = len(a.shape)
        keep = nd > 0 and self.chance(0.4)
        axes = None
        if nd and self.chance(0.7):
            chosen = sorted(
                set(self.draw(st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd)))
            )
            axes = tuple(chosen)
        if axes is None:
            arg, reduced = "", set(range(nd))
        elif len(axes) == 1:
            ax = axes[0] - nd if self.chance(0.3) else axes[0]  # negative axes too
            arg, reduced = f", axis={ax}", set(axes)
        else:
            arg, reduced = f", axis={axes}", set(axes)
        if keep:
            arg += ", keepdims=True"
            shape = tuple(1 if k in reduced else d for k, d in enumerate(a.shape))
        else:
            shape = tuple(d for k, d in enumerate(a.shape) if k not in reduced)
        self.emit(f"gn.{fn}({a.var}{arg})", shape, a.dep, [a])

    def step_softmax(self) -> None:
        a = self.two_d()
        self.emit(f"gn.softmax({a.var})", a.shape, a.dep, [a])

    def step_loss(self) -> None:
        which = self.pick(("mse", "bce", "softmax_ce"))
        if which == "softmax_ce":
            a = self.two_d()
            target = self.distribution(a.shape)
            if target is not None:
                self.emit(f"gn.softmax_cross_entropy({a.var}, {target})", (), a.dep, [a])
                return
            which = "mse"
        a = self.operand()
        text, b, _ = self.partner(a, "prob" if which == "bce" else "normal")
        fn = "mse" if which == "mse" else "binary_cross_entropy_with_logits"
        dep = a.dep or (b is not None and b.dep)
        self.emit(f"gn.{fn}({a.var}, {text})", (), dep, [a] + ([b] if b else []))

    def step_bce_ewise(self) -> None:
        a = self.operand()
        text, b, b_shape = self.partner(a, "prob")
        dep = a.dep or (b is not None and b.dep)
        uses = [a] + ([b] if b is not None else [])
        expr = f'gn.apply("bce_with_logits", {a.var}, {text})'
        self.emit(expr, broadcast(a.shape, b_shape), dep, uses)

    def distribution(self, shape: tuple) -> str | None:
        """Source of a parameter-free tensor of ``shape`` whose rows are distributions."""
        rows, k = shape
        if k is None:
            return None
        if rows is None:
            if self.chance(0.6):
                return self.new_input((k,), "dist").var
            x = self.new_input((k,))
            return self.emit(f"gn.softmax({x.var})", shape, False, [x]).var
        if self.chance(0.5):
            return f"gn.constant({1.0 / k!r}, {shape})"
        x = self.new_input(shape)
        fn = self.pick(("sum", "mean"))
        s = self.emit(f"gn.{fn}({x.var}, axis=0)", shape, False, [x])
        return self.emit(f"gn.softmax({s.var})", shape, False, [s]).var

    # --- the loss -------------------------------------------------------------------------------

    def finish(self) -> None:
        sinks = [v for v in self.pool if v.uses == 0 and v.dep]
        terms = []
        for v in sinks[-3:]:
            how = self.pick(("mean", "sum", "weighted"))
            if v.shape == ():
                terms.append(v.var)
            elif (
                how == "weighted"
                and None not in v.shape[1:]
                and (v.shape[0] is None or len(v.shape) < MAX_RANK)
            ):
                # random upstream weights: a wrong layout shows, where a plain mean may hide it
                u = self.new_input(v.shape[1:] if v.shape[0] is None else v.shape)
                terms.append(f"gn.sum({v.var} * {u.var})")
            else:
                terms.append(f"gn.{'mean' if how == 'mean' else 'sum'}({v.var})")
        if not terms:  # no parameter reached so far: one joins the newest value
            v = self.pool[-1]
            p = self.new_param((1,))
            terms.append(f"gn.mean({v.var} * {p.var})")
        self.program.lines.append("loss = " + " + ".join(terms))


@st.composite
def programs(draw, max_steps: int = 6) -> Program:
    """A random :class:`Program` of 1..max_steps steps over inputs and parameters."""
    d = _Draw(draw)
    d.new_input(d.random_shape(0, 2))
    d.join()
    for _ in range(draw(st.integers(1, max_steps))):
        d.step()
    d.finish()
    return d.program
