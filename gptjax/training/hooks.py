"""The train loop's hooks (gptjax/training/loop.py runs them after a step, every N steps):
the metrics log (JSONL, TensorBoard, the terminal line), held-out evaluation, checkpoints."""

from __future__ import annotations

import time

import jax
import numpy as np

from gptjax.errors import UserError
from gptjax.hardware.devices import throughput
from gptjax.metrics.writer import MetricsWriter, format_duration
from gptjax.storage import checkpoint
from gptjax.training import loop
from gptjax.training.evaluation import eval_metrics, evaluate


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
