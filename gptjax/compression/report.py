"""The compression report (`gptjax compress`): size vs quality vs speed over methods.

    gptjax compress --workdir RUN --out docs/compression [--methods float,int8,...]

Each method turns the trained model in RUN into one or more variants, each an ordinary workdir
under SCRATCH (default RUN-compress; a rerun reuses the variants already there and resumes
unfinished fine-tunes), then measures every variant the same way:

    params / nonzero   parameters the variant has, and those not pruned to zero
    MB on disk         its weights as one .npz (float32, or packed int8 / int4 + scales);
                       Orbax checkpoints also hold the optimizer state and are not counted
    MB memory          peak memory of the variant's generate program (prefill + decode at the
                       first --decode-batches size), measured: XLA's memory analysis of the
                       compiled program (arguments + temporaries; quantized weights stay
                       quantized and are dequantized one layer at a time)
    held-out loss      on the run's eval batches, as `gptjax eval` measures it
    TASK k-shot        each --tasks task's main metric at each --shots count
                       (gptjax/evaluation/incontext.py: acc_norm of a choice task, acc of a
                       cloze, exact_match of a completion), scored by the variant as it runs
                       (quantized ones quantized)
    tok/s b1, b16      KV-cache decode speed at batch 1 and 16 (gptjax/performance/
                       decode_bench.py): the best of --repeats generations of --decode-tokens
                       after 16 prompt tokens, per second of wall clock and per second of
                       this process's CPU time (the one other jobs on a shared machine barely
                       change)

Methods (METHODS): float, int8, int4 (weight-only, grouped scales), w8a8 (int8 weights and
activations, evaluation only), sparse50 / sparse80 (unstructured magnitude pruning), heads25 /
neurons25 (structured, first-order scores), drop2 (two layers), distill (a student of half the
layers: the teacher trimmed, then trained on its soft targets and, for comparison, on hard
labels). Pruned and trimmed variants are measured before and after a short recovery fine-tune
(--recover-steps); the float model after the same continued training is their baseline.
Writes OUT/results.md, OUT/results.csv and OUT/compression.png. Pruning, trimming and
quantizing go through gptjax/compression/{prune,trim,surgery}.py, distillation through
gptjax/training/distill.py; layers are dropped by their importance on the same held-out batches
every row is scored on.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import tempfile
from collections.abc import Callable, Sequence

import jax
import numpy as np

from gptjax.compression import prune, surgery, trim
from gptjax.config.defaults import base_config
from gptjax.errors import UserError
from gptjax.evaluation import incontext, scoring
from gptjax.inference import quantization as quant
from gptjax.metrics import plotting
from gptjax.model.gpt import GPT
from gptjax.parallel.sharding import inference_mesh
from gptjax.performance import decode_bench
from gptjax.storage import paths, quantized
from gptjax.training import evaluation as evaluate
from gptjax.training import steps
from gptjax.training.distill import Distillation
from gptjax.training.state import model_config
from gptjax.training.train import train
from gptjax.workdir import has_run, open_run, read_config

# ----------------------------------------------------------------------------- variants


def _prune(ctx, name: str, **kw) -> list[tuple]:
    out = os.path.join(ctx.scratch, name)
    if not has_run(out):
        ctx.log(prune.pruned_line(prune.prune_workdir(ctx.workdir, out, **kw)))
    return _with_recovery(ctx, name, out, masked=bool(kw.get("sparsity")))


def _with_recovery(ctx, name: str, out: str, masked: bool) -> list[tuple]:
    """The variant, and the variant after the recovery fine-tune (float: the same continued
    training of the unpruned model, the fair baseline of every '+recovery' row)."""
    rows = [(name, out, "none")]
    if ctx.recover_steps > 0:
        rec = surgery.recover(out, os.path.join(ctx.scratch, f"{name}-recovered"),
                              steps=ctx.recover_steps, lr=ctx.recover_lr, masked=masked)
        rows.append((f"{name} +recovery", rec["workdir"], "none"))
    return rows


def _quantized(ctx, mode: str) -> list[tuple]:
    out = os.path.join(ctx.scratch, mode)
    if not has_run(out):
        ctx.log(surgery.quantized_line(surgery.quantize_workdir(ctx.workdir, out, mode=mode)))
    return [(mode, out, "none")]


def _trimmed(ctx, out: str, drop_layers: int) -> None:
    """`drop_layers` layers trimmed away, chosen on the held-out batches every row is then
    scored on (`measure`: the first ctx.eval_batches)."""
    if not has_run(out):
        ctx.log(trim.trimmed_line(trim.trim_workdir(ctx.workdir, out, drop_layers=drop_layers,
                                                    eval_batches=ctx.eval_batches)))


def _drop2(ctx) -> list[tuple]:
    out = os.path.join(ctx.scratch, "drop2")
    _trimmed(ctx, out, drop_layers=2)
    return _with_recovery(ctx, "drop2", out, masked=False)


def _distill(ctx) -> list[tuple]:
    """A student of half the teacher's layers (the teacher trimmed to its most important half,
    as DistilBERT starts from its teacher's layers) trained on the teacher's soft targets, and
    the same start trained as long on the hard labels alone (alpha 0): what the teacher adds."""
    layers = int(read_config(ctx.workdir).model.num_layers)
    half = os.path.join(ctx.scratch, "half")
    _trimmed(ctx, half, drop_layers=layers - layers // 2)
    rows = [(f"half ({layers // 2} layers)", half, "none")]
    for name, alpha in (("half +distill", 0.5), ("half +hard labels", 0.0)):
        config = read_config(ctx.workdir)
        with config.unlocked():
            config.distill = base_config().distill  # a workdir's config.json may predate it
        config.distill.update(teacher=ctx.workdir, init_from=half, alpha=alpha)
        out = os.path.join(ctx.scratch, name.replace(" +", "-").replace(" ", "-"))
        train(surgery.short_run(config, ctx.distill_steps, ctx.recover_lr), out,
              recipe=Distillation())
        rows.append((name, out, "none"))
    return rows


METHODS = {
    "float": lambda ctx: _with_recovery(ctx, "float", ctx.workdir, masked=False),
    "int8": lambda ctx: _quantized(ctx, "int8"),
    "int4": lambda ctx: _quantized(ctx, "int4"),
    "w8a8": lambda ctx: [("w8a8 (Qwix)", ctx.workdir, "w8a8")],
    "sparse50": lambda ctx: _prune(ctx, "sparse50", sparsity=0.5),
    "sparse80": lambda ctx: _prune(ctx, "sparse80", sparsity=0.8),
    "heads25": lambda ctx: _prune(ctx, "heads25", heads=0.25, score="first_order"),
    "neurons25": lambda ctx: _prune(ctx, "neurons25", neurons=0.25, score="first_order"),
    "drop2": _drop2,
    "distill": _distill,
}


# ----------------------------------------------------------------------------- measuring


def disk_bytes(params) -> int:
    """Size of the weights written as one .npz (gptjax/storage/quantized.py's format)."""
    with tempfile.TemporaryDirectory() as d:
        return os.path.getsize(quantized.save(d, params, {}))


def task_scores(scorer: scoring.Scorer, ctx) -> dict:
    """{'TASK k-shot': main metric} of every --tasks task at every --shots count."""
    out = {}
    for task in ctx.task_list:
        for k in ctx.shots:
            result = incontext.run_task(task, scorer, k, ctx.task_limit)
            out[task_column(task, k)] = result[incontext.MAIN_METRIC[task.format]]
    return out


def task_column(task, shots: int) -> str:
    return f"{task.name} {shots}-shot {incontext.MAIN_METRIC[task.format]}"


def task_columns(ctx) -> list[str]:
    return [task_column(task, k) for task in ctx.task_list for k in ctx.shots]


def measure(name: str, workdir: str, mode: str, ctx) -> dict:
    """One row of the report: the variant in `workdir` run as `mode` (none, or quantized on
    the fly: w8a8), scored on the run's first ctx.eval_batches held-out batches."""
    config = read_config(workdir)
    config.train.eval_batches = ctx.eval_batches
    mesh = inference_mesh(config)
    config, params, tokenizer, _ = open_run(workdir, mesh, config=config)
    c = model_config(config)
    model, run_params = quant.prepare(GPT(c), params, mode)
    to_dtype = lambda p: quant.dequantize(p, c.dtype)  # noqa: E731
    eval_fn = steps.make_eval_step(config, mesh, None, model, params_transform=to_dtype)
    with jax.set_mesh(mesh):
        loss = evaluate.evaluate(eval_fn, run_params,
                                 evaluate.prepare_eval_batches(config, tokenizer, mesh),
                                 mesh)["loss"]
    leaves = jax.tree.leaves(params, is_leaf=quant.is_qarray)
    dense = mode == "none" and not quant.is_quantized(params)
    row = {"variant": name, "params": sum(int(np.prod(x.shape)) for x in leaves),
           "nonzero": sum(int(np.count_nonzero(x)) for x in leaves) if dense else -1,
           "layers": c.num_layers, "heads": c.num_heads, "d_ff": c.d_ff,
           "mb_disk": disk_bytes(params) / 1e6 if mode == "none" else float("nan"),
           "eval_loss": loss}
    if ctx.task_list:
        row.update(task_scores(scoring.Scorer(config, run_params, tokenizer, mesh,
                                              model=model), ctx))
    new = min(ctx.decode_tokens, c.max_seq_len - 1)
    prompt = max(1, min(16, c.max_seq_len - new))
    timings = [decode_bench.time_decode(model, run_params, batch, prompt, new, ctx.repeats)
               for batch in ctx.decode_batches]
    row["mb_memory"] = timings[0].peak_bytes / 1e6
    for batch, timing in zip(ctx.decode_batches, timings, strict=True):
        row[f"tok_s_b{batch}"] = timing.tokens_per_s
        row[f"tok_cpu_s_b{batch}"] = timing.tokens_per_cpu_s
    ctx.log(row_line(row, ctx))
    return row


def row_line(row: dict, ctx) -> str:
    return (f"  {row['variant']}: loss {row['eval_loss']:.4f}, {row['mb_memory']:.2f} MB, "
            + ", ".join(f"b{b} {row[f'tok_s_b{b}']:.0f} tok/s ({row[f'tok_cpu_s_b{b}']:.0f} "
                        f"per CPU-s)" for b in ctx.decode_batches)
            + "".join(f", {k} {row[k]:.3f}" for k in row if k in task_columns(ctx)))


# ----------------------------------------------------------------------------- outputs


def table(rows: list[dict], batches, task_cols=()) -> str:
    base = rows[0]["eval_loss"]
    head = ["variant", "layers x heads, d_ff", "params", "nonzero", "MB disk", "MB memory",
            "held-out loss", "Δ loss", *task_cols, *[f"tok/s b{b}" for b in batches],
            *[f"tok/CPU-s b{b}" for b in batches]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        disk = "—" if np.isnan(r["mb_disk"]) else f"{r['mb_disk']:.2f}"
        nonzero = f"{r['nonzero']:,}" if r["nonzero"] >= 0 else "—"
        cells = [r["variant"], f"{r['layers']} x {r['heads']}, {r['d_ff']}", f"{r['params']:,}",
                 nonzero, disk, f"{r['mb_memory']:.2f}", f"{r['eval_loss']:.4f}",
                 f"{r['eval_loss'] - base:+.4f}", *[f"{r[k]:.3f}" for k in task_cols],
                 *[f"{r[f'tok_s_b{b}']:,.0f}" for b in batches],
                 *[f"{r[f'tok_cpu_s_b{b}']:,.0f}" for b in batches]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _final(rows: list[dict]) -> list[dict]:
    """The float model and every variant that no later row continues ('x' -> 'x +recovery')."""
    def continued(r):
        stem = r["variant"].split(" (")[0]
        return any(o["variant"].startswith(stem + " +") for o in rows)
    return rows[:1] + [r for r in rows[1:] if not continued(r)]


def draw(rows: list[dict], batches, path: str) -> None:
    """Held-out loss against peak decode memory and against decode speed, one marker a
    variant."""
    plt = plotting.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=80)
    colors, markers = plt.get_cmap("tab20").colors, "osD^vP*Xhp<>"
    for ax, key, label in ((axes[0], "mb_memory",
                            f"peak memory of decoding at batch {batches[0]} (MB)"),
                           (axes[1], f"tok_cpu_s_b{batches[0]}",
                            f"decode tokens per CPU-second at batch {batches[0]}")):
        for i, r in enumerate(_final(rows)):
            ax.scatter(r[key], r["eval_loss"], s=40, color=colors[i % 20],
                       marker=markers[i % len(markers)], label=r["variant"])
        ax.set_xlabel(label)
        ax.set_ylabel("held-out loss (nats/token)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    plotting.save(fig, path, dpi="figure")


def write(rows: list[dict], ctx) -> list[str]:
    os.makedirs(ctx.out, exist_ok=True)
    md, csv_path, png = (os.path.join(ctx.out, n) for n in
                         ("results.md", "results.csv", "compression.png"))
    with open(md, "w") as f:
        f.write(table(rows, ctx.decode_batches, task_columns(ctx)))
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    draw(rows, ctx.decode_batches, png)
    return [md, csv_path, png]


# ----------------------------------------------------------------------------- the report


def _quiet(line: str) -> None:
    pass


@dataclasses.dataclass
class Settings:
    """How `compress` builds and measures the variants (`gptjax compress`'s flags)."""
    workdir: str                     # the trained model (resolved: local or a bucket URL)
    out: str                         # results.md / .csv and the plot (local)
    scratch: str                     # the variants' workdirs (local)
    recover_steps: int = 100         # recovery fine-tune of pruned / trimmed variants (0: none)
    recover_lr: float = 1e-3
    distill_steps: int = 200
    eval_batches: int = 20           # held-out batches every row is scored on
    decode_batches: Sequence[int] = (1, 16)
    decode_tokens: int = 96
    repeats: int = 5                 # timed decodes per batch size; the fastest counts
    task_list: Sequence = ()         # loaded tasks (gptjax/evaluation/incontext.py)
    shots: Sequence[int] = (0,)
    task_limit: int | None = None
    log: Callable[[str], None] = _quiet   # progress lines


@dataclasses.dataclass
class Report:
    rows: list[dict]
    written: list[str]               # results.md, results.csv, compression.png
    settings: Settings

    def table(self) -> str:
        return table(self.rows, self.settings.decode_batches, task_columns(self.settings))


def compress(workdir: str, out: str, methods: Sequence[str] = tuple(METHODS), scratch: str = "",
             tasks: Sequence[str] = (), log: Callable[[str], None] = _quiet,
             **settings) -> Report:
    """Builds every method's variants of `workdir` under `scratch` (default WORKDIR-compress;
    variants already there are reused), measures each and writes the report to `out`.
    `tasks`: evaluation task names or directories; `settings`: the other `Settings` fields."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UserError(f"--methods {','.join(methods)!r}: choose from {', '.join(METHODS)}")
    workdir = paths.resolve(workdir)   # read: a local path or a bucket URL
    read_config(workdir)  # clear errors before any work
    out = paths.local_dir(out, "--out", "gptjax compress")
    task_list = [incontext.load_task(t) for t in tasks]
    if not scratch and paths.is_url(workdir):
        raise UserError(f"--workdir {workdir}: a bucket workdir needs --scratch DIR, a "
                        f"local directory for the variants")
    scratch = paths.local_dir(scratch or workdir.rstrip("/") + "-compress", "--scratch",
                              "gptjax compress")
    ctx = Settings(workdir, out, scratch, task_list=task_list, log=log, **settings)
    os.makedirs(ctx.scratch, exist_ok=True)
    rows = []
    for m in methods:
        log(f"gptjax compress: {m}")
        for name, variant, mode in METHODS[m](ctx):
            rows.append(measure(name, variant, mode, ctx))
    return Report(rows, write(rows, ctx), ctx)
