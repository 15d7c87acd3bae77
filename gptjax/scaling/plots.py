"""The figures of a collected sweep (matplotlib, Agg), drawn from fits.json's contents.

- training_curves.png     train and eval loss against training FLOPs, every run
- isoflop_profiles.png    final loss against N per budget, parabolas, minima with 95% CIs
- optimal_allocation.png  N_opt(C) and D_opt(C) with the fitted power laws
- frontier.png            loss at the profile minima against C, with E + A·C^-gamma
- loss_vs_params.png      final loss against N (budgets other than iso_flops)
- lr_sweep.png            final loss against learning rate, one line per size (sweep.lrs)
"""

from __future__ import annotations

import math
import os

import numpy as np

from gptjax.metrics import plotting
from gptjax.scaling import family, parametric_fit, stats


def _span(x, pad: float = 1.3, points: int = 100):
    x = np.asarray(x, np.float64)
    return np.geomspace(x.min() / pad, x.max() * pad, points)


def training_curves(rows, curves, path: str, key: str, title: str):
    """Train loss (lines) and eval loss (dots) against FLOPs; one colour per size."""
    fig, ax = plotting.pyplot().subplots(figsize=(6.4, 4.4))
    sizes = sorted({r[key] for r in rows})
    color = dict(zip(sizes, plotting.colors(len(sizes)), strict=True))
    labelled = set()
    for r, c in zip(rows, curves, strict=True):
        label = r["size"] if r[key] not in labelled else None
        labelled.add(r[key])
        fpt = r["flops_per_token"]
        if len(c["train_tokens"]):
            ax.plot(np.asarray(c["train_tokens"]) * fpt, c["train_loss"], "-", lw=0.8,
                    alpha=0.7, color=color[r[key]], label=label)
        if len(c["flops"]):
            ax.plot(c["flops"], c["loss"], "o", color=color[r[key]], ms=3)
    plotting.finish(fig, ax, path, "training compute C (FLOPs)",
                    "loss (nats / token): train lines, eval dots", title)


def isoflop_profiles(iso: dict, nd: dict, path: str, title: str):
    fig, ax = plotting.pyplot().subplots(figsize=(6.4, 4.4))
    optima = {o["compute"]: o for o in iso.get("optima", [])}
    law = parametric_fit.NDLaw(**nd["law"]) if "law" in nd else None
    for p, color in zip(iso["profiles"], plotting.colors(len(iso["profiles"])), strict=True):
        n = np.asarray(p["n"])
        label = f"C = {p['compute']:.2g}" + (" (flagged)" if p["flag"] else "")
        ax.plot(n, p["loss"], "o" if not p["flag"] else "x", color=color, label=label)
        xs = _span(n, 1.1)
        u = np.log(xs / p["n_ref"])
        c0, c1, c2 = p["coef"]
        ax.plot(xs, c0 + c1 * u + c2 * u * u, "-" if not p["flag"] else ":", color=color, lw=1)
        o = optima.get(p["compute"])
        if o:
            ax.errorbar([o["n_opt"]["value"]], [o["loss_opt"]["value"]],
                        xerr=[[o["n_opt"]["value"] - o["n_opt"]["lo"]],
                              [o["n_opt"]["hi"] - o["n_opt"]["value"]]],
                        fmt="*", ms=10, color=color, mec="k", capsize=3)
        if law is not None:  # approach 3 along the same budget: D(N) as the runs had it
            tokens = np.exp(np.polyval(np.polyfit(np.log(n), np.log(p["tokens"]), 2),
                                       np.log(xs)))
            ax.plot(xs, law(xs, tokens), "--", color=color, lw=0.7, alpha=0.6)
    ax.plot([], [], "k*", label="N_opt, 95% CI")
    if law is not None:
        ax.plot([], [], "k--", lw=0.7, label="approach 3, L(N, D)")
    plotting.finish(fig, ax, path, "parameters N", "final eval loss (nats / token)", title)


def optimal_allocation(iso: dict, nd: dict, path: str, title: str):
    plt = plotting.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    c = np.array([o["compute"] for o in iso["optima"]])
    cs = _span(c, 1.5)
    for ax, what, sym, ln_k in ((axes[0], "n_opt", "a", "ln_kn"), (axes[1], "d_opt", "b",
                                                                     "ln_kd")):
        v = np.array([o[what]["value"] for o in iso["optima"]])
        err = [v - [o[what]["lo"] for o in iso["optima"]], [o[what]["hi"] for o in
                                                             iso["optima"]] - v]
        ax.errorbar(c, v, yerr=err, fmt="o", color="C0", capsize=3, label="profile minima")
        e = iso[sym]
        ax.plot(cs, np.exp(iso[ln_k]) * cs ** e["value"], "C0-", lw=1,
                label=f"∝ C^{e['value']:.2f} [{e['lo']:.2f}, {e['hi']:.2f}]")
        if "optima" in nd:
            ax.plot([o["compute"] for o in nd["optima"]],
                    [o[what]["value"] for o in nd["optima"]], "C1s--", ms=4, lw=1,
                    label="approach 3")
        mid_c, mid_v = math.exp(np.mean(np.log(c))), math.exp(np.mean(np.log(v)))
        refs = ((family.CHINCHILLA_A, "Chinchilla"), (family.KAPLAN_A, "Kaplan"))
        for slope, name in refs:
            slope = slope if what == "n_opt" else 1 - slope
            ax.plot(cs, mid_v * (cs / mid_c) ** slope, ":", lw=1,
                    color="gray" if name == "Kaplan" else "k", label=f"{name}: C^{slope:.2f}")
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlabel("training compute C (FLOPs)")
        ax.set_ylabel("N_opt (parameters)" if what == "n_opt" else "D_opt (tokens)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    plotting.save(fig, path)


def frontier(iso: dict, path: str, title: str):
    """The minima's loss against the budget with L*(C) = E + A·C^-gamma and E, 95% CIs."""
    fig, ax = plotting.pyplot().subplots(figsize=(6.4, 4.4))
    c = np.array([o["compute"] for o in iso["optima"]])
    loss = np.array([o["loss_opt"]["value"] for o in iso["optima"]])
    yerr = [loss - [o["loss_opt"]["lo"] for o in iso["optima"]],
            [o["loss_opt"]["hi"] for o in iso["optima"]] - loss]
    ax.errorbar(c, loss, yerr=yerr, fmt="o", capsize=3, label="loss at each profile's minimum")
    f, ci = iso["frontier"], iso["frontier_ci"]
    xs = _span(c, 1.5)
    ax.plot(xs, stats.PowerLaw(**f)(xs), "k-", lw=1,
            label=f"E + A·C^-γ: γ = {f['alpha']:.3f} [{ci['alpha']['lo']:.3f}, "
                  f"{ci['alpha']['hi']:.3f}], R² = {f['r2']:.3f}")
    e_text = f"E = {f['E']:.3f} [{ci['E']['lo']:.3f}, {ci['E']['hi']:.3f}]"
    if stats.interval_reaches_zero(ci["E"]):  # not drawn: the data do not bound it away from 0
        ax.plot([], [], " ", label=e_text + ": reaches 0, not measured")
    else:
        ax.axhline(f["E"], color="gray", ls=":", lw=1, label=e_text)
    an = ci["alpha_n"]
    ax.plot([], [], " ", label=f"as L(N_opt): α_N = γ / a = {an['value']:.2f} "
                               f"[{an['lo']:.2f}, {an['hi']:.2f}]")
    plotting.finish(fig, ax, path, "training compute C (FLOPs)", "loss at N_opt (nats / token)",
                    title)


def loss_vs_params(rows, fit: dict, path: str, key: str, title: str):
    fig, ax = plotting.pyplot().subplots(figsize=(6.4, 4.4))
    n = [r[key] for r in rows]
    ax.plot(n, [r["eval_loss"] for r in rows], "o", label="final eval loss")
    if "law" in fit:
        law = stats.PowerLaw(**fit["law"])
        ax.plot(_span(n), law(_span(n)), "k-", lw=1,
                label=f"{law.E:.3g} + {law.A:.3g}·N^-{law.alpha:.3f}, R² = {law.r2:.3f}")
    plotting.finish(fig, ax, path, "parameters N", "final eval loss (nats / token)", title)


def lr_sweep(lr: dict, path: str, title: str):
    fig, ax = plotting.pyplot().subplots(figsize=(6.4, 4.4))
    entries = sorted(lr["sizes"], key=lambda s: (s["d_model"], s["budget"]))
    for s, color in zip(entries, plotting.colors(len(entries)), strict=True):
        ax.plot(s["lrs"], s["losses"], "o-", color=color, ms=3, lw=1, label=s["size"])
        if "lr_opt" in s:  # the local parabola and its minimum
            xs = _span(s["fitted"], 1.0, 50)
            u = np.log(xs / s["x_ref"])
            c0, c1, c2 = s["coef"]
            ax.plot(xs, c0 + c1 * u + c2 * u * u, ":", color=color, lw=1)
            u = math.log(s["lr_opt"] / s["x_ref"])
            ax.plot([s["lr_opt"]], [c0 + c1 * u + c2 * u * u], "*", color=color, ms=10,
                    mec="k")
    if "lr_opt_vs_width" in lr:
        ax.plot([], [], "k*", label=f"LR_opt ∝ width^{lr['lr_opt_vs_width']:.2f}")
    plotting.finish(fig, ax, path, "peak learning rate", "final eval loss (nats / token)", title,
                    xticks=sorted({lr for s in entries for lr in s["lrs"]}))


def draw_all(config, workdir: str, rows, curves, fit_rows, report: dict) -> None:
    name, key = config.name, report["param_count"]
    out = lambda f: os.path.join(workdir, f)  # noqa: E731
    training_curves(rows, curves, out("training_curves.png"), key, f"{name}: eval loss")
    iso, nd = report.get("isoflop", {}), report.get("loss_nd", {})
    if "profiles" in iso:
        isoflop_profiles(iso, nd, out("isoflop_profiles.png"), f"{name}: IsoFLOP profiles")
    if "a" in iso:
        optimal_allocation(iso, nd, out("optimal_allocation.png"),
                           f"{name}: compute-optimal allocation (approach 2)")
    if "frontier" in iso:
        frontier(iso, out("frontier.png"), f"{name}: the compute-optimal frontier")
    if "loss_vs_params" in report:
        loss_vs_params(fit_rows, report["loss_vs_params"], out("loss_vs_params.png"), key,
                       f"{name}: final loss vs size")
    if "lr_sweep" in report:
        kind = "muP" if config.model.mup else "standard parametrisation"
        lr_sweep(report["lr_sweep"], out("lr_sweep.png"), f"{name} ({kind}): learning rate")
