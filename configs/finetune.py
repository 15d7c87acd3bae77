"""Supervised fine-tuning on prompt/response JSONL: `gptjax finetune --config
configs/finetune.py[:VARIANT] --workdir DIR --config.finetune.init_from=... --config.finetune.
train_file=...`.

The model section is replaced by the pretrained run's (or the imported GPT-2's); only the
optimisation, batch and sequence length here apply. Fine-tuning wants a lower learning rate than
pretraining, a short warmup and no weight decay on a small dataset.

Variants: `smoke` (after `gptjax train --config configs/smoke.py`), `gpt2` (from Hugging Face
GPT-2 weights, `init_from=hf:gpt2` or a local checkpoint directory).
"""

from configs.base import base_config


def get_config(variant: str = "smoke"):
    c = base_config()
    c.name = f"finetune-{variant}"
    c.finetune.train_file = "sft.jsonl"
    c.finetune.eval_fraction = 0.1
    c.train.batch_size = 16
    c.train.steps = 300
    c.train.log_every = 10
    c.train.eval_every = 50
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 20
    c.optim.weight_decay = 0.0
    c.optim.min_lr_ratio = 0.1
    if variant == "smoke":
        c.finetune.init_from = "runs/smoke"
        c.data.seq_len = 128
    elif variant == "gpt2":
        c.finetune.init_from = "hf:gpt2"
        c.data.seq_len = 512
        c.train.batch_size = 8
        c.optim.lr = 5e-5
    else:
        raise ValueError(f"unknown finetune variant {variant!r}; choose smoke or gpt2")
    return c
