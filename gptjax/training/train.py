"""`train(config, workdir)`: set a run up, then step and run hooks (gptjax/training/loop.py)
until the last step.

    train(config, workdir)                          # pretraining on config.data
    train(config, workdir, recipe=Finetuning())     # the same loop on prompt/response pairs

What is trained on comes from a *recipe* (`Pretraining` in gptjax/training/recipes.py,
`gptjax.training.finetune.Finetuning`, `gptjax.training.distill.Distillation`,
`gptjax.compression.surgery.Continued`): it names the tokenizer, the batches, the eval set and
the starting state. Everything else is shared: resume from the newest complete checkpoint
(params, optimizer, data position), metrics every `train.log_every` steps, eval every
`train.eval_every`, asynchronous checkpoints every `train.ckpt_every` (the hooks of
gptjax/training/hooks.py), SIGTERM-safe exit.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator

import jax

from gptjax.errors import UserError
from gptjax.metrics.curves import plot
from gptjax.metrics.profiler import Profiler
from gptjax.metrics.wandb_sink import WandbSink
from gptjax.metrics.writer import MetricsWriter
from gptjax.model.flops import model_stats
from gptjax.model.gpt import GPT
from gptjax.parallel import distributed, sharding
from gptjax.parallel.params import with_shardings
from gptjax.storage import checkpoint
from gptjax.storage.integrity import IntegrityError
from gptjax.training import loop, steps
from gptjax.training.hooks import Evaluation, MetricsLog, Saving
from gptjax.training.optim import make_optimizer
from gptjax.training.recipes import Pretraining, RunData
from gptjax.training.state import abstract_train_state, model_config, optimizer_state_bytes
from gptjax.workdir import prepare_workdir, write_config


def validate(config) -> None:
    tr = config.train
    if tr.nonfinite not in ("skip", "stop"):
        raise UserError(f"config.train.nonfinite={tr.nonfinite!r}: choose skip or stop")
    if tr.on_corrupt not in ("fallback", "stop"):
        raise UserError(f"config.train.on_corrupt={tr.on_corrupt!r}: choose fallback or stop")
    for key in ("steps", "log_every", "batch_size"):
        if int(tr[key]) <= 0:
            raise UserError(f"config.train.{key}={tr[key]} must be positive")


# ----------------------------------------------------------------------------- the run


def _start(run: RunData, workdir: str, mesh, model, tx):
    """-> (checkpointer, state, latest saved step): resumed if the workdir holds a checkpoint."""
    config = run.config
    abstract, shardings = abstract_train_state(config, mesh, model, tx)
    ckpt = checkpoint.Checkpointer.from_config(workdir, config)
    try:
        for step in reversed(ckpt.all_steps()):  # the newest intact one
            try:
                if config.train.verify_restore:
                    ckpt.verify(step)
            except IntegrityError as e:  # a file does not match the manifest: proven corrupt
                if config.train.on_corrupt == "stop":
                    raise IntegrityError(f"{e}; not resuming (train.on_corrupt=stop)") from None
                moved = ckpt.move_aside(step)
                if jax.process_index() == 0:
                    print(f"gptjax: {e}; moved it to {moved} and resuming from the newest intact "
                          f"checkpoint (train.on_corrupt=fallback)", flush=True)
                continue
            state = _restore(ckpt, step, run, with_shardings(abstract, shardings))
            return ckpt, state, shardings, step
        return ckpt, run.init_state(config, mesh, model, tx, shardings), shardings, None
    except BaseException:
        ckpt.close()  # its background clean-up must not outlive the process mid-flight
        raise


def _restore(ckpt, step: int, run: RunData, target):
    """The train state of checkpoint `step`, and the input position set from it."""
    config = run.config
    saved_vocab = ckpt.restore_config(step)["model"]["vocab_size"]
    if saved_vocab != config.model.vocab_size:
        raise UserError(f"checkpoint {ckpt.directory}/{step} was trained with a vocabulary "
                        f"of {saved_vocab} tokens but this run has "
                        f"{config.model.vocab_size}; use a new --workdir")
    state, data_state = ckpt.restore(step, target)
    run.batches.set_state(data_state)
    return state


def train(config, workdir: str, recipe=None) -> dict:
    """Trains `config` in `workdir` (resuming from its newest complete checkpoint).

    Returns the final metrics: step, loss, eval_loss, tokens_per_s, wall_time, skipped, ...
    """
    t_start = time.time()
    config = copy.deepcopy(config)
    workdir = prepare_workdir(workdir)
    validate(config)
    distributed.maybe_initialize(config)  # before anything touches a device
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_config(config, mesh)
    with config.unlocked():
        run = (recipe or Pretraining()).prepare(config, workdir, mesh)
    config, tr = run.config, run.config.train
    model, tx = GPT(model_config(config)), make_optimizer(config)
    ckpt, state, shardings, latest = _start(run, workdir, mesh, model, tx)
    start = int(jax.device_get(state.step))
    config_dict = write_config(workdir, config)
    primary = jax.process_index() == 0
    writer = MetricsWriter(workdir, tr.steps, start, enabled=primary)
    if tr.wandb and primary:
        writer.sinks.append(WandbSink(workdir, writer.staged.path(), tr.wandb_project,
                                      tr.wandb_name or config.name, config_dict))
    stats = model_stats(model.config, config.data.seq_len,
                        optimizer_state_bytes(config, model, tx))
    writer.print(f"gptjax train: {config.name}{run.describe}, {stats['params']:,} params "
                 f"(vocabulary {config.model.vocab_size}; optimizer state "
                 f"{stats['adam_state_bytes'] / 1e6:.3g} MB), mesh "
                 f"{dict(mesh.shape)} on {jax.device_count()} x {jax.devices()[0].device_kind}, "
                 f"batch {tr.batch_size} x {config.data.seq_len} tokens"
                 + (f", resumed at step {start}" if start else ""))
    hooks, evaluation = _hooks(run, mesh, model, shardings, writer, stats,
                               Saving(ckpt, run.batches, config_dict, latest, writer))
    profiler = Profiler(workdir, tr.profile_steps, start, enabled=primary)
    hooks.insert(1, loop.Hook(profiler, every=1, on_stop=True, pause=False))
    step, stopped, compile_time = start, False, 0.0
    try:
        with jax.set_mesh(mesh), loop.StopFlag() as stop:
            step_fn = _train_step(run, mesh, shardings, model, tx)
            if step < tr.steps:
                t0 = time.time()
                batches = _global(run.batches, mesh, tr.batch_size)
                first = next(batches)
                step_fn = _compile(step_fn, state, first, run.frozen)
                compile_time = time.time() - t0
                writer.print(f"compiled the train step in {compile_time:.1f}s")
                if evaluation is not None and run.eval_first and step == 0:
                    evaluation(loop.StepInfo(0, state, {}, False, False, 0.0))
                    evaluation.first = evaluation.last
                state, step, stopped = loop.run(state, step_fn, _prepend(first, batches), hooks,
                                                step, tr.steps, stop, tr.max_inflight)
            if stopped:
                writer.print(f"stopped by signal {stop.name} after step {step}; checkpoint "
                             f"saved in {time.time() - stop.agreed_at:.1f}s, rerun the same "
                             f"command to resume")
            elif evaluation is not None and evaluation.last is None:
                evaluation(loop.StepInfo(step, state, {}, True, False, 0.0))
    finally:
        # Waits for a pending async save, also when the loop raised: that save is of an
        # earlier, finite step and must not be left half-written.
        try:
            ckpt.close()
        finally:  # also when that save failed (disk full), close the rest
            profiler.close()
            writer.close()
            if hasattr(run.batches, "close"):  # background prefetch threads
                run.batches.close()
    if primary and tr.plot:
        _plot(workdir)
    log = hooks[0].fn.last
    result = {"step": step, "loss": log.get("loss", float("nan")),
              "tokens_per_s": log.get("tokens_per_s", 0.0), "wall_time": time.time() - t_start,
              "compile_time": compile_time, "skipped": int(jax.device_get(state.skipped)),
              "interrupted": stopped, "workdir": workdir}
    if evaluation is not None and evaluation.last is not None:
        result.update({f"eval_{k}": v for k, v in evaluation.last.items()})
        if evaluation.first is not None:
            result["eval_start_loss"] = evaluation.first["loss"]
    return result


def _train_step(run: RunData, mesh, shardings, model, tx):
    objective = run.objective and run.objective(run.config, model, shardings.params)
    return steps.make_train_step(run.config, mesh, shardings, model, tx,
                                 loss_and_grads=objective, frozen=run.frozen)


def _compile(step_fn, state, batch, frozen):
    """-> the compiled `(state, batch) -> (state, metrics)` (frozen arrays bound)."""
    if frozen is None:
        return step_fn.lower(state, batch).compile()
    compiled = step_fn.lower(state, batch, frozen).compile()
    return lambda state, batch: compiled(state, batch, frozen)


def _hooks(run: RunData, mesh, model, shardings, writer, stats: dict, saving: Saving):
    """-> ([metrics log, eval (if there is an eval set), checkpoint], the eval hook or None)."""
    tr = run.config.train
    hooks = [loop.Hook(MetricsLog(writer, run.config, stats), every=1, on_stop=True,
                       pause=False)]
    evaluation = None
    eval_batches = run.eval_batches() if tr.eval_every >= 0 else []
    if eval_batches:
        eval_fn = steps.make_eval_step(run.config, mesh, shardings.params, model)
        evaluation = Evaluation(eval_fn, eval_batches, mesh, writer,
                                run.config.data.tokenizer.kind)
        hooks.append(loop.Hook(evaluation, every=tr.eval_every))
    hooks.append(loop.Hook(saving, every=max(tr.ckpt_every, 0), on_stop=True))
    return hooks, evaluation


def _global(batches: Iterator, mesh, batch_size: int) -> Iterator:
    for batch in batches:
        yield sharding.global_batch(batch, mesh, batch_size)


def _prepend(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def _plot(workdir: str) -> None:
    try:
        plot(workdir)
    except Exception as e:  # a plotting problem must not fail a finished run
        print(f"gptjax: could not draw loss.png: {e}")
