"""The error types graphnn raises. Every message names the node, parameter, shape or spec line."""


class GraphnnError(Exception):
    """Base class of every error graphnn raises on purpose."""


class ShapeError(GraphnnError, ValueError):
    """Operand shapes do not fit an op; the message names the nodes and their shapes."""


class GraphError(GraphnnError, ValueError):
    """A graph is malformed (unknown node, cycle, wrong arity, ...)."""


class NameNotFoundError(GraphError, KeyError):
    """A node, input or parameter name the graph does not have: a lookup, so also a KeyError."""

    def __str__(self) -> str:  # KeyError's own would print the message in quotes
        return str(self.args[0]) if self.args else ""


class DataError(GraphnnError, ValueError):
    """Arrays passed as data or parameters do not match the graph's inputs."""


class SpecError(GraphnnError, ValueError):
    """A spec file is invalid; the message names the file, table, key and offending token."""


class CodegenError(GraphnnError):
    """A back end cannot generate code for a node or expression; names both."""


class CheckpointError(GraphnnError):
    """A checkpoint is missing, truncated or corrupt."""


class RunExistsError(CheckpointError, FileExistsError):
    """A new run was asked to write where another run's checkpoints are; nothing was deleted."""


class GraphnnWarning(UserWarning):
    """graphnn worked around a problem (a damaged cache file, a corrupt checkpoint); says which."""


class NonFiniteError(GraphnnError, FloatingPointError):
    """Training produced NaN or Inf; the message names the step, parameter and graph node."""

    def __init__(self, message, *, step=None, param=None, node=None):
        super().__init__(message)
        self.step = step
        self.param = param
        self.node = node


class StabilityWarning(UserWarning):
    """A user formula is NaN or Inf in float32 where its exact value is finite."""


class CudaUnavailableError(CodegenError):
    """The CUDA back end was asked for, but there is no CUDA GPU (and no simulator)."""


def shown(value, limit: int = 60) -> str:
    """``repr(value)`` for a message: control characters escaped (repr does that), and a long
    one cut, with its length: ``'qqqqq...' (900000 characters)``."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, str | bytes):
        more = f"{len(value):,} characters"
    elif isinstance(value, list | tuple | dict):
        more = f"{len(value):,} items"
    else:
        more = f"{len(text):,} characters"
    return f"{text[: limit - 3]}... ({more})"


def one_line(message: str, limit: int = 1000) -> str:
    """``message`` fit for one line of a terminal: every control or invisible formatting
    character (a newline, an escape sequence, a right-to-left override) escaped, and cut at
    ``limit`` characters with the full length shown."""
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in message)
    if len(text) > limit:
        text = f"{text[: limit - 30]}... ({len(text):,} characters)"
    return text


class DistributedError(GraphnnError, RuntimeError):
    """Data-parallel training cannot start or the ranks disagree (parameters, data, code)."""
