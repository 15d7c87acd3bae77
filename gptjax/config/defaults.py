"""Every key gptjax reads, with its default. Experiment configs (`configs/*.py`) start here.

Unknown keys are errors (configs are locked after loading), so this file is also the reference
of what can be set on the command line as `--config.SECTION.KEY=VALUE`. It lives in the package
(not in `configs/`) so that config files load by path and `configs` is never an installed
top-level package.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "base"

    # --- model (gptjax/model/gpt.py) ---
    m = c.model = ml_collections.ConfigDict()
    m.vocab_size = 50257            # real vocabulary; the embedding is padded to vocab_multiple
    m.vocab_from_tokenizer = True   # train sets vocab_size to the tokenizer's; False: a
                                    # mismatch is an error (configs/gpt2.py, gpt3.py)
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
    m.attention = "auto"            # auto | xla | cudnn | splash (auto: splash on TPU, cudnn on
                                    # GPU, xla on CPU; gptjax/model/attention.py)
    m.local_window = 0              # > 0: sliding-window causal attention of this many tokens...
    m.local_every = 2               # ...on every `local_every`-th layer (GPT-3's alternating bands)
    m.init_std = 0.02
    m.mup = False                   # muP: width-scaled init, 1/head_dim attention, per-layer LRs
    m.mup_base_width = 64           # muP: the d_model whose init and LRs are as set
    m.param_dtype = "float32"
    m.dtype = "auto"                # compute dtype: auto = bfloat16 on GPU/TPU, float32 on CPU
    m.scan_layers = True
    m.scan_unroll = "auto"          # scanned layers per loop iteration: auto = all on CPU with
                                    # remat none (no loop: faster there), else 1; or a number
    m.remat = "none"                # none | full | save_dots | save_proj | save_qkv

    # --- data (gptjax/data; docs/data.md) ---
    d = c.data = ml_collections.ConfigDict()
    d.source = "tfds"               # a registered source: tfds | files | shards | synthetic | ...
    d.tfds_name = "tiny_shakespeare"  # any TFDS text dataset: lm1b, c4/en, wikipedia/20230601.en
    d.train_split = "train"         # TFDS split syntax works: "train[:10%]"
    d.eval_split = "validation"     # source=files always has train and validation
    d.text_key = "text"             # the TFDS feature holding the text
    d.data_dir = ""                 # TFDS data_dir ('' = ~/tensorflow_datasets or $TFDS_DATA_DIR)
    d.manual_dir = ""               # offline copy of the raw download ('' = $GPTJAX_MANUAL_DIR)
    d.files = ""                    # source=files: glob(s) of .txt / .jsonl, comma-separated
    d.jsonl_key = "text"
    d.holdout_fraction = 0.05       # source=files: fraction of documents held out for eval
    d.encoding_errors = "strict"    # source=files, non-UTF-8 bytes: strict (error)|replace|ignore
    d.max_documents = 0             # read at most this many documents per split (0 = all)
    d.shards_dir = ""               # source=shards: directory written by `gptjax data export`
    d.seq_len = 1024
    d.shuffle = True                # seeded permutation of all windows each epoch (+ random shift)
    d.seed = 0
    d.prefetch = 2                  # batches prepared ahead of the training step
    d.loader = "auto"               # auto | tf | numpy (auto: as the source says; numpy if no TF)
    d.cache_dir = ""                # tokenized shards cache ('' = WORKDIR/data or ~/.cache/gptjax)
    d.document_mask = False         # attention stays inside each document of a packed window
                                    # (segments end at EOS; GPT-2 / GPT-3 trained without it)
    d.positions_restart = False     # document_mask: position ids restart at 0 per document
    d.eos_id = -1                   # the EOS document_mask splits at: -1 = the tokenizer's (set
                                    # when a run starts; `gptjax compile`: the last token id)
    d.shard_tokens = 1 << 27        # tokens per token-store shard (256 MiB of uint16)
    d.verify_shards = True          # check local shards' CRC32C when a split is opened (a
                                    # bucket's are checked from its metadata, without reading)
    t = d.tokenizer = ml_collections.ConfigDict()
    t.kind = "bpe"                  # char | bpe | unigram | path | hf
    t.path = ""                     # kind=path: a sentencepiece .model; kind=hf: tokenizer.json
    t.vocab_size = 8192             # bpe / unigram (char: the corpus decides)
    t.byte_fallback = True          # unknown characters -> byte pieces instead of <unk>
    t.add_eos = True                # EOS after every document (char: only if a split has several)
    t.user_defined_symbols = ""     # comma-separated special tokens
    t.train_sentences = 1_000_000   # max sentences sentencepiece samples when training

    # --- optimisation (gptjax/training/optim.py): GPT-3 Appendix B defaults ---
    o = c.optim = ml_collections.ConfigDict()
    o.lr = 6e-4                     # peak learning rate
    o.min_lr_ratio = 0.1            # cosine decays to this fraction of the peak
    o.warmup_steps = 100            # linear warmup, then cosine decay
    o.decay_steps = 0               # cosine ends here (0 = train.steps), then stays at the floor
    o.b1 = 0.9                      # Adam betas
    o.b2 = 0.95
    o.eps = 1e-8
    o.weight_decay = 0.1            # decoupled; matmul kernels only (not biases, norms, embeddings)
    o.grad_clip = 1.0               # clip the global gradient norm to this (0 = off)
    o.state_dtype = "float32"       # dtype of Adam's first moment (bfloat16 saves a quarter)
    o.grad_reduce_dtype = "float32"  # float32: gradients summed over data x fsdp once a step,
                                    # in float32 (a whole float32 gradient per device); bfloat16:
                                    # in the compute dtype per micro-batch, sharded accumulator

    # --- training loop (gptjax/training/train.py) ---
    tr = c.train = ml_collections.ConfigDict()
    tr.batch_size = 8               # global batch, in sequences
    tr.grad_accum = 1               # micro-batches per step (batch_size must divide evenly)
    tr.loss_chunk = 256             # cross-entropy in blocks of this many positions: no float32
                                    # [B, T, vocab] logits live at once (0 = one block)
    tr.steps = 1000
    tr.seed = 0                     # parameter init and dropout (key of step s = fold_in(key, s))
    tr.log_every = 10               # fetch metrics from the device (the only per-interval sync)
    tr.max_inflight = 2             # steps the host may dispatch ahead of the device
    tr.eval_every = 200             # held-out loss every N steps (0 = only at the end, -1 = never)
    tr.eval_batches = 20            # size of the fixed eval set, in batches (0 = all of it)
    tr.ckpt_every = 500             # async checkpoint every N steps (and always at the end)
    tr.keep_checkpoints = 3         # keep the newest N (0 = all) ...
    tr.keep_every = 0               # ... plus every K-th step for good (0 = none)
    tr.async_checkpoint = True      # write checkpoints in the background while training goes on
    tr.on_corrupt = "fallback"      # fallback | stop: a corrupt checkpoint at resume is moved to
                                    # checkpoints_corrupt/ and the newest intact one used (or stop)
    tr.verify_restore = True        # check every file against the checkpoint's manifest first
    tr.nonfinite = "skip"           # skip | stop: what to do when loss or grads are NaN/Inf
    tr.plot = True                  # write loss.png in the workdir at the end
    tr.profile_steps = ""           # START:COUNT: jax.profiler trace of steps START+1.. in
                                    # WORKDIR/profile (process 0; docs/performance.md)
    tr.wandb = False                # also log the scalars to Weights & Biases (the wandb extra)
    tr.wandb_project = "gptjax"
    tr.wandb_name = ""              # the W&B run name ('' = config.name)

    # --- partitioning (gptjax/parallel/sharding.py) ---
    mesh = c.mesh = ml_collections.ConfigDict()
    mesh.data = -1                  # -1 = all devices left over; data x fsdp x tensor = devices
    mesh.fsdp = 1                   # batch split over data x fsdp; params over fsdp ('embed')
    mesh.tensor = 1                 # heads, MLP and vocab split (num_heads % tensor == 0)
    mesh.dcn_data = 1               # of each axis, the factor across TPU slices (multislice, DCN)
    mesh.dcn_fsdp = 1               # or across processes on GPU / CPU; the rest stays inside
    mesh.dcn_tensor = 1             # (docs/multihost.md)
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

    # --- sampling (gptjax/inference/sample.py, gptjax/inference/generate.py; docs/inference.md) ---
    s = c.sample = ml_collections.ConfigDict()
    s.prompt = "\n"
    s.max_new_tokens = 200
    s.num_samples = 2               # samples per prompt (all decoded together as one batch)
    s.temperature = 0.8             # 0 = greedy
    s.top_k = 200                   # keep the k most likely tokens (0 = off)
    s.top_p = 1.0                   # nucleus sampling: smallest set with this mass (1 = off)
    s.seed = 0
    s.stop_at_eos = True            # stop a sample at the tokenizer's EOS (if it has one)
    s.quantize = "none"             # none | int8 | int4 | w8a8 (gptjax/inference/quantization.py)

    # --- fine-tuning on prompt/response JSONL (gptjax/training/finetune.py, configs/finetune.py)
    ft = c.finetune = ml_collections.ConfigDict()
    ft.init_from = ""               # pretrained gptjax workdir, or hf:PATH_OR_NAME (GPT-2)
    ft.train_file = ""              # JSONL, one {"prompt": ..., "response": ...} per line
    ft.eval_file = ""               # '' = hold out eval_fraction of train_file
    ft.eval_fraction = 0.1
    ft.prompt_key = "prompt"
    ft.response_key = "response"
    ft.add_eos = True               # end every response with EOS (if the tokenizer has one)

    # --- distillation (gptjax/training/distill.py; docs/compression.md) ---
    ds = c.distill = ml_collections.ConfigDict()
    ds.teacher = ""                 # the teacher's gptjax workdir (its newest checkpoint)
    ds.temperature = 2.0            # soft targets: softmax(logits / T) of teacher and student
    ds.alpha = 0.5                  # loss = alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE
    ds.init_from = ""               # start the student from this workdir's params ('' = fresh)

    # --- multi-host (gptjax/parallel/distributed.py) ---
    dist = c.distributed = ml_collections.ConfigDict()
    dist.coordinator_address = ""   # 'host:port' of process 0 ('' = env, auto-detect or single)
    dist.num_processes = 0          # 0 = $JAX_NUM_PROCESSES or auto-detect
    dist.process_id = -1            # -1 = $JAX_PROCESS_ID or auto-detect
    dist.initialization_timeout = 300  # s every process waits for all peers, then all exit
    dist.heartbeat_timeout = 100    # s a silent peer is tolerated during the run
    dist.auto_detect = True         # initialise on TPU pods / multi-task SLURM steps unasked
    dist.local_device_ids = ""      # e.g. '0,1': devices of this process ('' = JAX's choice)
    dist.prepare_timeout = 7200     # s the other processes wait for process 0 to prepare the data

    # --- scaling sweeps (gptjax/scaling/runs.py, gptjax/scaling/family.py; docs/scaling.md) ---
    sw = c.sweep = ml_collections.ConfigDict()
    sw.family = "width"             # width: d_models at fixed depth | aspect: depths at fixed
                                    # d_model/num_layers | table: the rows of `table`
    sw.d_models = (64, 128, 256)    # family=width: the widths
    sw.depth = 4                    # family=width: num_layers of every size
    sw.depths = (2, 4, 8)           # family=aspect: the depths; d_model = aspect * depth
    sw.aspect = 64.0                # family=aspect: d_model / num_layers
    sw.head_dim = 32                # width / aspect: num_heads = d_model / head_dim
    sw.ff_mult = 4                  # width / aspect: d_ff = ff_mult * d_model
    sw.table = ()                   # family=table: rows (name, layers, d_model, heads, head_dim,
                                    # d_ff[, lr, batch_size]); 0 = default
    sw.sizes = ""                   # family=table: comma-separated names to run ('' = all rows)
    sw.budget = "proportional"      # tokens per run: fixed | proportional | iso_flops
    sw.tokens = 0                   # budget=fixed: tokens per run
    sw.tokens_per_param = 20.0      # proportional: tokens / parameter; iso_flops: the guessed
                                    # optimal D/N that centres each budget's sizes
    sw.flops = ()                   # budget=iso_flops: training budgets in FLOPs, one profile each
    sw.sizes_per_budget = 5         # budget=iso_flops: sizes trained per budget
    sw.param_count = "non_embedding"  # N of budgets and fits: non_embedding (Kaplan) | total
    sw.min_steps = 50               # every run takes at least this many steps (iso_flops: sizes
                                    # that would take fewer are not used at that budget)
    sw.lr_rule = "fixed"            # fixed: optim.lr for every size (with model.mup: the muP
                                    # transfer) | kaplan: 0.003239 - 0.0001395 ln(N)
    sw.lrs = ()                     # learning-rate grid: every size at every one of these
    sw.warmup_fraction = 0.05       # warmup = min(optim.warmup_steps, fraction * steps)
    sw.evals_per_run = 8            # eval points per run (training curves; fits use the last)
    sw.budgets = ()                 # FLOPs to predict compute-optimal N, D for (() = 10x, 100x max)
    sw.n_boot = 500                 # bootstrap replicates behind every confidence interval
    sw.isolate = False              # True: each run in its own `gptjax sweep --run` subprocess
    sw.workers = 1                  # > 1: that many runs at once, each a subprocess (a small
                                    # model leaves CPU cores idle; on one accelerator: keep 1)
    sw.slurm_args = ""              # --print-commands slurm: extra sbatch options, space-separated
    sw.tpu_args = ""                # --print-commands tpu: gcloud options (--zone, type, runtime)
    sw.launch_setup = ""            # --print-commands slurm / tpu: shell run before each run
    return c
