"""The CPU's direct lowering of a convolution and its two adjoints: im2col, one BLAS product,
and col2im for the input's adjoint (the derivation and the display stay the indexed ones).

The loop lowering (:class:`codegen.contraction.Nest`) multiplies one output row at a time; on
the convolutions of an image network that is ~5 GFLOP/s where OpenBLAS reaches ~150.  Here the
patches of the image are gathered once into ``cols[b, i, j, k, l, c]`` (zero where the window
hangs over the border), which read as a matrix (b·i·j, k·l·c) turn each form into one product:

- forward:      out(b·i·j, o)   = cols @ K(k·l·c, o)
- kernel_grad:  dK(k·l·c, o)    = cols^T @ g(b·i·j, o)
- input_grad:   dcols(b·i·j, k·l·c) = g @ K^T, then dx += dcols scattered back (col2im)

The kernel's gradient reads the same patches as the forward convolution: the gather is done
once per kernel and its buffer reused (the Scope remembers which image and window it holds).

:func:`choose` keeps the loop nest only where no BLAS may be called (an export with
``--no-blas``); measured here (2-core AVX2, fused loss_and_grads of two stacked 'same' convs,
loops / im2col): 6x6x1->4 batch 1 15.9/7.8 us, 5x5x2->3 batch 4 36/17 us, 8x8x4->8 batch 32
2033/950 us, 12x12x3->16 batch 16 4936/951 us; the digits_cnn step 0.35-0.39/0.21-0.23 ms and
image28's ~465/~114 ms.  No convolution we tried was faster as loops, so there is no size
rule.  ``GRAPHNN_CONV_LOWERING`` (``im2col`` / ``loops``) or :func:`forced` overrides the
choice.  The generated code says which it chose and why.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar

from codegen.conv_pattern import ConvForm
from codegen.cpu import matmul

_FORCED: ContextVar[str | None] = ContextVar("conv_lowering", default=None)


@contextmanager
def forced(how: str | None):
    """Lower every recognised convolution as ``how`` ("im2col" or "loops") meanwhile."""
    token = _FORCED.set(how)
    try:
        yield
    finally:
        _FORCED.reset(token)


def choose(form: ConvForm) -> tuple[str, str]:
    """("im2col" | "loops", why) for one recognised convolution form (see the module doc)."""
    if not matmul.blas_allowed():
        return "loops", "loops: this module may not call BLAS (no SciPy)"
    how = _FORCED.get() or os.environ.get("GRAPHNN_CONV_LOWERING", "")
    if how in ("im2col", "loops"):
        return how, f"{how}, forced (GRAPHNN_CONV_LOWERING or codegen.cpu.im2col.forced)"
    size = f"({form.patch_size} x {form.o} per output position)"
    return "im2col", f"im2col + BLAS {size}: faster than loops on every convolution measured"


def cols_shape(form: ConvForm) -> tuple:
    return (form.batch, form.oh, form.ow, form.kh, form.kw, form.c)


def geometry(form: ConvForm, image_shape) -> tuple:
    """What decides a gather's content besides the image: two forms with the same key read the
    same patches."""
    return (form.image, tuple(image_shape), cols_shape(form), form.stride, form.dilation,
            form.offset)  # fmt: skip


def _at(name: str) -> str:
    return f"{name}[_b, _i, _j, _k, _l, _c]"


def _window_loops(form: ConvForm, image_shape, dim, body_in, body_out=None, rows=None) -> list[str]:
    """Loops over (b, i, j, k, l) with ``_r, _s`` the image position; ``body_in`` runs when it
    is inside the image, ``body_out`` (if any) when it is padding.  Bodies loop over c.
    ``rows``: how many images (default: the batch)."""
    _, h, w, _ = image_shape
    row, col = form.window(0, "_i", "_k"), form.window(1, "_j", "_l")
    inside = f"0 <= _r < {dim(h)} and 0 <= _s < {dim(w)}"
    lines = [
        f"for _b in range({rows or dim(form.batch)}):",
        f"    for _i in range({dim(form.oh)}):",
        f"        for _j in range({dim(form.ow)}):",
        f"            for _k in range({dim(form.kh)}):",
        f"                _r = {row}",
        f"                for _l in range({dim(form.kw)}):",
        f"                    _s = {col}",
        f"                    if {inside}:",
        f"                        for _c in range({dim(form.c)}):",
        f"                            {body_in}",
    ]
    if body_out is not None:
        lines += [
            "                    else:",
            f"                        for _c in range({dim(form.c)}):",
            f"                            {body_out}",
        ]
    return lines


def gather(form: ConvForm, image_shape, cols: str, dim, zero: str) -> list[str]:
    """im2col: ``cols[b, i, j, k, l, c]`` = the image at the window position, zero outside."""
    x = form.image
    copy = f"{_at(cols)} = {x}[_b, _r, _s, _c]"
    return [
        f"# im2col: {cols}[b, i, j, k, l, c] = {x}[b, {form.window(0, 'i', 'k')}, "
        f"{form.window(1, 'j', 'l')}, c], 0 outside {x}",
        *_window_loops(form, image_shape, dim, copy, f"{_at(cols)} = {zero}"),
    ]


# A forward convolution whose patches no kernel's gradient reads (evaluate, predict: up to 8,192
# rows a call) gathers them a group of images at a time into a buffer of at most this many
# entries (16 MB in float32), not the whole batch's (5 GB for image28's second conv at 8,192
# rows).
GROUP_ENTRIES = 1 << 22


def group_size(form: ConvForm) -> int:
    """Images per group of :func:`grouped_forward` (at least 1)."""
    group = max(1, GROUP_ENTRIES // (form.oh * form.ow * form.patch_size))
    return group if form.batch is None else min(group, form.batch)


def grouped_forward(form: ConvForm, image_shape, cols: str, out: str, dim, zero: str):
    """The forward convolution a group of images at a time: gather the group's patches into
    ``cols`` (its first axis: the group size), one product into the group's output rows."""
    x, n = form.image, dim(form.batch)
    per = " * ".join(dim(d) for d in (form.oh, form.ow))
    patch = " * ".join(dim(d) for d in (form.kh, form.kw, form.c))
    o = dim(form.o)
    copy = f"{_at(cols)} = {x}[_b0 + _b, _r, _s, _c]"
    loops = _window_loops(form, image_shape, dim, copy, f"{_at(cols)} = {zero}", rows="_nb")
    K = matrix(f"np.ascontiguousarray({form.kernel})", patch, o)
    a = f"{matrix(cols, f'{cols}.shape[0] * {per}', patch)}[: _nb * {per}]"
    y = f"{matrix(out, f'{n} * {per}', o)}[_b0 * {per} : (_b0 + _nb) * {per}]"
    return [
        f"# im2col by groups of {cols}.shape[0] images: {cols}[b, i, j, k, l, c] = "
        f"{x}[b0 + b, {form.window(0, 'i', 'k')}, {form.window(1, 'j', 'l')}, c], 0 outside {x}",
        f"for _b0 in range(0, {n}, {cols}.shape[0]):",
        f"    _nb = min({cols}.shape[0], {n} - _b0)",
        *indent(loops, 1),
        f"    np.dot({a}, {K}, {y})",
    ]


def indent(lines: list[str], levels: int) -> list[str]:
    return ["    " * levels + line if line else "" for line in lines]


def scatter(form: ConvForm, image_shape, dcols: str, out: str, dim) -> list[str]:
    """col2im: ``out`` (zeroed before) += each patch column at its image position; positions
    in the padding are dropped."""
    add = f"{out}[_b, _r, _s, _c] += {_at(dcols)}"
    return [f"# col2im: {out}[b, r, s, c] += {dcols}[b, i, j, k, l, c] at each window position",
            *_window_loops(form, image_shape, dim, add)]  # fmt: skip


# The kernel's gradient of a convolution with a small kernel sums over many rows (image28's first
# conv: a 25 x 32 result over 64 x 28 x 28 = 50,176 rows); one BLAS call of that shape took
# 1.5-11 ms here, the same product in chunks of CHUNK_ROWS rows, each added to the result,
# 0.8-1.0 ms.  A large result (800 x 64 over 12,544 rows) was not faster in chunks.
CHUNK_ROWS = 1024
CHUNK_MAX_RESULT = 4096  # chunk while the result (k·l·c x o) has at most this many entries


def chunked(form: ConvForm) -> bool:
    """Whether the kernel's gradient of ``form`` runs its product in row chunks."""
    return form.role == "kernel_grad" and form.patch_size * form.o <= CHUNK_MAX_RESULT


def chunked_lines(form: ConvForm, out: str, cols: str, part: str, dim) -> list[str]:
    """The kernel's gradient as one product per CHUNK_ROWS rows, summed into ``out``
    (``part``: a (k·l·c, o) buffer for each chunk's product)."""
    rows = " * ".join(dim(d) for d in (form.batch, form.oh, form.ow))
    patch = " * ".join(dim(d) for d in (form.kh, form.kw, form.c))
    o = dim(form.o)
    a, g = matrix(cols, rows, patch), matrix(f"np.ascontiguousarray({form.grad})", rows, o)
    step = CHUNK_ROWS
    return [
        f"# in chunks of {step} rows: one product over all rows is slow for so small a result",
        f"{out}_m = {matrix(out, patch, o)}",
        f"{part}_m = {matrix(part, patch, o)}",
        f"np.dot({a}[:{step}].T, {g}[:{step}], {out}_m)",
        f"for _p in range({step}, {rows}, {step}):",
        f"    np.dot({a}[_p : _p + {step}].T, {g}[_p : _p + {step}], {part}_m)",
        f"    for _u in range({patch}):",
        f"        for _w in range({o}):",
        f"            {out}_m[_u, _w] += {part}_m[_u, _w]",
    ]


def matrix(name: str, rows: str, cols: str) -> str:
    return f"{name}.reshape(({rows}, {cols}))"


def product_lines(form: ConvForm, out: str, cols: str, dim) -> list[str]:
    """The one BLAS product of the form (``cols``: the patches, or for input_grad their
    cotangent ``dcols``, which it writes)."""
    rows = " * ".join(dim(d) for d in (form.batch, form.oh, form.ow))
    patch = " * ".join(dim(d) for d in (form.kh, form.kw, form.c))
    o = dim(form.o)
    K = matrix(f"np.ascontiguousarray({form.kernel})", patch, o) if form.kernel else None
    g = matrix(f"np.ascontiguousarray({form.grad})", rows, o) if form.grad else None
    if form.role == "forward":
        return [f"np.dot({matrix(cols, rows, patch)}, {K}, {matrix(out, rows, o)})"]
    if form.role == "kernel_grad":
        return [f"np.dot({matrix(cols, rows, patch)}.T, {g}, {matrix(out, patch, o)})"]
    return [f"np.dot({g}, {K}.T, {matrix(cols, rows, patch)})"]
