"""The training job: sharded train state, jitted train/eval steps, and the loop around them.

    state = create_train_state(config, mesh)            # sharded from birth, never on one device
    step_fn = make_train_step(config, mesh, shardings)  # jit, donated state, grad accumulation
    state, metrics = step_fn(state, global_batch)       # metrics stay on device until a log step

`train(config, workdir)` runs it end to end: tokenizer + data, resume from the newest complete
checkpoint, periodic eval / async checkpoints / metrics, SIGTERM-safe exit.
Step numbers count finished steps: after the k-th batch `state.step == k`.
"""

from __future__ import annotations

import collections
import copy
import json
import math
import os
import signal
import threading
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gptjax import sharding
from gptjax.errors import UserError
from gptjax.model import GPT, GPTConfig
from gptjax.optim import make_optimizer, schedule


@flax.struct.dataclass
class TrainState:
    step: jax.Array        # int32 [], finished steps
    params: Any            # unboxed params (logical axes live in `abstract_train_state`)
    opt_state: Any
    rng: jax.Array         # uint32 key data; dropout key of step s = fold_in(rng, s)
    skipped: jax.Array     # int32 [], steps whose update was dropped for non-finite values


# ----------------------------------------------------------------------------- state


def model_config(config) -> GPTConfig:
    return GPTConfig.from_config(config.model)


def _init_tokens(config):
    return jnp.zeros((1, min(config.data.seq_len, config.model.max_seq_len)), jnp.int32)


def _make_init_fn(config, model, tx):
    seed = int(config.train.seed)

    def init(_=None):
        key = jax.random.key(seed)
        params_key, dropout_key = jax.random.split(key)
        params = nn.unbox(model.init(params_key, _init_tokens(config))["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params), rng=jax.random.key_data(dropout_key),
                          skipped=jnp.zeros((), jnp.int32))
    return init


def abstract_train_state(config, mesh, model: GPT | None = None, tx=None):
    """-> (abstract TrainState of ShapeDtypeStructs, TrainState of NamedShardings).

    Nothing is allocated: shapes come from `jax.eval_shape`, shardings from the params' logical
    axis names through `config.mesh.rules`; Adam moments take their parameter's sharding.
    """
    model = model or GPT(model_config(config))
    tx = tx or make_optimizer(config)
    rules = sharding.logical_rules(config)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), _init_tokens(config)))["params"]
    param_sh = sharding.logical_to_sharding(nn.get_partition_spec(boxed), mesh, rules)
    abstract = jax.eval_shape(_make_init_fn(config, model, tx))
    repl = sharding.replicated(mesh)
    opt_sh = optax.tree_map_params(
        tx, lambda _, s: s, abstract.opt_state, param_sh,
        transform_non_params=lambda _: repl,
        is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
    shardings = TrainState(step=repl, params=param_sh, opt_state=opt_sh, rng=repl, skipped=repl)
    sharding.check_shardable(abstract.params, param_sh, "parameter")
    return abstract, shardings


def create_train_state(config, mesh, model: GPT | None = None, tx=None):
    """Initialises the train state directly into its shardings (jit with out_shardings)."""
    model = model or GPT(model_config(config))
    tx = tx or make_optimizer(config)
    _, shardings = abstract_train_state(config, mesh, model, tx)
    with jax.set_mesh(mesh):
        return jax.jit(_make_init_fn(config, model, tx), out_shardings=shardings)()


# ----------------------------------------------------------------------------- steps


def cross_entropy(logits, targets):
    """Mean next-token cross-entropy in float32 (logits [B, T, V], targets [B, T])."""
    logits = logits.astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def _uses_dropout(c: GPTConfig) -> bool:
    return max(c.embed_dropout, c.attn_dropout, c.resid_dropout) > 0


def make_loss_and_grads(config, model: GPT | None = None, param_shardings=None):
    """(params, batch, key) -> (loss, grads), with grad accumulation over micro-batches.

    The global batch [B, T] is split into A = train.grad_accum micro-batches of B/A rows
    (row r goes to micro-batch r % A, so every device keeps its rows local); gradients are
    averaged in float32, so 4 x B/4 equals one step of B up to rounding. The running sum is
    sharded like the params (`param_shardings`), so FSDP keeps it spread over devices.
    """
    model = model or GPT(model_config(config))
    rules = sharding.logical_rules(config)
    accum = int(config.train.grad_accum)
    train_mode = _uses_dropout(model.config)

    def loss_fn(params, micro, key):
        with nn.logical_axis_rules(rules):
            logits = model.apply({"params": params}, micro["inputs"],
                                 deterministic=not train_mode, rngs={"dropout": key})
        return cross_entropy(logits, micro["targets"])

    grad_fn = jax.value_and_grad(loss_fn)

    def loss_and_grads(params, batch, key):
        if accum == 1:
            return grad_fn(params, batch, key)

        def split(x):
            x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
            with nn.logical_axis_rules(rules):
                return nn.with_logical_constraint(x, (None, "batch", "length"))
        micro = jax.tree.map(split, batch)

        def body(carry, xs):
            loss_sum, grad_sum = carry
            i, mb = xs
            loss, grads = grad_fn(params, mb, jax.random.fold_in(key, i))
            grad_sum = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_sum, grads)
            return (loss_sum + loss, grad_sum), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        if param_shardings is not None:
            zeros = jax.lax.with_sharding_constraint(zeros, param_shardings)
        (loss_sum, grad_sum), _ = jax.lax.scan(
            body, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(accum), micro))
        grads = jax.tree.map(lambda g, p: (g / accum).astype(p.dtype), grad_sum, params)
        return loss_sum / accum, grads

    return loss_and_grads


def make_train_step(config, mesh, shardings: TrainState, model: GPT | None = None, tx=None):
    """Jitted `(state, batch) -> (state, metrics)`; the state is donated (updated in place).

    Non-finite loss or gradient norm: the update is dropped inside the step (params and Adam
    state unchanged, `skipped` += 1); train.nonfinite='stop' then stops the loop at the next
    log step. train.inject_nan_at=N makes the gradients of step N NaN (a test hook).
    """
    model = model or GPT(model_config(config))
    tx = tx or make_optimizer(config)
    loss_and_grads = make_loss_and_grads(config, model, shardings.params)
    lr_fn = schedule(config.optim, config.train.steps)
    inject = int(config.train.inject_nan_at)

    def train_step(state: TrainState, batch):
        number = state.step + 1
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        loss, grads = loss_and_grads(state.params, batch, key)
        if inject >= 0:
            grads = jax.tree.map(lambda g: jnp.where(number == inject, jnp.nan, g), grads)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new_state = state.replace(
            step=number,
            params=jax.tree.map(keep, params, state.params),
            opt_state=jax.tree.map(keep, opt_state, state.opt_state),
            skipped=state.skipped + (~finite).astype(jnp.int32))
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr_fn(state.step),
                   "finite": finite, "skipped": new_state.skipped}
        return new_state, metrics

    batch_sh = sharding.batch_sharding(mesh)
    return jax.jit(train_step, in_shardings=(shardings, batch_sh),
                   out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)


def make_eval_step(config, mesh, param_shardings, model: GPT | None = None):
    """Jitted `(params, batch) -> (sum of token losses, token count)` in float32."""
    model = model or GPT(model_config(config))
    rules = sharding.logical_rules(config)

    def eval_step(params, batch):
        with nn.logical_axis_rules(rules):
            logits = model.apply({"params": params}, batch["inputs"], deterministic=True)
        losses = optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), batch["targets"])
        return losses.sum(), jnp.asarray(losses.size, jnp.float32)

    return jax.jit(eval_step, in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh))


def evaluate(eval_fn, params, batches, mesh) -> dict:
    """Mean token loss over the eval batches (already global arrays or host numpy)."""
    total, count = 0.0, 0.0
    sums = []
    for batch in batches:
        if not isinstance(batch["inputs"], jax.Array):
            batch = sharding.global_batch(batch, mesh)
        sums.append(eval_fn(params, batch))
    for s, n in jax.device_get(sums):
        total, count = total + float(s), count + float(n)
    if count == 0:
        raise UserError("the eval set is empty: check config.data.eval_split / holdout")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 80.0)), "tokens": int(count)}


def eval_metrics(result: dict, tokenizer_kind: str) -> dict:
    out = dict(result)
    if tokenizer_kind == "char":
        out["bits_per_char"] = result["loss"] / math.log(2)
    return out


def prepare_eval_batches(config, tokenizer, mesh) -> list:
    from gptjax import data
    batches = list(data.make_eval_batches(config, tokenizer, jax.process_index(),
                                          jax.process_count()))
    n = int(config.train.eval_batches)
    if n > 0:
        batches = batches[:n]
    shards = sharding.axis_size(mesh, sharding.BATCH_AXES)
    out = []
    for b in batches:
        rows = np.asarray(b["inputs"]).shape[0] * jax.process_count()
        if rows % shards:  # a short final batch that does not split over the mesh
            continue
        out.append(sharding.global_batch(b, mesh))
    return out


# ----------------------------------------------------------------------------- the loop


class _StopFlag:
    """SIGTERM / SIGINT -> finish the current step, checkpoint, exit cleanly.

    With several processes the flag is agreed on at log steps (an all-gather of one int), so
    that every process stops after the same step even if only some got the signal.
    """

    def __init__(self):
        self.signum = None
        self._old = {}

    def should_stop(self, at_log_step: bool) -> bool:
        if jax.process_count() == 1:
            return self.signum is not None
        if not at_log_step:
            return False
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
        signum = int(np.max(flags))
        if signum and self.signum is None:
            self.signum = signum
        return bool(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _prepare_workdir(workdir: str) -> str:
    if not workdir:
        raise UserError("--workdir is required")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir} is a file; give a directory (it is created)")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --workdir {workdir}: {e.strerror}") from None
    return os.path.abspath(workdir)


def _validate_train_config(config) -> None:
    tr = config.train
    if tr.nonfinite not in ("skip", "stop"):
        raise UserError(f"config.train.nonfinite={tr.nonfinite!r}: choose skip or stop")
    for key in ("steps", "log_every"):
        if int(tr[key]) <= 0:
            raise UserError(f"config.train.{key}={tr[key]} must be positive")
    if tr.batch_size <= 0:
        raise UserError(f"config.train.batch_size={tr.batch_size} must be positive")


def _model_stats(config) -> dict:
    from gptjax.flops import model_stats
    return model_stats(model_config(config), config.data.seq_len, config.optim.state_dtype)



def _interval_record(fetched: list[dict], first: int, elapsed: float, nonfinite: str,
                     tokens_per_step: int, stats: dict, n_dev: int, device_kind: str) -> dict:
    """Per-step device metrics of one log interval (steps first+1 ...) -> one record."""
    from gptjax.metrics import throughput
    bad = [first + i + 1 for i, m in enumerate(fetched) if not m["finite"]]
    if bad and nonfinite == "stop":
        m = fetched[bad[0] - first - 1]
        raise UserError(f"step {bad[0]}: loss {m['loss']} / gradient norm {m['grad_norm']} is not "
                        f"finite (train.nonfinite=stop); checkpoints hold only earlier steps. "
                        f"Lower config.optim.lr, or set config.train.nonfinite=skip")
    good = [m for m in fetched if m["finite"]] or fetched
    n = len(fetched)
    tokens_per_s = n * tokens_per_step / elapsed
    record = {
        "loss": float(np.mean([m["loss"] for m in good])),
        "lr": float(fetched[-1]["lr"]),
        "grad_norm": float(np.mean([m["grad_norm"] for m in good])),
        "step_time": elapsed / n,
        "tokens_per_s": tokens_per_s,
        "skipped": int(fetched[-1]["skipped"]),  # all skipped steps of the run so far
        **throughput(tokens_per_s, stats["flops_per_token"], n_dev, device_kind),
    }
    if bad:
        record["skipped_steps"] = len(bad)
        record["skipped_at"] = bad
    return record


def _log_line(step: int, total: int, r: dict) -> str:
    from gptjax.metrics import format_duration
    mfu = f", MFU {r['mfu']:.1f}%" if "mfu" in r else ""
    return (f"step {step}/{total}: loss {r['loss']:.4f}, lr {r['lr']:.2e}, grad norm "
            f"{r['grad_norm']:.3f}, {r['step_time'] * 1e3:.0f} ms/step, "
            f"{r['tokens_per_s']:,.0f} tok/s, {r['tflops_per_device']:.3g} TFLOP/s/dev{mfu}, "
            f"ETA {format_duration((total - step) * r['step_time'])}")


def train(config, workdir: str) -> dict:
    """Trains `config` in `workdir` (resuming from its newest complete checkpoint).

    Returns the final metrics: step, loss, eval_loss, tokens_per_s, wall_time, skipped, ...
    """
    from gptjax import checkpoint, data, distributed
    from gptjax.metrics import MetricsWriter, plot

    t_start = time.time()
    config = copy.deepcopy(config)
    workdir = _prepare_workdir(workdir)
    _validate_train_config(config)
    distributed.maybe_initialize(config)  # before anything touches a device
    tr = config.train
    primary = jax.process_index() == 0

    mesh = sharding.make_mesh(config.mesh)
    sharding.check_config(config, mesh)
    tokenizer = data.make_tokenizer(config, workdir)
    if tokenizer.vocab_size != config.model.vocab_size:
        config.model.vocab_size = int(tokenizer.vocab_size)
    model = GPT(model_config(config))
    tx = make_optimizer(config)
    abstract, shardings = abstract_train_state(config, mesh, model, tx)

    ckpt = checkpoint.Checkpointer.from_config(workdir, config)
    latest = ckpt.latest_step()
    train_iter = data.make_train_iter(config, tokenizer, jax.process_index(),
                                      jax.process_count())
    if latest is not None:
        saved_vocab = ckpt.restore_config(latest)["model"]["vocab_size"]
        if saved_vocab != tokenizer.vocab_size:
            raise UserError(f"checkpoint {ckpt.directory}/{latest} was trained with a vocabulary "
                            f"of {saved_vocab} tokens but the tokenizer has "
                            f"{tokenizer.vocab_size}; use a new --workdir")
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract, shardings)
        state, data_state = ckpt.restore(latest, target)
        train_iter.set_state(data_state)
    else:
        state = create_train_state(config, mesh, model, tx)
    start_step = int(jax.device_get(state.step))
    config_dict = config.to_dict()
    if primary:
        with open(os.path.join(workdir, checkpoint.CONFIG_FILE), "w") as f:
            json.dump(config_dict, f, indent=2)

    writer = MetricsWriter(workdir, tr.steps, start_step, enabled=primary)
    stats = _model_stats(config)
    device_kind = jax.devices()[0].device_kind
    n_dev = jax.device_count()
    tokens_per_step = tr.batch_size * config.data.seq_len
    writer.print(
        f"gptjax train: {config.name}, {stats['params']:,} params, mesh "
        f"{dict(mesh.shape)} on {n_dev} x {device_kind}, batch {tr.batch_size} x "
        f"{config.data.seq_len} tokens" + (f", resumed at step {start_step}" if start_step
                                            else ""))

    step_fn = make_train_step(config, mesh, shardings, model, tx)
    eval_fn = make_eval_step(config, mesh, shardings.params, model)
    eval_batches = prepare_eval_batches(config, tokenizer, mesh) if tr.eval_every >= 0 else []
    kind = config.data.tokenizer.kind

    def run_eval(step):
        result = eval_metrics(evaluate(eval_fn, state.params, eval_batches, mesh), kind)
        writer.write(step, "eval", result)
        result["step"] = step
        extra = f", {result['bits_per_char']:.3f} bits/char" if "bits_per_char" in result else ""
        writer.print(f"step {step}: eval loss {result['loss']:.4f}, "
                     f"perplexity {result['perplexity']:.2f}{extra}")
        return result

    saved = {"step": latest}

    def save(step):
        if saved["step"] == step:  # e.g. a signal right after an interval save
            return
        if not checkpoint.all_finite(state.params):
            raise UserError(f"step {step}: parameters are not finite; not saving a checkpoint "
                            f"(lower config.optim.lr or set config.train.nonfinite=skip)")
        ckpt.save(step, state, train_iter.get_state(), config_dict)
        saved["step"] = step

    step = start_step
    last_eval, last_loss, tokens_per_s, interrupted = None, float("nan"), 0.0, False
    pending: list[dict] = []
    inflight: collections.deque = collections.deque()
    compile_time, first_batch = 0.0, None
    try:
        with jax.set_mesh(mesh), _StopFlag() as stop:
            if step < tr.steps:
                t0 = time.time()
                first_batch = sharding.global_batch(next(train_iter), mesh)
                step_fn = step_fn.lower(state, first_batch).compile()
                compile_time = time.time() - t0
                writer.print(f"compiled the train step in {compile_time:.1f}s")
            t_interval, paused = time.time(), 0.0
            interval_start = step
            while step < tr.steps:
                if first_batch is not None:
                    batch, first_batch = first_batch, None
                else:
                    batch = sharding.global_batch(next(train_iter), mesh)
                state, metrics = step_fn(state, batch)
                step += 1
                pending.append(metrics)
                # Bounded run-ahead: wait for the step `max_inflight` back (the device still has
                # the newer ones queued, so it never idles). Without it the host could queue a
                # whole log interval, and a SIGTERM would first wait for all of it.
                inflight.append(metrics["loss"])
                if len(inflight) > max(int(tr.max_inflight), 1):
                    inflight.popleft().block_until_ready()
                at_end = step == tr.steps
                log_step = step % tr.log_every == 0 or at_end
                stopping = stop.should_stop(log_step)
                if log_step or stopping:
                    fetched, pending = jax.device_get(pending), []
                    elapsed = max(time.time() - t_interval - paused, 1e-9)
                    record = _interval_record(fetched, interval_start, elapsed, tr.nonfinite,
                                              tokens_per_step, stats, n_dev, device_kind)
                    last_loss, tokens_per_s = record["loss"], record["tokens_per_s"]
                    if record.get("skipped_steps"):
                        writer.print(f"step(s) {record.pop('skipped_at')}: non-finite loss or "
                                     f"gradients, update skipped")
                    writer.write(step, "train", record)
                    writer.print(_log_line(step, tr.steps, record))
                    writer.progress(step, f"loss {last_loss:.3f}")
                    t_interval, paused, interval_start = time.time(), 0.0, step
                t_pause = time.time()
                if eval_batches and tr.eval_every > 0 and (step % tr.eval_every == 0 or at_end):
                    last_eval = run_eval(step)
                if stopping:
                    save(step)
                    ckpt.wait()
                    writer.print(f"stopped by signal {signal.Signals(stop.signum).name} after step "
                                 f"{step}; checkpoint saved, rerun the same command to resume")
                    interrupted = True
                    break
                if (tr.ckpt_every > 0 and step % tr.ckpt_every == 0) or at_end:
                    save(step)
                paused += time.time() - t_pause
            if step >= tr.steps and last_eval is None and eval_batches:
                last_eval = run_eval(step)
    finally:
        # Waits for a pending async save, also when the loop raised: that save is of an
        # earlier, finite step and must not be left half-written.
        try:
            ckpt.close()
        finally:  # reliability: also when that save failed (disk full), close the rest
            writer.close()
            if hasattr(train_iter, "close"):  # background prefetch threads
                train_iter.close()
    skipped = int(jax.device_get(state.skipped))
    if primary and tr.plot:
        try:
            plot(workdir)
        except Exception as e:  # a plotting problem must not fail a finished run
            print(f"gptjax: could not draw loss.png: {e}")
    result = {"step": step, "loss": last_loss, "tokens_per_s": tokens_per_s,
              "wall_time": time.time() - t_start, "compile_time": compile_time,
              "skipped": skipped, "interrupted": interrupted, "workdir": workdir}
    if last_eval is not None:
        result.update({f"eval_{k}": v for k, v in last_eval.items()})
    return result


# ----------------------------------------------------------------------------- CLI


def add_args(parser):
    from gptjax.cli import add_config_arg
    add_config_arg(parser)
    parser.add_argument("--workdir", required=True,
                        help="run directory: checkpoints, metrics, config.json, tokenizer; "
                             "training resumes if it already holds a checkpoint")


def run(args):
    import errno
    try:
        result = train(args.config, args.workdir)
    except OSError as e:  # reliability (tests/test_faults.py): a full / read-only disk -> 1 line
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise UserError(f"cannot write in --workdir {args.workdir}: {e}; its checkpoints are "
                        f"unchanged: fix the storage and rerun the same command") from None
    parts = [f"step {result['step']}", f"train loss {result['loss']:.4f}"]
    if "eval_loss" in result:
        at = result.get("eval_step")
        at = "" if at == result["step"] else f" (at step {at})"
        parts.append(f"val loss {result['eval_loss']:.4f}{at}")
    if "eval_bits_per_char" in result:
        parts.append(f"{result['eval_bits_per_char']:.3f} bits/char")
    parts.append(f"{result['wall_time']:.0f}s")
    if jax.process_index() == 0:
        print("done: " + ", ".join(parts) + f" -> {result['workdir']}")
    return 0
