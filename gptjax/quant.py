"""int8 weight-only quantization for inference (`--quantize int8` on sample / eval).

Every matmul weight is stored as int8 with one float32 scale per *output* channel (symmetric:
w ~= q * scale, q in [-127, 127], scale = max|w| over the input axes / 127):

    attn/qkv/kernel  [d, 3, heads, head_dim]  scale per (3, heads, head_dim)
    attn/proj/kernel [heads, head_dim, d]      scale per d
    mlp/*, head      [in, out]                 scale per out
    wte/embedding    [vocab, d]                scale per row (a row is both a looked-up vector
                                               and, tied, the output channel of the logits)

LayerNorms, biases and position embeddings stay in float (a tiny share of the bytes). A
quantized tree holds `QTensor(q, scale)` leaves in place of those arrays; `dequantize` turns
them back into compute-dtype arrays *inside* the jitted step (q.astype(dtype) * scale), so the
weights live in device memory as int8 and XLA fuses the conversion into the consumer.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from gptjax.errors import UserError

MODES = ("none", "int8")


@flax.struct.dataclass
class QTensor:
    q: jax.Array       # int8, the weight's shape
    scale: jax.Array   # float32, broadcastable to q (1 on the reduced input axes)

    @property
    def shape(self):
        return self.q.shape


def _is_q(x) -> bool:
    return isinstance(x, QTensor)


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


def quantize_array(w, axes: tuple[int, ...]) -> QTensor:
    w = jnp.asarray(w, jnp.float32)
    scale = jnp.max(jnp.abs(w), axis=axes, keepdims=True) / 127.0
    scale = jnp.where(scale == 0, 1.0, scale)
    q = jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8)
    return QTensor(q, scale)


def quantize(params, mode: str = "int8"):
    """Float params -> a tree with QTensor leaves for the matmul weights (mode 'none': as is)."""
    if mode in (None, "none"):
        return params
    if mode != "int8":
        raise UserError(f"--quantize {mode!r}: choose one of {', '.join(MODES)}")

    def one(path, x):
        axes = input_axes(path, np.ndim(x))
        return x if axes is None else quantize_array(x, axes)
    return jax.jit(lambda p: jax.tree_util.tree_map_with_path(one, p))(params)


def dequantize(params, dtype):
    """QTensor leaves -> `dtype` arrays; plain float trees pass through unchanged."""
    return jax.tree.map(
        lambda x: (x.q.astype(dtype) * x.scale.astype(dtype)) if _is_q(x) else x,
        params, is_leaf=_is_q)


def is_quantized(params) -> bool:
    return any(_is_q(x) for x in jax.tree.leaves(params, is_leaf=_is_q))


def weight_bytes(params) -> int:
    """Bytes the parameters occupy as stored (int8 values + scales for QTensor leaves)."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


def bf16_bytes(params) -> int:
    """Bytes the same parameters would occupy in bfloat16: the baseline for int8."""
    return sum((x.q if _is_q(x) else x).size * 2 for x in jax.tree.leaves(params, is_leaf=_is_q))
