"""Tests for graphnn.exprparse: the safe evaluator for spec expressions."""

import ast
import doctest
import pathlib
import re
import time

import pytest
import sympy

from graphnn import exprparse
from graphnn.errors import GraphError, SpecError
from graphnn.exprparse import check_identifier, parse_expression

WHERE = "model.toml [graph] h"


class FakeTensor:
    """A graph tensor stand-in whose operators record what they built, as a string."""

    log: list[str] = []  # every operator application, to prove rejected specs ran nothing

    def __init__(self, text):
        self.text = text

    def _op(self, symbol, other, reverse=False):
        other = other.text if isinstance(other, FakeTensor) else repr(other)
        left, right = (other, self.text) if reverse else (self.text, other)
        FakeTensor.log.append(symbol)
        return FakeTensor(f"({left} {symbol} {right})")

    def __add__(self, o):
        return self._op("+", o)

    def __radd__(self, o):
        return self._op("+", o, True)

    def __sub__(self, o):
        return self._op("-", o)

    def __rsub__(self, o):
        return self._op("-", o, True)

    def __mul__(self, o):
        return self._op("*", o)

    def __rmul__(self, o):
        return self._op("*", o, True)

    def __truediv__(self, o):
        return self._op("/", o)

    def __rtruediv__(self, o):
        return self._op("/", o, True)

    def __pow__(self, o):
        return self._op("**", o)

    def __matmul__(self, o):
        return self._op("@", o)

    def __neg__(self):
        FakeTensor.log.append("neg")
        return FakeTensor(f"(-{self.text})")

    def __pos__(self):
        return self


@pytest.fixture
def graph():
    """names and functions for graph-building mode, plus the list of calls the functions saw."""
    FakeTensor.log = []
    calls = []

    def op(name):
        def build(*args, **kwargs):
            calls.append(name)
            parts = [a.text if isinstance(a, FakeTensor) else repr(a) for a in args]
            parts += [f"{k}={v!r}" for k, v in kwargs.items()]
            return FakeTensor(f"{name}({', '.join(parts)})")

        return build

    names = {n: FakeTensor(n) for n in ["x", "y", "z", "W1", "W2", "b1", "a", "k", "é"]}
    functions = {n: op(n) for n in ["relu", "leaky_relu", "f", "spy", "__import__"]}
    return names, functions, calls


def run(text, graph, **kwargs):
    names, functions, _ = graph
    return parse_expression(text, names=names, functions=functions, where=WHERE, **kwargs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("relu(x @ W1 + b1)", "relu(((x @ W1) + b1))"),
        ("-x * 2 - y / 4", "(((-x) * 2) - (y / 4))"),
        ("+x ** 2", "(x ** 2)"),
        ("x ** -0.5", "(x ** -0.5)"),
        ("leaky_relu(z, slope=0.2)", "leaky_relu(z, slope=0.2)"),
        ("leaky_relu(z, slope=-1)", "leaky_relu(z, slope=-1)"),
        ("(2 * 3 - 1) * x", "(5 * x)"),  # numeric subtrees are folded
        ("1 / 4 + x", "(0.25 + x)"),
        ("relu(relu(x))", "relu(relu(x))"),
        ("  x + y", "(x + y)"),  # leading indentation is fine
        ("(x +\n y)", "(x + y)"),
        ("x # a comment", "x"),
    ],
)
def test_graph_mode_builds_expected_operations(graph, text, expected):
    assert run(text, graph).text == expected


def test_plain_number_result(graph):
    assert run("2 ** 10", graph) == 1024
    assert run("-(3)", graph) == -3


def test_sympy_mode():
    z, t = sympy.symbols("z t")
    functions = {f.__name__: f for f in (sympy.exp, sympy.log, sympy.tanh, sympy.erf, sympy.sqrt)}
    cases = {
        "z / (1 + exp(-z))": z / (1 + sympy.exp(-z)),
        "0.5 * z * (1 + erf(z / sqrt(2)))": 0.5 * z * (1 + sympy.erf(z / sympy.sqrt(2))),
        "log(1 + exp(z)) - tanh(t) ** 2": sympy.log(1 + sympy.exp(z)) - sympy.tanh(t) ** 2,
        "-z ** 3 + t / 2": -(z**3) + t / 2,
    }
    for text, expected in cases.items():
        got = parse_expression(text, names={"z": z, "t": t}, functions=functions, where="ops.toml")
        assert got == expected, text
    swish = parse_expression(
        "z / (1 + exp(-z))", names={"z": z}, functions=functions, where="ops.toml"
    )
    assert sympy.simplify(sympy.diff(swish, z) - sympy.diff(z / (1 + sympy.exp(-z)), z)) == 0


REJECTED = [
    ("__import__('os').system('echo hi')", "name '__import__' is not allowed"),
    ("().__class__.__bases__", "attribute access '.__class__' is not allowed (column 3)"),
    ("x.T", "attribute access '.T' is not allowed (column 2)"),
    ("relu(x).T", "attribute access '.T'"),
    ("lambda: 1", "lambda"),
    ("9**9**9", "exponent of '**' must be a numeric constant (column 4)"),
    ("x ** y", "exponent of '**' must be a numeric constant"),
    ("x ** 17", "exponent 17 of '**' is too large"),
    ("x[0]", "indexing"),
    ("'a string'", "string literal"),
    ("b'x'", "bytes literal"),
    ("True + x", "boolean"),
    ("None", "None"),
    ("1j * x", "complex number"),
    ("[1, 2]", "list literal"),
    ("{1: 2}", "dict literal"),
    ("{1, 2}", "set literal"),
    ("(x, y)", "tuple"),
    ("x if y else z", "conditional expression"),
    ("x < y", "comparison"),
    ("x == y", "comparison"),
    ("x and y", "boolean operator"),
    ("not x", "operator 'not'"),
    ("~x", "operator '~'"),
    ("x // 2", "operator '//'"),
    ("x % 2", "operator '%'"),
    ("f(*a)", "argument unpacking '*'"),
    ("f(**k)", "argument unpacking '**'"),
    ("f(x, _slope=1)", "keyword '_slope' is not allowed"),
    ("leaky_relu(x, slope=y)", "keyword argument 'slope' must be a numeric constant"),
    ("_x + 1", "name '_x' is not allowed"),
    ("__builtins__", "name '__builtins__' is not allowed"),
    ("open('f')", "unknown function 'open'"),
    ("eval('1')", "unknown function 'eval'"),
    ("x(1)", "'x' is not a function"),
    ("relu + x", "'relu' is a function; call it as relu(...)"),
    ("(a := 1)", "assignment expression ':='"),
    ("f'{x}'", "f-string"),
    ("(x for x in y)", "generator expression"),
    ("[x for x in y]", "list comprehension"),
    ("f(x)(y)", "calling the result of an expression is not allowed"),
    ("1e7 * x", "constant too large"),
    ("1e999 * x", "constant too large"),
    ("1e6 * 1e6", "constant too large"),  # rejected while folding, still before evaluation
    ("x * (1000 ** 3)", "constant too large"),
    ("1 / 0", "division by zero"),
    ("(-8) ** 0.5", "not a real number"),
    ("W3 @ x", "unknown name 'W3'"),
]


@pytest.mark.parametrize(("text", "fragment"), REJECTED)
def test_rejected_before_anything_runs(graph, text, fragment):
    _, _, calls = graph
    for candidate in (text, f"spy(x) + y * ({text})"):  # also after things that would run
        with pytest.raises(SpecError) as info:
            run(candidate, graph)
        message = str(info.value)
        assert message.startswith(f"{WHERE}: "), message
        assert re.search(r"\(column \d+\)", message), message
        if candidate == text:
            assert fragment in message, message
        else:  # the column moved
            assert re.sub(r"\(column \d+\)", "", fragment) in message, message
    assert calls == [] and FakeTensor.log == []


def test_escape_attempt_with_everything_available_still_rejected(graph):
    names, functions, calls = graph
    functions = {**functions, "open": lambda *a: calls.append("open"), "getattr": getattr}
    for text in ["open('f')", "getattr(x, 'T')", "__import__('os')"]:
        with pytest.raises(SpecError):
            parse_expression(text, names=names, functions=functions, where=WHERE)
    assert calls == []


def test_unknown_name_suggests_close_match(graph):
    with pytest.raises(SpecError, match=r"unknown name 'W3' \(column 10\); did you mean 'W[12]'\?"):
        run("relu(x @ W3)", graph)
    with pytest.raises(SpecError, match=r"unknown function 'rellu'.*did you mean 'relu'\?"):
        run("rellu(x)", graph)
    with pytest.raises(SpecError, match=r"unknown name 'qqq'.*known: W1, W2"):
        run("qqq", graph)


def test_columns_count_characters_and_lines(graph):
    with pytest.raises(SpecError, match=r"'\.T' is not allowed \(column 6\)"):
        run("é + x.T", graph)  # 'é' is two UTF-8 bytes but one column
    with pytest.raises(SpecError, match=r"'\.T' is not allowed \(column 4\)"):
        run("  x.T", graph)
    with pytest.raises(SpecError, match=r"'\.T' is not allowed \(line 2, column 3\)"):
        run("(x +\n y.T)", graph)


@pytest.mark.parametrize("text", ["relu(x @ W1 + )", "x +", "relu(x", "x y", "1 +\n 2"])
def test_syntax_error_is_spec_error_with_column(graph, text):
    with pytest.raises(SpecError, match=r"syntax error: .*\((line \d+, )?column \d+\)") as info:
        run(text, graph)
    assert not isinstance(info.value, SyntaxError)


@pytest.mark.parametrize("text", ["", "   ", "\n\t\n"])
def test_empty_expression(graph, text):
    with pytest.raises(SpecError, match="empty expression"):
        run(text, graph)


def test_not_a_string(graph):
    with pytest.raises(SpecError, match="expected an expression string, got int"):
        run(3, graph)


def test_huge_text_rejected_on_length_before_parsing(graph, monkeypatch):
    def no_parse(*args, **kwargs):
        raise AssertionError("ast.parse must not see oversized text")

    monkeypatch.setattr(exprparse.ast, "parse", no_parse)
    text = "x+" * 5_000_000 + "x"  # 10 MB
    start = time.perf_counter()
    with pytest.raises(SpecError, match="10000001 characters; limit 2000"):
        run(text, graph)
    assert time.perf_counter() - start < 1.0
    with pytest.raises(SpecError, match="limit 5"):
        run("x + y + z", graph, max_length=5)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("-" * 150 + "x", "nested more than 100 levels deep"),
        ("+".join(["x"] * 150), "nested more than 100 levels deep"),
        ("relu(" * 120 + "x" + ")" * 120, "nested more than 100 levels deep"),
        ("(" * 300 + "x" + ")" * 300, "syntax error: too many nested parentheses"),
    ],
)
def test_deep_nesting_is_a_clear_spec_error(graph, text, fragment):
    with pytest.raises(SpecError, match=fragment):
        run(text, graph)


def test_parser_recursion_becomes_spec_error(graph, monkeypatch):
    def overflow(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded during ast construction")

    monkeypatch.setattr(exprparse.ast, "parse", overflow)
    with pytest.raises(SpecError, match="nested too deeply to parse"):
        run("-" * 1999 + "x", graph)


def test_too_many_nodes(graph):
    text = "f(" + ", ".join(["x"] * 6000) + ")"
    with pytest.raises(SpecError, match="more than 5000 AST nodes"):
        run(text, graph, max_length=len(text))


def test_errors_from_callables_name_the_spec(graph):
    names, functions, _ = graph

    def bad_shape(*args):
        raise GraphError("relu expects 1 input")

    with pytest.raises(GraphError) as info:  # graphnn errors keep their type, gain a note
        parse_expression("relu(x)", names=names, functions={"relu": bad_shape}, where=WHERE)
    assert any(WHERE in note and "column 1" in note for note in info.value.__notes__)
    with pytest.raises(SpecError, match=r"evaluating 'relu\(x, y\)' failed: TypeError"):
        parse_expression("relu(x, y)", names=names, functions={"relu": abs}, where=WHERE)
    with pytest.raises(SpecError, match=r"evaluating 'x @ 2' failed: TypeError"):
        parse_expression("x @ 2", names={"x": 1.0}, functions={}, where=WHERE)


def test_module_never_evaluates_code():
    source = pathlib.Path(exprparse.__file__).read_text()
    tree = ast.parse(source)
    builtins = {"eval", "exec", "compile", "__import__", "getattr", "setattr", "vars", "globals"}
    methods = {"sympify", "parse_expr", "eval", "exec", "literal_eval"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                assert func.id not in builtins | methods, f"line {node.lineno} calls {func.id}"
            if isinstance(func, ast.Attribute):
                assert func.attr not in methods, f"line {node.lineno} calls .{func.attr}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            assert all("sympy" not in alias.name for alias in node.names)


@pytest.mark.parametrize("name", ["h", "hidden1", "W_out", "a2b"])
def test_check_identifier_accepts(name):
    check_identifier(name, where="model.toml [graph]", reserved={"relu", "tanh"})


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("relu", "name 'relu' shadows the built-in op 'relu'; choose another name"),
        ("_h", "starts with '_'"),
        ("__class__", "starts with '_'"),
        ("1h", "not a plain identifier"),
        ("h-1", "not a plain identifier"),
        ("h.T", "not a plain identifier"),
        ("", "not a plain identifier"),
        ("h\n", "not a plain identifier"),
        ("é", "not a plain identifier"),
        ("lambda", "Python keyword"),
        ("None", "Python keyword"),
        ("h" * 101, "longer than 100 characters"),
        (3, "must be a string"),
    ],
)
def test_check_identifier_rejects(name, fragment):
    with pytest.raises(SpecError, match="^model.toml \\[graph\\]: ") as info:
        check_identifier(name, where="model.toml [graph]", reserved={"relu", "tanh"})
    assert fragment in str(info.value)


def test_docstring_examples():
    result = doctest.testmod(exprparse)
    assert result.attempted >= 4 and result.failed == 0


def test_did_you_mean_only_when_the_suggestion_is_close():
    from graphnn.exprparse import _suggest

    assert _suggest("epoch", ["epochs", "lr"]) == "did you mean 'epochs'?"
    assert _suggest("metrics", ["betas", "lr", "epochs"]) == "known: betas, epochs, lr"


def test_an_integer_literal_past_float_range_is_too_large():
    with pytest.raises(SpecError, match="constant too large"):
        parse_expression("z + " + "9" * 500, names={"z": 1}, functions={}, where="w")
