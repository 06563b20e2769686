"""Training history: per-epoch metrics, why training stopped, saved as JSON and drawn as PNG.

>>> h = History(); h.record(loss=1.0, accuracy=0.5); h.record(loss=0.5, accuracy=0.75)
>>> h["loss"], h.epochs
([1.0, 0.5], 2)
>>> h.save_json("run/history.json"); h.plot("run/curves.png")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from graphnn.checkpoint import atomic_write_bytes, atomic_write_text


class History(dict):
    """A dict of metric name -> list of per-epoch values, plus ``stopped`` (the reason)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.setdefault("stopped", None)

    def record(self, **metrics: float) -> None:
        for key, value in metrics.items():
            self.setdefault(key, []).append(float(value))

    @property
    def epochs(self) -> int:
        return len(self.get("loss", []))

    def save_json(self, path) -> Path:
        """Write the history as JSON (atomically); :meth:`load_json` reads it back."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(dict(self), indent=2))
        return path

    @classmethod
    def load_json(cls, path) -> History:
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))

    def plot(self, path) -> Path:
        """Loss (and accuracy, when recorded) curves per epoch as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = [k for k in ("loss", "accuracy") if k in self or f"val_{k}" in self]
        if not panels:
            raise ValueError(f"nothing to plot: the history records {sorted(self)}")
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
        for ax, key in zip(axes[0], panels, strict=True):
            for name in (key, f"val_{key}"):
                if name in self:
                    ax.plot(range(1, len(self[name]) + 1), self[name], label=name)
            ax.set_xlabel("epoch")
            ax.set_title(key)
            ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, dpi=100, format="png")
        plt.close(fig)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
        return path
