"""Running a scaling sweep: each planned run trained (or resumed), its result.json written.

    results = run_sweep(config, workdir)        # every unfinished run, in plan order
    result = run_one(run)                       # one run of runs.plan(config, workdir)

Runs are in-process by default: one Python process compiles each size once and keeps the
tokenized corpus cache warm, which matters when the runs themselves take seconds. A run that
stops (Ctrl-C, a crash, a preempted job) resumes from its checkpoint on the next invocation,
and a run with result.json is never repeated. `sweep.isolate=True` starts each run as a
`gptjax sweep --run NAME` subprocess instead (`gptjax/scaling/local.py`): a crash or
out-of-memory in one size then neither loses the others nor leaks compiled programs / device
memory into the next size.

The plan and the files a run leaves are `gptjax/scaling/runs.py`; the command line,
`gptjax sweep`, is `gptjax/commands/train/sweep.py`.
"""

from __future__ import annotations

import json
import os
import time

from gptjax.errors import UserError
from gptjax.model import flops
from gptjax.scaling.local import run_parallel
from gptjax.scaling.runs import (
    RESULT_FILE,
    plan,
    read_curves,
    read_result,
    save_sweep_config,
    select,
)
from gptjax.training.train import train


def _check_finished(run: dict, done: dict) -> None:
    changed = [k for k in ("num_layers", "d_model", "steps", "tokens", "lr")
               if k in done and done[k] != run[k]]
    if changed:
        raise UserError(f"{run['workdir']} finished with a different {', '.join(changed)} than "
                        f"this sweep plans; delete that directory to retrain the run")


def run_one(run: dict, train_fn=None, log=print) -> dict | None:
    """Trains one run unless finished; writes result.json. None if it was interrupted."""
    done = read_result(run["workdir"])
    if done is not None:
        _check_finished(run, done)
        log(f"sweep: {run['name']} already finished (eval loss {done.get('eval_loss')}), skipped")
        return done
    resumed = os.path.isdir(os.path.join(run["workdir"], "checkpoints"))
    log(f"sweep: {'resuming' if resumed else 'training'} {run['name']}: "
        f"{run['non_embedding_params']:,} non-embedding params, {run['tokens']:,} tokens, "
        f"{run['steps']} steps, {run['flops']:.3g} FLOPs, lr {run['lr']:.3g}")
    t0 = time.time()
    out = (train_fn or train)(run["config"], run["workdir"])
    wall = time.time() - t0
    if out.get("interrupted") or out.get("step", run["steps"]) < run["steps"]:
        log(f"sweep: {run['name']} stopped at step {out.get('step')}; rerun to resume")
        return None
    result = {k: run[k] for k in ("name", "size", "budget", "num_layers", "d_model", "params",
                                  "non_embedding_params", "flops_per_token", "tokens", "steps",
                                  "flops", "lr")}
    result.update(_actual_counts(run))
    eval_loss = out.get("eval_loss")
    if eval_loss is None:  # fall back on the last eval in metrics.jsonl
        curve = read_curves(run["workdir"], 1, 1)
        eval_loss = curve["loss"][-1] if len(curve["loss"]) else float("nan")
    result.update(eval_loss=float(eval_loss), train_loss=float(out.get("loss", float("nan"))),
                  wall_time_s=float(out.get("wall_time", wall)), resumed=resumed,
                  status="done", finished_at=time.time())
    tmp = os.path.join(run["workdir"], RESULT_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, os.path.join(run["workdir"], RESULT_FILE))
    return result


def _actual_counts(run: dict) -> dict:
    """Counts with the vocabulary the run really had (the tokenizer sets it at train time)."""
    path = os.path.join(run["workdir"], "config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        model = json.load(f)["model"]
    counts = flops.param_counts(model)
    fpt = flops.flops_per_token(model, run["config"].data.seq_len)
    return {"params": counts["params"], "non_embedding_params": counts["non_embedding_params"],
            "vocab_size": model["vocab_size"], "flops_per_token": fpt,
            "flops": float(fpt) * run["tokens"]}


def run_sweep(config, workdir: str, train_fn=None, only=None, isolate=None, log=print) -> list:
    """Runs every unfinished run (or those in `only`), in plan order; returns the results
    (None for a run not finished). A run stopped by SIGTERM / Ctrl-C stops the sweep.
    sweep.isolate or sweep.workers > 1: each run is a subprocess, `workers` at a time."""
    runs = select(plan(config, workdir), only)
    workers = max(1, int(config.sweep.workers))
    isolate = (config.sweep.isolate or workers > 1) if isolate is None else isolate
    if isolate:  # the subprocesses read the config from the workdir
        save_sweep_config(config, workdir)
        failed, _ = run_parallel(workdir, runs, workers, read_result, log)
        if failed:
            raise UserError(f"sweep: run(s) {', '.join(failed)} failed (see their output); "
                            f"rerun the same command to resume them")
        return [read_result(r["workdir"]) for r in runs]
    results = []
    for run in runs:
        results.append(run_one(run, train_fn, log))
        if results[-1] is None:  # stopped by a signal: the whole sweep stops with it
            return results + [None] * (len(runs) - len(results))
    return results
