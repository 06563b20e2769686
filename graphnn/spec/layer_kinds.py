"""``[[layers]]`` kinds besides dense: images (NHWC) ``conv2d``, ``max_pool``, ``avg_pool``,
``flatten``, ``embedding = {vocab, dim}`` (integer ids to rows of a table ``E{k}``) and
``dropout = 0.5`` (or ``{rate, seed}``; the seed defaults to the layer's number, so each
layer drops its own elements) and ``batch_norm = true`` (or ``{momentum, eps}``: parameters
``gamma{k}``, ``beta{k}`` and the running statistics ``<node>_mean``, ``<node>_var``).

Each expands, as a dense layer does, to ``[params]`` and a ``[graph]`` expression an explicit
spec would hold: layer k's ``conv2d = {filters = 16, kernel = 3, stride = 1, padding = 1}`` is
parameters ``K{k}`` (kh, kw, in, filters) and ``b{k}`` and the node ``relu(conv2d(h, K{k},
stride=1, padding=1) + b{k})``.  The shapes are worked out by the graph builders themselves, on
stand-in inputs, so a window that does not fit is reported at the layer that asks for it.

>>> expand_image_layer({"max_pool": 2}, 2, "h1", (8, 8, 4), "m.toml [[layers]] #2")
({}, 'max_pool2d(h1, 2, stride=2)', (4, 4, 4))
"""

from __future__ import annotations

from graphnn.errors import GraphnnError, SpecError, shown
from graphnn.ir import conv, embedding, ops
from graphnn.ir.elementwise import ACTIVATIONS, ELEMENTWISE

KINDS = ("conv2d", "max_pool", "avg_pool", "flatten", "embedding", "dropout", "batch_norm")
_CONV_KEYS = ("filters", "kernel", "stride", "padding", "dilation")
_POOL_KEYS = ("size", "stride", "padding")


def kind_of(layer: dict) -> str | None:
    """The image kind a layer table names, or None for a dense layer."""
    kinds = [k for k in KINDS if k in layer]
    if len(kinds) > 1:
        raise SpecError(f"a layer has one kind; this one names {kinds}")
    return kinds[0] if kinds else None


def _int(value, where: str, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 4096:
        raise SpecError(f"{where}: must be an int >= {low}, got {shown(value)}")
    return value


def _settings(value, keys, where: str, required: tuple[str, ...]) -> dict:
    if isinstance(value, int) and not isinstance(value, bool) and required == ("size",):
        value = {"size": value}  # max_pool = 2
    if not isinstance(value, dict):
        raise SpecError(f"{where}: must be a table like {{{', '.join(required)} = ...}}")
    unknown = [k for k in value if k not in keys]
    missing = [k for k in required if k not in value]
    if unknown or missing:
        what = f"unknown key {shown(unknown[0])}" if unknown else f"missing {shown(missing[0])}"
        raise SpecError(f"{where}: {what}; keys: {', '.join(keys)}")
    return value


def _shape_of(build, where: str) -> tuple[int, ...]:
    try:
        return build().shape[1:]
    except GraphnnError as exc:
        raise SpecError(f"{where}: {exc}") from None


def expand_image_layer(layer: dict, k: int, prev: str, shape: tuple[int, ...], where: str):
    """(params, graph expression, per-sample output shape) of image layer ``k`` reading node
    ``prev`` of per-sample ``shape``."""
    kind = kind_of(layer)
    extra = [key for key in layer if key not in (kind, "name", "activation", "init")]
    if extra or (kind != "conv2d" and ("activation" in layer or "init" in layer)):
        bad = extra[0] if extra else "activation" if "activation" in layer else "init"
        raise SpecError(f"{where} {bad}: not a setting of a {kind} layer")
    stand_in = ops.input("x", shape)
    if kind == "flatten":
        if layer["flatten"] is not True:
            raise SpecError(f"{where} flatten: write flatten = true")
        return {}, f"flatten({prev})", _shape_of(lambda: conv.flatten(stand_in), where)
    if kind == "dropout":
        value = layer["dropout"]
        value = {"rate": value} if isinstance(value, int | float) else value
        s = _settings(value, ("rate", "seed"), f"{where} dropout", ("rate",))
        rate = s["rate"]
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate < 1:
            raise SpecError(f"{where} dropout rate: must be a number in [0, 1), got {shown(rate)}")
        seed = _int(s.get("seed", k), f"{where} dropout seed", 0)
        return {}, f"dropout({prev}, rate={rate}, seed={seed})", shape
    if kind == "batch_norm":
        return _batch_norm(layer["batch_norm"], k, prev, shape, where)
    if kind == "embedding":
        s = _settings(layer[kind], ("vocab", "dim"), f"{where} embedding", ("vocab", "dim"))
        vocab = _int(s["vocab"], f"{where} embedding vocab", 1)
        dim = _int(s["dim"], f"{where} embedding dim", 1)
        table = ops.param("E", (vocab, dim))
        out = _shape_of(lambda: embedding.embedding(stand_in, table), where)
        params = {f"E{k}": {"shape": [vocab, dim], "init": "glorot_uniform"}}
        return params, f"embedding({prev}, E{k})", out
    if len(shape) != 3:
        raise SpecError(f"{where}: {kind} needs (height, width, channels) input, got {list(shape)}")
    if kind == "conv2d":
        return _conv(layer, k, prev, shape, where, stand_in)
    s = _settings(layer[kind], _POOL_KEYS, f"{where} {kind}", ("size",))
    size = _int(s["size"], f"{where} {kind} size", 1)
    stride = _int(s.get("stride", size), f"{where} {kind} stride", 1)
    padding = _int(s.get("padding", 0), f"{where} {kind} padding", 0)
    fn = "max_pool2d" if kind == "max_pool" else "avg_pool2d"
    build = getattr(conv, fn)
    out = _shape_of(lambda: build(stand_in, size, stride, padding), where)
    pad = f", padding={padding}" if padding else ""
    return {}, f"{fn}({prev}, {size}, stride={stride}{pad})", out


def _conv(layer, k, prev, shape, where, stand_in):
    s = _settings(layer["conv2d"], _CONV_KEYS, f"{where} conv2d", ("filters", "kernel"))
    filters = _int(s["filters"], f"{where} conv2d filters", 1)
    kernel = s["kernel"]
    kernel = kernel if isinstance(kernel, list) else [kernel, kernel]
    if len(kernel) != 2:
        raise SpecError(f"{where} conv2d kernel: an int or [height, width]")
    kh, kw = (_int(d, f"{where} conv2d kernel", 1) for d in kernel)
    settings = {key: _int(s.get(key, d), f"{where} conv2d {key}", d) for key, d in
                (("stride", 1), ("padding", 0), ("dilation", 1))}  # fmt: skip
    act = layer.get("activation", "none")
    if act != "none" and act not in ACTIVATIONS:
        raise SpecError(f"{where} activation: unknown activation {shown(act)}")
    default_init = ELEMENTWISE[act].init if act in ACTIVATIONS else "glorot_uniform"
    init = layer.get("init", default_init)
    K = ops.param("K", (kh, kw, shape[2], filters))
    out = _shape_of(lambda: conv.conv2d(stand_in, K, **settings), where)
    defaults = {"stride": 1, "padding": 0, "dilation": 1}
    args = ", ".join(f"{key}={v}" for key, v in settings.items() if v != defaults[key])
    z = f"conv2d({prev}, K{k}{', ' + args if args else ''}) + b{k}"
    params = {
        f"K{k}": {"shape": [kh, kw, shape[2], filters], "init": init},
        f"b{k}": {"shape": [filters], "init": "zeros"},
    }
    return params, (f"{act}({z})" if act != "none" else z), out


def _batch_norm(value, k: int, prev: str, shape: tuple[int, ...], where: str):
    """Layer k's ``batch_norm = true`` or ``{momentum, eps}``: per channel (the last axis)."""
    value = {} if value is True else value
    s = _settings(value, ("momentum", "eps"), f"{where} batch_norm", ())
    settings = {"momentum": s.get("momentum", 0.1), "eps": s.get("eps", 1e-5)}
    for key, v in settings.items():
        if not isinstance(v, int | float) or isinstance(v, bool) or not 0 < v <= 1:
            raise SpecError(f"{where} batch_norm {key}: must be a number in (0, 1], got {shown(v)}")
    channels = [shape[-1]]
    params = {f"gamma{k}": {"shape": channels, "init": "ones"}}
    params[f"beta{k}"] = {"shape": channels, "init": "zeros"}
    args = f"momentum={settings['momentum']}, eps={settings['eps']}"
    return params, f"batch_norm({prev}, gamma{k}, beta{k}, {args})", shape
