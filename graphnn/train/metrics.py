"""Evaluation metrics.

>>> import numpy as np
>>> accuracy(np.array([[2.0, 1.0], [0.0, 3.0]]), np.array([[1.0, 0.0], [1.0, 0.0]]), "argmax")
0.5
"""

from __future__ import annotations

import numpy as np


def accuracy(pred: np.ndarray, target: np.ndarray, kind: str) -> float:
    """Fraction of rows whose predicted class matches the target's ('argmax'), or of outputs
    on the target's side of the threshold ('logit': 0, 'prob': 0.5; multi-label too)."""
    if kind == "argmax":
        return float(np.mean(pred.argmax(axis=1) == target.argmax(axis=1)))
    threshold = 0.0 if kind == "logit" else 0.5
    return float(np.mean((pred > threshold) == (target > 0.5)))
