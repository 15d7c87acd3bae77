"""Supervised fine-tuning on prompt/response JSONL: `gptjax finetune --config
configs/finetune.py[:VARIANT] --workdir DIR [--config.finetune.init_from=...]
[--config.finetune.train_file=...]`.

The model section is replaced by the pretrained run's (or the imported GPT-2's); only the
optimisation, batch and sequence length here apply. Fine-tuning wants a lower learning rate than
pretraining, a short warmup and no weight decay on a small dataset.

Variants: `smoke` (from the quickstart's `runs/quickstart`, on `examples/sft.jsonl`), `gpt2`
(from Hugging Face GPT-2 weights: `init_from=hf:PATH` to a local checkpoint directory).
"""

from gptjax.config.defaults import base_config


def _smoke(c):
    c.finetune.init_from = "runs/quickstart"
    c.data.seq_len = 128


def _gpt2(c):
    c.finetune.init_from = "hf:gpt2"
    c.data.seq_len = 512
    c.train.batch_size = 8
    c.optim.lr = 5e-5


VARIANTS = {"smoke": _smoke, "gpt2": _gpt2}


def get_config(variant: str = "smoke"):
    c = base_config()
    c.name = f"finetune-{variant}"
    c.finetune.train_file = "examples/sft.jsonl"
    c.finetune.eval_fraction = 0.1
    c.train.batch_size = 16
    c.train.steps = 300
    c.train.log_every = 10
    c.train.eval_every = 50
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 20
    c.optim.weight_decay = 0.0
    c.optim.min_lr_ratio = 0.1
    VARIANTS[variant](c)
    return c
