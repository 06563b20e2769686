"""fit's shuffle: np.random.default_rng(seed)'s stream in every run, whether the Generator is new
or an earlier run's one reset to a seed seen before (graphnn.train.seeding)."""

from __future__ import annotations

import numpy as np

import graphnn as gn
from graphnn.train import seeding


def test_seeded_gives_default_rngs_stream_for_new_and_seen_seeds():
    rng = None
    seeds = [0, 7, 0, 2**40, 7, 2**70, 0]
    seeds += list(range(100, 100 + seeding.KEPT + 2)) + [0, 7]  # the oldest are forgotten
    for seed in seeds:
        rng = seeding.seeded(rng, seed)
        want = np.random.default_rng(seed)
        assert rng.bit_generator.state == want.bit_generator.state, seed
        np.testing.assert_array_equal(rng.permutation(50), want.permutation(50))
        assert rng.random() == want.random()  # the stream goes on alike


def test_a_seen_seed_resets_the_generator_without_making_one():
    first = seeding.seeded(None, 12345)
    first.random(3)
    again = seeding.seeded(first, 12345)
    assert again is first and again.random() == np.random.default_rng(12345).random()
    other = np.random.Generator(np.random.MT19937(1))  # not default_rng's bit generator
    made = seeding.seeded(other, 12345)
    assert made is not other and made.random() == np.random.default_rng(12345).random()
    unseeded = seeding.seeded(first, None)
    assert unseeded is not first


def test_fit_with_the_same_seed_shuffles_alike_in_every_call():
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(20, 3)), "t": rng.normal(size=(20, 1))}

    def model():
        x, t = gn.input("x", (3,)), gn.input("t", (1,))
        return gn.compile(gn.Graph(gn.mse(x @ gn.param("w", (3, 1)), t)), backend="numpy")

    looped = model()
    for seed in (3, 4, 3, 3):
        looped.fit(data, epochs=2, batch_size=4, seed=seed)
    fresh = model()
    for seed in (3, 4, 3, 3):  # the same calls, each run's Generator made new
        seeding._STARTS.clear()
        fresh.fit(data, epochs=2, batch_size=4, seed=seed)
    np.testing.assert_array_equal(looped.params["w"], fresh.params["w"])
    assert looped.history["loss"] == fresh.history["loss"]
