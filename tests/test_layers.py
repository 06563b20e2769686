"""The folders are the pipeline: imports point down the stages only, and no import circle exists.

Stages, lowest first (a module may import its own stage and any stage below it):

    0  graphnn.errors, graphnn.exprparse, graphnn.files,    vocabulary every stage shares
       graphnn.budgets, graphnn.deadline
    1  graphnn.ir                                           op table, tensors, graph, shapes
    2  graphnn.derive, graphnn.optim                        autodiff, derivative screen; optimizers
    3  codegen                                              plan, printer, back ends, export
    4  graphnn.inspect, graphnn.train                       explanations; the driver
    5  graphnn.spec, graphnn.api, graphnn.sklearn,          spec files; gn.Graph; estimators;
       graphnn.model_file                                   gn.load_model
    6  graphnn.cli, graphnn (the package's public names)    the command

Every import counts, including one inside a function: an import moved into a function to dodge a
circle is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = [
    ("graphnn.errors", "graphnn.exprparse", "graphnn.files", "graphnn.budgets", "graphnn.deadline"),
    ("graphnn.ir",),
    ("graphnn.derive", "graphnn.optim"),
    ("codegen",),
    ("graphnn.inspect", "graphnn.train"),
    ("graphnn.spec", "graphnn.api", "graphnn.sklearn", "graphnn.model_file"),
    ("graphnn.cli", "graphnn"),
]


def stage(module: str) -> int:
    """The stage of a module: the longest matching prefix in STAGES."""
    best, length = None, -1
    for level, prefixes in enumerate(STAGES):
        for prefix in prefixes:
            hit = module == prefix or module.startswith(prefix + ".")
            if hit and len(prefix) > length:
                best, length = level, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no stage: add its folder to STAGES")
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in ("graphnn", "codegen"):
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from a import b`` counts as a.b when that exists)."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # from a.b import c: the module a.b.c if there is one, else a.b itself
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [n for n in names if n in known] or [node.module]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def import_graph() -> nx.DiGraph:
    found = modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(found)
    for name, path in found.items():
        for target in imports(path, set(found)):
            if target != name and not name.startswith(target + "."):
                graph.add_edge(name, target)
    return graph


def test_every_module_has_a_stage():
    for name in modules():
        stage(name)


def test_imports_point_down_the_pipeline():
    upward = [
        f"{a} (stage {stage(a)}) imports {b} (stage {stage(b)})"
        for a, b in import_graph().edges
        if stage(b) > stage(a)
    ]
    assert not upward, "imports that run up the pipeline:\n" + "\n".join(sorted(upward))


def test_no_import_circle():
    graph = import_graph()
    circles = [" -> ".join([*c, c[0]]) for c in nx.simple_cycles(graph)]
    assert not circles, "import circles:\n" + "\n".join(sorted(circles))


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("graphnn/ir/x.py", "from codegen.plan import Plan"),
        ("graphnn/derive/x.py", "def f():\n    from graphnn.train import driver"),
    ],
)
def test_the_checker_sees_an_upward_import(tmp_path, source, problem):
    path = tmp_path / "x.py"
    path.write_text(problem + "\n")
    found = imports(path, {"codegen.plan", "graphnn.train.driver", "graphnn.train"})
    target = next(iter(found))
    assert stage(target) > stage(module_name(ROOT / source))


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_an_op_with_no_emitter_fails_naming_op_and_back_end(backend):
    """One emitter class per back end, dispatching on the step's kind, fails in one place."""
    import importlib
    from types import SimpleNamespace

    from graphnn.errors import CodegenError

    steps = importlib.import_module(f"codegen.{backend}.steps")
    emitter = next(
        cls
        for cls in vars(steps).values()
        if isinstance(cls, type) and cls.__name__.endswith("Steps")
    )
    step = SimpleNamespace(kind="conv2d", node=SimpleNamespace(name="conv1"))
    with pytest.raises(
        CodegenError, match=f"the {backend} back end has no emitter for op 'conv2d'"
    ):
        emitter.emit(object.__new__(emitter), step)
