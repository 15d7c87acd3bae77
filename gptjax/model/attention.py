"""Fused causal attention, and which implementation runs it (`config.model.attention`):

    out_btnh = fused_attention(q_btnh, k_btnh, v_btnh, window, "splash")   # q, k, v [B, T, N, H]
    out_btnh = fused_attention(q, k, v, window, "cudnn", segment_ids=seg_bt)  # packed documents

- splash: Pallas splash attention (TPU; attention=auto there). Never materialises the
  [B, heads, T, T] scores, and skips fully masked blocks (above the diagonal, and outside the
  band of GPT-3's local layers).
- cudnn: cuDNN's fused attention (GPU, 16-bit; auto there). xla: XLA's own (CPU; reference).

`segment_ids` (int32 [B, T], `data.document_mask`: gptjax/model/documents.py): a query sees
only keys of its own segment. Splash takes them as its `SegmentIds` (still skipping the blocks
the causal / band mask empties; a block two documents share is computed and masked inside);
cuDNN and XLA as a boolean mask [B, 1, T, T] through `jax.nn.dot_product_attention` (cuDNN
turns it into an additive bias it reads, and writes its unused gradient, per layer).

XLA cannot partition a Pallas kernel, so the kernel runs under `jax.shard_map` over the mesh in
context (`jax.set_mesh`, as every gptjax step runs): each device gets its own rows (the logical
'batch' axis) and heads ('act_heads'), and attends over the whole sequence. Fully masked blocks
(above the diagonal, and outside the band of a local layer) are skipped, not computed.

The kernel runs on TPU; on any other platform it runs in Pallas' interpreter (slow, exact:
tests/test_splash.py checks it against XLA attention on CPU). It needs the sequence length to
be a multiple of 128 (`supported`); `gptjax.model.gpt` uses XLA attention for other lengths.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
from jax.sharding import PartitionSpec

# attention="auto" per backend (gptjax.model.gpt.GPTConfig.from_config).
AUTO_ATTENTION = {"tpu": "splash", "gpu": "cudnn"}
ATTENTIONS = ("xla", "cudnn", "splash")
BLOCK = 512       # query / key tile of the forward and backward kernels (smaller if T is)
LANES = 128       # sequence tiles and head_dim are multiples of this on TPU...
HALF_LANES = 64   # ...or head_dim is exactly this


def supported(seq_len: int) -> bool:
    return seq_len % LANES == 0


def _kernel(num_heads: int, seq_len: int, window: int, interpret: bool):
    """The splash kernel for [heads, T, head_dim] inputs of one sequence. Built while tracing
    (its block-mask tables become constants of the step), never cached across traces."""
    shape = (seq_len, seq_len)
    one = sm.LocalMask(shape, (window - 1, 0), 0) if window else sm.CausalMask(shape)
    block = min(BLOCK, seq_len)
    sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                          block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                          block_q_dq=block, block_kv_dq=block)
    return sk.make_splash_mha(sm.MultiHeadMask([one] * num_heads), block_sizes=sizes,
                              head_shards=1, q_seq_shards=1, interpret=interpret)


def kernel_head_dim(head_dim: int) -> int:
    """The head dimension the kernel runs at: 64 and multiples of 128 as they are (the kernel
    tiles a 64-wide head in half a lane row: GPT-2 and GPT-3 small / medium pay no padding),
    anything else zero-padded up to a multiple of 128."""
    if head_dim == HALF_LANES or head_dim % LANES == 0:
        return head_dim
    return -(-head_dim // LANES) * LANES


def _pad_head_dim(x, to: int):
    return x if x.shape[-1] == to else jnp.pad(x, ((0, 0),) * 3 + ((0, to - x.shape[-1]),))


def _local_attention(q, k, v, segments, window: int, interpret: bool):
    """One device's shard: q, k, v [b, n, T, H] (H as `kernel_head_dim` says), segment ids
    [b, T] or None -> [b, n, T, H]."""
    kernel = _kernel(q.shape[1], q.shape[2], window, interpret)
    if segments is None:
        return jax.vmap(kernel)(q, k, v)
    return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=sk.SegmentIds(s, s)))(
        q, k, v, segments)


def _mesh_and_platform():
    """The (abstract) mesh the step is traced under, or None, and the platform it targets."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None, jax.default_backend()
    device = getattr(mesh, "abstract_device", None)
    return mesh, getattr(device, "platform", None) or jax.default_backend()


def segment_mask(segments_bt):
    """bool [B, 1, T, T]: True where query and key lie in the same segment."""
    return (segments_bt[:, :, None] == segments_bt[:, None, :])[:, None]


def fused_attention(q, k, v, window: int, implementation: str, scale: float | None = None,
                    segment_ids=None):
    """Causal attention (window > 0: each query sees only the last `window` keys, itself
    included; segment_ids [B, T]: only keys of its own segment), scaled by `scale` (default
    1/sqrt(head_dim)). q, k, v [B, T, N, H] -> same."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if implementation == "splash" and supported(q.shape[1]):
        return splash_attention(q, k, v, window, scale, segment_ids)
    mask = None if segment_ids is None else segment_mask(segment_ids)
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, scale=scale, is_causal=True,
        implementation="cudnn" if implementation == "cudnn" else "xla",
        local_window_size=(window - 1, 0) if window else None)


def splash_attention(q, k, v, window: int, scale: float, segment_ids=None):
    """q, k, v [B, T, N, H] -> [B, T, N, H]: softmax(scale * q k^T) v, causal, and for window > 0
    each query sees only the last `window` keys (itself included); segment_ids [B, T]: only
    keys of its own segment."""
    head_dim = q.shape[-1]
    padded = kernel_head_dim(head_dim)  # zero channels change neither q.k nor the output
    q = q * jnp.asarray(scale, q.dtype)
    q, k, v = (_pad_head_dim(x.swapaxes(1, 2), padded) for x in (q, k, v))  # [B, N, T, H']
    mesh, platform = _mesh_and_platform()
    fn = functools.partial(_local_attention, window=window, interpret=platform != "tpu")
    if mesh is not None and mesh.size > 1:
        batch, heads = nn.logical_to_mesh_axes(("batch", "act_heads"))
        spec = PartitionSpec(batch, heads, None, None)
        seg_spec = None if segment_ids is None else PartitionSpec(batch, None)
        fn = jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec, seg_spec),
                           out_specs=spec, check_vma=False)
    return fn(q, k, v, segment_ids)[..., :head_dim].swapaxes(1, 2)
