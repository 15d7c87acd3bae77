"""Supervised fine-tuning on JSONL prompt/response pairs: `gptjax finetune`.

    {"prompt": "Translate: cheese", "response": " fromage"}     one example per line

Each example becomes one sequence `prompt + response (+ EOS)`, right-padded or cut to
data.seq_len + 1 tokens. The loss is the mean cross-entropy over *response* targets only: a
weight of 1 where the predicted token belongs to the response, 0 on prompt and padding, so the
model is never trained to reproduce prompts.

The run starts from `finetune.init_from`: a gptjax workdir (its model config, tokenizer and
newest params) or `hf:PATH_OR_NAME` (Hugging Face GPT-2 weights; the prompts are then tokenized
with the tokenizer.json next to them). It writes an ordinary workdir (config.json, tokenizer,
checkpoints/<step>/, metrics.jsonl), so `gptjax sample` / `eval` / `convert export` work on it.
AdamW is gptjax/optim.py's; the step is sharded over config.mesh like pretraining.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gptjax import sharding
from gptjax.errors import UserError
from gptjax.model import GPT, GPTConfig
from gptjax.optim import make_optimizer, schedule

# ----------------------------------------------------------------------------- data


def read_jsonl(path: str, prompt_key: str, response_key: str) -> list[tuple[str, str]]:
    if not os.path.isfile(path):
        raise UserError(f"fine-tuning file {path!r} does not exist")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pairs.append((str(row[prompt_key]), str(row[response_key])))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise UserError(f"{path}:{n}: expected a JSON object with {prompt_key!r} and "
                                f"{response_key!r} ({type(e).__name__}: {e})") from None
    if not pairs:
        raise UserError(f"{path} holds no examples")
    return pairs


def encode_example(tokenizer, prompt: str, response: str, seq_len: int, add_eos: bool):
    """-> (inputs [T], targets [T], weights [T]); weight 1 exactly on response targets.

    Too long: the prompt loses tokens from its start (the end of a prompt matters most), then
    the response is cut at the end."""
    p = list(tokenizer.encode(prompt))
    r = list(tokenizer.encode(response))
    if add_eos and tokenizer.eos_id is not None:
        r.append(int(tokenizer.eos_id))
    if not p or not r:
        raise UserError("every example needs a non-empty prompt and response")
    room = seq_len + 1
    if len(p) + len(r) > room:
        p = p[-max(1, room - len(r)):]
        r = r[:room - len(p)]
    seq = np.zeros(room, np.int32)
    seq[:len(p) + len(r)] = p + r
    weights = np.zeros(seq_len, np.float32)
    # targets[t] = seq[t + 1]: the response tokens are targets len(p)-1 ... len(p)+len(r)-2.
    weights[len(p) - 1:len(p) + len(r) - 1] = 1.0
    return seq[:-1], seq[1:], weights


def encode_all(tokenizer, pairs, seq_len: int, add_eos: bool) -> dict:
    rows = [encode_example(tokenizer, p, r, seq_len, add_eos) for p, r in pairs]
    return {k: np.stack([row[i] for row in rows]) for i, k in
            enumerate(("inputs", "targets", "weights"))}


def batches(data: dict, batch_size: int, seed: int, epoch: int):
    """One epoch of shuffled full batches (the last partial batch is dropped)."""
    n = len(data["inputs"])
    order = np.random.default_rng([seed, epoch]).permutation(n)
    for i in range(0, n - batch_size + 1, batch_size):
        idx = order[i:i + batch_size]
        yield {k: v[idx] for k, v in data.items()}


# ----------------------------------------------------------------------------- loss / step


def masked_loss(logits, targets, weights):
    """(weighted mean cross-entropy, weight sum): padding and prompt targets weigh 0."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    total = jnp.sum(weights)
    return jnp.sum(ce * weights) / jnp.maximum(total, 1.0), total


def make_steps(config, model: GPT, tx, mesh, param_sh):
    rules = sharding.logical_rules(config)
    dropout = max(model.config.embed_dropout, model.config.attn_dropout,
                  model.config.resid_dropout) > 0

    def loss_fn(params, batch, key):
        with nn.logical_axis_rules(rules):
            logits = model.apply({"params": params}, batch["inputs"], deterministic=not dropout,
                                 rngs={"dropout": key})
        return masked_loss(logits, batch["targets"], batch["weights"])[0]

    def train_step(params, opt_state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def eval_step(params, batch):
        with nn.logical_axis_rules(rules):
            logits = model.apply({"params": params}, batch["inputs"], deterministic=True)
        loss, total = masked_loss(logits, batch["targets"], batch["weights"])
        return loss * total, total

    batch_sh = sharding.batch_sharding(mesh)
    repl = sharding.replicated(mesh)
    # in/out sharding None: the optimizer state keeps the shardings tx.init gave it.
    train_jit = jax.jit(train_step, in_shardings=(param_sh, None, batch_sh, repl),
                        out_shardings=(param_sh, None, repl), donate_argnums=(0, 1))
    eval_jit = jax.jit(eval_step, in_shardings=(param_sh, batch_sh), out_shardings=repl)
    return train_jit, eval_jit


# ----------------------------------------------------------------------------- start point


def load_start(config, mesh):
    """-> (model config section, data config section or None, params on `mesh`, tokenizer)
    of finetune.init_from."""
    from gptjax import checkpoint
    source = config.finetune.init_from
    if not source:
        raise UserError("config.finetune.init_from is empty: give a pretrained gptjax workdir "
                        "or hf:PATH_OR_NAME")
    if source.startswith("hf:"):
        from gptjax import interop
        hf_config, state = interop.load_hf(source[3:])
        model_cfg = copy.deepcopy(config.model)
        model_cfg.update(interop.config_from_hf(hf_config, int(config.model.vocab_multiple)))
        c = GPTConfig.from_config(model_cfg)
        params = interop.hf_to_params(state, c)
        tokenizer = interop.hf_tokenizer(source[3:])
        return model_cfg, None, _place(params, config, model_cfg, mesh), tokenizer
    pre_config, params, tokenizer = checkpoint.load_for_inference(source, mesh=mesh)
    return pre_config.model, pre_config.data, params, tokenizer


def _place(params, config, model_cfg, mesh):
    from gptjax.train import abstract_train_state
    cfg = copy.deepcopy(config)
    cfg.model = model_cfg
    _, shardings = abstract_train_state(cfg, mesh)
    return jax.device_put(params, shardings.params)


# ----------------------------------------------------------------------------- the loop


def finetune(config, workdir: str) -> dict:
    """Fine-tunes per `config.finetune` into `workdir`; returns first/last task losses."""
    from gptjax import checkpoint
    from gptjax.train import TrainState, abstract_train_state

    t0 = time.time()
    config = copy.deepcopy(config)
    ft, tr = config.finetune, config.train
    os.makedirs(workdir, exist_ok=True)
    mesh = sharding.make_mesh(config.mesh)
    with config.unlocked():
        model_cfg, data_cfg, params, tokenizer = load_start(config, mesh)
        config.model = copy.deepcopy(model_cfg)
        # The run keeps the start's data section (how its tokenizer is made) so that
        # `load_for_inference` rebuilds the same tokenizer; only seq_len is the fine-tuning one.
        seq_len = min(int(config.data.seq_len), int(config.model.max_seq_len))
        if data_cfg is not None:
            config.data = copy.deepcopy(data_cfg)
        else:
            config.data.source = "synthetic"  # HF start: the tokenizer is the saved HF one
        config.data.seq_len = seq_len
    sharding.check_config(config, mesh)
    seq_len = int(config.data.seq_len)
    train_pairs = read_jsonl(ft.train_file, ft.prompt_key, ft.response_key)
    if ft.eval_file:
        eval_pairs = read_jsonl(ft.eval_file, ft.prompt_key, ft.response_key)
    else:
        n_eval = max(1, int(len(train_pairs) * ft.eval_fraction)) if ft.eval_fraction > 0 else 0
        eval_pairs, train_pairs = train_pairs[:n_eval], train_pairs[n_eval:]
    if len(train_pairs) < tr.batch_size:
        raise UserError(f"{len(train_pairs)} training examples do not fill one batch of "
                        f"train.batch_size={tr.batch_size}; lower the batch size")
    train_data = encode_all(tokenizer, train_pairs, seq_len, ft.add_eos)
    eval_data = encode_all(tokenizer, eval_pairs, seq_len, ft.add_eos) if eval_pairs else None

    model = GPT(GPTConfig.from_config(config.model))
    tx = make_optimizer(config)
    _, shardings = abstract_train_state(config, mesh, model, tx)
    train_step, eval_step = make_steps(config, model, tx, mesh, shardings.params)
    lr_fn = schedule(config.optim, tr.steps)

    def eval_loss(params):
        if eval_data is None:
            return None
        total = count = 0.0
        bs = sharding.axis_size(mesh, sharding.BATCH_AXES)
        n = len(eval_data["inputs"]) // bs * bs
        if n == 0:
            raise UserError(f"{len(eval_data['inputs'])} eval examples do not split over the "
                            f"{bs} data-parallel devices; add eval examples")
        for i in range(0, n, max(bs, tr.batch_size // bs * bs)):
            chunk = {k: v[i:min(i + max(bs, tr.batch_size // bs * bs), n)]
                     for k, v in eval_data.items()}
            s, w = jax.device_get(eval_step(params, sharding.global_batch(chunk, mesh)))
            total, count = total + float(s), count + float(w)
        return total / max(count, 1.0)

    if tokenizer is not None and hasattr(tokenizer, "save"):
        tokenizer.save(workdir)
    config_dict = config.to_dict()
    with open(os.path.join(workdir, checkpoint.CONFIG_FILE), "w") as f:
        json.dump(config_dict, f, indent=2)
    metrics_path = os.path.join(workdir, "metrics.jsonl")

    def log(record):
        print(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in record.items()), flush=True)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    with jax.set_mesh(mesh):
        opt_state = jax.jit(tx.init)(params)
        first_eval = eval_loss(params)
        if first_eval is not None:
            log({"step": 0, "split": "eval", "task_loss": first_eval})
        key = jax.random.key(int(tr.seed))
        step, epoch, losses, first_train = 0, 0, [], None
        while step < tr.steps:
            for batch in batches(train_data, tr.batch_size, int(tr.seed), epoch):
                params, opt_state, loss = train_step(
                    params, opt_state, sharding.global_batch(batch, mesh),
                    jax.random.fold_in(key, step))
                step += 1
                losses.append(loss)
                if step % tr.log_every == 0 or step == tr.steps:
                    values = [float(x) for x in jax.device_get(losses)]
                    first_train = values[0] if first_train is None else first_train
                    losses = []
                    log({"step": step, "split": "train", "task_loss": float(np.mean(values)),
                         "lr": float(lr_fn(step - 1))})
                if eval_data is not None and tr.eval_every > 0 and step % tr.eval_every == 0:
                    log({"step": step, "split": "eval", "task_loss": eval_loss(params)})
                if step >= tr.steps:
                    break
            epoch += 1
        last_eval = eval_loss(params)
        if not all(math.isfinite(float(x)) for x in jax.tree.leaves(jax.device_get(
                jax.tree.map(lambda p: jnp.sum(p.astype(jnp.float32)), params)))):
            raise UserError("fine-tuning diverged (non-finite params); lower config.optim.lr")
        state = TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=opt_state,
                           rng=jax.random.key_data(key), skipped=jnp.zeros((), jnp.int32))
        ckpt = checkpoint.Checkpointer(workdir, keep=1, async_save=False)
        ckpt.save(step, state, {"epoch": epoch}, config_dict)
        ckpt.close()
    result = {"step": step, "epochs": epoch, "first_train_loss": first_train,
              "eval_loss_before": first_eval, "eval_loss_after": last_eval,
              "train_examples": len(train_pairs), "eval_examples": len(eval_pairs),
              "wall_time": time.time() - t0, "workdir": os.path.abspath(workdir)}
    if last_eval is not None:
        log({"step": step, "split": "eval", "task_loss": last_eval})
    return result


# ----------------------------------------------------------------------------- CLI


def add_args(parser):
    from gptjax.cli import add_config_arg
    add_config_arg(parser)
    parser.add_argument("--workdir", required=True, help="where the fine-tuned run is written")


def run(args):
    r = finetune(args.config, args.workdir)
    before = "" if r["eval_loss_before"] is None else (
        f", held-out response loss {r['eval_loss_before']:.4f} -> {r['eval_loss_after']:.4f}")
    print(f"done: {r['step']} steps ({r['epochs']} epochs of {r['train_examples']} examples)"
          f"{before}, {r['wall_time']:.0f}s -> {r['workdir']}")
    return 0
