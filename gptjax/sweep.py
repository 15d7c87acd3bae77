"""`gptjax sweep`: train a family of model sizes, then fit and plot their scaling laws.

    gptjax sweep --config configs/scaling.py:shakespeare_isoflop --workdir W   # run + collect
    gptjax sweep --config ... --workdir W --list            # the planned runs
    gptjax sweep --config ... --workdir W --print-commands [shell|slurm|tpu]   # for a cluster
    gptjax sweep --workdir W --run NAME                     # one run (what those lines say)
    gptjax sweep --workdir W --collect [--budget 1e15]      # tables, fits, plots

Layout: W/sweep_config.json (the sweep's config, so every run and `--collect` agree on it),
W/runs/NAME/ (an ordinary `gptjax train` workdir each, plus result.json once finished),
W/results.{csv,md}, W/fits.json and W/*.png (`gptjax/sweep_collect.py`).

Runs are in-process by default: one Python process compiles each size once and keeps the
tokenized corpus cache warm, which matters when the runs themselves take seconds. A run that
stops (Ctrl-C, a crash, a preempted job) resumes from its checkpoint on the next invocation,
and a run with result.json is never repeated. `sweep.isolate=True` starts each run as a
`gptjax sweep --run NAME` subprocess instead: a crash or out-of-memory in one size then
neither loses the others nor leaks compiled programs / device memory into the next size.
"""

from __future__ import annotations

import json
import math
import os
import time

import ml_collections

from gptjax import flops, paths, scaling, sweep_local
from gptjax.errors import UserError

CONFIG_FILE = "sweep_config.json"
APPLIES_OVERRIDES = True  # `--workdir W --config.KEY=VALUE` changes the saved sweep config
RESULT_FILE = "result.json"


# ----------------------------------------------------------------------------- planning


def _tuples(value):
    """JSON lists back into the tuples configs use (mesh.rules, sweep.table, ...)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def n_key(config) -> str:
    """The result field that is N in budgets and fits (sweep.param_count)."""
    if config.sweep.param_count not in ("non_embedding", "total"):
        raise UserError(f"sweep.param_count={config.sweep.param_count!r}: choose non_embedding "
                        f"or total")
    return "non_embedding_params" if config.sweep.param_count == "non_embedding" else "params"


def _sizes(config) -> list[dict]:
    """The family's sizes with their counts and FLOPs per token (smallest first)."""
    out = []
    for size in scaling.size_family(config.sweep):
        model = {**config.model.to_dict(), **{k: v for k, v in size.items()
                                               if k not in ("name", "lr", "batch_size")}}
        counts = flops.param_counts(model)
        out.append({**size, **counts, "flops_per_token": flops.flops_per_token(
            model, config.data.seq_len), "batch": int(size.get("batch_size") or
                                                       config.train.batch_size)})
    return out


def _grid(config, sizes: list[dict]) -> list[tuple[dict, float, int]]:
    """(size, budget in FLOPs or 0, tokens) of every run, before the learning-rate grid."""
    sw, key = config.sweep, n_key(config)
    if sw.budget != "iso_flops":
        return [(s, 0.0, scaling.token_budget(sw, s[key])) for s in sizes]
    grid = []
    for budget in scaling.compute_budgets(sw):
        fit = [s for s in sizes if budget / s["flops_per_token"] >=
               int(sw.min_steps) * s["batch"] * config.data.seq_len]
        window = scaling.isoflop_window([s[key] for s in fit],
                                        [s["flops_per_token"] for s in fit], budget,
                                        int(sw.sizes_per_budget), float(sw.tokens_per_param))
        for i in window:
            s = fit[i]
            grid.append((s, budget, math.ceil(budget / s["flops_per_token"])))
    return grid


def _learning_rates(config, size: dict) -> list[float]:
    sw = config.sweep
    if sw.lrs:
        return [float(lr) for lr in sw.lrs]
    if size.get("lr"):
        return [float(size["lr"])]
    if sw.lr_rule == "kaplan":
        return [scaling.kaplan_lr(size["non_embedding_params"])]
    if sw.lr_rule != "fixed":
        raise UserError(f"sweep.lr_rule={sw.lr_rule!r}: choose fixed or kaplan")
    return [float(config.optim.lr)]


def _run_config(config, workdir, size, name, steps, lr):
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.model.update({k: size[k] for k in ("num_layers", "d_model", "num_heads", "head_dim",
                                           "d_ff")})
    cfg.train.batch_size = size["batch"]
    cfg.name = f"{config.name}/{name}"
    cfg.train.steps = steps
    cfg.optim.decay_steps = steps
    cfg.optim.warmup_steps = max(1, min(int(config.optim.warmup_steps),
                                        int(round(config.sweep.warmup_fraction * steps))))
    cfg.optim.lr = lr
    if config.sweep.evals_per_run > 0:
        # rounded up: the last multiple falls short of the final step, which always evaluates
        cfg.train.eval_every = max(1, math.ceil(steps / int(config.sweep.evals_per_run)))
    cfg.train.log_every = max(1, min(int(config.train.log_every), steps // 20 or 1))
    if not cfg.data.cache_dir:  # tokenize the corpus once for all sizes
        cfg.data.cache_dir = os.path.join(os.path.abspath(workdir), "data_cache")
    cfg.lock()
    return cfg


def plan(config, workdir: str) -> list[dict]:
    """One entry per run: name, run config, size, budget, counts, tokens, steps, FLOPs, lr."""
    runs = []
    for size, budget, tokens in _grid(config, _sizes(config)):
        step_tokens = size["batch"] * config.data.seq_len
        steps = max(int(config.sweep.min_steps), math.ceil(tokens / step_tokens))
        lrs = _learning_rates(config, size)
        for lr in lrs:
            name = size["name"] + (f"_{scaling.flops_tag(budget)}" if budget else "") \
                + (f"_lr{lr:g}" if len(lrs) > 1 or config.sweep.lrs else "")
            runs.append({
                "name": name, "size": size["name"], "budget": budget,
                "config": _run_config(config, workdir, size, name, steps, lr),
                "workdir": os.path.join(workdir, "runs", name),
                "num_layers": size["num_layers"], "d_model": size["d_model"],
                "params": size["params"], "non_embedding_params": size["non_embedding_params"],
                "flops_per_token": size["flops_per_token"], "tokens": steps * step_tokens,
                "steps": steps, "flops": float(size["flops_per_token"]) * steps * step_tokens,
                "lr": lr})
    return runs


def save_sweep_config(config, workdir: str, replace: bool = False) -> None:
    """Stores the sweep's config in the workdir; a different one there is an error."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG_FILE)
    new = json.loads(json.dumps(config.to_dict()))
    if os.path.isfile(path) and not replace:
        with open(path) as f:
            old = json.load(f)
        if old != new:
            diff = sorted(_diff_keys(old, new))[:5]
            raise UserError(f"{path} holds a different sweep config (differs in {diff}); use a "
                            f"new --workdir, or pass --replace-config to change this sweep")
        return
    with open(path, "w") as f:
        json.dump(new, f, indent=2)


def _diff_keys(a, b, prefix=""):
    keys = set(a) | set(b)
    for k in keys:
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            yield from _diff_keys(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            yield prefix + k


def load_sweep_config(workdir: str, overrides=()) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{path} not found: start the sweep with --config FILE.py[:PRESET] "
                        f"(or --print-commands) first")
    with open(path) as f:
        config = ml_collections.ConfigDict(_tuples(json.load(f)))
    config.lock()
    if overrides:
        from gptjax.config import apply_overrides
        rest = apply_overrides(config, list(overrides))
        if rest:
            raise UserError(f"unrecognised arguments: {' '.join(rest)}")
    return config


# ----------------------------------------------------------------------------- running


def _default_train(config, workdir):
    from gptjax.train import train
    return train(config, workdir)


def read_result(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, RESULT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


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
    out = (train_fn or _default_train)(run["config"], run["workdir"])
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
        from gptjax.sweep_collect import read_curves
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


def select(runs: list[dict], only) -> list[dict]:
    if not only:
        return runs
    names = {r["name"] for r in runs}
    unknown = [o for o in only if o not in names]
    if unknown:
        raise UserError(f"--run {','.join(unknown)}: not in this sweep; its runs are "
                        f"{', '.join(r['name'] for r in runs)}")
    return [r for r in runs if r["name"] in only]


def run_sweep(config, workdir: str, train_fn=None, only=None, isolate=None, log=print) -> list:
    """Runs every unfinished run (or those in `only`), in plan order; returns the results
    (None for a run not finished). A run stopped by SIGTERM / Ctrl-C stops the sweep.
    sweep.isolate or sweep.workers > 1: each run is a subprocess, `workers` at a time."""
    runs = select(plan(config, workdir), only)
    workers = max(1, int(config.sweep.workers))
    isolate = (config.sweep.isolate or workers > 1) if isolate is None else isolate
    if isolate:  # the subprocesses read the config from the workdir
        save_sweep_config(config, workdir)
        failed, _ = sweep_local.run_parallel(workdir, runs, workers, read_result, log)
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


# ----------------------------------------------------------------------------- CLI


def add_args(parser):
    from gptjax.cli import add_config_arg
    from gptjax.sweep_launch import FORMATS
    add_config_arg(parser, required=False)
    parser.add_argument("--workdir", required=True, help="sweep directory (runs/NAME/ inside)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print-commands", nargs="?", const="shell", choices=FORMATS,
                      metavar="FORMAT", help="print the launch lines of the unfinished runs "
                      f"instead of running: {', '.join(FORMATS)} (default shell)")
    mode.add_argument("--collect", action="store_true",
                      help="only gather finished runs: tables, fits, plots")
    mode.add_argument("--run", metavar="NAME[,NAME]",
                      help="train only these runs of the sweep (no collect)")
    parser.add_argument("--budget", type=float, action="append", default=[], metavar="FLOPS",
                        help="compute budget to predict the optimal N and D for (repeatable)")
    parser.add_argument("--replace-config", action="store_true",
                        help="let --config replace the sweep config stored in the workdir")
    parser.add_argument("--list", action="store_true", help="print the planned runs and exit")


def _print_plan(config, workdir) -> None:
    runs = plan(config, workdir)
    for r in runs:
        budget = f"budget {r['budget']:.3g}, " if r["budget"] else ""
        print(f"{r['name']:>22}: {r['num_layers']} x {r['d_model']}, "
              f"{r['non_embedding_params']:>11,} non-emb params, {budget}{r['tokens']:>12,} "
              f"tokens ({r['tokens'] / r[n_key(config)]:.3g}/param), {r['steps']:>6} steps, "
              f"{r['flops']:.3g} FLOPs, lr {r['lr']:.3g}")
    print(f"{len(runs)} runs, {sum(r['flops'] for r in runs):.3g} FLOPs in all")


def run(args):
    from gptjax import sweep_collect, sweep_launch
    workdir = paths.local_dir(args.workdir, "--workdir", "gptjax sweep")
    if args.config is not None:
        config = args.config
        if not args.list:
            save_sweep_config(config, workdir, args.replace_config)
    else:
        config = load_sweep_config(workdir, args.overrides)
    if args.list:
        _print_plan(config, workdir)
        return 0
    if args.print_commands:
        pending = [r for r in plan(config, workdir) if read_result(r["workdir"]) is None]
        print(sweep_launch.commands(config, workdir, pending, args.print_commands))
        return 0
    if args.collect:
        sweep_collect.collect(config, workdir, args.budget)
        return 0
    only = [s for s in args.run.split(",") if s] if args.run else None
    # `--run` is what an isolated run or a cluster job executes: it trains here, in-process.
    results = run_sweep(config, workdir, only=only, isolate=False if only else None)
    if only:
        return 0 if all(r is not None for r in results) else 1
    if any(r is None for r in results):
        print("sweep: some runs were interrupted; rerun the same command to resume them")
        return 1
    sweep_collect.collect(config, workdir, args.budget)
    return 0
