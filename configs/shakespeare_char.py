"""nanoGPT's `train_shakespeare_char` recipe: a 10.7M-parameter character model."""

from gptjax.config.defaults import base_config


def get_config():
    c = base_config()
    c.name = "shakespeare_char"
    c.model.vocab_size = 65           # replaced by the char tokenizer's size (65 symbols)
    c.model.num_layers = 6
    c.model.num_heads = 6
    c.model.d_model = 384
    c.model.head_dim = 64
    c.model.d_ff = 4 * 384
    c.model.max_seq_len = 256
    c.model.use_bias = False
    c.model.embed_dropout = 0.2
    c.model.attn_dropout = 0.2
    c.model.resid_dropout = 0.2
    c.data.tfds_name = "tiny_shakespeare"
    c.data.seq_len = 256
    c.data.tokenizer.kind = "char"
    c.train.batch_size = 64
    c.train.steps = 5000
    c.train.eval_every = 250
    c.train.eval_batches = 200
    c.train.log_every = 10
    c.train.ckpt_every = 1000
    c.optim.lr = 1e-3
    c.optim.min_lr_ratio = 0.1        # 1e-3 -> 1e-4
    c.optim.warmup_steps = 100
    c.optim.decay_steps = 5000
    c.optim.b2 = 0.99
    c.optim.weight_decay = 0.1
    c.optim.grad_clip = 1.0
    c.sample.prompt = "\n"
    c.sample.max_new_tokens = 500
    return c
