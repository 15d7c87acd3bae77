"""The compression report's models (docs/compression.md): a character GPT on Jane Austen's
novels, and the half-size student that `gptjax distill` trains from it.

    gptjax train --config configs/compress.py:austen --workdir /tmp/austen \
        --config.data.files=../shared/data/austen/austen.txt
    gptjax compress --workdir /tmp/austen --out docs/compression

Variants: `austen` (6 layers, d_model 128: 1.2M parameters, a few minutes on a 2-core CPU),
`student` (3 layers, the same width: half the layers, for distillation), `tiny` (tests).
"""

from gptjax.defaults import base_config


def _austen(c):
    pass


def _student(c):
    c.model.num_layers = 3
    c.distill.teacher = "/tmp/austen"
    c.train.steps = 400


def _tiny(c):
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.head_dim = 8
    c.model.d_model = 16
    c.model.d_ff = 32
    c.model.max_seq_len = 16
    c.data.source = "synthetic"
    c.data.seq_len = 16
    c.train.batch_size = 8
    c.train.steps = 10
    c.train.log_every = 5
    c.train.eval_every = 0
    c.train.eval_batches = 2
    c.train.ckpt_every = 10
    c.train.plot = False
    c.train.async_checkpoint = False


VARIANTS = {"austen": _austen, "student": _student, "tiny": _tiny}


def get_config(variant: str = "austen"):
    c = base_config()
    c.name = f"compress-{variant}"
    c.model.vocab_size = 100          # replaced by the character tokenizer's size
    c.model.vocab_multiple = 8
    c.model.num_layers = 6
    c.model.num_heads = 4
    c.model.head_dim = 32
    c.model.d_model = 128
    c.model.d_ff = 512
    c.model.max_seq_len = 128
    c.model.use_bias = True
    c.data.source = "files"
    c.data.files = "../shared/data/austen/austen.txt"
    c.data.seq_len = 128
    c.data.tokenizer.kind = "char"
    c.train.batch_size = 16
    c.train.steps = 800
    c.train.log_every = 100
    c.train.eval_every = 400
    c.train.eval_batches = 20         # 20 x 16 x 128 = 41k held-out characters
    c.train.ckpt_every = 400
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 50
    c.optim.b2 = 0.99
    c.sample.max_new_tokens = 300
    VARIANTS[variant](c)
    return c
