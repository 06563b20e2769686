"""Training history: per-epoch metrics, why training stopped, saved as JSON and drawn as PNG;
the stopping rules (:class:`Watch`) and the progress bar that read those metrics.

>>> h = History(); h.record(loss=1.0, accuracy=0.5); h.record(loss=0.5, accuracy=0.75)
>>> h["loss"], h.epochs
([1.0, 0.5], 2)
>>> h.save_json("run/history.json"); h.plot("run/curves.png")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

from graphnn.files import atomic_write_bytes, atomic_write_text


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
        """Loss and metric (accuracy, ...) curves per epoch as a PNG, one panel each."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        kept = ("epochs", "stopped", "lr")
        names = [k.removeprefix("val_") for k in self if k not in kept]
        panels = list(
            dict.fromkeys(n for n in names if isinstance(self.get(n, self.get(f"val_{n}")), list))
        )
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


HIGHER = ("accuracy", "precision", "recall", "f1", "r2")  # metrics that improve upwards


class Watch:
    """Convergence (training loss change < tol for ``patience`` epochs) and early stopping
    (``monitor`` not improving for ``patience`` epochs; accuracies improve upwards)."""

    def __init__(self, tol, patience, early_stopping, monitor):
        self.tol, self.patience, self.early, self.monitor = tol, patience, early_stopping, monitor
        better_up = (
            monitor.removeprefix("val_") in HIGHER or monitor.removeprefix("val_")[:3] == "top"
        )
        self.sign = -1.0 if better_up or monitor.endswith("accuracy") else 1.0
        self.best, self.is_best = math.inf, False
        self.flat = self.stale = 0
        self.last = None

    def update(self, logs) -> str | None:
        """Take one epoch's metrics; the reason to stop now, or None."""
        if self.monitor in logs:
            value = self.sign * logs[self.monitor]
            self.is_best = value < self.best
            self.best = value if self.is_best else self.best
            self.stale = 0 if self.is_best else self.stale + 1
        loss = logs["loss"]
        if self.last is not None and self.tol is not None:
            self.flat = self.flat + 1 if abs(self.last - loss) < self.tol else 0
        self.last = loss
        if self.tol is not None and self.flat >= self.patience:
            return "converged"
        if self.early and self.stale >= self.patience:
            return "early_stopping"
        return None

    def replay(self, history: History) -> str | None:
        """Bring the counters to the end of a resumed run; its stop reason, if it had one."""
        reason = None
        for k in range(history.epochs):
            keys = [key for key in ("loss", self.monitor) if len(history.get(key, ())) > k]
            reason = self.update({key: history[key][k] for key in keys})
        return reason


class ProgressBar:
    """A tqdm bar over the run's epochs on stderr, with the latest metrics, when asked for."""

    def __init__(self, enabled: bool, start: int, total: int):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=start, unit="epoch", file=sys.stderr, dynamic_ncols=True
            )

    def update(self, logs):
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k != "lr"})
            self.bar.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
