"""The report of a scaling sweep: the results table (CSV, Markdown), the loss curves read from
each run's metrics, the plots, and the summary Markdown with the fits (gptjax/sweep.py
writes them; the fits themselves are in gptjax/scaling.py)."""

from __future__ import annotations

import math
import os

import numpy as np

from gptjax import scaling
from gptjax.scaling import PowerLaw

COLUMNS = ("name", "num_layers", "d_model", "params", "non_embedding_params", "tokens", "steps",
           "flops", "eval_loss", "train_loss", "wall_time_s", "status")


def _fmt(value) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def write_csv(rows: list[dict], path: str) -> None:
    import csv
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})


def markdown_table(rows: list[dict]) -> str:
    heads = ("run", "layers", "d_model", "params", "non-emb. params", "tokens", "steps", "FLOPs",
             "eval loss", "train loss", "wall time (s)")
    keys = COLUMNS[:-1]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, "")
            if k in ("params", "non_embedding_params", "tokens") and isinstance(v, (int, float)):
                cells.append(f"{int(v):,}")
            elif k == "wall_time_s" and isinstance(v, (int, float)):
                cells.append(f"{v:.0f}")
            else:
                cells.append(_fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _colors(n: int):
    plt = _plt()
    cmap = plt.get_cmap("viridis")
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def _figure():
    return _plt().subplots(figsize=(6, 4.2))


def _fit_line(ax, fit: PowerLaw | None, x, symbol: str):
    """The fitted power law, drawn a little beyond the measured range of x."""
    if fit is None:
        return
    x = np.asarray(x, dtype=np.float64)
    xs = np.exp(np.linspace(np.log(x.min() / 1.5), np.log(x.max() * 1.5), 100))
    ax.plot(xs, fit(xs), "k--", lw=1,
            label=f"L = {fit.E:.3g} + {fit.A:.3g}·{symbol}^-{fit.alpha:.3f}")


def _finish(fig, ax, path: str, xlabel: str, ylabel: str, title: str):
    """Log-x axes, labels, grid and legend shared by every sweep plot, then save and close."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def plot_loss_vs_params(rows, fit: PowerLaw | None, path: str, n_key: str, title: str = ""):
    fig, ax = _figure()
    for r, color in zip(rows, _colors(len(rows)), strict=True):
        ax.scatter([r[n_key]], [r["eval_loss"]], color=color, zorder=3, label=r["name"])
    _fit_line(ax, fit, [r[n_key] for r in rows], "N")
    xlabel = ("non-embedding parameters N" if n_key == "non_embedding_params"
              else "parameters N")
    _finish(fig, ax, path, xlabel, "final eval loss (nats/token)",
            title or "loss vs model size")


def plot_loss_vs_compute(rows, curves, fit: PowerLaw | None, path: str, title: str = ""):
    """Eval-loss curves against training FLOPs, final points, and the fitted L(C)."""
    fig, ax = _figure()
    for r, c, color in zip(rows, curves, _colors(len(rows)), strict=True):
        if len(c["flops"]):
            ax.plot(c["flops"], c["loss"], color=color, lw=1, alpha=0.7)
        ax.scatter([r["flops"]], [r["eval_loss"]], color=color, zorder=3, label=r["name"])
    _fit_line(ax, fit, [r["flops"] for r in rows], "C")
    _finish(fig, ax, path, "training compute C (FLOPs)", "eval loss (nats/token)",
            title or "loss vs compute")


def plot_training_curves(rows, curves, path: str, title: str = ""):
    """Train (thin) and eval (markers) loss against tokens seen, one colour per size."""
    fig, ax = _figure()
    for r, c, color in zip(rows, curves, _colors(len(rows)), strict=True):
        if len(c.get("train_tokens", ())):
            ax.plot(c["train_tokens"], c["train_loss"], color=color, lw=0.8, alpha=0.5)
        if len(c["tokens"]):
            ax.plot(c["tokens"], c["loss"], "o-", color=color, ms=3, lw=1.2, label=r["name"])
    _finish(fig, ax, path, "tokens seen", "loss (nats/token): train thin, eval with markers",
            title or "training curves by model size")


def read_curves(run_dir: str, tokens_per_step: int, flops_per_token: float) -> dict:
    """Eval and train loss against tokens / FLOPs from a run's metrics.jsonl."""
    from gptjax.metrics import read_jsonl
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


def summary_markdown(config, rows, fits, pending) -> str:
    out = [f"# Scaling sweep `{config.name}`", "", markdown_table(rows)]
    if pending:
        out.append(f"Not finished yet: {', '.join(pending)}.\n")
    n_label = "N = non-embedding params" if fits["param_count"] == "non_embedding_params" \
        else "N = params"
    out.append("## Fits (least squares)\n")
    f = fits["loss_vs_params"]
    if "alpha" in f and f["A"] <= 0:
        out.append(f"- L(N): no size dependence found (best fit is the constant {f['E']:.3f})")
    elif "alpha" in f:
        se = f" ± {f['alpha_se']:.3f} jackknife" if math.isfinite(f["alpha_se"]) else ""
        out.append(f"- L(N) = {f['E']:.3f} + {f['A']:.4g}·N^-{f['alpha']:.3f} "
                   f"(α_N = {f['alpha']:.3f}{se}; RMSE {f['rmse']:.4f}; {n_label}). "
                   f"Kaplan et al.: α_N ≈ {scaling.KAPLAN_ALPHA_N}.")
    else:
        out.append(f"- L(N): no fit ({f['error']})")
    f = fits["loss_vs_compute"]
    if "alpha" in f:
        out.append(f"- L(C) = {f['E']:.3f} + {f['A']:.4g}·C^-{f['alpha']:.3f} (C in FLOPs; "
                   f"RMSE {f['rmse']:.4f}).")
    else:
        out.append(f"- L(C): no fit ({f['error']})")
    f = fits["loss_vs_params_and_tokens"]
    ch = scaling.CHINCHILLA
    if "alpha" in f:
        out.append(f"- L(N, D) = {f['E']:.3f} + {f['A']:.4g}/N^{f['alpha']:.3f} + "
                   f"{f['B']:.4g}/D^{f['beta']:.3f} ({f['n_points']} eval points; RMSE "
                   f"{f['rmse']:.4f}). Chinchilla: L = {ch['E']} + {ch['A']}/N^{ch['alpha']} + "
                   f"{ch['B']}/D^{ch['beta']}.")
    else:
        out.append(f"- L(N, D): no fit ({f['error']})")
    ff = fits["frontier_fit"]
    if "a" in ff:
        out.append(f"- Compute frontier (best size per compute level): N_opt ∝ C^{ff['a']:.2f} "
                   f"(Chinchilla ≈ C^0.50, Kaplan ≈ C^0.73).")
    bounded = [name for name, key in (("L(N)", "loss_vs_params"), ("L(C)", "loss_vs_compute"),
                                      ("L(N, D)", "loss_vs_params_and_tokens"))
               if fits[key].get("E") == 0.0]
    if bounded:
        out.append(f"- Caution: E sits at its bound 0 in {', '.join(bounded)}: the losses are "
                   f"far from the irreducible loss, so E is not identified and extrapolations "
                   f"are loose.")
    if fits["frontier"]:
        out.append("\n## Compute-optimal size, measured (lowest eval-loss curve at each compute)\n")
        out.append("| compute (FLOPs) | best size | its eval loss |")
        out.append("|---|---|---|")
        front = fits["frontier"]
        shown = front[:: max(1, len(front) // 8)]
        if shown[-1] is not front[-1]:
            shown.append(front[-1])
        for p in shown:
            out.append(f"| {p['compute']:.3g} | {p['name']} | {p['loss']:.3f} |")
    out.append("\n## Compute-optimal size predicted for a budget (C = 6·N·D)\n")
    out.append("| compute (FLOPs) | N_opt (L(N,D) fit) | D_opt | predicted loss | nearest size "
               "| N_opt (frontier) | Chinchilla N_opt | Chinchilla D_opt |")
    out.append("|---|---|---|---|---|---|---|---|")
    for p in fits["compute_optimal"]:
        cells = [p.get(k) for k in ("n_opt", "d_opt", "loss_at_opt", "nearest_size",
                                    "n_opt_frontier", "chinchilla_n_opt", "chinchilla_d_opt")]
        cells = [f"{v:.3g}" if isinstance(v, float) and math.isfinite(v) else
                 (v if isinstance(v, str) else "–") for v in cells]
        out.append(f"| {p['compute']:.3g} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def write_report(config, workdir: str, rows, curves, fits: dict, fit_lines) -> str:
    """The plots and results.md of a collected sweep (fit_lines: the fitted L(N), L(C) or
    None); -> the Markdown summary."""
    title, n_key, (fit_n, fit_c) = config.name, fits["param_count"], fit_lines
    plot_loss_vs_params(rows, fit_n, os.path.join(workdir, "loss_vs_params.png"), n_key,
                        f"{title}: final eval loss vs size")
    plot_loss_vs_compute(rows, curves, fit_c, os.path.join(workdir, "loss_vs_compute.png"),
                         f"{title}: eval loss vs compute")
    plot_training_curves(rows, curves, os.path.join(workdir, "training_curves.png"),
                         f"{title}: training curves")
    report = summary_markdown(config, rows, fits, fits["pending"])
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(report)
    return report
