"""The error types graphnn raises. Every message names the node, parameter, shape or spec line."""


class GraphnnError(Exception):
    """Base class of every error graphnn raises on purpose."""


class ShapeError(GraphnnError, ValueError):
    """Operand shapes do not fit an op; the message names the nodes and their shapes."""


class GraphError(GraphnnError, ValueError):
    """A graph is malformed (unknown node, cycle, wrong arity, ...)."""


class DataError(GraphnnError, ValueError):
    """Arrays passed as data or parameters do not match the graph's inputs."""


class SpecError(GraphnnError, ValueError):
    """A spec file is invalid; the message names the file, table, key and offending token."""


class CodegenError(GraphnnError):
    """A back end cannot generate code for a node or expression; names both."""


class CheckpointError(GraphnnError):
    """A checkpoint is missing, truncated or corrupt."""


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
