"""GPT-3 model sizes (Brown et al. 2020, Table 2.1): `--config configs/gpt3.py:SIZE`.

Two printed rows do not add up, and are resolved so parameter counts match the table:
- XL: "24 heads x 128" gives 3072 != d_model 2048. We use 16 heads x 128 = 2048 (1.32B params).
- 13B: d_model 5140 is not divisible by 40 heads. We use d_model 5120 = 40 x 128 (12.9B params).
Batch sizes are the table's tokens / 2048, rounded to whole sequences (3.2M -> 1536 x 2048).
"""

from gptjax.defaults import base_config

# name: (n_layers, d_model, n_heads, d_head, batch tokens, learning rate)
VARIANTS = {
    "small": (12, 768, 12, 64, 0.5e6, 6.0e-4),
    "medium": (24, 1024, 16, 64, 0.5e6, 3.0e-4),
    "large": (24, 1536, 16, 96, 0.5e6, 2.5e-4),
    "xl": (24, 2048, 16, 128, 1e6, 2.0e-4),
    "2.7b": (32, 2560, 32, 80, 1e6, 1.6e-4),
    "6.7b": (32, 4096, 32, 128, 2e6, 1.2e-4),
    "13b": (40, 5120, 40, 128, 2e6, 1.0e-4),
    "175b": (96, 12288, 96, 128, 3.2e6, 0.6e-4),
}
N_CTX = 2048


def get_config(size: str = "small"):
    layers, d_model, heads, d_head, batch_tokens, lr = VARIANTS[size]
    c = base_config()
    c.name = f"gpt3-{size}"
    c.model.num_layers = layers
    c.model.d_model = d_model
    c.model.num_heads = heads
    c.model.head_dim = d_head
    c.model.d_ff = 4 * d_model
    c.model.max_seq_len = N_CTX
    c.model.remat = "save_proj"
    c.data.seq_len = N_CTX
    c.train.batch_size = int(batch_tokens // N_CTX) // 8 * 8
    c.optim.lr = lr
    c.optim.warmup_steps = 375  # GPT-3: 375M tokens of warmup at 1M tokens/step
    return c
