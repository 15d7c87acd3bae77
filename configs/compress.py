"""The compression report's models (docs/compression.md): a character GPT on Jane Austen's
novels, and the half-size student that `gptjax distill` trains from it.

    gptjax train --config configs/compress.py:austen --workdir /tmp/austen \
        --config.data.files=../shared/data/austen/austen.txt
    gptjax compress --workdir /tmp/austen --out docs/compression \
        --tasks austen_nextsent,austen_wordend
    gptjax distill --config configs/compress.py:student --workdir /tmp/student \
        --config.distill.teacher=/tmp/austen

Variants: `austen` (6 layers, d_model 128: 1.2M parameters; its 800 steps took 18 minutes on
a 2-core CPU shared with other jobs, see docs/compression.md),
`student` (3 layers, the same width: half the layers, for distillation).
"""

from gptjax.config.defaults import base_config


def _austen(c):
    pass


def _student(c):
    c.model.num_layers = 3
    c.train.steps = 400


VARIANTS = {"austen": _austen, "student": _student}


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
    c.data.files = ""                 # --config.data.files=PATH/austen.txt (docs/compression.md)
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
