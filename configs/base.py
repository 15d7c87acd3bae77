"""Every key gptjax reads, with its default. Experiment configs start here and change a few.

Unknown keys are errors (configs are locked after `get_config`), so this file is also the
reference of what can be set on the command line as `--config.SECTION.KEY=VALUE`.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "base"

    # --- model (gptjax/model.py) ---
    m = c.model = ml_collections.ConfigDict()
    m.vocab_size = 50257            # real vocabulary; the embedding is padded to vocab_multiple
    m.vocab_multiple = 128
    m.num_layers = 12
    m.d_model = 768
    m.num_heads = 12
    m.head_dim = 64                 # explicit: num_heads * head_dim need not equal d_model
    m.d_ff = 3072
    m.max_seq_len = 1024
    m.position = "learned"          # learned | sinusoidal | rotary
    m.rope_theta = 10000.0
    m.use_bias = True
    m.tie_embeddings = True
    m.layer_norm_eps = 1e-5
    m.embed_dropout = 0.0
    m.attn_dropout = 0.0
    m.resid_dropout = 0.0
    m.attention = "auto"            # auto | xla | cudnn
    m.local_window = 0              # > 0: sliding-window causal attention of this many tokens...
    m.local_every = 2               # ...on every `local_every`-th layer (GPT-3's alternating bands)
    m.init_std = 0.02
    m.param_dtype = "float32"
    m.dtype = "auto"                # compute dtype: auto = bfloat16 on GPU/TPU, float32 on CPU
    m.scan_layers = True
    m.remat = "none"                # none | full | save_dots | save_proj (named checkpoints)

    # --- data (gptjax/data) ---
    d = c.data = ml_collections.ConfigDict()
    d.source = "tfds"               # tfds | files | synthetic | shards
    d.tfds_name = "tiny_shakespeare"
    d.train_split = "train"
    d.eval_split = "validation"
    d.text_key = "text"
    d.data_dir = ""                 # TFDS data_dir ('' = ~/tensorflow_datasets or $TFDS_DATA_DIR)
    d.manual_dir = ""               # offline copy of the raw download ('' = $GPTJAX_MANUAL_DIR)
    d.files = ""                    # source=files: glob(s) of .txt / .jsonl, comma-separated
    d.jsonl_key = "text"
    d.holdout_fraction = 0.05       # source=files: fraction of documents held out for eval
    d.shards_dir = ""               # source=shards: directory written by `gptjax data export`
    d.seq_len = 1024
    d.shuffle = True
    d.shuffle_buffer = 10_000
    d.seed = 0
    d.prefetch = 2
    d.cache_dir = ""                # tokenized shards cache ('' = WORKDIR/data or ~/.cache/gptjax)
    t = d.tokenizer = ml_collections.ConfigDict()
    t.kind = "bpe"                  # char | bpe | unigram | path
    t.path = ""                     # kind=path: an existing sentencepiece .model
    t.vocab_size = 8192
    t.byte_fallback = True
    t.add_eos = True
    t.user_defined_symbols = ""     # comma-separated special tokens
    t.train_sentences = 1_000_000   # max sentences sentencepiece samples when training

    # --- optimisation (gptjax/optim.py): GPT-3 Appendix B defaults ---
    o = c.optim = ml_collections.ConfigDict()
    o.lr = 6e-4
    o.min_lr_ratio = 0.1            # cosine decays to this fraction of the peak
    o.warmup_steps = 100
    o.decay_steps = 0               # 0 = train.steps
    o.b1 = 0.9
    o.b2 = 0.95
    o.eps = 1e-8
    o.weight_decay = 0.1
    o.grad_clip = 1.0
    o.state_dtype = "float32"       # dtype of Adam moments (bfloat16 halves their memory)

    # --- training loop (gptjax/train.py) ---
    tr = c.train = ml_collections.ConfigDict()
    tr.batch_size = 8               # global batch, in sequences
    tr.grad_accum = 1               # micro-batches per step (batch_size must divide evenly)
    tr.steps = 1000
    tr.seed = 0
    tr.log_every = 10
    tr.eval_every = 200
    tr.eval_batches = 20
    tr.ckpt_every = 500
    tr.keep_checkpoints = 3         # keep the newest N ...
    tr.keep_every = 0               # ... plus every K-th step for good (0 = none)
    tr.async_checkpoint = True
    tr.nonfinite = "skip"           # skip | stop: what to do when loss or grads are NaN/Inf
    tr.inject_nan_at = -1           # test hook: make step N's gradients NaN
    tr.plot = True                  # write loss.png in the workdir

    # --- partitioning (gptjax/sharding.py) ---
    mesh = c.mesh = ml_collections.ConfigDict()
    mesh.data = -1                  # -1 = all devices left over
    mesh.fsdp = 1
    mesh.tensor = 1
    # logical axis -> mesh axes. The model only ever names logical axes.
    mesh.rules = (
        ("batch", ("data", "fsdp")),
        ("length", None),
        ("embed", "fsdp"),
        ("act_embed", None),
        ("mlp", "tensor"),
        ("act_mlp", "tensor"),
        ("heads", "tensor"),
        ("act_heads", "tensor"),
        ("kv", None),
        ("vocab", "tensor"),
        ("act_vocab", "tensor"),
        ("layers", None),
        ("norm", None),
    )

    # --- sampling (gptjax/sample.py) ---
    s = c.sample = ml_collections.ConfigDict()
    s.prompt = "\n"
    s.max_new_tokens = 200
    s.num_samples = 2
    s.temperature = 0.8
    s.top_k = 200
    s.top_p = 1.0
    s.seed = 0

    # --- multi-host (gptjax/distributed.py) ---
    dist = c.distributed = ml_collections.ConfigDict()
    dist.coordinator_address = ""   # '' = auto-detect (TPU pod, SLURM) or single process
    dist.num_processes = 0
    dist.process_id = -1
    dist.initialization_timeout = 300
    return c
