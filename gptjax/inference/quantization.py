"""Quantization for inference through Qwix, Google's JAX quantization library (the one MaxText
uses): `--quantize int8 | int4 | w8a8` on `gptjax sample` / `eval` / `compress`, and quantized
workdirs that load without the float checkpoint (`gptjax quantize`).

Weight-only (int8, int4): every matmul weight becomes a `qwix.QArray` (symmetric absmax:
w ~= q * scale), made by `qwix.quantize` with a scale per *output* channel and, along the
contracted (input) axes, one scale per `group` input channels (0 = one per output channel):

    attn/qkv/kernel  [d, 3, heads, head_dim]  output axes (3, heads, head_dim), input d
    attn/proj/kernel [heads, head_dim, d]      output d; a scale per head x group of head_dim
    mlp/*, head      [in, out]                 output out, input in
    wte/embedding    [vocab, d]                a row is both a looked-up vector and, tied,
                                               the output channel of the logits

int8 defaults to per-channel scales, int4 to groups of 32. The leading layer axis of scanned
params is an output axis, so every layer has its own scales. LayerNorms, biases and position
embeddings stay float.

At run time the weights stay quantized in device memory and are dequantized where they are used,
one layer at a time: `prepare` returns the model with a `layer_params` transform that
dequantizes a layer's weights (`qwix.dequantize`) inside that layer, i.e. inside the scan step
of scanned layers, and wraps the layers' QArrays as `InLayer`, which `dequantize` (the step's
params transform) leaves alone; it turns the rest (embedding, untied head) into compute-dtype
arrays inside the jitted step. So the program holds one layer's float weights at a time, not
the whole tree's: dequantizing the whole tree at once (`dequantize` of plain QArrays, what a
model not made by `prepare` gets) made the int8 / int4 generate program's peak *larger* than
float's. The dequantized values are the same either way, so the tokens are too. Qwix's own
weight-only matmuls (`qwix.PtqProvider` with `act_qtype=None`) would save no more on CPU (XLA
converts an int8 operand of a mixed dot to float), cover the blocks' matmuls only (not the
embedding lookup and tied head), need their own param layout (`WithAux`) for the files
`gptjax quantize` writes, and a matmul that scales around the dot rounds differently.

w8a8 (int8 weights and activations): `qwix.PtqProvider` intercepts the transformer blocks'
matmuls and quantizes their inputs at run time. It covers the blocks only: Qwix's interception
cannot serve the embedding's lookup (`jnp.take` on a quantized array), and its
`quantize_params` ignores `nn.scan`'s stacked layer axis (one scale for all layers), so
`quantize_w8a8` quantizes each layer's slice itself. Evaluation and decoding only.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import flax.struct
import flax.traverse_util as traverse
import jax
import jax.numpy as jnp
import numpy as np
import qwix
from qwix._src.providers.ptq import WithAux  # Qwix's param wrapper (no public name)

from gptjax.errors import UserError
from gptjax.model import layouts
from gptjax.storage import quantized

MODES = ("none", "int8", "int4", "w8a8")
QTYPES = {"int8": jnp.int8, "int4": jnp.int4}
DEFAULT_GROUP = {"int8": 0, "int4": 32}


def is_qarray(x) -> bool:
    return isinstance(x, qwix.QArray)


def _names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def input_axes(path, ndim: int) -> tuple[int, ...] | None:
    """Axes a weight is contracted over (reduced by its scale); None = keep it in float.

    Counted from the end, so the leading layer axis of scanned params needs no special case."""
    names = _names(path)
    if names[-1] == "embedding":
        return (ndim - 1,)
    if names[-1] != "kernel" or ndim < 2:
        return None
    if names[-3:-1] == ("attn", "qkv"):
        return (ndim - 4,)
    if names[-3:-1] == ("attn", "proj"):
        return (ndim - 3, ndim - 2)
    return (ndim - 2,)  # nn.Dense: [in, out]


def quantize_array(w, axes: tuple[int, ...], mode: str = "int8", group: int = 0,
                   name: str = "weight") -> qwix.QArray:
    """One weight -> QArray: a scale per output channel and per `group` channels of the last
    input axis (the other input axes, e.g. proj's heads, get a scale each)."""
    w = jnp.asarray(w, jnp.float32)
    channelwise = [a for a in range(w.ndim) if a not in axes]
    tiled = {a: 1 for a in axes[:-1]}
    size = w.shape[axes[-1]]
    if group and group < size:
        if size % group:
            raise UserError(f"--group {group} does not divide {name}'s input axis of {size}; "
                            f"choose a divisor (or 0 for per-channel scales)")
        tiled[axes[-1]] = group
    return qwix.quantize(w, QTYPES[mode], channelwise_axes=channelwise, tiled_axes=tiled)


def _check_mode(mode: str, allowed=MODES) -> None:
    if mode not in allowed:
        raise UserError(f"--quantize {mode!r}: choose one of {', '.join(allowed)}")


def quantize(params, mode: str = "int8", group: int | None = None):
    """Float params -> a tree with QArray leaves for the matmul weights (mode 'none': as is)."""
    if mode in (None, "none"):
        return params
    _check_mode(mode, ("int8", "int4"))
    group = DEFAULT_GROUP[mode] if group is None else int(group)
    if group < 0:
        raise UserError(f"--group {group} must be >= 0 (0 = per-channel scales)")

    def one(path, x):
        axes = input_axes(path, np.ndim(x))
        return x if axes is None else quantize_array(x, axes, mode, group, "/".join(_names(path)))
    return jax.jit(lambda p: jax.tree_util.tree_map_with_path(one, p))(params)


@flax.struct.dataclass
class InLayer:
    """A transformer layer's QArray, dequantized by the model inside the layer that uses it
    (`prepare`'s `layer_params`), not by `dequantize`."""
    qarray: qwix.QArray


def dequantize(params, dtype):
    """QArray leaves -> `dtype` arrays; float trees, w8a8's Qwix params and `InLayer` leaves
    (dequantized per layer by the model from `prepare`) pass through."""
    def one(x):
        return qwix.dequantize(x).astype(dtype) if is_qarray(x) else x
    return jax.tree.map(one, params, is_leaf=lambda x: is_qarray(x) or isinstance(
        x, (WithAux, InLayer)))


def _dequantize_layer(variables, dtype):
    def one(x):
        return qwix.dequantize(x.qarray).astype(dtype) if isinstance(x, InLayer) else x
    return jax.tree.map(one, variables, is_leaf=lambda x: isinstance(x, InLayer))


def is_layer(path) -> bool:
    """Whether a param path lies in a transformer layer ('layers' scanned, 'layer_i' not)."""
    first = _names(path)[0]
    return first == "layers" or first.startswith("layer_")


def per_layer(model: nn.Module, params):
    """-> (model, params) dequantizing each layer's QArrays inside that layer (see the module
    docstring); the other QArrays stay for `dequantize`.

    Unscanned layers are stacked and scanned (the same layers, in order): XLA computes the
    independent dequantizes of unrolled layers together (on CPU all of them before the first
    matmul), a scan step holds one layer's."""
    c = model.config
    if not c.scan_layers and c.num_layers % c.group_size == 0:
        c = dataclasses.replace(c, scan_layers=True)
        params = layouts.layers_to_scanned(params, c)
    wrapped = jax.tree_util.tree_map_with_path(
        lambda path, x: InLayer(x) if is_qarray(x) and is_layer(path) else x, params,
        is_leaf=is_qarray)
    fn = functools.partial(_dequantize_layer, dtype=c.dtype)
    return model.clone(config=c, layer_params=fn), wrapped


def is_quantized(params) -> bool:
    return any(is_qarray(x) for x in jax.tree.leaves(params, is_leaf=is_qarray))


def weight_bytes(params) -> int:
    """Bytes the parameters occupy as stored: int4 values count half a byte, plus the scales."""
    leaves = jax.tree.leaves(params)
    return sum((x.size * quantized.bits(x) + 7) // 8 for x in leaves)


def bf16_bytes(params) -> int:
    """Bytes the same parameters would occupy in bfloat16: the baseline for int8."""
    return sum((x.qvalue if is_qarray(x) else x).size * 2
               for x in jax.tree.leaves(params, is_leaf=is_qarray))


def prepare(model: nn.Module, params, mode: str = "none", group: int | None = None):
    """-> (model, params) to run with `mode`: weight-only modes quantize the params, w8a8 also
    wraps the model; quantized weights (these, or a quantized workdir's) are dequantized per
    layer (`per_layer`). Run them with `dequantize` as the step's params transform."""
    _check_mode(mode)
    if mode != "none" and is_quantized(params):
        raise UserError(f"--quantize {mode}: the workdir's weights are already quantized")
    if mode == "w8a8":
        return quantize_w8a8(model, params)
    params = quantize(params, mode, group)
    return per_layer(model, params) if is_quantized(params) else (model, params)


# ----------------------------------------------------------------------------- w8a8


def w8a8_model(model: nn.Module) -> nn.Module:
    """The model with its blocks' matmuls in int8 weights x int8 activations (Qwix PTQ)."""
    rule = qwix.QuantizationRule(module_path="layers?_?.*", weight_qtype=jnp.int8,
                                 act_qtype=jnp.int8)
    return qwix.quantize_model(model, qwix.PtqProvider([rule]))


def quantize_w8a8(model: nn.Module, params):
    """-> (Qwix model, its params): block kernels as Qwix's WithAux(QArray), per layer."""
    qmodel = w8a8_model(model)
    tokens = jnp.zeros((1, 1), jnp.int32)
    abstract = nn.unbox(jax.eval_shape(qmodel.init, jax.random.key(0), tokens)["params"])
    wanted = traverse.flatten_dict(abstract, is_leaf=lambda _, x: isinstance(x, WithAux))
    out = {}
    for path, w in traverse.flatten_dict(params).items():
        target = wanted.get(path)
        if not isinstance(target, WithAux):
            out[path] = w
            continue
        how = target.how
        one = lambda x, how=how: qwix.quantize(  # noqa: E731
            x, how.qtype, channelwise_axes=how.channelwise_axes, tiled_axes=how.tiled_axes)
        # Scanned layers: quantize each layer's slice (Qwix sees one layer's shapes).
        out[path] = target.replace(array=jax.vmap(one)(w) if path[0] == "layers" else one(w))
    return qmodel, traverse.unflatten_dict(out)


# ----------------------------------------------------------------------------- workdirs
