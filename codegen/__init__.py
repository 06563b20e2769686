"""Code generation: kernel planning, the printer, and the back ends, found through one registry.

A back end is a module with ``value_and_grad(graph, values, dtype)`` and
``build_trainer(graph, optimizer, dtype, **options)``.  Adding one is adding a row to
:data:`BACKENDS`; no caller changes.

>>> get_backend("numpy").__name__
'codegen.numpy_ref'
"""

from __future__ import annotations

import importlib

from graphnn.errors import CodegenError

BACKENDS = {
    "numpy": "codegen.numpy_ref",
    "cpu": "codegen.cpu.backend",
    "cuda": "codegen.cuda.backend",
}


def get_backend(name: str):
    """The back-end module registered under ``name``."""
    if name not in BACKENDS:
        raise CodegenError(f"unknown back end {name!r}; back ends: {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])
