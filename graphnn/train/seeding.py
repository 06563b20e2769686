"""The shuffling Generator of a new run: ``np.random.default_rng(seed)``'s stream, made cheaply
when the seed was seen before.

Every ``fit`` call starts a run whose shuffle is ``default_rng(seed)``'s.  Making that Generator
costs 7 us (its SeedSequence hashes the seed; in a fit call, with the caches cold, 15 us); a
loop of ``fit`` calls mostly passes the same seed (the default 0), and setting a Generator's
state to the one that seed gives costs 1 us.  The states of the last few seeds are kept.

>>> import numpy as np
>>> rng = seeded(None, 5); _ = rng.random(); again = seeded(rng, 5)
>>> again is rng and again.random() == np.random.default_rng(5).random()
True
"""

from __future__ import annotations

import numpy as np

KEPT = 16  # seeds whose starting state is kept (a loop with one seed needs one)
_STARTS: dict[int, dict] = {}  # seed -> the bit generator's state default_rng(seed) starts in


def seeded(rng: np.random.Generator | None, seed: int | None) -> np.random.Generator:
    """A Generator in the state ``np.random.default_rng(seed)`` starts in: ``rng`` reset to it
    when ``rng`` is one of default_rng's (PCG64) and ``seed`` was seen, else a new one."""
    if seed is None:  # a fresh random seed each time: nothing to keep
        return np.random.default_rng()
    start = _STARTS.get(seed)
    if start is None or rng is None or type(rng.bit_generator) is not np.random.PCG64:
        fresh = np.random.default_rng(seed)
        if len(_STARTS) >= KEPT:
            del _STARTS[next(iter(_STARTS))]  # the oldest
        _STARTS[seed] = fresh.bit_generator.state
        return fresh
    rng.bit_generator.state = start
    return rng
