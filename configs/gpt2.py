"""GPT-2 sizes (Radford et al. 2019): `--config configs/gpt2.py:{124m,350m,774m,1558m}`.

T=1024, GPT-2's byte-level BPE (data.tokenizer.kind=gpt2): 50257 tokens, padded to 50304 (a
multiple of 128) for fast matmuls, as nanoGPT does. Give GPT-2's own vocab.json and merges.txt
with --config.data.tokenizer.path=DIR; without it a byte-level BPE of 50257 tokens is trained on
the data, and training stops with one line if the corpus is too small to make that many.
"""

from gptjax.config.defaults import base_config

# name: (n_layers, d_model, n_heads)
VARIANTS = {
    "124m": (12, 768, 12),
    "350m": (24, 1024, 16),
    "774m": (36, 1280, 20),
    "1558m": (48, 1600, 25),
}


def get_config(size: str = "124m"):
    layers, d_model, heads = VARIANTS[size]
    c = base_config()
    c.name = f"gpt2-{size}"
    c.model.num_layers = layers
    c.model.d_model = d_model
    c.model.num_heads = heads
    c.model.head_dim = 64
    c.model.d_ff = 4 * d_model
    c.model.max_seq_len = 1024
    c.data.seq_len = 1024
    c.model.vocab_size = 50257      # GPT-2's tokenizer, as counted by `gptjax info`
    c.model.vocab_from_tokenizer = False
    c.data.tokenizer.kind = "gpt2"  # its vocab.json + merges.txt: --config.data.tokenizer.path
    c.data.tokenizer.vocab_size = 50257
    c.train.batch_size = 16
    c.optim.lr = 6e-4
    c.optim.warmup_steps = 700
    return c
