"""[train] schedule: the Python learning-rate schedules, declared in a spec."""

from __future__ import annotations

import numpy as np
import pytest

import graphnn as gn
from graphnn.optim.schedules import Cosine, Exponential, Step, Warmup
from graphnn.spec.build import loads_spec
from graphnn.spec.runner import run_spec

SPEC = """
[inputs]
x = [3]
t = [1]
[params]
w = { shape = [3, 1] }
[graph]
loss = "mse(x @ w, t)"
[train]
optimizer = "sgd"
lr = 0.1
batch_size = 10
epochs = 4
backend = "numpy"
SCHEDULE
[data]
source = "d.npz"
validation_split = 0
"""


def spec(schedule, folder="."):
    return loads_spec(SPEC.replace("SCHEDULE", schedule), f"{folder}/m.toml")


@pytest.mark.parametrize(
    "text, expected",
    [
        ('schedule = { kind = "step", every = 3, gamma = 0.5 }', Step(3, 0.5)),
        ('schedule = { kind = "exponential", gamma = 0.9 }', Exponential(0.9)),
        ('schedule = { kind = "cosine", total_steps = 12 }', Cosine(12)),
        (
            'schedule = { kind = "warmup", steps = 2, then = { kind = "cosine", total_steps = 8,'
            " floor = 0.1 } }",
            Warmup(2, Cosine(8, 0.1)),
        ),
    ],
)
def test_a_spec_schedule_is_the_python_one(tmp_path, text, expected):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3))
    np.savez(tmp_path / "d.npz", x=x, t=x @ [[1.0], [-2.0], [0.5]])
    built = spec(text, tmp_path)
    assert built.train.optimizer.schedule == expected
    result = run_spec(built, None)
    # 3 steps an epoch: each epoch's last learning rate is the schedule's at its last step
    steps = [3 * (e + 1) - 1 for e in range(4)]
    np.testing.assert_allclose(result.history["lr"], [0.1 * expected(s) for s in steps])
    python = gn.compile(built.graph, optimizer=gn.SGD(lr=0.1, schedule=expected), backend="numpy")
    python.fit(dict(np.load(tmp_path / "d.npz")), epochs=4, batch_size=10)
    np.testing.assert_array_equal(python.params["w"], result.model.params["w"])


@pytest.mark.parametrize(
    "text, message",
    [
        ('schedule = "cosine"', "[train] schedule: must be a table"),
        ('schedule = { kind = "cosin", total_steps = 3 }', "did you mean 'cosine'?"),
        ('schedule = { kind = "cosine" }', "missing key 'total_steps'"),
        ('schedule = { kind = "step", every = 0 }', "[train] schedule every: must be an int"),
        ('schedule = { kind = "step", every = 2, gama = 0.5 }', "unknown key 'gama'"),
        (
            'schedule = { kind = "warmup", steps = 2, then = { kind = "x" } }',
            "[train] schedule.then kind",
        ),
        ('schedule = { kind = "cosine", total_steps = 5, floor = 2 }', "floor must be in [0, 1]"),
    ],
)
def test_schedule_errors_name_the_key(text, message):
    with pytest.raises(gn.SpecError) as info:
        spec(text)
    assert message in str(info.value) and "m.toml [train]" in str(info.value)
