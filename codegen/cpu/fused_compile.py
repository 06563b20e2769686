"""The fused ``train_epoch``: compiled in a background process while training runs stepwise.

A new model trains from its first step on step kernels it shares with every other model
(:mod:`codegen.cpu.stepwise`), which cost a Numba dispatch per block and step.  The fused epoch
(one compiled call per epoch) is compiled meanwhile by a child process into Numba's on-disk
cache, and the trainer switches to it at the first epoch boundary after the child has finished;
the two compute the same bits, so when the switch happens changes no result.

``GRAPHNN_FUSED`` chooses: ``background`` (the default), ``wait`` (compile the fused epoch
before the first epoch: no stepwise epoch) or ``never`` (stepwise only: no compile at all beyond
the shared step kernels; the test suite uses it).

A process, not a thread: Numba's compiler holds the GIL for half of a compile and a global lock
for all of it, and LLVM running in a thread while the interpreter exits can crash the exit.  The
child is a new session, so a Ctrl-C of the training does not reach it, and it leaves a marker
(``<module>.<signature hash>.fused``) when the compiled epoch is in the cache.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

from graphnn import files
from graphnn.errors import GraphnnError, GraphnnWarning

MODES = ("background", "wait", "never")
# marker -> the child compiling it, for every model of this process: models of one module (a
# grid search over the learning rate) share one child instead of starting one each
_CHILDREN: dict[Path, subprocess.Popen] = {}


def mode() -> str:
    """GRAPHNN_FUSED, checked: one of :data:`MODES`."""
    value = os.environ.get("GRAPHNN_FUSED", "background").strip().lower() or "background"
    if value not in MODES:
        raise GraphnnError(f"GRAPHNN_FUSED={value!r}: use one of {', '.join(MODES)}")
    return value


class FusedEpoch:
    """Whether the fused ``train_epoch`` of ``module`` (imported from ``path``) may be called
    without compiling in this process, and the child that compiles it."""

    def __init__(self, module, path: Path):
        self.module, self.path = module, Path(path)
        self.child: subprocess.Popen | None | bool = None  # False: could not start one
        self._ready = False
        self._warned = False  # about a failed child, once

    def ready(self, args) -> bool:
        """True when calling ``train_epoch(*args)`` compiles nothing here (or the mode waits)."""
        if self._ready:
            return True
        how = mode()
        if how == "never":
            return False
        if how == "wait" or self.module.train_epoch.overloads:
            self._ready = True
        else:
            marker = self._marker(args)
            if marker.exists():
                self._ready = True  # the child compiled it: Numba loads it from the cache
            elif self.child and marker.with_suffix(".failed").exists():
                self._failed(marker.with_suffix(".failed"))
        return self._ready

    def _failed(self, report: Path) -> None:
        """Say once that the child failed; training goes on stepwise (the same results)."""
        if self._warned:
            return
        self._warned = True
        warnings.warn(
            f"graphnn: the fused epoch of {self.path.name} did not compile in the background "
            f"(see {report}); training goes on with the step kernels, which compute the same "
            "results more slowly",
            GraphnnWarning,
            stacklevel=4,
        )

    def start(self, args) -> None:
        """Start the child that compiles ``train_epoch`` for the types of ``args`` (once)."""
        if self.child is not None or mode() != "background":  # started, failed, or not asked
            return
        from numba import typeof

        sig = tuple(typeof(a) for a in args)
        marker = self._marker(args, sig)
        running = _CHILDREN.get(marker)
        if running is not None and running.poll() is None:
            self.child = running  # another model of this process is compiling it
            return
        job = marker.with_suffix(".job")
        env = dict(os.environ, GRAPHNN_CACHE_DIR=str(self.path.parent))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_root(), env.get("PYTHONPATH")]))
        try:
            files.publish(job, pickle.dumps(sig))
            self.child = subprocess.Popen(
                [sys.executable, "-m", "codegen.cpu.fused_compile", str(self.path), str(job)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        except OSError as exc:  # no process to spare, a read-only cache: train on stepwise
            warnings.warn(
                f"graphnn: cannot compile the fused epoch in the background ({exc}); training "
                "goes on with the step kernels, which compute the same results more slowly",
                GraphnnWarning,
                stacklevel=3,
            )
            self.child = False  # tried: not again
            return
        _CHILDREN[marker] = self.child

    def _marker(self, args, sig=None) -> Path:
        if sig is None:
            from numba import typeof

            sig = tuple(typeof(a) for a in args)
        digest = hashlib.sha256(repr(sig).encode()).hexdigest()[:12]
        return self.path.with_name(f"{self.path.stem}.{digest}.fused")


def _root() -> str:
    """The folder holding the ``codegen`` package (a source checkout needs it on the path)."""
    return str(Path(__file__).resolve().parents[2])


def main(argv=None) -> int:
    """Child: compile ``train_epoch`` of the module at argv[0] for the pickled signature in the
    job file argv[1] (written by the parent into its own cache directory), then leave the
    marker."""
    path, job = (Path(a) for a in (argv or sys.argv[1:]))
    from codegen.cache import load_module

    try:
        module = load_module(path.read_text(encoding="utf-8"))
        sig = pickle.loads(job.read_bytes())
        module.train_epoch.compile(sig)
    except Exception:  # the parent warns, naming this report
        files.publish(job.with_suffix(".failed"), traceback.format_exc().encode())
        return 1
    finally:
        job.unlink(missing_ok=True)
    files.publish(job.with_suffix(".fused"), b"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
