"""The README's 30-line example runs as written and prints what its comments say."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def example() -> str:
    text = README.read_text()
    match = re.search(r"## A 30-line example\n\n```python\n(.*?)```", text, re.S)
    assert match, "the README lost its example section"
    return match.group(1)


def test_readme_example_runs_and_prints_its_comments():
    code = example()
    assert len(code.splitlines()) <= 30
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README example", "exec"), {})  # our own README, not user input
    lines = out.getvalue().splitlines()
    # print(g.gradient("W1"))  # <the formula the README shows>
    shown = re.search(r'print\(g\.gradient\("W1"\)\)\s+# (.+)', code).group(1)
    assert lines[0] == shown
    assert lines[1].startswith("x^{T}")  # the LaTeX form
    loss, val_accuracy = map(float, lines[2].split())
    assert loss < 0.05 and val_accuracy >= 0.95, lines[2]
    assert re.fullmatch(r"\[\d( \d){4}\]", lines[3]), lines[3]  # five predicted classes


def test_readme_spec_listing_is_the_digits_example():
    text = README.read_text()
    match = re.search(r"This is `examples/digits.toml`.*?\n\n```toml\n(.*?)```", text, re.S)
    assert match, "the README lost its spec listing"
    example = (README.parent / "examples" / "digits.toml").read_text()
    assert match.group(1) == example[example.index("[inputs]") :]


def test_readme_load_and_predict_snippet_runs_as_written(tmp_path, monkeypatch):
    from graphnn.spec.build import load_spec
    from graphnn.spec.runner import run_spec

    text = README.read_text()
    match = re.search(r"From Python:\n\n```python\n(.*?)```", text, re.S)
    assert match, "the README lost its load-and-predict snippet"
    code = match.group(1)
    monkeypatch.chdir(tmp_path)
    spec = load_spec(README.parent / "examples" / "iris.toml")  # graphnn train, on numpy
    run_spec(spec, tmp_path / "runs" / "iris", backend="numpy")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README load/predict", "exec"), {})  # our own README
    shown = re.search(r"# the first five irises' classes: (.+)", code).group(1)
    assert out.getvalue().strip() == shown


def test_readme_generated_code_excerpt_is_what_graphnn_generates():
    """The excerpt under "Exporting kernels" is cut from the module the 30-line example's graph
    generates, as it is generated now (it went stale once, showing printed sizes)."""
    text = README.read_text()
    match = re.search(r"## Exporting kernels\n.*?```python\n(.*?)```", text, re.S)
    assert match, "the README lost its generated-code excerpt"
    code = example()
    namespace: dict = {}
    exec(compile(code[: code.index("print(")], "README example", "exec"), namespace)
    import graphnn as gn

    source = namespace["g"].source(backend="cpu", optimizer=gn.SGD(lr=0.1, momentum=0.9))
    assert match.group(1) in source
