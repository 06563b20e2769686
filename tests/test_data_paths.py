"""[data] files stay in the spec's folder unless allowed, errors never echo them, and the quirks
(a byte-order mark, a folder, duplicate columns, extra function arguments) are handled."""

import pytest

from graphnn.cli import main
from graphnn.errors import SpecError
from graphnn.spec.build import load_spec, loads_spec

SPEC = """
[inputs]
x = [2]
y = [1]
[params]
w = [2, 1]
[graph]
pred = "sigmoid(x @ w)"
loss = "mse(pred, y)"
[train]
epochs = 1
backend = "numpy"
[data]
source = "SOURCE"
x = ["a", "b"]
y = ["c"]
validation_split = 0
"""
ROWS = "a,b,c\n1,2,0\n3,4,1\n"


@pytest.fixture
def folder(tmp_path):
    """specs/ holding the spec; outside.csv beside it, outside its folder."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "outside.csv").write_text(ROWS)
    return tmp_path / "specs"


def write(folder, source, text=SPEC):
    path = folder / "s.toml"
    path.write_text(text.replace("SOURCE", source))
    return path


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("{outside}", "is an absolute path"),
        ("../outside.csv", "goes up with '..'"),
        ("link.csv", "leads out of it through a symbolic link"),
        ("sub/../../outside.csv", "goes up with '..'"),
    ],
)
def test_a_file_outside_the_spec_folder_is_refused_unless_allowed(folder, source, why):
    (folder / "link.csv").symlink_to(folder.parent / "outside.csv")
    (folder / "sub").mkdir()
    source = source.format(outside=folder.parent / "outside.csv")
    path = write(folder, source)
    with pytest.raises(SpecError, match=f"{why}.*--allow-outside-data") as exc:
        load_spec(path)
    assert "s.toml [data] source" in str(exc.value)
    train, _ = load_spec(path, allow_outside_data=True).load_data()
    assert train["x"].shape == (2, 2)


def test_the_cli_flag(folder, capsys):
    path = write(folder, "../outside.csv")
    out = folder / "run"
    assert main(["train", str(path), "--out", str(out)]) == 2
    assert "--allow-outside-data" in capsys.readouterr().err
    assert main(["train", str(path), "--out", str(out), "--allow-outside-data"]) == 0
    assert main(["graph", str(path), "--allow-outside-data"]) == 0


def test_a_link_inside_the_folder_is_fine(folder):
    (folder / "data").mkdir()
    (folder / "data" / "d.csv").write_text(ROWS)
    (folder / "link.csv").symlink_to(folder / "data" / "d.csv")
    train, _ = load_spec(write(folder, "link.csv")).load_data()
    assert len(train["x"]) == 2


def test_a_link_moved_out_after_the_spec_was_read_is_refused(folder):
    (folder / "d.csv").write_text(ROWS)
    built = load_spec(write(folder, "d.csv"))
    (folder / "d.csv").unlink()
    (folder / "d.csv").symlink_to(folder.parent / "outside.csv")
    with pytest.raises(SpecError, match="symbolic link"):
        built.load_data()


def test_errors_never_echo_the_file(folder):
    (folder.parent / "secret.txt").write_text("root:x:0:0:secret line\nsecond secret line\n")
    (folder / "link.csv").symlink_to(folder.parent / "secret.txt")
    built = load_spec(write(folder, "link.csv"), allow_outside_data=True)
    with pytest.raises(SpecError) as exc:
        built.load_data()
    message = str(exc.value)
    assert "secret" not in message and "has no column 'a' (it has 1 columns)" in message
    (folder / "d.csv").write_text("a,b,c\n1,secret-cell,0\n")
    with pytest.raises(SpecError) as exc:
        load_spec(write(folder, "d.csv")).load_data()
    assert "secret" not in str(exc.value) and "row 2, column 'b' is not a number" in str(exc.value)


def test_a_close_column_name_is_suggested(folder):
    (folder / "d.csv").write_text("a1,b,c\n1,2,0\n")
    with pytest.raises(SpecError, match="has no column 'a'; did you mean 'a1'"):
        load_spec(write(folder, "d.csv")).load_data()


def test_a_folder_says_so(folder):
    (folder / "d.csv").mkdir()
    with pytest.raises(SpecError, match="'d.csv' is a folder, not a .npz or .csv file"):
        load_spec(write(folder, "d.csv"))


def test_duplicate_columns_are_refused(folder):
    (folder / "d.csv").write_text("a,b,a,c\n1,2,3,0\n")
    with pytest.raises(SpecError, match=r"column 'a' twice \(columns 1 and 3\)"):
        load_spec(write(folder, "d.csv")).load_data()


def test_a_byte_order_mark_in_spec_and_csv(folder):
    (folder / "d.csv").write_bytes(b"\xef\xbb\xbf" + ROWS.encode())
    path = folder / "s.toml"
    path.write_bytes(b"\xef\xbb\xbf" + SPEC.replace("SOURCE", "d.csv").encode())
    train, _ = load_spec(path).load_data()
    assert train["x"].tolist() == [[1, 2], [3, 4]]
    assert loads_spec("\ufeff" + SPEC.replace("SOURCE", "d.csv"), path).graph.param_names == ["w"]


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("sqrt(z, 3)", "sqrt takes 1 argument, got 2"),
        ("exp(z, evaluate=0)", "exp takes no keyword arguments, got evaluate"),
        ("abs()", "abs takes 1 argument, got 0"),
    ],
)
def test_extra_function_arguments_are_refused(folder, formula, message):
    text = f'[functions]\nf = "{formula}"\n' + SPEC.replace("sigmoid(", "f(")
    with pytest.raises(SpecError, match=rf"s.toml \[functions\] f: .*{message}"):
        loads_spec(text.replace("SOURCE", "sklearn:iris"), folder / "s.toml")
