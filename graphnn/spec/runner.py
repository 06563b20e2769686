"""Train a spec end to end: load its data, compile, fit, measure, and write the run's files.

``graphnn train`` and ``graphnn demo`` are this plus printing; the example tests call it too.

Example (from the repository root)::

    from graphnn.spec.build import load_spec
    result = run_spec(load_spec("examples/iris.toml"), "runs/iris", backend="numpy")
    print("\n".join(result.report()))
    result.accuracy  # held-out accuracy if the spec holds data out, else training accuracy
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from graphnn.errors import RunExistsError
from graphnn.train import distributed, driver
from graphnn.train.checkpoint import checkpoint_name, checkpoints_newest_first
from graphnn.train.history import History


@dataclass
class RunResult:
    """What one training run produced and measured."""

    spec: object
    model: driver.Model
    history: History
    train_metrics: dict
    heldout_metrics: dict | None
    train_rows: int
    heldout_rows: int
    seconds: float
    out: Path | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def accuracy(self) -> float | None:
        """Held-out accuracy when data was held out, else training accuracy (None: no classes)."""
        metrics = self.heldout_metrics or self.train_metrics
        return metrics.get("accuracy")

    def expectations(self) -> list[tuple[str, float, float | None, bool]]:
        """(metric, bound, measured, met) for each ``[expect]`` entry."""
        metrics = self.heldout_metrics or self.train_metrics
        rows = []
        for key, bound in self.spec.expect.items():
            value = metrics.get(key)
            met = value is not None and (value >= bound if key == "accuracy" else value <= bound)
            rows.append((key, bound, value, met))
        return rows

    def report(self) -> list[str]:
        """The lines ``graphnn train`` prints."""
        epochs = self.history.epochs
        lines = [
            f"trained {self.spec.path}: {epochs} epochs on {self.model.backend} in "
            f"{self.seconds:.1f} s (stopped: {self.history['stopped']})"
        ]
        lines.append(_metrics_line("training", self.train_metrics, self.train_rows))
        if self.heldout_metrics is not None:
            lines.append(_metrics_line("held-out", self.heldout_metrics, self.heldout_rows))
        where = "held-out" if self.heldout_metrics is not None else "training"
        for key, bound, value, met in self.expectations():
            sign = ">=" if key == "accuracy" else "<="
            shown = "n/a" if value is None else f"{value:.4f}"
            verdict = "met" if met else "NOT met"
            lines.append(f"  expect     {key} {sign} {bound:g}: {verdict} ({where} {shown})")
        if self.out is not None:
            names = ", ".join(_shown(p, self.out) for p in self.files)
            lines.append(f"  wrote {self.out}: {names}")
        return lines


def _metrics_line(label: str, metrics: dict, rows: int) -> str:
    parts = [f"{k} {v:.4f}" for k, v in metrics.items()]
    return f"  {label:<10} {'   '.join(parts)}   ({rows} samples)"


def _shown(path: Path, out: Path) -> str:
    if path.is_dir():
        return f"{path.name}/ ({len(list(path.iterdir()))} files)"
    return str(path.relative_to(out))


def run_state(out: Path) -> list[Path]:
    """The files in ``out`` that hold a run: its checkpoints (newest first) and ``model.npz``."""
    checkpoints = out / "checkpoints"
    found = checkpoints_newest_first(checkpoints)
    found += [p for p in (checkpoints / driver.BEST, out / "model.npz") if p.is_file()]
    return found


def _clear_checkpoints(directory: Path) -> None:
    """``overwrite``: a new run replaces the checkpoints an earlier run wrote there."""
    for path in checkpoints_newest_first(directory):
        path.unlink()
    (directory / driver.BEST).unlink(missing_ok=True)


def _prepare(checkpoints: Path, overwrite: bool) -> None:
    if overwrite:
        _clear_checkpoints(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)


def run_spec(
    spec, out=None, *, epochs=None, backend=None, progress=False, resume=False, overwrite=False
) -> RunResult:
    """Train ``spec``; write model, checkpoints, history and curves to ``out`` unless None.

    An ``out`` that holds a run (checkpoints or a model) is continued with ``resume`` (to the
    same result as a run never interrupted), replaced with ``overwrite``, and otherwise refused
    with :class:`~graphnn.errors.RunExistsError` before anything is read or written.  Under an
    MPI launcher (``mpiexec -n 4 graphnn train spec.toml``) every rank trains its share of each
    batch and only rank 0 writes files.
    """
    if resume and overwrite:
        raise ValueError("pass resume or overwrite, not both")
    if out is not None and not (resume or overwrite):
        held = distributed.from_main(lambda: run_state(Path(out)))  # the files rank 0 writes
        if held:
            raise RunExistsError(
                f"{out} holds a run ({held[0].name}, {len(held)} files); pass --resume to "
                "continue it or --overwrite to replace it"
            )
    started = time.perf_counter()
    train, heldout = spec.load_data()
    options = spec.compile_options()
    options["backend"] = backend or options["backend"]
    fit = spec.fit_options()
    fit["epochs"] = epochs or fit["epochs"]
    model = driver.compile(spec.graph, **options)
    if spec.data.source.lower().endswith(".csv"):  # graphnn predict reads the same columns
        model.columns = dict(spec.data.columns)

    if model.accuracy_kind and model.target and "accuracy" not in fit["metrics"]:
        fit["metrics"] = ["accuracy", *fit["metrics"]]  # training accuracy in the history too
    checkpoints = None
    if out is not None:
        out = Path(out)
        checkpoints = out / "checkpoints"
        # rank 0 writes (the others wait: none looks for checkpoints before they are cleared)
        distributed.from_main(lambda: _prepare(checkpoints, overwrite))
    try:
        history = model.fit(
            train,
            validation_data=heldout,
            checkpoint_dir=checkpoints,
            checkpoint_every=max(1, fit["epochs"] // 10),
            progress=progress,
            resume=resume,
            **fit,
        )
    except KeyboardInterrupt:  # fit stopped at a complete epoch, and checkpointed it
        if out is not None and distributed.is_main():
            model.save(out / "model.npz")
            model.history.save_json(out / "history.json")
        raise
    result = RunResult(
        spec,
        model,
        history,
        model.evaluate(train),
        None if heldout is None else model.evaluate(heldout),
        len(next(iter(train.values()))),
        0 if heldout is None else len(next(iter(heldout.values()))),
        0.0,
        out,
    )
    if out is not None and distributed.is_main():
        final = model.save(out / "model.npz")
        if not (checkpoints / checkpoint_name(model.step)).exists():
            model.save(checkpoints / checkpoint_name(model.step))
        result.files = [
            final,
            checkpoints,
            history.save_json(out / "history.json"),
            history.plot(out / "curves.png"),
        ]
    result.seconds = time.perf_counter() - started
    return result
