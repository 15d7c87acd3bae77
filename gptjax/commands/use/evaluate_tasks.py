"""`gptjax evaluate-tasks`: zero-, one- and few-shot in-context tasks, as GPT-3 was evaluated.

    gptjax evaluate-tasks --workdir runs/quickstart --tasks shakespeare_wordorder --shots 0,1,5

The tasks, their prompts and metrics are `gptjax/evaluation/incontext.py`; a sweep's workdir
(`gptjax sweep`) stands for its finished runs.
"""

from __future__ import annotations

import json
import os
import sys

from gptjax.commands.args import int_list
from gptjax.errors import UserError
from gptjax.evaluation import incontext
from gptjax.scaling.runs import CONFIG_FILE, RESULT_FILE


def add_args(parser) -> None:
    parser.add_argument("--workdir", action="append", required=True,
                        help="a trained workdir (repeat to compare models, e.g. for --plot); "
                             "a sweep's workdir stands for its finished runs")
    parser.add_argument("--tasks", required=True,
                        help=f"comma-separated task directories or names under "
                             f"./{incontext.TASK_DIR}/ or of the shipped tasks")
    parser.add_argument("--shots", default="0", help="comma-separated shot counts, e.g. 0,1,5")
    parser.add_argument("--limit", type=int, help="score only the first N eval examples")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="rows per scoring batch (rounded up to a multiple of the devices)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--show-prompt", action="store_true",
                        help="print the first eval example's prompt for each shot count")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw each task's main metric against model parameters")
    parser.add_argument("--harness-yaml", metavar="DIR",
                        help="write the tasks as lm-evaluation-harness YAML into DIR and exit")


def expand_workdir(ref: str) -> list[str]:
    """A workdir; a sweep's workdir (`gptjax sweep`) stands for its finished runs."""
    if os.path.isfile(os.path.join(ref, "config.json")):
        return [ref]
    runs = os.path.join(ref, "runs")
    if not os.path.isfile(os.path.join(ref, CONFIG_FILE)) or not os.path.isdir(runs):
        return [ref]  # load_scorer says what is missing
    done = [os.path.join(runs, n) for n in sorted(os.listdir(runs))
            if os.path.isfile(os.path.join(runs, n, RESULT_FILE))]
    if not done:
        raise UserError(f"{ref}: a sweep without finished runs (no {runs}/*/{RESULT_FILE})")
    return done


def _prompt_printer(stream):
    """before_task for --show-prompt: the first eval example's k-shot prompt and answer."""
    def show(task: incontext.Task, k: int) -> None:
        print(f"---------- {task.name}, {k}-shot prompt of example 0 (answer after "
              f"'|'):\n{incontext.prompt(task, 0, k)}|"
              f"{incontext.answer(task, task.eval_rows[0])}", file=stream)
    return show


def _print(results: list, throughputs: list) -> None:
    for t in throughputs:
        print(f"{t['workdir']}: {t['requests']:,} requests ({t['windows']:,} windows, "
              f"{t['tokens']:,} tokens) in {t['seconds']:.2f} s = {t['requests_per_s']:,.1f} "
              f"requests/s (+{t['compile_seconds']:.1f} s compiling)")
    keys = ("acc", "acc_norm", "chance", "perplexity", "exact_match")
    print(f"{'workdir':24s} {'task':24s} {'shots':>5s} {'n':>5s}  metrics")
    for r in results:
        metrics = "  ".join(f"{k} {r[k]:.4g}" for k in keys if k in r)
        print(f"{os.path.basename(r['workdir'].rstrip('/')):24s} {r['task']:24s} "
              f"{r['shots']:5d} {r['n']:5d}  {metrics}")


def run(args) -> int:
    tasks = [incontext.load_task(t) for t in args.tasks.split(",") if t.strip()]
    if args.harness_yaml:
        for path in incontext.write_harness_yaml(tasks, args.harness_yaml):
            print(path)
        return 0
    shots = int_list(args.shots, "--shots")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: expected an integer >= 1")
    # on stderr under --json, which prints one object
    show = _prompt_printer(sys.stderr if args.json else sys.stdout) if args.show_prompt else None
    results, throughputs = [], []
    for workdir in [w for ref in args.workdir for w in expand_workdir(ref)]:
        rows, throughput = incontext.evaluate_workdir(
            workdir, tasks, shots, step=args.step, batch_size=args.batch_size,
            overrides=args.overrides, limit=args.limit, before_task=show)
        results += rows
        throughputs.append(throughput)
    if args.plot:
        incontext.plot(results, args.plot)
    if args.json:
        print(json.dumps({"results": results, "throughput": throughputs}))
    else:
        _print(results, throughputs)
    return 0
