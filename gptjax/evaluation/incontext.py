"""In-context tasks, zero-, one- and few-shot, as GPT-3 was evaluated: task files, k-shot
prompts, their metrics on a workdir, the plot against model size, lm-evaluation-harness YAML.

    task = load_task("shakespeare_wordorder")   # a directory, its task.json, or a name
    rows, throughput = evaluate_workdir("runs/quickstart", [task], [0, 1, 5])

`gptjax evaluate-tasks` (`gptjax/commands/use/evaluate_tasks.py`) is the command line.

A task is a directory holding `task.json` (the spec) and two JSONL splits: `eval` (the examples
scored) and `fewshot` (where k-shot examples come from). Formats (Brown et al. 2020, sec. 2.4):

    cloze       {"context", "target"}: the target (" word") after the context, LAMBADA-style:
                acc = it is the greedy continuation; perplexity = exp(-mean log P(target))
    choice      {"context", "choices": [...], "answer": i}: every choice scored by log-likelihood;
                acc = argmax of log P, acc_norm = argmax of log P / characters (the harness's)
    completion  {"context", "target"}: greedy generation until a stop string;
                exact_match = generated and target equal after strip()

A k-shot prompt is k examples drawn from the fewshot split (seeded by the task's seed and the
eval example's index, so --limit never changes a prompt), each written as context + answer,
joined by the task's separator, then the separator and the eval example's context. Continuations
carry their own leading space or newline. `--show-prompt` prints them; `--harness-yaml DIR`
writes the tasks as lm-evaluation-harness tasks (same numbers at 0 shots: docs/evaluation.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random

import numpy as np

from gptjax.errors import UserError
from gptjax.evaluation import scoring
from gptjax.metrics import plotting
from gptjax.model import flops

FORMATS = {"cloze": ("context", "target"), "choice": ("context", "choices", "answer"),
           "completion": ("context", "target")}
SPEC_KEYS = {"name", "format", "description", "eval", "fewshot", "separator", "seed", "until",
             "max_tokens", "source"}
TASK_DIR = "tasks"
# the repository's tasks/ (this file is gptjax/evaluation/incontext.py)
SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "tasks")
MAIN_METRIC = {"cloze": "acc", "choice": "acc_norm", "completion": "exact_match"}
STYLES = ("o-", "s--", "^-.", "d-", "v--")  # one per shot count


@dataclasses.dataclass
class Task:
    name: str
    format: str
    eval_file: str
    fewshot_file: str
    eval_rows: list
    fewshot_rows: list
    separator: str = "\n\n"
    seed: int = 1234
    until: tuple = ("\n",)
    max_tokens: int = 32


# ----------------------------------------------------------------------------- task files


def find_task(ref: str) -> str:
    """A task directory, its task.json, or a name under ./tasks/ or the shipped tasks/ -> the
    task.json path."""
    for path in (ref, os.path.join(TASK_DIR, ref), os.path.join(SHIPPED, ref)):
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "task.json")):
            return os.path.join(path, "task.json")
        if os.path.isfile(path) and path.endswith(".json"):
            return path
    raise UserError(f"task {ref!r}: no such task; give a directory holding task.json, a "
                    f"task.json file, or the name of a directory under ./{TASK_DIR}/ or "
                    f"{SHIPPED}/ (the shipped tasks)")


def load_task(ref: str) -> Task:
    path = find_task(ref)
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise UserError(f"{path}: unknown keys {sorted(unknown)}; use {sorted(SPEC_KEYS)}")
    fmt = spec.get("format")
    if fmt not in FORMATS:
        raise UserError(f"{path}: format={fmt!r}; choose one of {', '.join(FORMATS)}")
    where = os.path.dirname(path)
    files = {}
    for split in ("eval", "fewshot"):
        if split not in spec:
            raise UserError(f"{path}: needs {split!r}: the JSONL file of that split")
        files[split] = os.path.abspath(os.path.join(where, spec[split]))
    until = spec.get("until", ["\n"])
    return Task(name=spec.get("name") or os.path.basename(where), format=fmt,
                eval_file=files["eval"], fewshot_file=files["fewshot"],
                eval_rows=read_rows(files["eval"], fmt), fewshot_rows=read_rows(
                    files["fewshot"], fmt), separator=spec.get("separator", "\n\n"),
                seed=int(spec.get("seed", 1234)),
                until=tuple([until] if isinstance(until, str) else until),
                max_tokens=int(spec.get("max_tokens", 32)))


def read_rows(path: str, fmt: str) -> list[dict]:
    if not os.path.isfile(path):
        raise UserError(f"task file {path} does not exist")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                rows.append(_check_row(line, fmt, f"{path}:{n}"))
    if not rows:
        raise UserError(f"{path}: no examples")
    return rows


def _check_row(line: str, fmt: str, where: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e})") from None
    missing = [k for k in FORMATS[fmt] if not isinstance(row, dict) or k not in row]
    if missing:
        raise UserError(f"{where}: a {fmt} example needs {', '.join(FORMATS[fmt])}; "
                        f"missing {', '.join(missing)}")
    if fmt == "choice":
        choices, answer = row["choices"], row["answer"]
        if not (isinstance(choices, list) and len(choices) >= 2
                and all(isinstance(c, str) and c for c in choices)):
            raise UserError(f"{where}: choices must be a list of 2 or more non-empty strings")
        if not (isinstance(answer, int) and 0 <= answer < len(choices)):
            raise UserError(f"{where}: answer={answer!r} must index choices (0..."
                            f"{len(choices) - 1})")
    elif not (isinstance(row["target"], str) and row["target"]):
        raise UserError(f"{where}: target must be a non-empty string")
    return row


# ----------------------------------------------------------------------------- prompts


def answer(task: Task, row: dict) -> str:
    return row["choices"][row["answer"]] if task.format == "choice" else row["target"]


def prompt(task: Task, index: int, shots: int) -> str:
    """The k-shot prompt of eval example `index` (examples from the fewshot split)."""
    row = task.eval_rows[index]
    if shots == 0:
        return row["context"]
    if shots > len(task.fewshot_rows):
        raise UserError(f"task {task.name}: {shots} shots but its fewshot split has "
                        f"{len(task.fewshot_rows)} examples")
    rng = random.Random(f"{task.seed}:{index}")
    examples = [task.fewshot_rows[i] for i in rng.sample(range(len(task.fewshot_rows)), shots)]
    parts = [ex["context"] + answer(task, ex) for ex in examples] + [row["context"]]
    return task.separator.join(parts)


# ----------------------------------------------------------------------------- scoring


def score(task: Task, scorer: scoring.Scorer, rows: list, prompts: list) -> dict:
    """The task's metrics over `rows` (eval examples) with their `prompts`."""
    if task.format == "cloze":
        lls = scorer.loglikelihood([(p, r["target"]) for p, r in zip(prompts, rows, strict=True)])
        return {"acc": float(np.mean([g for _, g in lls])),
                "perplexity": math.exp(min(-float(np.mean([ll for ll, _ in lls])), 80.0))}
    if task.format == "choice":
        pairs = [(p, c) for p, r in zip(prompts, rows, strict=True) for c in r["choices"]]
        lls = iter(ll for ll, _ in scorer.loglikelihood(pairs))
        acc, acc_norm = [], []
        for r in rows:
            ll = np.asarray([next(lls) for _ in r["choices"]])
            acc.append(int(np.argmax(ll)) == r["answer"])
            acc_norm.append(int(np.argmax(ll / [len(c) for c in r["choices"]])) == r["answer"])
        return {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm)),
                "chance": float(np.mean([1 / len(r["choices"]) for r in rows]))}
    outs = scorer.generate_until([(p, task.until, task.max_tokens) for p in prompts])
    hits = [o.strip() == r["target"].strip() for o, r in zip(outs, rows, strict=True)]
    return {"exact_match": float(np.mean(hits))}


def run_task(task: Task, scorer: scoring.Scorer, shots: int, limit: int | None = None) -> dict:
    n = len(task.eval_rows) if limit is None else min(int(limit), len(task.eval_rows))
    prompts = [prompt(task, i, shots) for i in range(n)]
    metrics = score(task, scorer, task.eval_rows[:n], prompts)
    return {"task": task.name, "format": task.format, "shots": shots, "n": n, **metrics}


# ----------------------------------------------------------------------------- harness tasks


def harness_config(task: Task) -> dict:
    """The task as an lm-evaluation-harness task config (local JSONL, `json` loader)."""
    config = {"task": task.name, "dataset_path": "json",
              "dataset_kwargs": {"data_files": {"test": task.eval_file,
                                                "train": task.fewshot_file}},
              "test_split": "test", "fewshot_split": "train", "doc_to_text": "{{context}}",
              "target_delimiter": "", "fewshot_delimiter": task.separator}
    mean = {"aggregation": "mean", "higher_is_better": True}
    if task.format == "cloze":
        return {**config, "output_type": "loglikelihood", "doc_to_target": "{{target}}",
                "metric_list": [{"metric": "acc", **mean}, {
                    "metric": "perplexity", "aggregation": "perplexity",
                    "higher_is_better": False}]}
    if task.format == "choice":
        return {**config, "output_type": "multiple_choice", "doc_to_choice": "{{choices}}",
                "doc_to_target": "{{answer}}",
                "metric_list": [{"metric": "acc", **mean}, {"metric": "acc_norm", **mean}]}
    return {**config, "output_type": "generate_until", "doc_to_target": "{{target}}",
            "generation_kwargs": {"until": list(task.until), "max_gen_toks": task.max_tokens,
                                  "do_sample": False},
            "metric_list": [{"metric": "exact_match", **mean,
                             "regexes_to_ignore": ["^\\s+", "\\s+$"]}]}


def write_harness_yaml(tasks: list[Task], directory: str) -> list[str]:
    """One `NAME.yaml` per task for `--include_path DIRECTORY` (JSON is valid YAML)."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for task in tasks:
        paths.append(os.path.join(directory, f"{task.name}.yaml"))
        with open(paths[-1], "w", encoding="utf-8") as f:
            json.dump(harness_config(task), f, indent=2)
    return paths


# ----------------------------------------------------------------------------- a workdir


def evaluate_workdir(workdir: str, tasks: list, shots: list, *, step: int | None = None,
                     batch_size: int = 32, overrides=(), limit: int | None = None,
                     before_task=None) -> tuple[list, dict]:
    """Every task at every shot count on one workdir's checkpoint (`step`: the newest if None;
    `limit`: the first eval examples only) -> (a row per task and shot count: its metrics and
    the model's parameter counts; the scorer's throughput). `before_task(task, k)` is called
    before each task is scored at k shots."""
    scorer = scoring.load_scorer(workdir, step=step, batch_size=batch_size, overrides=overrides)
    counts = flops.param_counts(scorer.config.model)
    results = []
    for task in tasks:
        for k in shots:
            if before_task is not None:
                before_task(task, k)
            results.append({"workdir": workdir, "params": counts["params"],
                            "non_embedding_params": counts["non_embedding_params"],
                            **run_task(task, scorer, k, limit)})
    s = scorer.stats
    throughput = {"workdir": workdir, "requests": s.requests, "windows": s.windows,
                  "tokens": s.tokens, "seconds": round(s.seconds, 3),
                  "compile_seconds": round(s.compile_seconds, 3),
                  "requests_per_s": round(s.requests / max(s.seconds, 1e-9), 1)}
    return results, throughput


def plot(results: list, path: str) -> str:
    """Each task's main metric against non-embedding parameters: a color per task, a line style
    and marker per shot count, a dotted line at chance for choice tasks."""
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    names = sorted({r["task"] for r in results})
    shots = sorted({r["shots"] for r in results})
    colors = dict(zip(names, plotting.colors(len(names)), strict=True))
    for task, k in sorted({(r["task"], r["shots"]) for r in results}):
        rows = sorted((r for r in results if (r["task"], r["shots"]) == (task, k)),
                      key=lambda r: r["non_embedding_params"])
        metric = MAIN_METRIC[rows[0]["format"]]
        style = STYLES[shots.index(k) % len(STYLES)]
        ax.plot([r["non_embedding_params"] for r in rows], [r[metric] for r in rows],
                style, color=colors[task], label=f"{task}, {k}-shot ({metric})")
        if "chance" in rows[0]:
            ax.axhline(rows[0]["chance"], color=colors[task], ls=":", lw=1)
    ax.set_xscale("log")
    ticks = sorted({r["non_embedding_params"] for r in results})  # the models' sizes
    ax.set_xticks(ticks, [f"{n / 1e6:.3g}M" if n >= 1e6 else f"{round(n / 1e3):,}k"
                          for n in ticks], fontsize=8)
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set(xlabel="non-embedding parameters N", ylabel="accuracy (dotted: chance of a choice)")
    ax.set_title("in-context accuracy vs model size", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    return plotting.save(fig, path)
