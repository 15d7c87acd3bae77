"""`gptjax sweep --collect`: finished runs -> tables, fits with confidence intervals, plots.

What is fitted depends on the sweep's design (the methods: `gptjax/scaling/isoflop_fit.py`,
`parametric_fit.py` and `stats.py`; the tables `report.py`, the figures `plots.py`):
- budget=iso_flops: IsoFLOP profiles (approach 2): N_opt(C), D_opt(C) per budget, the exponents
  of N_opt ∝ C^a and D_opt ∝ C^b, and the frontier L*(C) = E + A·C^-gamma through the
  profiles' minima (its L(N) exponent is gamma / a).
- fixed / proportional budgets: L(N) = E + A·N^-alpha on the final losses.
- whenever sizes and token counts vary independently (iso_flops does): L(N, D) (approach 3)
  and its compute-optimal allocation.
- sweep.lrs: the best learning rate of each size (a parabola in ln LR) and how it drifts with
  width.
Every fit uses each run's final eval loss, so each point is a finished schedule.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from gptjax.errors import UserError
from gptjax.scaling import family, isoflop_fit, parametric_fit, stats
from gptjax.scaling.plots import draw_all
from gptjax.scaling.report import summary_markdown, write_csv
from gptjax.scaling.runs import n_key, plan, read_curves, read_result


def plain(value):
    """Fit results -> JSON: dataclasses to dicts, numpy to lists and floats."""
    if dataclasses.is_dataclass(value):
        return plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def _try(fn, *a, **k):
    try:
        return fn(*a, **k), None
    except (UserError, FloatingPointError, ValueError, np.linalg.LinAlgError) as e:
        return None, str(e)


def gather(config, workdir: str):
    """-> (rows: result.json of each finished run, curves, names of unfinished runs)."""
    rows, curves, pending = [], [], []
    for run in plan(config, workdir):
        result = read_result(run["workdir"])
        if result is None:
            pending.append(run["name"])
            continue
        result.setdefault("size", result["name"])
        result.setdefault("budget", 0.0)
        rows.append(result)
        curves.append(read_curves(run["workdir"], run["tokens"] // run["steps"],
                                  result["flops_per_token"]))
    if not rows:
        raise UserError(f"no finished runs under {workdir}/runs yet; run the sweep first")
    return rows, curves, pending


def lr_section(rows: list[dict]) -> tuple[dict, list[dict]]:
    """Best LR of each (size, budget) from a parabola in ln LR; how it moves with d_model.
    -> (section, the row of each group's lowest loss: what the size fits then use)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["size"], r["budget"]), []).append(r)
    best_rows, sizes = [], []
    for (size, budget), group in groups.items():
        best = min(group, key=lambda r: r["eval_loss"])
        best_rows.append(best)
        group.sort(key=lambda r: r["lr"])
        entry = {"size": size, "budget": budget, "d_model": best["d_model"],
                 "lrs": [r["lr"] for r in group], "losses": [r["eval_loss"] for r in group],
                 "best_tried": best["lr"], "best_loss": best["eval_loss"]}
        # The parabola is local: the 5 learning rates around the best (loss against LR is
        # far from a parabola over a wide grid: it rises much faster above the optimum).
        i = group.index(best)
        near = group[max(0, min(i - 2, len(group) - 5)):][:5]
        profile, err = _try(isoflop_fit.fit_profile, size, [r["lr"] for r in near],
                            [r["eval_loss"] for r in near])
        if profile is not None:
            entry.update(coef=profile.coef, x_ref=profile.x_ref, flag=profile.flag,
                         fitted=[r["lr"] for r in near])
            if not profile.flag:
                entry["lr_opt"] = profile.x_opt
        else:
            entry["flag"] = err
        sizes.append(entry)
    section = {"sizes": sizes}
    usable = [s for s in sizes if "lr_opt" in s]
    if len({s["d_model"] for s in usable}) >= 2:
        section["lr_opt_vs_width"], _ = stats.fit_loglog([s["d_model"] for s in usable],
                                                        [s["lr_opt"] for s in usable])
    return section, best_rows


def isoflop_section(rows: list[dict], key: str, fpt, n_boot: int) -> dict:
    """Approach 2 on the runs grouped by budget (the best LR's run if there is an LR grid)."""
    budgets: dict = {}
    for r in rows:
        budgets.setdefault(r["budget"], ([], []))
        budgets[r["budget"]][0].append(r[key])
        budgets[r["budget"]][1].append(r["eval_loss"])
    ready = {c: v for c, v in budgets.items() if len(v[0]) >= 4}
    if not ready:
        return {"error": "no budget has 4 finished sizes yet"}
    iso = isoflop_fit.isoflop_analysis(ready, fpt, n_boot=n_boot)
    by_point = {(r["budget"], r[key]): r for r in rows}
    iso["profiles"] = [{"compute": p.key, "sizes": [by_point[(p.key, n)]["size"] for n in p.x],
                        "tokens": [by_point[(p.key, n)]["tokens"] for n in p.x],
                        "n": p.x, "loss": p.loss, "coef": p.coef, "n_ref": p.x_ref,
                        "n_opt": p.x_opt if p.coef[2] > 0 else float("nan"),
                        "loss_opt": p.loss_opt if p.coef[2] > 0 else float("nan"),
                        "flag": p.flag, "rmse": float(np.sqrt(np.mean(p.residuals ** 2)))}
                       for p in iso["profiles"]]
    iso["incomplete"] = sorted(c for c in budgets if c not in ready)
    iso.pop("usable")
    iso["flagged"] = [p.key for p in iso["flagged"]]
    return iso


def nd_section(rows, key: str, fpt, budgets, n_boot: int) -> dict:
    """Approach 3, or why it cannot be fitted on these runs."""
    out, err = _try(parametric_fit.bootstrap_loss_nd, [r[key] for r in rows],
                    [r["tokens"] for r in rows], [r["eval_loss"] for r in rows],
                    budgets=budgets, flops_per_token=fpt, n_boot=n_boot)
    if out is None:
        return {"error": err}
    law = out["law"]
    pred = law([r[key] for r in rows], [r["tokens"] for r in rows])
    y = np.array([r["eval_loss"] for r in rows])
    out["r2"] = float(1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))
    return out


def _prediction_budgets(config, rows, extra) -> list[float]:
    if extra:
        return [float(b) for b in extra]
    if config.sweep.budgets:
        return [float(b) for b in config.sweep.budgets]
    top = max(r["flops"] for r in rows)
    return [top, 10 * top, 100 * top]


def predictions(budgets, iso: dict | None, nd: dict) -> list[dict]:
    """N_opt and D_opt for each budget from the approach-2 power laws and from approach 3."""
    out = []
    for i, c in enumerate(budgets):
        p = {"compute": c}
        if iso and "a" in iso:
            p["n_opt_approach2"] = math.exp(iso["ln_kn"]) * c ** iso["a"]["value"]
            p["d_opt_approach2"] = math.exp(iso["ln_kd"]) * c ** iso["b"]["value"]
        if "law" in nd:
            p.update({f"{k}_approach3": nd["optima"][i][k] for k in ("n_opt", "d_opt",
                                                                      "tokens_per_param")})
        chin = parametric_fit.NDLaw(**family.CHINCHILLA).optimal(c)
        p["n_opt_chinchilla"], p["d_opt_chinchilla"] = chin
        out.append(p)
    return out


def collect(config, workdir: str, budgets=(), log=print) -> dict:
    """Tables, fits, compute-optimal predictions and plots of the finished runs."""
    sw, key = config.sweep, n_key(config)
    rows, curves, pending = gather(config, workdir)
    write_csv(rows, os.path.join(workdir, "results.csv"))
    report: dict = {"param_count": key, "runs": len(rows), "pending": pending}
    fit_rows = rows
    if sw.lrs:
        report["lr_sweep"], fit_rows = lr_section(rows)
    sizes = {r["size"]: r for r in fit_rows}.values()
    fpt = isoflop_fit.flops_curve([r[key] for r in sizes],
                                  [r["flops_per_token"] for r in sizes])
    iso = None
    if sw.budget == "iso_flops":
        iso = report["isoflop"] = isoflop_section(fit_rows, key, fpt, int(sw.n_boot))
    elif len(sizes) >= 3:
        law, err = _try(stats.bootstrap_power_law, [r[key] for r in fit_rows],
                        [r["eval_loss"] for r in fit_rows], n_boot=int(sw.n_boot))
        report["loss_vs_params"] = law or {"error": err}
    targets = _prediction_budgets(config, rows, budgets)
    nd = report["loss_nd"] = nd_section(fit_rows, key, fpt, targets, int(sw.n_boot))
    report["compute_optimal"] = predictions(targets, iso, nd)
    report = plain(report)
    with open(os.path.join(workdir, "fits.json"), "w") as f:
        json.dump(report, f, indent=2)
    draw_all(config, workdir, rows, curves, fit_rows, report)
    text = summary_markdown(config, rows, report)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(text)
    log(text)
    return report
