"""`gptjax train`: set a run up, then step and run hooks (gptjax/loop.py) until the last step.

    train(config, workdir)                          # pretraining on config.data
    train(config, workdir, task=Finetuning())       # the same loop on prompt/response pairs

What is trained on comes from a *task* (`Pretraining` here, `gptjax.finetune.Finetuning`,
`gptjax.distill.Distillation`): it names the tokenizer, the batches, the eval set and the
starting state. Everything else is shared: resume from the newest complete checkpoint (params,
optimizer, data position), metrics every `train.log_every` steps, eval every
`train.eval_every`, asynchronous checkpoints every `train.ckpt_every`, SIGTERM-safe exit.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np

from gptjax import checkpoint, data, distributed, loop, paths, sharding, steps
from gptjax.cli import add_config_arg
from gptjax.errors import UserError
from gptjax.evaluate import eval_metrics, evaluate, prepare_eval_batches
from gptjax.flops import model_stats
from gptjax.metrics import MetricsWriter, format_duration, plot, throughput
from gptjax.model import GPT
from gptjax.optim import make_optimizer
from gptjax.state import abstract_train_state, create_train_state, model_config, with_shardings


@dataclasses.dataclass
class RunData:
    """What a task hands the loop: batches that can report and restore their position."""
    config: object                      # the run's final config (model section included)
    tokenizer: object
    batches: Iterator                   # host batches; .get_state() / .set_state(dict)
    eval_batches: Callable[[], list]    # -> global eval batches (called once, if eval is on)
    init_state: Callable                # (config, mesh, model, tx, shardings) -> TrainState
    describe: str = ""                  # one phrase for the start line
    eval_first: bool = False            # also evaluate the starting params (fine-tuning)
    # A task's own objective: (config, model, param_shardings) -> loss_and_grads(params, batch,
    # key, frozen); None = next-token loss. `frozen`: arrays it reads but never trains (a
    # distillation teacher, pruning masks), already placed on the mesh.
    objective: Callable | None = None
    frozen: object = None


class Pretraining:
    """Next-token prediction on `config.data` (gptjax.data)."""

    def prepare(self, config, workdir: str, mesh) -> RunData:
        rows = sharding.host_rows(mesh, config.train.batch_size)  # mesh-aware per-host data

        def load():  # trains the tokenizer and tokenizes the splits where nothing is cached
            tokenizer = data.make_tokenizer(config, workdir)
            check_vocab(config, tokenizer)
            batches = data.make_train_iter(config, tokenizer, jax.process_index(),
                                           jax.process_count(), rows=rows)
            evals = (prepare_eval_batches(config, tokenizer, mesh)
                     if config.train.eval_every >= 0 else [])
            return tokenizer, batches, evals

        # Process 0 prepares the data, the others then read the same files.
        tokenizer, batches, evals = distributed.once(
            "prepare the data", load, config.distributed.prepare_timeout)
        return RunData(config, tokenizer, batches, lambda: evals,
                       lambda cfg, mesh, model, tx, sh: create_train_state(cfg, mesh, model, tx,
                                                                            sh))


def check_vocab(config, tokenizer) -> None:
    """model.vocab_size must be the tokenizer's, unless model.vocab_from_tokenizer says the
    tokenizer decides (then it is set here, and the start line shows it)."""
    have, want = int(tokenizer.vocab_size), int(config.model.vocab_size)
    if have == want:
        return
    if config.model.vocab_from_tokenizer:
        config.model.vocab_size = have
        return
    raise UserError(f"config.model.vocab_size={want} but the {tokenizer.kind} tokenizer has "
                    f"{have} tokens; give data.tokenizer settings that make {want} (GPT-2's own "
                    f"files: data.tokenizer.kind=gpt2, data.tokenizer.path=DIR with vocab.json "
                    f"and merges.txt), or let the tokenizer decide with "
                    f"--config.model.vocab_from_tokenizer=true")


def prepare_workdir(workdir: str) -> str:
    """The resolved workdir (local or a bucket URL), checked to be writable now."""
    return paths.prepare_dir(workdir, "--workdir")


def validate(config) -> None:
    tr = config.train
    if tr.nonfinite not in ("skip", "stop"):
        raise UserError(f"config.train.nonfinite={tr.nonfinite!r}: choose skip or stop")
    for key in ("steps", "log_every", "batch_size"):
        if int(tr[key]) <= 0:
            raise UserError(f"config.train.{key}={tr[key]} must be positive")


# ----------------------------------------------------------------------------- hooks


class MetricsLog:
    """Every step: keep its metrics (on device). Every log_every: fetch them, write one record,
    print one line; a non-finite step with train.nonfinite=stop ends the run here."""

    def __init__(self, writer: MetricsWriter, config, stats: dict):
        self.writer, self.total, self.nonfinite = writer, config.train.steps, config.train.nonfinite
        self.log_every = config.train.log_every
        self.tokens_per_step = config.train.batch_size * config.data.seq_len
        self.flops_per_token = stats["flops_per_token"]
        self.n_dev, self.kind = jax.device_count(), jax.devices()[0].device_kind
        self.pending, self.last = [], {}
        self.restart(0, 0.0)

    def restart(self, step: int, paused: float) -> None:
        self.first, self.t0, self.paused0 = step, time.time(), paused

    def __call__(self, info: loop.StepInfo) -> None:
        self.pending.append(info.metrics)
        if not (info.step % self.log_every == 0 or info.last or info.stopping):
            return
        fetched, self.pending = jax.device_get(self.pending), []
        elapsed = max(time.time() - self.t0 - (info.paused - self.paused0), 1e-9)
        record = self.record(fetched, elapsed)
        self.last = record
        if record.get("skipped_steps"):
            self.writer.print(f"step(s) {record.pop('skipped_at')}: non-finite loss or "
                              f"gradients, update skipped")
        self.writer.write(info.step, "train", record)
        self.writer.print(self.line(info.step, record))
        self.writer.progress(info.step, f"loss {record['loss']:.3f}")
        self.restart(info.step, info.paused)

    def record(self, fetched: list[dict], elapsed: float) -> dict:
        bad = [self.first + i + 1 for i, m in enumerate(fetched) if not m["finite"]]
        if bad and self.nonfinite == "stop":
            m = fetched[bad[0] - self.first - 1]
            raise UserError(f"step {bad[0]}: loss {m['loss']} / gradient norm {m['grad_norm']} "
                            f"is not finite (train.nonfinite=stop); checkpoints hold only earlier "
                            f"steps. Lower config.optim.lr, or set config.train.nonfinite=skip")
        good = [m for m in fetched if m["finite"]] or fetched
        tokens_per_s = len(fetched) * self.tokens_per_step / elapsed
        record = {
            "loss": float(np.mean([m["loss"] for m in good])),
            "lr": float(fetched[-1]["lr"]),
            "grad_norm": float(np.mean([m["grad_norm"] for m in good])),
            "step_time": elapsed / len(fetched),
            "tokens_per_s": tokens_per_s,
            "skipped": int(fetched[-1]["skipped"]),  # all skipped steps of the run so far
            **throughput(tokens_per_s, self.flops_per_token, self.n_dev, self.kind),
        }
        if bad:
            record.update(skipped_steps=len(bad), skipped_at=bad)
        return record

    def line(self, step: int, r: dict) -> str:
        mfu = f", MFU {r['mfu']:.1f}%" if "mfu" in r else ""
        return (f"step {step}/{self.total}: loss {r['loss']:.4f}, lr {r['lr']:.2e}, grad norm "
                f"{r['grad_norm']:.3f}, {r['step_time'] * 1e3:.0f} ms/step, "
                f"{r['tokens_per_s']:,.0f} tok/s, {r['tflops_per_device']:.3g} TFLOP/s/dev{mfu}, "
                f"ETA {format_duration((self.total - step) * r['step_time'])}")


class Evaluation:
    """Held-out loss (perplexity, bits/char) on the run's fixed eval batches."""

    def __init__(self, eval_fn, batches: list, mesh, writer: MetricsWriter, tokenizer_kind: str):
        self.eval_fn, self.batches, self.mesh = eval_fn, batches, mesh
        self.writer, self.kind, self.last, self.first = writer, tokenizer_kind, None, None

    def __call__(self, info: loop.StepInfo) -> None:
        result = eval_metrics(evaluate(self.eval_fn, info.state.params, self.batches, self.mesh),
                              self.kind)
        self.writer.write(info.step, "eval", result)
        extra = f", {result['bits_per_char']:.3f} bits/char" if "bits_per_char" in result else ""
        self.writer.print(f"step {info.step}: eval loss {result['loss']:.4f}, "
                          f"perplexity {result['perplexity']:.2f}{extra}")
        self.last = {**result, "step": info.step}


class Saving:
    """A checkpoint of the state and every process's data position (async; the last one and
    the one on a stop signal are waited for)."""

    def __init__(self, ckpt: checkpoint.Checkpointer, batches, config_dict: dict,
                 saved: int | None, writer: MetricsWriter | None = None):
        self.ckpt, self.batches, self.config_dict, self.saved = ckpt, batches, config_dict, saved
        self.writer = writer

    def __call__(self, info: loop.StepInfo) -> None:
        if self.saved != info.step:
            if not checkpoint.all_finite(info.state.params):
                raise UserError(f"step {info.step}: parameters are not finite; not saving a "
                                f"checkpoint (lower config.optim.lr or set "
                                f"config.train.nonfinite=skip)")
            if self.writer is not None:  # a run resumed from this checkpoint finds all its records
                self.writer.flush()
            self.ckpt.save(info.step, info.state, self.batches.get_state(), self.config_dict)
            self.saved = info.step
        if info.stopping:
            self.ckpt.wait()


# ----------------------------------------------------------------------------- the run


def _start(run: RunData, workdir: str, mesh, model, tx):
    """-> (checkpointer, state, latest saved step): resumed if the workdir holds a checkpoint."""
    config = run.config
    abstract, shardings = abstract_train_state(config, mesh, model, tx)
    ckpt = checkpoint.Checkpointer.from_config(workdir, config)
    try:
        latest = ckpt.latest_step()
        if latest is None:
            return ckpt, run.init_state(config, mesh, model, tx, shardings), shardings, None
        saved_vocab = ckpt.restore_config(latest)["model"]["vocab_size"]
        if saved_vocab != config.model.vocab_size:
            raise UserError(f"checkpoint {ckpt.directory}/{latest} was trained with a vocabulary "
                            f"of {saved_vocab} tokens but this run has "
                            f"{config.model.vocab_size}; use a new --workdir")
        state, data_state = ckpt.restore(latest, with_shardings(abstract, shardings))
        run.batches.set_state(data_state)
        return ckpt, state, shardings, latest
    except BaseException:
        ckpt.close()  # its background clean-up must not outlive the process mid-flight
        raise


def train(config, workdir: str, task=None) -> dict:
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
        run = (task or Pretraining()).prepare(config, workdir, mesh)
    config, tr = run.config, run.config.train
    model, tx = GPT(model_config(config)), make_optimizer(config)
    ckpt, state, shardings, latest = _start(run, workdir, mesh, model, tx)
    start = int(jax.device_get(state.step))
    config_dict = checkpoint.write_config(workdir, config)
    primary = jax.process_index() == 0
    writer = MetricsWriter(workdir, tr.steps, start, enabled=primary)
    stats = model_stats(model.config, config.data.seq_len, config.optim.state_dtype)
    writer.print(f"gptjax train: {config.name}{run.describe}, {stats['params']:,} params "
                 f"(vocabulary {config.model.vocab_size}), mesh "
                 f"{dict(mesh.shape)} on {jax.device_count()} x {jax.devices()[0].device_kind}, "
                 f"batch {tr.batch_size} x {config.data.seq_len} tokens"
                 + (f", resumed at step {start}" if start else ""))
    hooks, evaluation = _hooks(run, mesh, model, shardings, writer, stats,
                               Saving(ckpt, run.batches, config_dict, latest, writer))
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


# ----------------------------------------------------------------------------- CLI


def add_args(parser):
    add_config_arg(parser)
    parser.add_argument("--workdir", required=True,
                        help="run directory: checkpoints, metrics, config.json, tokenizer; "
                             "training resumes if it already holds a checkpoint")


def storage_errors(fn, workdir: str):
    """Runs fn(); a full / read-only disk becomes one line (tests/test_faults.py)."""
    try:
        return fn()
    except OSError as e:
        local_error = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                  errno.EPERM)
        if not (local_error or paths.is_url(workdir)):  # a bucket: gcsfs's HTTP errors
            raise
        raise UserError(f"cannot write in --workdir {workdir}: {paths.first_line(e)}; its "
                        f"checkpoints are unchanged: fix the storage and rerun the same "
                        f"command") from None


def summary(result: dict) -> str:
    parts = [f"step {result['step']}", f"train loss {result['loss']:.4f}"]
    if "eval_loss" in result:
        at = result.get("eval_step")
        at = "" if at == result["step"] else f" (at step {at})"
        parts.append(f"val loss {result['eval_loss']:.4f}{at}")
    if "eval_bits_per_char" in result:
        parts.append(f"{result['eval_bits_per_char']:.3f} bits/char")
    parts.append(f"{result['wall_time']:.0f}s")
    return "done: " + ", ".join(parts) + f" -> {result['workdir']}"


def run(args):
    result = storage_errors(lambda: train(args.config, args.workdir), args.workdir)
    if jax.process_index() == 0:
        print(summary(result))
    return 0
