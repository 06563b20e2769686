"""Spec files: a network, its data and its training declared in TOML, and built safely.

A spec has ``[inputs]`` (per-sample shapes), ``[params]`` (shapes and initializers), ``[graph]``
(named nodes, each an expression over inputs, params and earlier nodes), optional
``[functions]`` (elementwise formulas in ``z``), ``[train]``, ``[data]`` and ``[expect]``.
``[[layers]]`` with ``[model]`` is a shorthand that expands to the same ``[params]`` and
``[graph]`` text an explicit spec would hold.  Expressions are data: they go through
:func:`graphnn.exprparse.parse_expression` only.  Every expression is first checked in a dry run
on stand-in values, so a hostile or misspelled one anywhere in the file is rejected before any
graph op runs.  Every problem is a :class:`~graphnn.errors.SpecError` naming the file, the table,
the key and the offending token.

>>> spec = loads_spec('''
... [inputs]
... x = [4]
... y = [3]
... [params]
... W = { shape = [4, 3], init = "zeros" }
... [graph]
... logits = "x @ W"
... loss = "softmax_cross_entropy(logits, y)"
... ''', "tiny.toml")
>>> spec.graph.param_names, spec.train.optimizer.name
(['W'], 'sgd')
>>> print(spec.graph.gradient("W"))
x^T ((softmax(logits) ∘ rowsum(y) - y)/n)
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import sympy

from graphnn.api import Graph
from graphnn.budgets import LimitError, limit
from graphnn.errors import GraphnnError, SpecError, shown
from graphnn.exprparse import _suggest, check_identifier, parse_expression
from graphnn.ir import batch_norm, conv, dropout, embedding, ops, rewrites
from graphnn.ir.elementwise import ACTIVATIONS, ELEMENTWISE
from graphnn.ir.graph import topological_tensors
from graphnn.ir.ops import Tensor
from graphnn.spec.data_table import DataSpec
from graphnn.spec.layer_kinds import expand_image_layer, kind_of
from graphnn.spec.train_table import TrainConfig, check_keys, parse_expect, parse_train

__all__ = ["Spec", "load_spec", "loads_spec", "GRAPH_FUNCTIONS", "RESERVED"]

MAX_SPEC_BYTES = 1_000_000
MAX_ELEMENTS = 100_000_000  # per input sample or parameter
TABLES = ("inputs", "params", "functions", "graph", "layers", "model", "train", "data", "expect")

GRAPH_FUNCTIONS = {name: ops.activation(name) for name in ACTIVATIONS}
GRAPH_FUNCTIONS |= {"exp": ops.exp_, "log": ops.log_, "softmax": ops.softmax}
GRAPH_FUNCTIONS |= {"softmax_cross_entropy": ops.softmax_cross_entropy, "mse": ops.mse}
GRAPH_FUNCTIONS |= {"binary_cross_entropy_with_logits": ops.binary_cross_entropy_with_logits}
GRAPH_FUNCTIONS |= {"sum": ops.sum, "mean": ops.mean}
GRAPH_FUNCTIONS |= {"conv2d": conv.conv2d, "max_pool2d": conv.max_pool2d, "flatten": conv.flatten}
GRAPH_FUNCTIONS |= {"avg_pool2d": conv.avg_pool2d, "embedding": embedding.embedding}
GRAPH_FUNCTIONS |= {"layer_norm": embedding.layer_norm, "one_hot": embedding.one_hot}
GRAPH_FUNCTIONS |= {"dropout": dropout.dropout, "batch_norm": batch_norm.batch_norm}
GRAPH_FUNCTIONS["sparse_softmax_cross_entropy"] = embedding.sparse_softmax_cross_entropy
GRAPH_FUNCTIONS["concat"] = lambda *parts, axis=-1: conv.concat(parts, axis)  # concat(a, b, ...)
Z = sympy.Symbol("z")


def _one_argument(name: str, fn):
    """``fn`` taking exactly one argument: sympy.sqrt(z, 3) reads 3 as its ``evaluate`` flag."""

    def call(*args, **kwargs):
        if kwargs:
            raise TypeError(f"{name} takes no keyword arguments, got {', '.join(kwargs)}")
        if len(args) != 1:
            raise TypeError(f"{name} takes 1 argument, got {len(args)}")
        return fn(args[0])

    return call


FORMULA_FUNCTIONS = {
    name: _one_argument(name, fn)
    for name, fn in {
        "exp": sympy.exp,
        "log": sympy.log,
        "tanh": sympy.tanh,
        "sqrt": sympy.sqrt,
        "erf": sympy.erf,
        "abs": sympy.Abs,
        "softplus": rewrites.softplus,  # stable forms
        "sigmoid": rewrites.sigmoid,
    }.items()
}
RESERVED = frozenset({*GRAPH_FUNCTIONS, *ELEMENTWISE, *FORMULA_FUNCTIONS, "matmul", "power"})
LAYER_LOSSES = ("softmax_cross_entropy", "binary_cross_entropy_with_logits", "mse")


@dataclass(frozen=True)
class Spec:
    """A built spec: the graph, its named tensors, training settings, data and expectations."""

    path: Path
    graph: Graph
    nodes: Mapping[str, Tensor]  # inputs, params and [graph] nodes by name
    train: TrainConfig
    data: DataSpec | None = None
    expect: Mapping[str, float] = field(default_factory=dict)

    def load_data(self):
        """(training arrays, held-out arrays or None) from ``[data]``, split with the seed."""
        if self.data is None:
            raise SpecError(f"{self.path}: has no [data] table")
        return self.data.load(self.train.seed)

    def compile_options(self) -> dict:
        """Keyword arguments for ``gn.compile(spec.graph, ...)``."""
        t = self.train
        return {
            "optimizer": t.optimizer,
            "backend": t.backend,
            "dtype": t.dtype,
            "predict": t.predict,
            "seed": t.seed,
            "scale": None if self.data is None else self.data.scale,
        }

    def fit_options(self) -> dict:
        """Keyword arguments for ``Model.fit`` (data and validation data aside)."""
        t = self.train
        return {
            "epochs": t.epochs,
            "batch_size": t.batch_size,
            "seed": t.seed,
            "tol": t.tol,
            "patience": t.patience,
            "early_stopping": t.early_stopping,
            "metrics": list(t.metrics),
        }


def load_spec(path, allow_outside_data: bool = False) -> Spec:
    """Read and build the spec file at ``path``; ``allow_outside_data``: its ``[data]`` file may
    lie outside the spec's folder (an absolute path, ``..``, a symbolic link out)."""
    path = Path(path)
    try:
        if not path.is_file():
            raise SpecError(f"{path}: no such spec file")
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(f"{path}: spec file has {size:,} bytes; the limit is 1 MB")
        text = path.read_bytes().decode("utf-8-sig")  # -sig: a byte-order mark some editors write
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec file: {exc.strerror}") from None
    return loads_spec(text, path, allow_outside_data)


def loads_spec(text: str, path="<spec>", allow_outside_data: bool = False) -> Spec:
    """Build a spec from TOML ``text``; ``path`` names it in errors and anchors data paths."""
    text = text.removeprefix("\ufeff")  # a byte-order mark
    _check_nesting(text, path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: TOML syntax error: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise SpecError(f"{path}: TOML values are nested too deeply to parse") from None
    return _Builder(doc, Path(path), allow_outside_data).build()


# What can hold a bracket that is not one: comments and TOML's four kinds of string.
_NOT_BRACKETS = (
    r"#[^\n]*",
    r'"""(?:[^\\]|\\.)*?"""',
    r"'''.*?'''",
    r'"(?:[^"\\\n]|\\.)*"',
    r"'[^'\n]*'",
)
_TOKENS = re.compile("|".join([*_NOT_BRACKETS, r"[\[{]", r"[\]}]"]), re.DOTALL)


def _check_nesting(text: str, path) -> None:
    """SpecError naming the line where arrays and inline tables nest deeper than
    GRAPHNN_MAX_TOML_DEPTH (tomllib recurses once per level: 700 levels overflowed it).
    Brackets in strings and comments do not count."""
    most, depth = limit("GRAPHNN_MAX_TOML_DEPTH"), 0
    for token in _TOKENS.finditer(text):
        bracket = token.group()
        if bracket in ("[", "{"):
            depth += 1
            if depth > most:
                line = text.count("\n", 0, token.start()) + 1
                raise SpecError(
                    f"{path} line {line}: arrays and tables are nested more than {most} levels "
                    "deep (GRAPHNN_MAX_TOML_DEPTH)"
                )
        elif bracket in ("]", "}"):
            depth = max(0, depth - 1)


def _plain(key: str) -> bool:
    """A key that can stand in a message as it is: a short identifier."""
    return isinstance(key, str) and key.isidentifier() and key.isascii() and len(key) <= 60


def _shape(value, where: str, allow_scalar: bool) -> tuple[int, ...]:
    ok = isinstance(value, list) and (value or allow_scalar)
    if not ok or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value):
        raise SpecError(f"{where}: a shape must be a list of positive ints, got {shown(value)}")
    if math.prod(value) > MAX_ELEMENTS:
        raise SpecError(f"{where}: shape {value} has more than {MAX_ELEMENTS:,} elements")
    return tuple(value)


class _Stub:
    """Stands in for a tensor in the dry run: every operation on it gives itself."""

    def _same(self, *args, **kwargs):
        return self

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _same
    __truediv__ = __rtruediv__ = __matmul__ = __rmatmul__ = __pow__ = _same
    __neg__ = __pos__ = __call__ = _same


class _Recorder(dict):
    """A names mapping that records which names an expression reads."""

    def __init__(self, *args):
        super().__init__(*args)
        self.used: list[str] = []

    def __getitem__(self, key):
        self.used.append(key)
        return super().__getitem__(key)


class _Builder:
    """Reads the tables of one parsed spec document, in order, and builds the Spec."""

    def __init__(self, doc: dict, path: Path, allow_outside_data: bool = False):
        self.doc, self.path, self.file = doc, path, str(path)
        self.allow_outside_data = allow_outside_data
        self.origin: dict[str, str] = {}  # where generated [params]/[graph] entries came from

    def at(self, table: str, key: str | None = None) -> str:
        shown_key = key if key is None or _plain(key) else shown(key)
        default = f"{self.file} [{table}]" + (f" {shown_key}" if key is not None else "")
        return self.origin.get(f"{table}.{key}", default)

    def table(self, name: str, required: bool = False) -> dict:
        if name not in self.doc:
            if required:
                raise SpecError(f"{self.file}: missing table [{name}]")
            return {}
        value = self.doc[name]
        if not isinstance(value, dict):
            raise SpecError(f"{self.file} [{name}]: must be a table, got {type(value).__name__}")
        return value

    def build(self) -> Spec:
        check_keys(self.doc, self.file, TABLES, what="table")
        inputs_src = self.table("inputs", required=True)
        functions_src = self.table("functions")
        params_src, graph_src = self._model_tables(inputs_src, functions_src)
        self._check_names(inputs_src, params_src, functions_src, graph_src)
        self._dry_run(inputs_src, params_src, functions_src, graph_src)
        functions = self._functions(functions_src)
        leaves = self._leaves(inputs_src, params_src)
        nodes = self._graph(graph_src, leaves, {**GRAPH_FUNCTIONS, **functions})
        train = parse_train(self.table("train"), f"{self.file} [train]", nodes, leaves)
        graph = self._network(nodes, train)
        data = None
        if "data" in self.doc:
            defaults = self.table("model")
            defaults = {"features": defaults.get("input"), "targets": defaults.get("target")}
            data = DataSpec.from_table(
                self.table("data"),
                where=f"{self.file} [data]",
                base=self.path.parent,
                allow_outside=self.allow_outside_data,
                inputs=_sample_shapes(leaves),
                defaults=defaults,
            )
        expect = parse_expect(self.table("expect"), f"{self.file} [expect]")
        return Spec(self.path, graph, {**leaves, **nodes}, train, data, expect)

    # --- tables -------------------------------------------------------------------------------

    def _model_tables(self, inputs_src, functions_src) -> tuple[dict, dict]:
        if "layers" not in self.doc:
            if "model" in self.doc:
                raise SpecError(f"{self.file} [model]: only used with [[layers]]")
            return self.table("params"), self.table("graph", required=True)
        for other in ("params", "graph"):
            if other in self.doc:
                raise SpecError(
                    f"{self.file} [{other}]: cannot be combined with [[layers]]; "
                    "write the model either as [[layers]] + [model] or as [params] + [graph]"
                )
        return expand_layers(
            self.doc["layers"],
            self.table("model", required=True),
            inputs_src,
            functions_src,
            self.file,
            self.origin,
        )

    def _check_names(self, *tables) -> None:
        seen: dict[str, str] = {}
        for table, src in zip(("inputs", "params", "functions", "graph"), tables, strict=True):
            for key in src:
                where = self.at(table, key)
                check_identifier(key, where=where, reserved=RESERVED)
                if key in seen:
                    raise SpecError(f"{where}: name {shown(key)} is already used in [{seen[key]}]")
                seen[key] = table

    def _dry_run(self, inputs_src, params_src, functions_src, graph_src) -> None:
        """Parse every [graph] expression on stand-ins; check names refer to earlier nodes."""
        stub = _Stub()
        functions = dict.fromkeys([*GRAPH_FUNCTIONS, *functions_src], stub)
        names = _Recorder(dict.fromkeys([*inputs_src, *params_src, *graph_src], stub))
        order = {key: k for k, key in enumerate(graph_src)}
        for key, text in graph_src.items():
            where = self.at("graph", key)
            names.used.clear()
            parse_expression(text, names=names, functions=functions, where=where)
            for used in names.used:
                if used == key:
                    raise SpecError(f"{where}: node {shown(key)} uses itself")
                if order.get(used, -1) > order[key]:
                    raise SpecError(
                        f"{where}: uses {shown(used)}, which is defined later in [graph]; "
                        "a node can use inputs, params and earlier nodes"
                    )

    def _functions(self, src) -> dict:
        out = {}
        for key, text in src.items():
            where = self.at("functions", key)
            expr = parse_expression(text, names={"z": Z}, functions=FORMULA_FUNCTIONS, where=where)
            if not isinstance(expr, sympy.Basic) or Z not in expr.free_symbols:
                raise SpecError(f"{where}: the formula does not depend on z")
            try:
                out[key] = ops.elementwise(key, expr, [Z])
            except GraphnnError as exc:
                raise SpecError(f"{where}: {exc}") from None
        return out

    def _leaves(self, inputs_src, params_src) -> dict[str, Tensor]:
        leaves = {}
        for key, value in inputs_src.items():
            leaves[key] = ops.input(key, _shape(value, self.at("inputs", key), False))
        for key, value in params_src.items():
            where = self.at("params", key)
            if isinstance(value, list):
                value = {"shape": value}
            check_keys(value, where, ("shape", "init"), required=("shape",))
            init = value.get("init", "glorot_uniform")
            if init not in ops.INITIALIZERS:
                raise SpecError(
                    f"{where} init: unknown initializer {shown(init)}; "
                    + _suggest(str(init), ops.INITIALIZERS)
                )
            leaves[key] = ops.param(key, _shape(value["shape"], f"{where} shape", True), init)
        return leaves

    def _graph(self, src, leaves, functions) -> dict[str, Tensor]:
        nodes: dict[str, Tensor] = {}
        for key, text in src.items():
            where = self.at("graph", key)
            names = {**leaves, **nodes}
            # a formula holds no strings: batch norm's running statistics are named for the node
            known = {**functions, "batch_norm": partial(batch_norm.batch_norm, name=key)}
            try:
                value = parse_expression(text, names=names, functions=known, where=where)
            except SpecError:
                raise
            except GraphnnError as exc:
                notes = "; ".join(getattr(exc, "__notes__", []))
                raise SpecError(f"{where}: {exc}" + (f" ({notes})" if notes else "")) from None
            if not isinstance(value, Tensor) or value.op == "const":
                raise SpecError(
                    f"{where}: {shown(text)} is a constant; a node must depend on an "
                    "input or a parameter"
                )
            same = next((k for k, t in names.items() if t is value), None)
            if same is not None:
                raise SpecError(
                    f"{where}: {shown(text)} is the same value as {shown(same)}; use {shown(same)}"
                )
            nodes[key] = value.named(key)
        return nodes

    def _network(self, nodes: dict[str, Tensor], train: TrainConfig) -> Graph:
        loss = nodes[train.loss]
        reached = {id(t) for t in topological_tensors([loss])}
        # Keep nodes the loss does not use (e.g. probs = softmax(logits)) in the forward graph.
        extra = [t for t in nodes.values() if id(t) not in reached]
        try:
            graph = Graph(loss, extra)
        except GraphnnError as exc:
            raise SpecError(f"{self.file} [train] loss: {exc}") from None
        try:  # a spec is for training: fail now rather than after minutes of compiling
            graph.check_node_budget()
        except LimitError as exc:
            raise SpecError(f"{self.file} [graph]: {exc}") from None
        table = "[[layers]]" if "layers" in self.doc else "[params]"
        try:  # a spec of a few lines can ask for gigabytes: say so before they are allocated
            graph.check_param_bytes(train.dtype, train.optimizer)
        except LimitError as exc:
            raise SpecError(f"{self.file} {table}: {exc}") from None
        return graph


def _sample_shapes(leaves: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: t.shape[1:] for k, t in leaves.items() if t.op == "input"}


def expand_layers(layers, model, inputs, functions, file: str, origin: dict):
    """The ``[params]`` and ``[graph]`` tables that ``[[layers]]`` + ``[model]`` stand for.

    Layer k has parameters ``W{k}``, ``b{k}`` and the node ``h{k}``; the last layer's node is
    ``logits`` (``output`` for mse) and the loss node is ``loss``.
    """
    where = f"{file} [model]"
    check_keys(model, where, ("input", "target", "loss"), required=("input", "target", "loss"))
    images = isinstance(layers, list) and any(isinstance(x, dict) and kind_of(x) for x in layers)
    for role in ("input", "target"):
        name = model[role]
        if name not in inputs:
            raise SpecError(
                f"{where} {role}: no input named {shown(name)}; " + _suggest(str(name), inputs)
            )
        ndims = (1, 3) if role == "input" and images else (1,)  # image layers read (h, w, c)
        if not isinstance(inputs[name], list) or len(inputs[name]) not in ndims:
            raise SpecError(f"{where} {role}: input {shown(name)} must have a 1-D shape like [64]")
    if model["loss"] not in LAYER_LOSSES:
        raise SpecError(
            f"{where} loss: unknown loss {shown(model['loss'])}; "
            + _suggest(str(model["loss"]), LAYER_LOSSES)
        )
    if not isinstance(layers, list) or not layers or not all(isinstance(x, dict) for x in layers):
        raise SpecError(f"{file} [[layers]]: must be a non-empty array of tables [[layers]]")
    params, graph = {}, {}
    prev, shape = model["input"], tuple(inputs[model["input"]])
    for k, layer in enumerate(layers, 1):
        last = k == len(layers)
        if kind_of(layer):
            at = f"{file} [[layers]] #{k}"
            if last:
                raise SpecError(f"{at}: the last layer gives the outputs: a dense one (units)")
            node = layer.get("name", f"h{k}")
            if not isinstance(node, str):
                raise SpecError(f"{at} name: must be a string, got {shown(node)}")
            more, graph[node], shape = expand_image_layer(layer, k, prev, shape, at)
            params |= more
            for key in [*(f"params.{p}" for p in more), f"graph.{node}"]:
                origin[key] = at
            prev = node
            continue
        if len(shape) != 1:
            raise SpecError(
                f"{file} [[layers]] #{k}: a dense layer needs 1-D input, got {list(shape)}; "
                "put a layer with flatten = true before it"
            )
        width = shape[0]
        name, units, act, init = _layer(layer, f"{file} [[layers]] #{k}", last, model, functions)
        name = name or (f"h{k}" if not last else "output" if model["loss"] == "mse" else "logits")
        params[f"W{k}"] = {"shape": [width, units], "init": init}
        params[f"b{k}"] = {"shape": [units], "init": "zeros"}
        z = f"{prev} @ W{k} + b{k}"
        graph[name] = f"{act}({z})" if act else z
        for key in (f"params.W{k}", f"params.b{k}", f"graph.{name}"):
            origin[key] = f"{file} [[layers]] #{k}"
        prev, shape = name, (units,)
    width = shape[0]
    target_width = inputs[model["target"]][0]
    if width != target_width:
        raise SpecError(
            f"{file} [[layers]] #{len(layers)} units: the last layer has {width} "
            f"units but target {shown(model['target'])} has shape [{target_width}]"
        )
    graph["loss"] = f"{model['loss']}({prev}, {model['target']})"
    origin["graph.loss"] = f"{where} loss"
    return params, graph


def _layer(layer, where: str, last: bool, model, functions):
    check_keys(layer, where, ("units", "activation", "name", "init"), required=("units",))
    units = layer["units"]
    if not isinstance(units, int) or isinstance(units, bool) or not 0 < units <= 1_000_000:
        raise SpecError(f"{where} units: must be a positive int, got {shown(units)}")
    act = layer.get("activation", "none")
    known = (*ACTIVATIONS, "softmax", *functions, "none")
    if act not in known:
        raise SpecError(
            f"{where} activation: unknown activation {shown(act)}; {_suggest(act, known)}"
        )
    act = None if act == "none" else act
    if last and act and model["loss"] != "mse":
        raise SpecError(
            f"{where} activation: the last layer feeds {model['loss']}, which takes "
            f"logits; leave out activation = {shown(act)}"
        )
    name = layer.get("name")
    if name is not None and not isinstance(name, str):
        raise SpecError(f"{where} name: must be a string, got {shown(name)}")
    init = layer.get("init", ELEMENTWISE[act].init if act in ACTIVATIONS else "glorot_uniform")
    return name, units, act, init
