"""The runs of a scaling sweep: the plan, the sweep config they share, what each leaves behind.

    runs = plan(config, workdir)                # name, run config, size, budget, tokens, lr, ...
    save_sweep_config(config, workdir)          # W/sweep_config.json: every run reads it
    result = read_result(run["workdir"])        # W/runs/NAME/result.json, None until finished
    curve = read_curves(run["workdir"], tokens_per_step, flops_per_token)   # metrics.jsonl

Each run's config is the sweep's config with the size's shape, its steps (tokens / tokens per
step, at least sweep.min_steps), schedule and learning rate (sweep.lrs, the size's own, the
Kaplan rule or optim.lr). The sizes and budgets are `gptjax/scaling/family.py`'s; running the
plan is `gptjax/scaling/sweep.py`, fitting the results `gptjax/scaling/collect.py`.
"""

from __future__ import annotations

import json
import math
import os

import ml_collections

from gptjax.config.loader import apply_overrides
from gptjax.errors import UserError
from gptjax.metrics.writer import read_jsonl
from gptjax.model import flops
from gptjax.scaling import family

CONFIG_FILE = "sweep_config.json"
RESULT_FILE = "result.json"


# ----------------------------------------------------------------------------- planning


def n_key(config) -> str:
    """The result field that is N in budgets and fits (sweep.param_count)."""
    if config.sweep.param_count not in ("non_embedding", "total"):
        raise UserError(f"sweep.param_count={config.sweep.param_count!r}: choose non_embedding "
                        f"or total")
    return "non_embedding_params" if config.sweep.param_count == "non_embedding" else "params"


def _sizes(config) -> list[dict]:
    """The family's sizes with their counts and FLOPs per token (smallest first)."""
    out = []
    for size in family.size_family(config.sweep):
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
        return [(s, 0.0, family.token_budget(sw, s[key])) for s in sizes]
    grid = []
    for budget in family.compute_budgets(sw):
        fit = [s for s in sizes if budget / s["flops_per_token"] >=
               int(sw.min_steps) * s["batch"] * config.data.seq_len]
        window = family.isoflop_window([s[key] for s in fit],
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
        return [family.kaplan_lr(size["non_embedding_params"])]
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
            name = size["name"] + (f"_{family.flops_tag(budget)}" if budget else "") \
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


def select(runs: list[dict], only) -> list[dict]:
    """The runs named in `only` (all of them if it is empty); an unknown name is an error."""
    if not only:
        return runs
    names = {r["name"] for r in runs}
    unknown = [o for o in only if o not in names]
    if unknown:
        raise UserError(f"--run {','.join(unknown)}: not in this sweep; its runs are "
                        f"{', '.join(r['name'] for r in runs)}")
    return [r for r in runs if r["name"] in only]


# ----------------------------------------------------------------------------- the sweep config


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


def _tuples(value):
    """JSON lists back into the tuples configs use (mesh.rules, sweep.table, ...)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def load_sweep_config(workdir: str, overrides=()) -> ml_collections.ConfigDict:
    """The config stored by save_sweep_config, with `--config.KEY=VALUE` overrides applied."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{path} not found: start the sweep with --config FILE.py[:PRESET] "
                        f"(or --print-commands) first")
    with open(path) as f:
        config = ml_collections.ConfigDict(_tuples(json.load(f)))
    config.lock()
    if overrides:
        rest = apply_overrides(config, list(overrides))
        if rest:
            raise UserError(f"unrecognised arguments: {' '.join(rest)}")
    return config


# ----------------------------------------------------------------------------- results


def read_result(run_dir: str) -> dict | None:
    """A run's result.json (written when it finished), or None."""
    path = os.path.join(run_dir, RESULT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_curves(run_dir: str, tokens_per_step: int, flops_per_token: float) -> dict:
    """Eval and train loss against tokens / FLOPs from a run's metrics.jsonl."""
    path = os.path.join(run_dir, "metrics.jsonl")
    records = read_jsonl(path) if os.path.isfile(path) else []
    evals, trains = {}, {}
    for r in records:
        loss = r.get("loss")
        if not isinstance(loss, (int, float)) or not math.isfinite(loss):
            continue
        (evals if r.get("split") == "eval" else trains)[int(r["step"])] = float(loss)
    es, ts = sorted(evals), sorted(trains)
    return {"steps": es, "tokens": [s * tokens_per_step for s in es],
            "flops": [s * tokens_per_step * flops_per_token for s in es],
            "loss": [evals[s] for s in es],
            "train_tokens": [s * tokens_per_step for s in ts],
            "train_loss": [trains[s] for s in ts]}
