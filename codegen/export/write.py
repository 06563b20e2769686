"""Write a graph's standalone training module for a back end: ``g.export`` and ``graphnn export``.

>>> import pathlib, tempfile, graphnn as gn
>>> x = gn.input("x", (2,)); t = gn.input("t", (1,)); w = gn.param("w", (2, 1))
>>> path = export_module(gn.Graph(gn.mse(x @ w, t)), pathlib.Path(tempfile.mkdtemp()) / "m.py")
>>> "def init_params(seed=0):" in path.read_text()
True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from codegen.export.cpu import standalone_source
from graphnn.errors import CodegenError
from graphnn.files import atomic_write_text
from graphnn.optim.optimizers import SGD

BACKENDS = ("cpu", "cuda")


def export_module(
    graph,
    path,
    optimizer=None,
    backend="cpu",
    dtype="float32",
    epochs=10,
    batch_size=32,
    blas=True,
) -> Path:
    """Write the standalone training module of ``graph`` to ``path`` (atomically); returns it.

    ``optimizer`` defaults to ``gn.SGD(lr=0.01)`` (as ``gn.compile`` does); its hyper-parameters
    become the defaults of ``step`` and ``fit_epoch``.  ``python <path> data.npz`` trains for
    ``epochs`` epochs of mini-batches of ``batch_size`` rows (None: the whole data set).
    ``blas=False`` (CPU): matrix products as generated loops, so the module needs no SciPy.
    """
    if not (isinstance(epochs, int) and epochs >= 1):
        raise CodegenError(f"epochs must be a positive int, got {epochs!r}")
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
        raise CodegenError(f"batch_size must be a positive int or None, got {batch_size!r}")
    run = {"epochs": epochs, "batch_size": batch_size}
    path = _check_path(path)
    if backend not in BACKENDS:
        raise CodegenError(f"cannot export for back end {backend!r}; exportable: cpu, cuda")
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = repr(dtype)
    if name not in ("float32", "float64"):
        raise CodegenError(f"cannot export dtype {name}; use float32 or float64")
    optimizer = optimizer or SGD(lr=0.01)
    if backend == "cuda":
        from codegen.export.cuda import cuda_standalone_source

        text = cuda_standalone_source(graph, optimizer, name, title=path.stem, **run)
    else:
        text = standalone_source(graph, optimizer, name, title=path.stem, blas=blas, **run)
    atomic_write_text(path, text)
    return path


def _check_path(path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot export to {path}: it is a directory; name a .py file")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot export to {path}: directory {path.parent} does not exist")
    return path
