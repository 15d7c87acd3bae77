"""GPT-3 (Brown et al. 2020, Table 2.1 and Appendix B): `--config configs/gpt3.py:SIZE`.

As in the paper: T=2048, GPT-2's vocabulary (50257 tokens, padded to 50304), batch 0.5M / 1M /
2M / 3.2M tokens = 256 / 512 / 1024 / 1536 sequences, Adam (0.9, 0.95), weight decay 0.1,
gradient clipping 1.0, linear warmup over 375M tokens, cosine decay to 10% of the peak over
260B tokens, 300B tokens in all. Token budgets become steps per size:
warmup = 375M / tokens per step, decay = 260B / tokens per step, steps = 300B / tokens per step.

Not implemented: the paper's batch-size ramp (linearly from 32k tokens to the full batch over
the first 4-12B tokens, i.e. the first 1.3-4% of training). Each batch size is a different
compiled step and a different data-pipeline position, so a ramp costs a recompile and breaks
exact resume; it changes the optimisation only at the very start.

The paper alternates dense and locally banded attention layers without giving the band's
width; these configs use dense attention in every layer. `--config.model.local_window=256`
(say) turns every other layer into a band of that many tokens (splash attention skips the
blocks outside it).

Two printed rows of Table 2.1 do not add up, and are resolved so parameter counts match it:
- XL: "24 heads x 128" gives 3072 != d_model 2048. We use 16 heads x 128 = 2048 (1.32B params).
- 13B: d_model 5140 is not divisible by 40 heads. We use d_model 5120 = 40 x 128 (12.9B params).

`configs/gpt3.py:maxtext-6b` is not a paper size: it is MaxText's `gpt3-6b` (its
configs/models/gpt3-6b.yml: 48 layers, d_model 3072, 12 heads x 256, d_ff 12288, a 32768-token
vocabulary, tied embeddings, biases, GELU), the shape docs/tpu.md compiles side by side with
MaxText on v5p-64 at 32 sequences per chip. Its vocabulary is a 32768-token SentencePiece BPE
trained on the corpus (MaxText ships its own 32k model); MaxText's learned position table has
16384 rows where this one has N_CTX (no FLOPs, 0.04B parameters).

Partitioning defaults (docs/tpu.md): the three small sizes train data-parallel with the MLP and
attention projections kept for the backward pass (remat save_proj); XL and up shard parameters,
gradients and Adam state over the whole slice (FSDP) and recompute each layer in the backward
pass (remat full). SLICES names the smallest slice each size is documented to fit; check any
other with `gptjax compile --config configs/gpt3.py:SIZE --topology TYPE`.
"""

from gptjax.config.defaults import base_config

N_CTX = 2048
# name: (n_layers, d_model, n_heads, d_head, batch tokens, learning rate); the paper's 0.5M /
# 1M / 2M / 3.2M tokens are 256 / 512 / 1024 / 1536 sequences of N_CTX tokens.
SIZES = {
    "small": (12, 768, 12, 64, 256 * N_CTX, 6.0e-4),
    "medium": (24, 1024, 16, 64, 256 * N_CTX, 3.0e-4),
    "large": (24, 1536, 16, 96, 256 * N_CTX, 2.5e-4),
    "xl": (24, 2048, 16, 128, 512 * N_CTX, 2.0e-4),
    "2.7b": (32, 2560, 32, 80, 512 * N_CTX, 1.6e-4),
    "6.7b": (32, 4096, 32, 128, 1024 * N_CTX, 1.2e-4),
    "13b": (40, 5120, 40, 128, 1024 * N_CTX, 1.0e-4),
    "175b": (96, 12288, 96, 128, 1536 * N_CTX, 0.6e-4),
}
# MaxText's gpt3-6b shape (module docstring), 32 sequences per chip on v5p-64 as MaxText's
# per_device_batch_size=32 there.
MAXTEXT = {"maxtext-6b": (48, 3072, 12, 256, 1024 * N_CTX, 1.2e-4)}
MAXTEXT_VOCAB = 32768
VARIANTS = {**SIZES, **MAXTEXT}
# The TPU slice each size compiles and fits on as shipped (`gptjax compile`, docs/tpu.md).
SLICES = {"small": "v5p-8", "medium": "v5p-16", "large": "v5p-16", "xl": "v5p-32",
          "2.7b": "v5p-32", "6.7b": "v5p-64", "13b": "v5p-128", "175b": "v5p-1024",
          "maxtext-6b": "v5p-64"}
FSDP_FROM = "xl"            # this size and larger: FSDP over the slice and full remat
# Sizes above this reduce gradients in the compute dtype (optim.grad_reduce_dtype=bfloat16).
# At grad_accum=1 the float32 reduction costs only float32 partial sums per layer (XL on
# v5p-32: 22.1 GiB per chip against 20.1; 6.7B 47.5 against 46.5, 13B 30.8 against 30.8,
# docs/tpu.md), but the step-time estimates of these sizes are made with bfloat16; with
# grad_accum>1 it holds a whole float32 gradient on every chip, 27 GB for 6.7B and 700 GB for
# 175B.
FLOAT32_REDUCE_UP_TO = "2.7b"
WARMUP_TOKENS = 375e6
DECAY_TOKENS = 260e9
TRAIN_TOKENS = 300e9


def get_config(size: str = "small"):
    layers, d_model, heads, d_head, batch_tokens, lr = VARIANTS[size]
    batch = batch_tokens // N_CTX
    c = base_config()
    c.name = f"gpt3-{size}"
    c.model.vocab_size = 50257      # GPT-2's tokenizer, as counted by `gptjax info`
    c.model.vocab_from_tokenizer = False
    c.data.tokenizer.kind = "gpt2"
    c.data.tokenizer.vocab_size = 50257
    if size in MAXTEXT:
        c.model.vocab_size = c.data.tokenizer.vocab_size = MAXTEXT_VOCAB
        c.data.tokenizer.kind = "bpe"
    c.model.num_layers = layers
    c.model.d_model = d_model
    c.model.num_heads = heads
    c.model.head_dim = d_head
    c.model.d_ff = 4 * d_model
    c.model.max_seq_len = N_CTX
    c.data.seq_len = N_CTX
    c.train.batch_size = batch
    tokens_per_step = batch * N_CTX
    c.train.steps = round(TRAIN_TOKENS / tokens_per_step)
    c.optim.lr = lr
    c.optim.warmup_steps = round(WARMUP_TOKENS / tokens_per_step)
    c.optim.decay_steps = round(DECAY_TOKENS / tokens_per_step)
    c.optim.min_lr_ratio = 0.1
    sharded = list(VARIANTS).index(size) >= list(VARIANTS).index(FSDP_FROM)
    c.model.remat = "full" if sharded else "save_proj"
    c.mesh.data = 1 if sharded else -1
    c.mesh.fsdp = -1 if sharded else 1
    if list(VARIANTS).index(size) > list(VARIANTS).index(FLOAT32_REDUCE_UP_TO):
        c.optim.grad_reduce_dtype = "bfloat16"
    return c
