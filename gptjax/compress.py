"""`gptjax compress`: one report of size vs quality vs speed over compression methods.

    gptjax compress --workdir RUN --out docs/compression [--methods float,int8,...]

Each method turns the trained model in RUN into one or more variants, each an ordinary workdir
under SCRATCH (default RUN-compress; a rerun reuses the variants already there and resumes
unfinished fine-tunes), then measures every variant the same way:

    params / nonzero   parameters the variant has, and those not pruned to zero
    MB on disk         its weights as one .npz (float32, or packed int8 / int4 + scales);
                       Orbax checkpoints also hold the optimizer state and are not counted
    MB in memory       the weights as the model runs with them (quantized ones quantized)
    held-out loss      on the run's eval batches, as `gptjax eval` measures it
    TASK k-shot        each --tasks task's main metric at each --shots count (gptjax/tasks.py:
                       acc_norm of a choice task, acc of a cloze, exact_match of a completion),
                       scored by the variant as it runs (quantized ones quantized)
    tok/s b1, b16      KV-cache decode speed at batch 1 and 16 (gptjax/generate.py): the
                       best of --repeats generations of --decode-tokens after 16 prompt tokens,
                       per second of wall clock and per second of this process's CPU time
                       (the one other jobs on a shared machine barely change)

Methods (METHODS): float, int8, int4 (weight-only, grouped scales), w8a8 (int8 weights and
activations, evaluation only), sparse50 / sparse80 (unstructured magnitude pruning), heads25 /
neurons25 (structured, first-order scores), drop2 (two layers), distill (a student of half the
layers: the teacher trimmed, then trained on its soft targets and, for comparison, on hard
labels). Pruned and trimmed variants are measured before and after a short recovery fine-tune
(--recover-steps); the float model after the same continued training is their baseline.
Writes OUT/results.md, OUT/results.csv and OUT/compression.png.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time

import jax
import numpy as np

from gptjax import (
    checkpoint,
    evaluate,
    generate,
    paths,
    prune,
    quant,
    scoring,
    steps,
    surgery,
    tasks,
    trim,
)
from gptjax.defaults import base_config
from gptjax.distill import Distillation
from gptjax.errors import UserError
from gptjax.model import GPT
from gptjax.state import model_config
from gptjax.train import train

# ----------------------------------------------------------------------------- variants


def _exists(workdir: str) -> bool:
    return os.path.isfile(os.path.join(workdir, checkpoint.CONFIG_FILE))


def _prune(ctx, name: str, **kw) -> list[tuple]:
    out = os.path.join(ctx.scratch, name)
    if not _exists(out):
        prune.prune_workdir(argparse.Namespace(**{
            "workdir": ctx.workdir, "out": out, "sparsity": 0.0, "scope": "global",
            "heads": 0.0, "neurons": 0.0, "score": "magnitude", "calibration_batches": 8, **kw}))
    return _with_recovery(ctx, name, out, masked=bool(kw.get("sparsity")))


def _with_recovery(ctx, name: str, out: str, masked: bool) -> list[tuple]:
    """The variant, and the variant after the recovery fine-tune (float: the same continued
    training of the unpruned model, the fair baseline of every '+recovery' row)."""
    rows = [(name, out, "none")]
    if ctx.recover_steps > 0:
        rec = surgery.recover(out, os.path.join(ctx.scratch, f"{name}-recovered"),
                              ctx.recover_steps, ctx.recover_lr, masked)
        rows.append((f"{name} +recovery", rec["workdir"], "none"))
    return rows


def _quantized(ctx, mode: str) -> list[tuple]:
    out = os.path.join(ctx.scratch, mode)
    if not _exists(out):
        quant.run(argparse.Namespace(workdir=ctx.workdir, out=out, mode=mode, group=None,
                                     step=None))
    return [(mode, out, "none")]


def _drop2(ctx) -> list[tuple]:
    out = os.path.join(ctx.scratch, "drop2")
    if not _exists(out):
        trim.trim_workdir(argparse.Namespace(workdir=ctx.workdir, out=out, drop_layers=2,
                                             vocab=False, eval_batches=4))
    return _with_recovery(ctx, "drop2", out, masked=False)


def _distill(ctx) -> list[tuple]:
    """A student of half the teacher's layers (the teacher trimmed to its most important half,
    as DistilBERT starts from its teacher's layers) trained on the teacher's soft targets, and
    the same start trained as long on the hard labels alone (alpha 0): what the teacher adds."""
    layers = int(checkpoint.read_config(ctx.workdir).model.num_layers)
    half = os.path.join(ctx.scratch, "half")
    if not _exists(half):
        trim.trim_workdir(argparse.Namespace(workdir=ctx.workdir, out=half, vocab=False,
                                             drop_layers=layers - layers // 2, eval_batches=4))
    rows = [(f"half ({layers // 2} layers)", half, "none")]
    for name, alpha in (("half +distill", 0.5), ("half +hard labels", 0.0)):
        config = checkpoint.read_config(ctx.workdir)
        with config.unlocked():
            config.distill = base_config().distill  # a workdir's config.json may predate it
        config.distill.update(teacher=ctx.workdir, init_from=half, alpha=alpha)
        out = os.path.join(ctx.scratch, name.replace(" +", "-").replace(" ", "-"))
        train(surgery.short_run(config, ctx.distill_steps, ctx.recover_lr), out, Distillation())
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
    """Size of the weights written as one .npz (gptjax/quant.py's format)."""
    with tempfile.TemporaryDirectory() as d:
        return os.path.getsize(quant.save(d, params, {}))


def task_scores(scorer: scoring.Scorer, ctx) -> dict:
    """{'TASK k-shot': main metric} of every --tasks task at every --shots count."""
    out = {}
    for task in ctx.task_list:
        for k in ctx.shots:
            result = tasks.run_task(task, scorer, k, ctx.task_limit)
            out[task_column(task, k)] = result[tasks.MAIN_METRIC[task.format]]
    return out


def task_column(task, shots: int) -> str:
    return f"{task.name} {shots}-shot {tasks.MAIN_METRIC[task.format]}"


def task_columns(ctx) -> list[str]:
    return [task_column(task, k) for task in ctx.task_list for k in ctx.shots]


def measure(name: str, workdir: str, mode: str, ctx) -> dict:
    """One row of the report."""
    config = checkpoint.read_config(workdir)
    config.train.eval_batches = ctx.eval_batches
    mesh = evaluate.inference_mesh(config)
    config, params, tokenizer, _ = checkpoint.load_for_inference(workdir, mesh, config=config)
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
           "mb_memory": quant.weight_bytes(run_params) / 1e6, "eval_loss": loss}
    if ctx.task_list:
        row.update(task_scores(scoring.Scorer(config, run_params, tokenizer, mesh,
                                              model=model), ctx))
    new = min(ctx.decode_tokens, c.max_seq_len - 1)
    prompt = max(1, min(16, c.max_seq_len - new))
    for batch in ctx.decode_batches:
        timing = generate.time_decode(model, run_params, batch, prompt, new, ctx.repeats)
        row[f"tok_s_b{batch}"] = timing.tokens_per_s
        row[f"tok_cpu_s_b{batch}"] = timing.tokens_per_cpu_s
    print(f"  {name}: loss {loss:.4f}, {row['mb_memory']:.2f} MB, " + ", ".join(
        f"b{b} {row[f'tok_s_b{b}']:.0f} tok/s ({row[f'tok_cpu_s_b{b}']:.0f} per CPU-s)"
        for b in ctx.decode_batches) + "".join(
        f", {k} {row[k]:.3f}" for k in row if k in task_columns(ctx)), flush=True)
    return row


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
    """Held-out loss against weight bytes and against decode speed, one marker a variant."""
    import matplotlib  # only when drawing: `gptjax compress --help` stays light
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=80)
    colors, markers = plt.get_cmap("tab20").colors, "osD^vP*Xhp<>"
    for ax, key, label in ((axes[0], "mb_memory", "weights in memory (MB)"),
                           (axes[1], f"tok_cpu_s_b{batches[0]}",
                            f"decode tokens per CPU-second at batch {batches[0]}")):
        for i, r in enumerate(_final(rows)):
            ax.scatter(r[key], r["eval_loss"], s=40, color=colors[i % 20],
                       marker=markers[i % len(markers)], label=r["variant"])
        ax.set_xlabel(label)
        ax.set_ylabel("held-out loss (nats/token)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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


# ----------------------------------------------------------------------------- CLI


def add_args(parser):
    parser.add_argument("--workdir", required=True, help="the trained model to compress")
    parser.add_argument("--out", required=True, help="where results.md/.csv and the plot go")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, from: {', '.join(METHODS)}")
    parser.add_argument("--scratch", default="",
                        help="where the variants' workdirs go (default: WORKDIR-compress)")
    parser.add_argument("--recover-steps", type=int, default=100,
                        help="recovery fine-tune of pruned / trimmed variants (0 = none)")
    parser.add_argument("--recover-lr", type=float, default=1e-3)
    parser.add_argument("--distill-steps", type=int, default=200)
    parser.add_argument("--eval-batches", type=int, default=20)
    parser.add_argument("--decode-batches", default="1,16")
    parser.add_argument("--decode-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed decodes per batch size; the fastest counts")
    parser.add_argument("--tasks", default="",
                        help="comma-separated evaluation tasks (gptjax/tasks.py: directories or "
                             "names under ./tasks/, e.g. austen_nextsent) scored on every "
                             "variant (default: none)")
    parser.add_argument("--shots", default="0", help="comma-separated shot counts of --tasks")
    parser.add_argument("--task-limit", type=int, default=None,
                        help="score only the first N eval examples of each task")


def run(args):
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UserError(f"--methods {args.methods!r}: choose from {', '.join(METHODS)}")
    args.workdir = paths.resolve(args.workdir)   # read: a local path or a bucket URL
    checkpoint.read_config(args.workdir)  # clear errors before any work
    args.out = paths.local_dir(args.out, "--out", "gptjax compress")
    args.task_list = [tasks.load_task(t.strip()) for t in args.tasks.split(",") if t.strip()]
    args.shots = tasks.int_list(args.shots, "--shots")
    if not args.scratch and paths.is_url(args.workdir):
        raise UserError(f"--workdir {args.workdir}: a bucket workdir needs --scratch DIR, a "
                        f"local directory for the variants")
    args.scratch = paths.local_dir(args.scratch or args.workdir.rstrip("/") + "-compress",
                                   "--scratch", "gptjax compress")
    args.decode_batches = [int(b) for b in args.decode_batches.split(",")]
    os.makedirs(args.scratch, exist_ok=True)
    t0, rows = time.time(), []
    for m in methods:
        print(f"gptjax compress: {m}", flush=True)
        for name, workdir, mode in METHODS[m](args):
            rows.append(measure(name, workdir, mode, args))
    written = write(rows, args)
    print(table(rows, args.decode_batches, task_columns(args)))
    print(f"done in {time.time() - t0:.0f}s -> {', '.join(written)}")
    return 0
