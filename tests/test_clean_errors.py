"""Every bad input is one clean graphnn error: its own type, one bounded line, nothing raw."""

import numpy as np
import pytest

import graphnn as gn
from graphnn.cli import main
from graphnn.errors import NameNotFoundError, one_line, shown

SPEC = """
[inputs]
x = [2]
y = [1]
[params]
w = [2, 1]
[graph]
pred = "sigmoid(x @ w)"
loss = "mse(pred, y)"
"""


def spec_error(tmp_path, capsys, text: str) -> str:
    """The one line ``graphnn graph`` prints for the spec ``text`` (asserting exit 2)."""
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    assert main(["graph", str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphnn: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


def test_division_by_zero_in_a_function(tmp_path, capsys):
    text = '[functions]\nf = "z / 0"\n' + SPEC.replace("sigmoid(", "f(")
    line = spec_error(tmp_path, capsys, text)
    assert "s.toml [functions] f: function 'f': the formula" in line and "zoo" in line


def test_division_by_zero_in_the_api_is_a_graph_error():
    import sympy

    z = sympy.Symbol("z")
    with pytest.raises(gn.GraphError, match="function 'f'.*division by zero"):
        gn.elementwise("f", z / 0, [z])


def test_deeply_nested_toml(tmp_path, capsys):
    line = spec_error(tmp_path, capsys, "x = " + "[" * 700 + "]" * 700 + "\n")
    assert "s.toml" in line and "nested" in line


def test_a_long_key_is_cut_with_its_length(tmp_path, capsys):
    line = spec_error(tmp_path, capsys, SPEC + "[train]\n" + "q" * 900_000 + " = 1\n")
    assert len(line) < 300 and "(900,000 characters)" in line and "[train]" in line


def test_control_characters_are_escaped(tmp_path, capsys):
    line = spec_error(tmp_path, capsys, SPEC + '[train]\n"\\u202e\\u001b[31m" = 1\n')
    assert line.isprintable() and "\\u202e" in line and "\\x1b" in line


def test_a_long_shape_is_cut(tmp_path, capsys):
    text = SPEC.replace("x = [2]", f"x = [{'0, ' * 300_000}0]")
    line = spec_error(tmp_path, capsys, text)
    assert len(line) < 300 and "(300,001 items)" in line


def model():
    x, t = gn.input("x", (2,)), gn.input("t", (1,))
    return gn.Graph(gn.mse(x @ gn.param("w", (2, 1)), t))


DATA = {"x": np.ones((4, 2), np.float32), "t": np.ones((4, 1), np.float32)}


@pytest.mark.parametrize("seed", [-1, "abc", 1.5, True])
def test_a_bad_seed_is_a_data_error(seed):
    with pytest.raises(gn.DataError, match="seed must be an int >= 0"):
        gn.compile(model(), backend="numpy", seed=seed)
    fitted = gn.compile(model(), backend="numpy")
    with pytest.raises(gn.DataError, match="seed must be an int >= 0"):
        fitted.fit(DATA, epochs=1, seed=seed)
    assert fitted.step == 0


def test_seed_none_shuffles_at_random_but_initializes_nothing_at_random():
    with pytest.raises(gn.DataError, match="seed must be an int >= 0, got None"):
        gn.compile(model(), backend="numpy", seed=None)
    fitted = gn.compile(model(), backend="numpy")
    assert fitted.fit(DATA, epochs=1, seed=None).epochs == 1


def test_a_file_as_checkpoint_dir_fails_before_training(tmp_path):
    (tmp_path / "file").write_text("")
    fitted = gn.compile(model(), backend="numpy")
    with pytest.raises(gn.CheckpointError, match="is a file, not a directory"):
        fitted.fit(DATA, epochs=1, checkpoint_dir=tmp_path / "file")
    with pytest.raises(gn.CheckpointError, match="cannot make checkpoint_dir"):
        fitted.fit(DATA, epochs=1, checkpoint_dir=tmp_path / "file" / "under")
    assert fitted.step == 0


def test_an_unknown_parameter_is_a_graph_error_and_a_key_error():
    graph = model()
    with pytest.raises(NameNotFoundError) as exc:
        graph.gradient("nope")
    assert isinstance(exc.value, KeyError) and isinstance(exc.value, gn.GraphError)
    assert str(exc.value) == "no parameter named 'nope'; parameters: w"
    with pytest.raises(NameNotFoundError, match="no node named 'nope'"):
        graph.forward.node("nope")


def test_shown_and_one_line():
    assert shown("abc") == "'abc'"
    assert shown("q" * 1000, 20) == "'qqqqqqqqqqqqqqqq... (1,000 characters)"
    assert shown(list(range(100)), 20).endswith("... (100 items)")
    assert one_line("a\nb\u202ec\x1b") == "a\\nb\\u202ec\\x1b"
    long = one_line("x" * 5000, 100)
    assert len(long) <= 100 and long.endswith("(5,000 characters)")
