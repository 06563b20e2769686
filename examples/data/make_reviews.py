"""Write ``reviews.csv``, the small categorical data set of ``examples/reviews.toml``.

Each row is an 8-word "review" over a 40-word vocabulary, stored as word ids ``w1..w8`` (the
index of the word in :data:`VOCAB`), and a 0/1 ``label``: 1 when the review holds more positive
words than negative ones, with "not" flipping the word after it.  Rows with a tie are not drawn.
A word's meaning is not in its id, so a model has to learn it: an embedding table does.

The file is built deterministically (NumPy's PCG64, seed 0), so it is rebuilt bit for bit by

    python examples/data/make_reviews.py

and ``tests/test_examples.py`` checks that the bundled file is what this script writes.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np

POSITIVE = ["good", "great", "fine", "tasty", "fresh", "friendly", "cheap", "quick"]
NEGATIVE = ["bad", "awful", "cold", "bland", "stale", "rude", "pricey", "slow"]
NEUTRAL = [
    "the", "a", "food", "service", "was", "and", "very", "place", "staff", "coffee",
    "soup", "bread", "table", "menu", "we", "it", "our", "today", "lunch", "view",
    "really", "quite", "so",
]  # fmt: skip
VOCAB = [*NEUTRAL, "not", *POSITIVE, *NEGATIVE]  # 23 + 1 + 8 + 8 = 40 words
LENGTH, ROWS, SEED = 8, 2000, 0


def score(words: list[str]) -> int:
    """Positive words minus negative ones; "not" flips the sign of the word after it."""
    total, flip = 0, 1
    for w in words:
        value = (w in POSITIVE) - (w in NEGATIVE)
        total += flip * value
        flip = -1 if w == "not" else 1
    return total


def rows(n: int = ROWS, seed: int = SEED) -> list[list[int]]:
    """``n`` reviews as word ids with their label; sentiment words are drawn more often."""
    rng = np.random.default_rng(seed)
    weights = np.array([1.0] * len(NEUTRAL) + [1.5] + [2.0] * 16)
    weights /= weights.sum()
    out = []
    while len(out) < n:
        ids = rng.choice(len(VOCAB), size=LENGTH, p=weights)
        s = score([VOCAB[i] for i in ids])
        if s != 0:
            out.append([*map(int, ids), int(s > 0)])
    return out


def csv_text() -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*(f"w{k + 1}" for k in range(LENGTH)), "label"])
    writer.writerows(rows())
    return buffer.getvalue()


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("reviews.csv")
    target.write_text(csv_text())
    print(f"wrote {target} ({ROWS} reviews over {len(VOCAB)} words)")
