"""Node names never collide with what generated code defines or uses (codegen/names.py)."""

import ast
import builtins

import numpy as np
import pytest

import graphnn as gn
from codegen.cpu.module import module_source
from codegen.cuda import module as cuda_module
from codegen.names import EXPORT_TAKEN, RESERVED, derived, size_variables, update_locals
from codegen.signature import signature
from graphnn.errors import GraphError

OPTIMIZERS = [
    gn.SGD(lr=0.1, momentum=0.9, nesterov=True, clip_norm=1.0, weight_decay=0.01),
    gn.Adam(lr=0.1),
    gn.AdamW(lr=0.1),
    gn.RMSProp(lr=0.1),
    gn.Adagrad(lr=0.1),
]


def graphs():
    x, t = gn.input("x", (3,)), gn.input("t", (2,))
    w, b = gn.param("w", (3, 2)), gn.param("b", (2,))
    yield gn.Graph(gn.softmax_cross_entropy(gn.tanh(x @ w + b), t))
    h = gn.relu(x @ gn.param("W1", (3, 4)))
    yield gn.Graph(gn.mse(gn.sigmoid(h @ gn.param("W2", (4, 2))), t))
    yield gn.Graph(gn.binary_cross_entropy_with_logits(x @ w, t))


def _names_in(tree) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef) and node is not tree:
            found.add(node.name)
        elif isinstance(node, ast.arg):
            found.add(node.arg)
        elif isinstance(node, ast.alias):
            found.add((node.asname or node.name).split(".")[0])
    return found


def clashing_scope_names(source: str, made: set[str]) -> set[str]:
    """The names a node's identifier could collide with: the module's globals, and every name
    of each function in which a node's identifier appears (a helper without one, such as the
    CUDA tiled matmul, keeps its locals to itself)."""
    tree = ast.parse(source)
    names = set()
    for statement in tree.body:
        if isinstance(statement, ast.FunctionDef | ast.ClassDef):
            names.add(statement.name)
            inside = _names_in(statement)
            if inside & made:
                names |= inside
            else:  # the globals and builtins it reads are module names all the same
                names |= {n for n in inside if n in dir(builtins)}
        else:
            names |= _names_in(statement)
    return names


def from_nodes(graph, optimizer) -> tuple[set[str], set[str]]:
    """(identifiers generated code makes from node names, and those plus the ones it makes from
    optimizer settings)."""
    sig = signature(graph, optimizer)
    nodes = set()
    for ident in sig.ident.values():
        nodes |= {ident, *derived(ident), f"k_{ident}", f"fwd_{ident}"}
    made = nodes | set(sig.state) | set(sig.hyper) | {h.upper() for h in sig.hyper}
    made |= size_variables(graph)  # the CPU kernels' sizes, numbered per graph
    made |= set(optimizer.state) | {f"{b}_" for b in optimizer.state}
    made |= set(update_locals(optimizer).values())  # a small model's written-out update
    return nodes, made | {k for k, _ in optimizer.per_step}


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=lambda o: o.name)
def test_every_name_generated_code_uses_is_in_the_table(optimizer, tmp_path):
    for graph in graphs():
        nodes, made = from_nodes(graph, optimizer)
        kernels = [module_source(graph, optimizer, dtype, (graph.loss_name,))
                   for dtype in ("float32", "float64")]  # fmt: skip
        kernels.append(cuda_module.module_source(graph, optimizer, "float32"))
        used = set().union(*(clashing_scope_names(s, nodes) for s in kernels))
        assert used - made <= RESERVED, sorted(used - made - RESERVED)
        for backend in ("cpu", "cuda"):  # the wrappers rename an argument using these
            path = tmp_path / f"{backend}.py"
            graph.export(path, optimizer, backend)
            used = clashing_scope_names(path.read_text(), nodes)
            unlisted = used - made - RESERVED - EXPORT_TAKEN
            assert not unlisted, sorted(unlisted)


@pytest.mark.parametrize("name", ["ValueError", "np", "range", "ws", "tid", "ｒａｎｇｅ", "P_"])
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_a_node_named_like_generated_code_trains(name, backend):
    x, t = gn.input("x", (2,)), gn.input("t", (1,))
    h = (x @ gn.param("w", (2, 1), init="ones")).named(name)
    model = gn.compile(gn.Graph(gn.mse(gn.tanh(h), t)), optimizer=gn.SGD(lr=0.1), backend=backend)
    data = {"x": np.ones((4, 2), np.float32), "t": np.zeros((4, 1), np.float32)}
    loss = model.fit(data, epochs=2, batch_size=2)["loss"]
    assert loss[1] < loss[0]
    assert model.predict(data, node=name).shape == (4, 1)


@pytest.mark.parametrize("name", ["ValueError", "len"])
def test_an_input_or_param_named_like_a_builtin_trains(name):
    x, t = gn.input(name, (2,)), gn.input("t", (1,))
    w = gn.param(name + "_w", (2, 1), init="ones")
    model = gn.compile(gn.Graph(gn.mse(x @ w, t)), optimizer=gn.Adam(lr=0.1))
    data = {name: np.ones((4, 2), np.float32), "t": np.zeros((4, 1), np.float32)}
    assert np.isfinite(model.fit(data, epochs=1, batch_size=2)["loss"][0])


@pytest.mark.parametrize(("first", "second"), [("x", "ｘ"), ("fi", "ﬁ")])
def test_names_python_reads_as_one_identifier_are_refused(first, second):
    x, t = gn.input(first, (2,)), gn.input("t", (1,))
    with pytest.raises(GraphError, match=f"nodes '{first}' and '{second}'.*NFKC"):
        gn.Graph(gn.mse(x @ gn.param(second, (2, 1)), t))


@pytest.mark.parametrize("name", ["my node", "a-b", "1x", "_hidden", ""])
def test_a_node_name_that_is_no_identifier_is_refused(name):
    x = gn.input("x", (2,))
    with pytest.raises(GraphError, match="must be an identifier"):
        (x @ gn.param("w", (2, 1))).named(name)


def test_a_spec_node_named_valueerror_trains(tmp_path, capsys):
    from graphnn.cli import main

    (tmp_path / "d.csv").write_text("a,b,c\n0.1,0.2,0.3\n0.4,0.5,0.6\n")
    (tmp_path / "s.toml").write_text(
        '[inputs]\nx = [2]\ny = [1]\n[params]\nw = [2, 1]\n[graph]\nValueError = "x @ w"\n'
        'loss = "mse(tanh(ValueError), y)"\n[train]\nepochs = 1\n[data]\nsource = "d.csv"\n'
        'x = ["a", "b"]\ny = ["c"]\nvalidation_split = 0\n'
    )
    assert main(["train", str(tmp_path / "s.toml"), "--out", str(tmp_path / "run")]) == 0
