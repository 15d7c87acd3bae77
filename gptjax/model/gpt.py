"""GPT: a decoder-only transformer (GPT-2 / GPT-3 family) in Flax linen.

Read top to bottom: config -> attention -> MLP -> block -> the stack -> GPT. Every parameter
and activation carries *logical* axis names ('embed', 'heads', ...); gptjax/parallel/sharding.py
owns the one table that maps them onto the physical mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from gptjax.errors import UserError
from gptjax.model.attention import ATTENTIONS, AUTO_ATTENTION, fused_attention, segment_mask
from gptjax.model.dense import Dense, constrain, logical, matmul
from gptjax.model.embeddings import TokenEmbed, rotary, sinusoidal

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257
    vocab_multiple: int = 128
    num_layers: int = 12
    d_model: int = 768
    num_heads: int = 12
    head_dim: int = 64
    d_ff: int = 3072
    max_seq_len: int = 1024
    position: str = "learned"
    rope_theta: float = 10000.0
    use_bias: bool = True
    tie_embeddings: bool = True
    layer_norm_eps: float = 1e-5
    embed_dropout: float = 0.0
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    attention: str = "xla"
    local_window: int = 0
    local_every: int = 2
    init_std: float = 0.02
    mup: bool = False           # maximal update parametrisation (see `width_mult`)
    mup_base_width: int = 64    # muP: the d_model whose init and learning rates stay as set
    param_dtype: jnp.dtype = jnp.float32
    dtype: jnp.dtype = jnp.float32
    scan_layers: bool = True
    scan_unroll: int = 1        # scanned groups per loop iteration (all: no loop at all)
    remat: str = "none"
    grad_dtype: jnp.dtype | None = None  # matmul kernels' and biases' gradients (None: the
    #                                      param dtype); optim.grad_reduce_dtype sets it
    flat_weight_grads: bool = False  # kernel gradients as 2-D matmuls over B*T rows (CPU)

    @property
    def padded_vocab(self) -> int:
        """Vocabulary rounded up so the embedding and logits matmuls tile well."""
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @property
    def group_size(self) -> int:
        """Layers per scanned group: a dense+local pair when GPT-3's banded attention is on."""
        return self.local_every if self.local_window > 0 else 1

    @property
    def width_mult(self) -> float:
        """d_model / mup_base_width under muP (Yang et al. 2021, "Tensor Programs V", Table 3),
        else 1. Hidden matrices start with std / sqrt(width_mult) and learn at lr / width_mult
        (gptjax.training.optim); logits are multiplied by 1 / width_mult; attention divides q·k by
        head_dim, not sqrt(head_dim). Embeddings, norms and biases keep their init and lr."""
        return self.d_model / self.mup_base_width if self.mup else 1.0

    @property
    def hidden_std(self) -> float:
        return self.init_std / math.sqrt(self.width_mult)

    @property
    def attn_scale(self) -> float:
        return 1.0 / (self.head_dim if self.mup else math.sqrt(self.head_dim))

    def window(self, layer: int) -> int:
        """Attention window of a layer; 0 means full causal attention."""
        if self.local_window > 0 and layer % self.local_every == self.local_every - 1:
            return self.local_window
        return 0

    @classmethod
    def from_config(cls, model_cfg, backend: str | None = None) -> GPTConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in model_cfg.items() if k in fields}
        backend = backend or jax.default_backend()
        dtype = kwargs.get("dtype", "auto")
        if dtype == "auto":
            dtype = "float32" if backend == "cpu" else "bfloat16"
        attention = kwargs.get("attention", "auto")
        if attention == "auto":
            attention = AUTO_ATTENTION.get(backend, "xla")
            if attention == "cudnn" and dtype == "float32":
                attention = "xla"  # cuDNN's fused attention runs in 16-bit only
        kwargs["scan_unroll"] = _scan_unroll(kwargs.get("scan_unroll", "auto"), backend,
                                             kwargs.get("remat", cls.remat),
                                             kwargs.get("num_layers", cls.num_layers),
                                             kwargs.get("local_window", cls.local_window),
                                             kwargs.get("local_every", cls.local_every))
        for key, value in (("dtype", dtype), ("param_dtype", kwargs.get("param_dtype", "float32"))):
            if value not in DTYPES:
                raise UserError(f"config.model.{key}={value!r}: choose one of {sorted(DTYPES)}")
        kwargs.update(dtype=DTYPES[dtype], param_dtype=DTYPES[kwargs.get("param_dtype", "float32")],
                      attention=attention, flat_weight_grads=backend == "cpu")
        config = cls(**kwargs)
        config.validate()
        return config

    def validate(self) -> None:
        def bad(msg):
            raise UserError(f"config.model: {msg}")
        if self.position not in ("learned", "sinusoidal", "rotary"):
            bad(f"position={self.position!r}: choose learned, sinusoidal or rotary")
        if self.attention not in ATTENTIONS:
            bad(f"attention={self.attention!r}: choose auto, {', '.join(ATTENTIONS)}")
        if self.remat not in REMAT_POLICIES:
            bad(f"remat={self.remat!r}: choose one of {', '.join(REMAT_POLICIES)}")
        if self.position == "rotary" and self.head_dim % 2:
            bad(f"rotary positions need an even head_dim, got {self.head_dim}")
        if self.position == "sinusoidal" and self.d_model % 2:
            bad(f"sinusoidal positions need an even d_model, got {self.d_model}")
        if self.scan_layers and self.num_layers % self.group_size:
            bad(f"num_layers={self.num_layers} must be a multiple of local_every="
                f"{self.local_every} to scan alternating dense/local layers")
        for name in ("num_layers", "d_model", "num_heads", "head_dim", "d_ff", "max_seq_len"):
            if getattr(self, name) <= 0:
                bad(f"{name} must be positive, got {getattr(self, name)}")


def _scan_unroll(value, backend: str, remat: str, num_layers: int, local_window: int,
                 local_every: int):
    """`model.scan_unroll`: 'auto' unrolls the whole scanned stack on CPU (one straight-line
    program: ~25% less CPU time per step for the smoke model, docs/performance.md) unless remat
    is on (unrolled, XLA:CPU keeps the recomputed activations all live: remat saves nothing,
    docs/memory.md), and keeps one group per iteration on GPU / TPU (compile time and memory
    stay flat in the depth).
    The parameters stay stacked either way, so checkpoints move between platforms."""
    groups = max(num_layers // (local_every if local_window > 0 else 1), 1)
    if value == "auto":
        return groups if backend == "cpu" and remat == "none" else 1
    try:
        unroll = int(value)
    except (TypeError, ValueError):
        unroll = 0
    if unroll < 1:
        raise UserError(f"config.model.scan_unroll={value!r}: choose auto or a positive integer")
    return min(unroll, groups)


# Which activations a rematerialised layer keeps for the backward pass. save_qkv keeps only the
# fused q/k/v projection (MaxText's save_qkv_proj): between save_proj and full in memory.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.save_only_these_names("matmul"),  # `matmul`'s outputs
    "save_proj": jax.checkpoint_policies.save_only_these_names("qkv", "attn_out", "mlp_hidden"),
    "save_qkv": jax.checkpoint_policies.save_only_these_names("qkv"),
}


# ----------------------------------------------------------------------------- attention


def attention_mask(q_pos, k_pos, window):
    """Causal mask [B, 1, Tq, Tk]; with window > 0 a query sees only the last `window` keys."""
    delta = q_pos[:, :, None] - k_pos[:, None, :]
    mask = delta >= 0
    if window > 0:
        mask &= delta < window
    return mask[:, None]


def explicit_attention(q, k, v, mask, dropout, dtype, scale=None):
    """Softmax attention written out; used with attention dropout and for the KV cache.
    `scale` multiplies q·k (default 1 / sqrt(head_dim))."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = jnp.einsum("bqnh,bknh->bnqk", q, k).astype(jnp.float32) * scale
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = dropout(jax.nn.softmax(scores, axis=-1)).astype(dtype)
    return jnp.einsum("bnqk,bknh->bqnh", probs, v)


class Attention(nn.Module):
    config: GPTConfig
    window: int = 0
    deterministic: bool = True
    decode: bool = False  # KV-cache inference: see `cached_attention`

    @nn.compact
    def __call__(self, x, positions, segment_ids=None):
        c = self.config
        qkv = Dense(c, (3, c.num_heads, c.head_dim), ("embed", None, "heads", "kv"),
                    (None, "heads", "kv"), c.hidden_std, name="qkv")(x)
        qkv = checkpoint_name(qkv, "qkv")
        names = ("batch", "length", "act_heads", "kv")
        q, k, v = (constrain(qkv[:, :, i], names) for i in range(3))
        if c.position == "rotary":
            q, k = rotary(q, positions, c.rope_theta), rotary(k, positions, c.rope_theta)

        dropout = functools.partial(nn.Dropout(c.attn_dropout), deterministic=self.deterministic)
        if self.decode:
            out = self.cached_attention(q, k, v, positions)
        elif c.attn_dropout > 0 and not self.deterministic:
            mask = attention_mask(positions, positions, self.window)
            if segment_ids is not None:
                mask &= segment_mask(segment_ids)
            out = explicit_attention(q, k, v, mask, dropout, c.dtype, c.attn_scale)
        else:
            out = fused_attention(q, k, v, self.window, c.attention, c.attn_scale, segment_ids)
        out = checkpoint_name(constrain(out, ("batch", "length", "act_heads", "kv")), "attn_out")

        # Residual projections start smaller (GPT-2): std / sqrt(2 * num_layers).
        proj_std = c.hidden_std / math.sqrt(2 * c.num_layers)
        y = Dense(c, (c.d_model,), ("heads", "kv", "embed"), ("embed",), proj_std, axes=2,
                  name="proj")(out)
        return nn.Dropout(c.resid_dropout)(y, deterministic=self.deterministic)

    def cached_attention(self, q, k, v, positions):
        """Writes this call's k/v into the 'cache' collection at `positions`, then attends over
        the whole cache. Keys at cache slots after a query's position are masked, so stale slots
        (e.g. the right padding of a shorter prompt) are never seen before being overwritten.
        The cache length is that of the 'cache' passed in (default: max_seq_len)."""
        c = self.config
        shape = (q.shape[0], c.max_seq_len, c.num_heads, c.head_dim)
        names = ("batch", "length", "act_heads", "kv")
        cached_k = self.variable("cache", "k", jnp.zeros, shape, k.dtype)
        cached_v = self.variable("cache", "v", jnp.zeros, shape, v.dtype)
        rows = jnp.arange(q.shape[0])[:, None]
        cached_k.value = constrain(cached_k.value.at[rows, positions].set(k), names)
        cached_v.value = constrain(cached_v.value.at[rows, positions].set(v), names)
        k_pos = jnp.broadcast_to(jnp.arange(cached_k.value.shape[1]),
                                 (q.shape[0], cached_k.value.shape[1]))
        mask = attention_mask(positions, k_pos, self.window)
        return explicit_attention(q, cached_k.value, cached_v.value, mask, lambda p: p, c.dtype,
                                  c.attn_scale)


class MLP(nn.Module):
    config: GPTConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        c = self.config
        h = Dense(c, (c.d_ff,), ("embed", "mlp"), ("mlp",), c.hidden_std, name="fc")(x)
        h = checkpoint_name(constrain(h, ("batch", "length", "act_mlp")), "mlp_hidden")
        h = nn.gelu(h, approximate=True)
        proj_std = c.hidden_std / math.sqrt(2 * c.num_layers)
        y = Dense(c, (c.d_model,), ("mlp", "embed"), ("embed",), proj_std, name="proj")(h)
        return nn.Dropout(c.resid_dropout)(y, deterministic=self.deterministic)


def layer_norm(c: GPTConfig, name: str):
    return nn.LayerNorm(epsilon=c.layer_norm_eps, use_bias=c.use_bias, dtype=c.dtype,
                        param_dtype=c.param_dtype, name=name,
                        scale_init=logical(nn.initializers.ones, ("norm",)),
                        bias_init=logical(nn.initializers.zeros, ("norm",)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""
    config: GPTConfig
    window: int = 0
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x, positions, segment_ids=None):
        c = self.config
        x = x + Attention(c, self.window, self.deterministic, self.decode, name="attn")(
            layer_norm(c, "ln1")(x), positions, segment_ids)
        x = x + MLP(c, self.deterministic, name="mlp")(layer_norm(c, "ln2")(x))
        return constrain(x, ("batch", "length", "act_embed"))


class BlockGroup(nn.Module):
    """`group_size` consecutive blocks: the unit `nn.scan` repeats (one block unless GPT-3's
    alternating dense / locally-banded layers are on)."""
    config: GPTConfig
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x, positions, segment_ids=None):
        c = self.config
        for j in range(c.group_size):
            x = Block(c, c.window(j), self.deterministic, self.decode, name=f"block_{j}")(
                x, positions, segment_ids)
        return x, None


def _remat(module_cls, c: GPTConfig):
    if c.remat == "none":
        return module_cls
    return nn.remat(module_cls, policy=REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers)


def _reading(module_cls, layer_params: Callable | None):
    """module_cls reading its params through `layer_params` (None: as they are)."""
    if layer_params is None:
        return module_cls
    return nn.map_variables(module_cls, "params", trans_in_fn=layer_params)


# ----------------------------------------------------------------------------- output head


def output_head(params, c: GPTConfig):
    """The output projection: the token embedding [V, D] when tied, else the head kernel [D, V]."""
    return params["wte"]["embedding"] if c.tie_embeddings else params["head"]["kernel"]


def logits_from_hidden(x_btd, head, c: GPTConfig):
    """Final hidden states [B, T, D] -> float32 logits [B, T, padded_vocab]: a compute-dtype
    matmul accumulated in float32 (never rounded to bfloat16); padded vocabulary columns get the
    float32 minimum, so no softmax sees them. gptjax/training/steps.py applies it block by block."""
    spec = "btd,vd->btv" if c.tie_embeddings else "btd,dv->btv"
    logits = matmul(spec, x_btd, head, c, out_dtype=jnp.float32)
    if c.mup:  # muP's readout: an O(1) weight times 1 / width_mult
        logits = logits / c.width_mult
    if c.padded_vocab == c.vocab_size:
        return logits
    valid = jnp.arange(c.padded_vocab) < c.vocab_size
    return jnp.where(valid, logits, jnp.finfo(jnp.float32).min)


class Head(nn.Module):
    """The untied output kernel [D, V], as a parameter (`logits_from_hidden` applies it)."""
    config: GPTConfig

    @nn.compact
    def __call__(self):
        c = self.config
        init = logical(nn.initializers.normal(c.init_std), ("embed", "vocab"))
        return self.param("kernel", init, (c.d_model, c.padded_vocab), c.param_dtype)


class GPT(nn.Module):
    config: GPTConfig
    # Applied to each layer's params as that layer runs (inside the scan step when scanned);
    # quantized inference dequantizes there, so one layer's weights are float at a time
    # (gptjax/inference/quantization.py `prepare`). None: the params as they are.
    layer_params: Callable | None = None

    @nn.compact
    def __call__(self, tokens, positions=None, deterministic: bool = True, decode: bool = False,
                 hidden: bool = False, segment_ids=None):
        """tokens [B, T] -> float32 logits [B, T, padded_vocab]; hidden=True: the final
        LayerNorm's output [B, T, D]. decode=True reads and updates the KV cache (collection
        'cache', mutable); `positions` say where each token goes in it (inference/generate.py).
        `segment_ids` [B, T]: attention stays inside each segment (packed documents,
        gptjax/model/documents.py), and `positions` may restart per segment."""
        c = self.config
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        embed = TokenEmbed(c.padded_vocab, c.d_model, c.dtype, c.param_dtype,
                           logical(nn.initializers.normal(c.init_std), ("vocab", "embed")),
                           name="wte")
        x = embed(tokens)
        if c.position == "learned":
            wpe = self.param("wpe", logical(nn.initializers.normal(c.init_std), (None, "embed")),
                             (c.max_seq_len, c.d_model), c.param_dtype)
            x = x + jnp.take(wpe, positions, axis=0).astype(c.dtype)
        elif c.position == "sinusoidal":
            x = x + sinusoidal(positions, c.d_model, c.dtype)
        x = nn.Dropout(c.embed_dropout)(x, deterministic=deterministic)
        x = constrain(x.astype(c.dtype), ("batch", "length", "act_embed"))

        group = _reading(_remat(BlockGroup, c), self.layer_params)
        if c.scan_layers:
            stack = nn.scan(group, variable_axes={"params": 0, "cache": 0},
                            split_rngs={"params": True, "dropout": True},
                            in_axes=nn.broadcast, length=c.num_layers // c.group_size,
                            unroll=c.scan_unroll,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = stack(c, deterministic, decode, name="layers")(x, positions, segment_ids)
        else:  # remat wraps each unrolled layer as it wraps each scanned group
            block = _reading(_remat(Block, c), self.layer_params)
            for i in range(c.num_layers):
                x = block(c, c.window(i), deterministic, decode, name=f"layer_{i}")(
                    x, positions, segment_ids)

        x = layer_norm(c, "ln_f")(x)
        head = embed.embedding if c.tie_embeddings else Head(c, name="head")()
        if hidden:
            return x
        return constrain(logits_from_hidden(x, head, c), ("batch", "length", "act_vocab"))
