"""`gptjax sweep`: train a family of model sizes, then fit and plot their scaling laws.

    gptjax sweep --config configs/scaling.py:austen_cpu --workdir runs/austen   # run + collect
    gptjax sweep --config ... --workdir DIR --print-commands   # one launch line per run
    gptjax sweep --workdir DIR --run NAME                       # one run (what those lines say)
    gptjax sweep --workdir DIR --collect [--budget 1e15]        # tables, fits, plots

Layout: DIR/sweep_config.json (the sweep's config, so every run and `--collect` agree on it),
DIR/runs/NAME/ (an ordinary `gptjax train` workdir each, plus result.json once finished),
DIR/results.{csv,md}, DIR/fits.json and DIR/*.png.

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
import subprocess
import sys
import time

import ml_collections
import numpy as np

from gptjax import flops, scaling, scaling_report
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


def _n_for_budget(sweep, counts: dict) -> int:
    if sweep.param_count not in ("non_embedding", "total"):
        raise UserError(f"sweep.param_count={sweep.param_count!r}: choose non_embedding or total")
    return counts["non_embedding_params" if sweep.param_count == "non_embedding" else "params"]


def plan(config, workdir: str) -> list[dict]:
    """One entry per size: its name, run config, counts, tokens, steps and FLOPs."""
    sw = config.sweep
    runs = []
    for size in scaling.size_family(sw):
        cfg = ml_collections.ConfigDict(config.to_dict())
        lr, batch = size.pop("lr", 0.0), size.pop("batch_size", 0)
        name = size.pop("name")
        cfg.model.update(size)
        if batch:
            cfg.train.batch_size = int(batch)
        model = cfg.model.to_dict()
        counts = flops.param_counts(model)
        fpt = flops.flops_per_token(model, cfg.data.seq_len)
        tokens = scaling.token_budget(sw, _n_for_budget(sw, counts), fpt)
        step_tokens = cfg.train.batch_size * cfg.data.seq_len
        steps = max(int(sw.min_steps), math.ceil(tokens / step_tokens))
        cfg.name = f"{config.name}/{name}"
        cfg.train.steps = steps
        cfg.optim.decay_steps = steps
        cfg.optim.warmup_steps = max(1, min(int(config.optim.warmup_steps),
                                            int(round(sw.warmup_fraction * steps))))
        if lr:
            cfg.optim.lr = float(lr)
        elif sw.lr_rule == "kaplan":
            cfg.optim.lr = scaling.kaplan_lr(counts["non_embedding_params"])
        elif sw.lr_rule != "fixed":
            raise UserError(f"sweep.lr_rule={sw.lr_rule!r}: choose fixed or kaplan")
        if sw.evals_per_run > 0:
            cfg.train.eval_every = max(1, steps // int(sw.evals_per_run))
        cfg.train.log_every = max(1, min(int(config.train.log_every), steps // 20 or 1))
        if not cfg.data.cache_dir:  # tokenize the corpus once for all sizes
            cfg.data.cache_dir = os.path.join(os.path.abspath(workdir), "data_cache")
        cfg.lock()
        runs.append({
            "name": name, "config": cfg, "workdir": os.path.join(workdir, "runs", name),
            "num_layers": size["num_layers"], "d_model": size["d_model"],
            "params": counts["params"], "non_embedding_params": counts["non_embedding_params"],
            "flops_per_token": fpt, "tokens": steps * step_tokens, "steps": steps,
            "flops": float(fpt) * steps * step_tokens, "lr": float(cfg.optim.lr),
        })
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


def run_one(run: dict, train_fn=None, log=print) -> dict | None:
    """Trains one size unless finished; writes result.json. None if it was interrupted."""
    done = read_result(run["workdir"])
    if done is not None:
        changed = [k for k in ("num_layers", "d_model", "steps", "tokens") if done.get(k) != run[k]]
        if changed:
            raise UserError(f"{run['workdir']} finished with a different {', '.join(changed)} than "
                            f"this sweep plans; delete that directory to retrain the size")
        log(f"sweep: {run['name']} already finished (eval loss {done.get('eval_loss')}), skipped")
        return done
    resumed = os.path.isdir(os.path.join(run["workdir"], "checkpoints"))
    log(f"sweep: {'resuming' if resumed else 'training'} {run['name']}: "
        f"{run['non_embedding_params']:,} non-embedding params, {run['tokens']:,} tokens, "
        f"{run['steps']} steps, {run['flops']:.3g} FLOPs")
    t0 = time.time()
    out = (train_fn or _default_train)(run["config"], run["workdir"])
    wall = time.time() - t0
    if out.get("interrupted") or out.get("step", run["steps"]) < run["steps"]:
        log(f"sweep: {run['name']} stopped at step {out.get('step')}; rerun to resume")
        return None
    result = {k: run[k] for k in ("name", "num_layers", "d_model", "params",
                                  "non_embedding_params", "flops_per_token", "tokens", "steps",
                                  "flops", "lr")}
    result.update(_actual_counts(run))
    eval_loss = out.get("eval_loss")
    if eval_loss is None:  # fall back on the last eval in metrics.jsonl
        curve = scaling_report.read_curves(run["workdir"], 1, 1)
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
    seq_len = run["config"].data.seq_len
    fpt = flops.flops_per_token(model, seq_len)
    return {"params": counts["params"], "non_embedding_params": counts["non_embedding_params"],
            "vocab_size": model["vocab_size"], "flops_per_token": fpt,
            "flops": float(fpt) * run["tokens"]}


def launch_command(workdir: str, name: str) -> list[str]:
    return [sys.executable, "-m", "gptjax", "sweep", "--workdir", workdir, "--run", name]


def run_sweep(config, workdir: str, train_fn=None, only=None, isolate=None, log=print) -> list:
    """Runs every unfinished size (or those in `only`), smallest first; returns the results."""
    runs = plan(config, workdir)
    if only:
        names = {r["name"] for r in runs}
        unknown = [o for o in only if o not in names]
        if unknown:
            raise UserError(f"--run {','.join(unknown)}: not in this sweep; its runs are "
                            f"{', '.join(r['name'] for r in runs)}")
        runs = [r for r in runs if r["name"] in only]
    isolate = config.sweep.isolate if isolate is None else isolate
    if isolate:  # the subprocesses read the config from the workdir
        save_sweep_config(config, workdir)
    results, failed = [], []
    for run in runs:
        if isolate and read_result(run["workdir"]) is None:
            log(f"sweep: launching {run['name']} in a subprocess")
            rc = subprocess.call(launch_command(workdir, run["name"]))
            if rc != 0:
                failed.append(run["name"])
            results.append(read_result(run["workdir"]))
        else:
            results.append(run_one(run, train_fn, log))
    if failed:
        raise UserError(f"sweep: run(s) {', '.join(failed)} failed (see their output above); "
                        f"rerun the same command to resume them")
    return results


# ----------------------------------------------------------------------------- collecting


def _budgets(config, rows, extra) -> list[float]:
    if extra:
        return [float(b) for b in extra]
    if config.sweep.budgets:
        return [float(b) for b in config.sweep.budgets]
    top = max(r["flops"] for r in rows)
    return [top, 10 * top, 100 * top]


def _try(fn, *a, **k):
    try:
        return fn(*a, **k), None
    except (UserError, FloatingPointError, ValueError, np.linalg.LinAlgError) as e:
        return None, str(e)


def collect(config, workdir: str, budgets=(), log=print) -> dict:
    """Tables, fits, compute-optimal predictions and plots of the finished runs."""
    runs = plan(config, workdir)
    rows, curves, pending = [], [], []
    for run in runs:
        result = read_result(run["workdir"])
        if result is None:
            pending.append(run["name"])
            continue
        tokens_per_step = run["tokens"] // run["steps"]
        rows.append(result)
        curve = scaling_report.read_curves(run["workdir"], tokens_per_step,
                                           result["flops_per_token"])
        curves.append({**curve, "n": result[_n_key(config)], "run_steps": run["steps"],
                       "name": run["name"]})
    if not rows:
        raise UserError(f"no finished runs under {workdir}/runs yet; run the sweep first")
    n_key = _n_key(config)
    scaling_report.write_csv(rows, os.path.join(workdir, "results.csv"))
    fits: dict = {"param_count": n_key, "runs": len(rows), "pending": pending}

    n = np.array([r[n_key] for r in rows], dtype=np.float64)
    loss = np.array([r["eval_loss"] for r in rows], dtype=np.float64)
    flops = np.array([r["flops"] for r in rows], dtype=np.float64)
    fit_n, err = _try(scaling.fit_power_law, n, loss)
    fits["loss_vs_params"] = fit_n.as_dict() if fit_n else {"error": err}
    fit_c, err = _try(scaling.fit_power_law, flops, loss)
    fits["loss_vs_compute"] = fit_c.as_dict() if fit_c else {"error": err}

    # L(N, D) from every eval point past `curve_start` of its run (Chinchilla's approach 3).
    pn, pd, pl = [], [], []
    for c in curves:
        for step, tok, value in zip(c["steps"], c["tokens"], c["loss"], strict=True):
            if step >= config.sweep.curve_start * c["run_steps"]:
                pn.append(c["n"])
                pd.append(tok)
                pl.append(value)
    fit_nd, err = _try(scaling.fit_loss_nd, pn, pd, pl)
    fits["loss_vs_params_and_tokens"] = fit_nd.as_dict() if fit_nd else {"error": err}

    # Approach 1: which size is best at each compute level; N_opt ∝ C^a by a log-log fit.
    frontier = scaling.frontier_points(curves)
    fits["frontier"] = frontier
    sizes = {p["n"] for p in frontier}
    if len(sizes) >= 2:
        slope, intercept = np.polyfit(np.log([p["compute"] for p in frontier]),
                                      np.log([p["n"] for p in frontier]), 1)
        fits["frontier_fit"] = {"a": float(slope), "log_k": float(intercept)}
    else:
        fits["frontier_fit"] = {"error": "the same size is best at every compute level"}

    predictions = []
    for budget in _budgets(config, rows, budgets):
        p = {"compute": budget}
        if fit_nd:
            p["n_opt"], p["d_opt"] = fit_nd.optimal(budget)
            if math.isfinite(p["n_opt"]):
                p["loss_at_opt"] = float(fit_nd(p["n_opt"], p["d_opt"]))
                p["nearest_size"] = min(
                    runs, key=lambda r: abs(math.log(r[n_key] / p["n_opt"])))["name"]
        if "a" in fits["frontier_fit"]:
            ff = fits["frontier_fit"]
            p["n_opt_frontier"] = float(math.exp(ff["log_k"]) * budget ** ff["a"])
        if fit_c:
            p["loss_from_l_of_c"] = float(fit_c(budget))
        p["chinchilla_n_opt"], p["chinchilla_d_opt"] = scaling.chinchilla_optimal(budget)
        predictions.append(p)
    fits["compute_optimal"] = predictions
    with open(os.path.join(workdir, "fits.json"), "w") as f:
        json.dump(fits, f, indent=2)

    log(scaling_report.write_report(config, workdir, rows, curves, fits, (fit_n, fit_c)))
    return fits


def _n_key(config) -> str:
    return "non_embedding_params" if config.sweep.param_count == "non_embedding" else "params"


# ----------------------------------------------------------------------------- CLI


def add_args(parser):
    from gptjax.cli import add_config_arg
    add_config_arg(parser, required=False)
    parser.add_argument("--workdir", required=True, help="sweep directory (runs/NAME/ inside)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print-commands", action="store_true",
                      help="print one launch command per unfinished run instead of running")
    mode.add_argument("--collect", action="store_true",
                      help="only gather finished runs: tables, fits, plots")
    mode.add_argument("--run", metavar="NAME[,NAME]",
                      help="train only these runs of the sweep (no collect)")
    parser.add_argument("--budget", type=float, action="append", default=[], metavar="FLOPS",
                        help="compute budget to predict the optimal N and D for (repeatable)")
    parser.add_argument("--replace-config", action="store_true",
                        help="let --config replace the sweep config stored in the workdir")
    parser.add_argument("--list", action="store_true", help="print the planned runs and exit")


def run(args):
    workdir = os.path.abspath(args.workdir)
    if args.config is not None:
        config = args.config
        if not args.list:
            save_sweep_config(config, workdir, args.replace_config)
    else:
        config = load_sweep_config(workdir, args.overrides)
    if args.list:
        for r in plan(config, workdir):
            print(f"{r['name']:>14}: {r['num_layers']} x {r['d_model']}, "
                  f"{r['non_embedding_params']:>12,} non-emb params, {r['tokens']:>14,} tokens, "
                  f"{r['steps']:>7} steps, {r['flops']:.3g} FLOPs, lr {r['lr']:.2e}")
        return 0
    if args.print_commands:
        for r in plan(config, workdir):
            if read_result(r["workdir"]) is None:
                print(" ".join(["gptjax"] + launch_command(workdir, r["name"])[3:]))
        print(f"# afterwards: gptjax sweep --workdir {workdir} --collect")
        return 0
    if args.collect:
        collect(config, workdir, args.budget)
        return 0
    only = [s for s in args.run.split(",") if s] if args.run else None
    results = run_sweep(config, workdir, only=only)
    if only:
        return 0 if all(r is not None for r in results) else 1
    if any(r is None for r in results):
        print("sweep: some runs were interrupted; rerun the same command to resume them")
        return 1
    collect(config, workdir, args.budget)
    return 0
