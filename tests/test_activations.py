"""Activations come from the op table: each row marked ``activation=True`` is ``gn.<name>``, a spec
function and a ``[[layers]]`` activation, and the README's recipe for adding one is all it takes.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphnn as gn
from graphnn.ir.elementwise import ACTIVATIONS, ELEMENTWISE
from graphnn.spec.build import loads_spec

ROOT = Path(__file__).resolve().parents[1]


def layers_spec(activation: str) -> str:
    return f"""
[inputs]
x = [3]
y = [2]

[model]
input = "x"
target = "y"
loss = "mse"

[[layers]]
units = 4
activation = "{activation}"

[[layers]]
units = 2
"""


def test_activations_are_read_off_the_table():
    assert ACTIVATIONS == tuple(k for k, row in ELEMENTWISE.items() if row.activation)
    assert {"relu", "tanh", "sigmoid"} <= set(ACTIVATIONS)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_every_activation_row_is_exported(name):
    assert name in gn.__all__, f"activation row {name!r} is not in graphnn.__all__"
    builder = getattr(gn, name, None)
    assert callable(builder), f"activation row {name!r} has no gn.{name}"
    x = gn.input("x", (3,))
    assert builder(x).attrs["fn"] == name


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_every_activation_row_is_a_layer_activation_with_its_default_init(name):
    spec = loads_spec(layers_spec(name), f"<{name} layers>")
    assert spec.nodes["h1"].attrs["fn"] == name
    assert spec.nodes["W1"].attrs["init"] == ELEMENTWISE[name].init


NEW_ROW = '    "bent": Elementwise(lambda: z + (sympy.sqrt(z**2 + 1) - 1) / 2, activation=True),\n'

TRAIN = """
import numpy as np
import graphnn as gn
from graphnn.spec.build import loads_spec

assert "bent" in gn.ACTIVATIONS
spec = loads_spec(SPEC, "<bent layers>")
assert spec.nodes["h1"].attrs["fn"] == "bent"
x, y = gn.input("x", (3,)), gn.input("y", (1,))
W1, W2 = gn.param("W1", (3, 8)), gn.param("W2", (8, 1))
g = gn.Graph(gn.mse(gn.bent(x @ W1) @ W2, y))
rng = np.random.default_rng(0)
X = rng.normal(size=(64, 3)).astype(np.float32)
Y = (np.abs(X).sum(axis=1, keepdims=True) / 3).astype(np.float32)
model = gn.compile(g, optimizer=gn.Adam(lr=0.02), backend="cpu")
history = model.fit({"x": X, "y": Y}, epochs=40, batch_size=16, seed=0)
print(history["loss"][0], history["loss"][-1])
"""


def test_the_readme_recipe_adds_an_activation(tmp_path):
    """Copy the package, make exactly the README's three edits for a new activation, train it."""
    readme = (ROOT / "README.md").read_text()
    assert "activation=True" in readme and 'activation("mish")' in readme
    for package in ("graphnn", "codegen"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    table = tmp_path / "graphnn" / "ir" / "elementwise.py"
    text = table.read_text()
    anchor = "    # Loss terms"
    assert anchor in text
    table.write_text(text.replace(anchor, NEW_ROW + anchor, 1))
    ops = tmp_path / "graphnn" / "ir" / "ops.py"
    ops.write_text(ops.read_text() + 'bent = activation("bent")\n')
    init = tmp_path / "graphnn" / "__init__.py"
    text = init.read_text()
    text = re.sub(r"from graphnn\.ir\.ops import \(\n", r"\g<0>    bent,\n", text, count=1)
    text = text.replace("__all__ = [\n", '__all__ = [\n    "bent",\n', 1)
    init.write_text(text)
    script = f"SPEC = {layers_spec('bent')!r}\n" + TRAIN
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    first, last = map(float, done.stdout.split())
    assert np.isfinite(last) and last < first / 2, (first, last)
