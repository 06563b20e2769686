"""Image layers, channels-last (NHWC): conv2d and average pooling as indexed contractions
(:mod:`graphnn.ir.indexed`), max pooling with its argmax mask, and flatten.

Their adjoints are not written here: a contraction's come from the one rule of
:func:`graphnn.derive.structural.contract_adjoint`, and max pooling's adjoint is the contraction
of the cotangent with the argmax mask over the same window map.

>>> import graphnn as gn
>>> x = gn.input("x", (8, 8, 1)); K = gn.param("K", (3, 3, 1, 4))
>>> h = gn.conv2d(x, K, padding=1)
>>> h.shape, gn.max_pool2d(h, 2).shape, gn.flatten(gn.max_pool2d(h, 2)).shape
((None, 8, 8, 4), (None, 4, 4, 4), (None, 64))
"""

from __future__ import annotations

import math
import numbers

from graphnn.errors import GraphError, ShapeError
from graphnn.ir.indexed import A, contract
from graphnn.ir.ops import Tensor, _as_tensor, _label, reshape
from graphnn.ir.shapes import show


def _pair(value, what: str, layer: str, low: int = 1) -> tuple[int, int]:
    pair = value if isinstance(value, tuple | list) else (value, value)
    ok = len(pair) == 2 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low for v in pair
    )
    if not ok:
        raise GraphError(
            f"{layer}: {what} must be an int >= {low} or a pair of them, got {value!r}"
        )
    return int(pair[0]), int(pair[1])


def _image(x: Tensor, layer: str) -> None:
    if x.ndim != 4:
        raise ShapeError(
            f"{layer}: input '{x.label}' {show(x.shape)} must be (batch, height, width, channels)"
        )


def _out_size(size: int, kernel: int, stride: int, pad: int, dilation: int, layer: str) -> int:
    span = dilation * (kernel - 1) + 1
    out = (size + 2 * pad - span) // stride + 1
    if out < 1:
        raise ShapeError(
            f"{layer}: a window spanning {span} does not fit an input of size {size} "
            f"with padding {pad}"
        )
    return out


def _window(x: Tensor, kernel, stride, padding, dilation, layer: str):
    """Output sizes and the affine reads ``x[b, s·i + d·k - p, s·j + d·l - p, c]``."""
    (kh, kw), (sh, sw) = kernel, stride
    (ph, pw), (dh, dw) = padding, dilation
    oh = _out_size(x.shape[1], kh, sh, ph, dh, layer)
    ow = _out_size(x.shape[2], kw, sw, pw, dw, layer)
    read = (A("b"), A(("i", sh), ("k", dh), const=-ph), A(("j", sw), ("l", dw), const=-pw), A("c"))
    return oh, ow, read


def conv2d(x, K, stride=1, padding=0, dilation=1) -> Tensor:
    """2-D convolution (cross-correlation, as in every framework) of NHWC ``x`` with kernel
    ``K`` of shape (kh, kw, in_channels, out_channels); ``padding`` zeros on each side, an int,
    a pair, ``"valid"`` (0) or ``"same"`` (stride 1, odd window)."""
    x, K = _as_tensor(x), _as_tensor(K)
    _image(x, "conv2d")
    if K.ndim != 4 or K.shape[2] != x.shape[3]:
        raise ShapeError(
            f"conv2d: kernel '{K.label}' {show(K.shape)} must be (kh, kw, {x.shape[3]}, filters) "
            f"for input '{x.label}' {show(x.shape)}"
        )
    stride = _pair(stride, "stride", "conv2d")
    dilation = _pair(dilation, "dilation", "conv2d")
    kernel = K.shape[:2]
    if padding == "same":
        spans = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        if stride != (1, 1) or any(s % 2 for s in spans):
            raise GraphError("conv2d: padding 'same' needs stride 1 and an odd window")
        padding = (spans[0] // 2, spans[1] // 2)
    padding = (0, 0) if padding == "valid" else _pair(padding, "padding", "conv2d", low=0)
    oh, ow, read = _window(x, kernel, stride, padding, dilation, "conv2d")
    (kh, kw), c, o = kernel, x.shape[3], K.shape[3]
    sizes = {"b": x.shape[0], "i": oh, "j": ow, "k": kh, "l": kw, "c": c, "o": o}
    maps = [read, tuple(A(i) for i in "klco")]
    out = tuple(A(i) for i in "bijo")
    label = _label("conv2d({}, {})", x, K)
    return contract([x, K], maps, out, sizes, (x.shape[0], oh, ow, o), label, "conv2d")


def _pool_args(x, size, stride, padding, layer):
    x = _as_tensor(x)
    _image(x, layer)
    size = _pair(size, "size", layer)
    stride = size if stride is None else _pair(stride, "stride", layer)
    padding = _pair(padding, "padding", layer, low=0)
    if any(p > s // 2 for p, s in zip(padding, size, strict=True)):
        raise GraphError(f"{layer}: padding {padding} must be at most half the window {size}")
    return x, size, stride, padding


def avg_pool2d(x, size, stride=None, padding=0) -> Tensor:
    """Mean over each window (padding counts as zeros, as PyTorch's default); stride = size."""
    x, size, stride, padding = _pool_args(x, size, stride, padding, "avg_pool2d")
    oh, ow, read = _window(x, size, stride, padding, (1, 1), "avg_pool2d")
    sizes = {"b": x.shape[0], "i": oh, "j": ow, "k": size[0], "l": size[1], "c": x.shape[3]}
    label = _label("avg_pool2d({})", x)
    shape = (x.shape[0], oh, ow, x.shape[3])
    total = contract([x], [read], tuple(A(i) for i in "bijc"), sizes, shape, label, "window_sum")
    return total * (1.0 / (size[0] * size[1]))


def max_pool2d(x, size, stride=None, padding=0) -> Tensor:
    """Maximum over each window (padding never wins); its adjoint routes the cotangent to the
    first maximum of each window through the argmax mask."""
    x, size, stride, padding = _pool_args(x, size, stride, padding, "max_pool2d")
    oh, ow, _ = _window(x, size, stride, padding, (1, 1), "max_pool2d")
    attrs = {"size": size, "stride": stride, "padding": padding}
    shape = (x.shape[0], oh, ow, x.shape[3])
    return Tensor("max_pool", (x,), shape, attrs, None, _label("max_pool2d({})", x))


def max_pool_mask(t: Tensor) -> Tensor:
    """(batch, oh, ow, kh, kw, c): 1 where the window position is the first maximum, else 0."""
    (x,) = t.inputs
    (kh, kw), (b, oh, ow, c) = t.attrs["size"], t.shape
    return Tensor("max_pool_mask", (x,), (b, oh, ow, kh, kw, c), dict(t.attrs), None,
                  f"argmax({t.label})")  # fmt: skip


def max_pool_adjoint(t: Tensor, g: Tensor) -> Tensor:
    """dx[b, s·i + k - p, s·j + l - p, c] += g[b, i, j, c] · mask[b, i, j, k, l, c]."""
    (x,) = t.inputs
    mask = max_pool_mask(t)
    _, oh, ow, c = t.shape
    (kh, kw) = t.attrs["size"]
    _, _, read = _window(x, t.attrs["size"], t.attrs["stride"], t.attrs["padding"], (1, 1), "")
    sizes = {"b": x.shape[0], "i": oh, "j": ow, "k": kh, "l": kw, "c": c}
    maps = [tuple(A(i) for i in "bijc"), tuple(A(i) for i in "bijklc")]
    label = f"d{t.label}/d{x.label}"
    return contract([g, mask], maps, read, sizes, x.shape, label, "d_max_pool")


def flatten(x) -> Tensor:
    """(batch, d1, d2, ...) to (batch, d1·d2·...)."""
    x = _as_tensor(x)
    if not x.shape or x.shape[0] is not None or None in x.shape[1:]:
        raise ShapeError(f"flatten: '{x.label}' {show(x.shape)} must have a leading batch axis")
    return reshape(x, (None, math.prod(x.shape[1:])))


def concat(tensors, axis: int = -1) -> Tensor:
    """The tensors side by side along ``axis`` (any axis but the batch's; the others agree).

    A sum of one contraction per part, each writing its part's columns: part m is read at
    ``j - offset_m`` (outside its columns, zero), so the adjoint of each part is the derived
    slice of the cotangent, from the same rule as every contraction.  The first part, at offset
    0, reads ``x[..., j + z]`` with a size-1 index ``z``: a plain ``j`` would have to run over the
    part's own width, not the output's.
    """
    parts = [_as_tensor(t) for t in tensors]
    if len(parts) < 2:
        raise GraphError(f"concat needs at least two tensors, got {len(parts)}")
    first = parts[0]
    rank = len(first.shape)
    ax = axis + rank if axis < 0 else axis
    if not 0 <= ax < rank or first.shape[ax] is None:
        raise ShapeError(
            f"concat: axis {axis} of '{first.label}' {show(first.shape)} is not a feature axis"
        )
    for t in parts[1:]:
        same = len(t.shape) == rank and all(
            a == b for k, (a, b) in enumerate(zip(t.shape, first.shape, strict=False)) if k != ax
        )
        if not same:
            raise ShapeError(
                f"concat: '{t.label}' {show(t.shape)} does not match '{first.label}' "
                f"{show(first.shape)} outside axis {axis}"
            )
    names = [f"i{k}" for k in range(rank)]
    total = sum(t.shape[ax] for t in parts)
    shape = tuple(total if k == ax else d for k, d in enumerate(first.shape))
    out = tuple(A(i) for i in names)
    result, offset = None, 0
    for t in parts:
        sizes = {i: d for i, d in zip(names, shape, strict=True)}
        if offset == 0:
            sizes["z"] = 1
            read = A(names[ax], "z")
        else:
            read = A(names[ax], const=-offset)
        maps = [tuple(read if k == ax else A(i) for k, i in enumerate(names))]
        label = _label("concat({})", t)
        part = contract([t], maps, out, sizes, shape, label, "concat")
        result = part if result is None else result + part
        offset += t.shape[ax]
    return result
