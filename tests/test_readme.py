"""The README's code runs as written: the 30-line example, the spec listing, the load-and-predict
and scikit-learn snippets, and the generated-code excerpt is what graphnn generates."""

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


def test_readme_scikit_learn_snippet_runs_on_split_data():
    """The scikit-learn snippet, with the four arrays it names made from iris (string labels,
    which the README says the classifier takes)."""
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    text = README.read_text()
    match = re.search(r"\*\*With scikit-learn\.\*\*.*?```python\n(.*?)```", text, re.S)
    assert match, "the README lost its scikit-learn snippet"
    iris = load_iris()
    labels = iris.target_names[iris.target]  # 'setosa', ...
    X_train, X_test, labels_train, labels_test = train_test_split(
        iris.data, labels, test_size=0.3, random_state=0, stratify=labels
    )
    namespace = {"X_train": X_train, "X_test": X_test}
    namespace |= {"labels_train": labels_train, "labels_test": labels_test}
    lines = match.group(1).strip().splitlines()
    *setup, last = lines
    exec(compile("\n".join(setup), "README scikit-learn", "exec"), namespace)
    score = eval(compile(last, "README scikit-learn", "eval"), namespace)  # our own README
    assert score > 0.9
