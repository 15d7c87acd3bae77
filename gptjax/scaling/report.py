"""The tables of a collected sweep: results.csv, and results.md with every fit and its CI."""

from __future__ import annotations

import csv
import math

from gptjax.scaling import family, parametric_fit, stats

COLUMNS = ("name", "size", "budget", "num_layers", "d_model", "params", "non_embedding_params",
           "tokens", "steps", "flops", "lr", "eval_loss", "train_loss", "wall_time_s", "status")


def fmt(value, digits: int = 4) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}g}"
    return str(value)


def ci(entry: dict, digits: int = 3) -> str:
    """'value [lo, hi]' of an interval dict."""
    text = fmt(entry["value"], digits)
    if math.isfinite(entry.get("lo", math.nan)):
        text += f" [{fmt(entry['lo'], digits)}, {fmt(entry['hi'], digits)}]"
    return text


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})


def runs_table(rows: list[dict], key: str) -> str:
    heads = ("run", "layers", "d_model", "N", "budget (FLOPs)", "tokens", "tokens / N", "steps",
             "lr", "eval loss", "wall time (s)")
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [r["name"], r["num_layers"], r["d_model"], f"{int(r[key]):,}",
                 fmt(float(r.get("budget") or r["flops"]), 3), f"{int(r['tokens']):,}",
                 fmt(r["tokens"] / r[key], 3), r["steps"], fmt(r["lr"], 3),
                 fmt(r["eval_loss"]), f"{r['wall_time_s']:.0f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _isoflop(iso: dict) -> list[str]:
    out = ["## IsoFLOP profiles (approach 2)\n"]
    if "error" in iso:
        return out + [f"No profile yet: {iso['error']}.\n"]
    out += ["| budget (FLOPs) | sizes | N_opt [95% CI] | D_opt [95% CI] | D_opt / N_opt | "
            "loss at N_opt | note |", "|---|---|---|---|---|---|---|"]
    optima = {o["compute"]: o for o in iso.get("optima", [])}
    for p in iso["profiles"]:
        o = optima.get(p["compute"])
        cells = [fmt(p["compute"], 3), f"{len(p['n'])}: {p['sizes'][0]} … {p['sizes'][-1]}"]
        if o:
            cells += [ci(o["n_opt"]), ci(o["d_opt"]), ci(o["tokens_per_param"]),
                      ci(o["loss_opt"], 4), "minimum inside the sizes"]
        else:
            cells += ["–"] * 4 + [f"**flagged, not used**: {p['flag']}"]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    if "a" in iso:
        out.append(f"- N_opt ∝ C^a: **a = {ci(iso['a'])}**; D_opt ∝ C^b: b = {ci(iso['b'])} "
                   f"(Chinchilla a ≈ {family.CHINCHILLA_A}, Kaplan et al. a ≈ "
                   f"{family.KAPLAN_A}); {len(iso['optima'])} budgets.")
    front = iso.get("frontier")
    if front:
        c = iso["frontier_ci"]
        bound = (" (E at its bound 0: not identified)" if front["e_at_bound"] else
                 " (E's interval reaches its bound 0: these runs do not measure E)"
                 if stats.interval_reaches_zero(c["E"]) else "")
        out.append(f"- Compute-optimal frontier through the profile minima: L*(C) = E + A·C^-γ "
                   f"with E = {ci(c['E'])}{bound}, A = {ci(c['A'])}, γ = {ci(c['alpha'])}; "
                   f"R² = {front['r2']:.4f} on {front['n_points']} minima. With N_opt ∝ C^a "
                   f"this is L(N_opt) = E + A'·N_opt^-α_N, α_N = γ / a = {ci(c['alpha_n'])}.")
    else:
        out.append("- Frontier: not fitted (it needs >= 4 budgets with an interior minimum; "
                   "3 points fix a 3-parameter curve exactly).")
    if "sigma" in iso:
        out.append(f"- Scatter of the losses about their parabolas: σ = {iso['sigma']:.4f} "
                   f"({iso['dof']} degrees of freedom); CIs from {iso['accepted']} of "
                   f"{iso['n_boot']} parametric bootstrap draws.")
    return out + [""]


def _loss_nd(nd: dict) -> list[str]:
    out = ["## L(N, D) = E + A/N^α + B/D^β (approach 3)\n"]
    if "error" in nd:
        return out + [f"Not fitted: {nd['error']}.\n"]
    out += ["| parameter | estimate [95% CI] | Chinchilla |", "|---|---|---|"]
    for k in ("E", "A", "alpha", "B", "beta"):
        out.append(f"| {k} | {ci(nd[k])} | {family.CHINCHILLA[k]} |")
    out.append(f"| a = β/(α+β) | {ci(nd['a'])} | 0.45 |")
    if stats.interval_reaches_zero(nd["E"]):
        out.append("\nE's interval reaches its bound 0: these runs do not measure E.")
    law = nd["law"]
    out.append(f"\nHuber loss (δ = {parametric_fit.HUBER_DELTA}) on ln L, {law['n_points']} runs; "
               f"R² = {nd['r2']:.4f}, RMSE {law['rmse']:.4f}; CIs from {nd['accepted']} of "
               f"{nd['n_boot']} refits on resampled runs.\n")
    return out


def _predictions(preds: list[dict]) -> list[str]:
    out = ["## Compute-optimal allocation for a budget\n",
           "| compute (FLOPs) | N_opt, approach 2 | N_opt, approach 3 [95% CI] | D_opt / N_opt, "
           "approach 3 | Chinchilla's N_opt |", "|---|---|---|---|---|"]
    for p in preds:
        a3 = p.get("n_opt_approach3")
        cells = [fmt(p["compute"], 3), fmt(p.get("n_opt_approach2", math.nan), 3),
                 ci(a3) if a3 else "–",
                 ci(p["tokens_per_param_approach3"]) if a3 else "–",
                 fmt(p["n_opt_chinchilla"], 3)]
        out.append("| " + " | ".join(cells) + " |")
    return out + [""]


def _lr_sweep(lr: dict) -> list[str]:
    out = ["## Learning-rate sweep\n", "| size | budget | best LR tried | loss | LR_opt "
           "(parabola) | note |", "|---|---|---|---|---|---|"]
    for s in lr["sizes"]:
        out.append(f"| {s['size']} | {fmt(float(s['budget'] or 0), 3)} | {fmt(s['best_tried'], 3)}"
                   f" | {fmt(s['best_loss'])} | {fmt(s.get('lr_opt', math.nan), 3)} | "
                   f"{s.get('flag', '')} |")
    if "lr_opt_vs_width" in lr:
        out.append(f"\nLR_opt ∝ d_model^{lr['lr_opt_vs_width']:.2f} (0 = the optimum transfers "
                   f"across widths).")
    return out + [""]


def summary_markdown(config, rows: list[dict], report: dict) -> str:
    key = report["param_count"]
    n = "non-embedding parameters" if key == "non_embedding_params" else "parameters"
    out = [f"# Scaling sweep `{config.name}`", "", f"N = {n}; losses are final eval losses "
           f"(nats per token).", "", runs_table(rows, key)]
    if report["pending"]:
        out.append(f"Not finished yet: {', '.join(report['pending'])}.\n")
    if "lr_sweep" in report:
        out += _lr_sweep(report["lr_sweep"])
    if "isoflop" in report:
        out += _isoflop(report["isoflop"])
    if "loss_vs_params" in report:
        f = report["loss_vs_params"]
        if "error" in f:
            out.append(f"## L(N)\n\nNot fitted: {f['error']}.\n")
        else:
            law = f["law"]
            out.append(f"## L(N) = E + A·N^-α\n\nE = {ci(f['E'])}, A = {ci(f['A'])}, "
                       f"α = {ci(f['alpha'])} (Kaplan et al.: α ≈ {family.KAPLAN_ALPHA_N}); "
                       f"R² = {law['r2']:.4f} on {law['n_points']} sizes.\n")
    out += _loss_nd(report["loss_nd"])
    out += _predictions(report["compute_optimal"])
    return "\n".join(out)
