"""Chinchilla's approach 2: IsoFLOP profiles, the compute-optimal allocation, with CIs.

    profile = fit_profile(C, n, loss)           # one IsoFLOP profile: parabola in ln N
    iso = isoflop_analysis({C: (n, loss)}, fpt) # N_opt ∝ C^a, D_opt ∝ C^b, frontier, CIs
    fpt = flops_curve(n, flops_per_token)       # FLOPs per token between a family's sizes

Approach 2 (Hoffmann et al. 2022, "Chinchilla", section 3.2): at each compute budget a range of
sizes is trained on exactly that budget; a parabola in log N through final loss gives the
budget's optimal size N_opt(C), and straight lines in log-log give N_opt ∝ C^a, D_opt ∝ C^b.
A profile whose lowest loss is at an end of its sizes, or whose parabola opens downwards or has
its vertex outside the sizes, is *flagged* and left out of the exponent fits.
Uncertainty is a parametric bootstrap: every profile's losses are redrawn around its parabola
with the pooled residual scatter, and every fit downstream is repeated on each draw; a draw in
which some profile's parabola has no minimum inside its sizes is dropped, as the profile would be.
The same parabola finds the best learning rate of an LR sweep (`gptjax/scaling/collect.py`).

Power laws, log-log lines and percentile intervals are `gptjax/scaling/stats.py`; approach 3,
the parametric L(N, D), is `gptjax/scaling/parametric_fit.py`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
from scipy import interpolate

from gptjax.errors import UserError
from gptjax.scaling.stats import PowerLaw, fit_loglog, fit_power_law, interval


def flops_curve(n, flops_per_token) -> Callable:
    """FLOPs per token as a function of N along a family: piecewise linear in log-log through
    the family's sizes (extrapolated at the ends), so that D = C / fpt(N) between sizes."""
    n, f = np.log(np.asarray(n, np.float64)), np.log(np.asarray(flops_per_token, np.float64))
    order = np.argsort(n)
    n, idx = np.unique(n[order], return_index=True)
    f = f[order][idx]
    if len(n) == 1:
        return lambda x: np.exp(f[0]) * np.asarray(x, np.float64) / np.exp(n[0])
    line = interpolate.interp1d(n, f, fill_value="extrapolate", assume_sorted=True)
    return lambda x: np.exp(line(np.log(np.asarray(x, np.float64))))


# ----------------------------------------------------------------------------- one profile


@dataclasses.dataclass
class Profile:
    """A parabola through losses against ln x: loss = c0 + c1·u + c2·u², u = ln(x / x_ref).
    x is the model size N on an IsoFLOP profile (key = the budget C), or the learning rate on
    an LR sweep (key = the size)."""
    key: float | str
    x: np.ndarray
    loss: np.ndarray
    coef: np.ndarray          # (c0, c1, c2)
    x_ref: float
    flag: str = ""            # why the minimum cannot be trusted ('' = usable)

    @property
    def x_opt(self) -> float:
        return float(self.x_ref * math.exp(-self.coef[1] / (2 * self.coef[2])))

    @property
    def loss_opt(self) -> float:
        c0, c1, c2 = self.coef
        return float(c0 - c1 * c1 / (4 * c2))

    def __call__(self, x):
        u = np.log(np.asarray(x, np.float64) / self.x_ref)
        return self.coef[0] + self.coef[1] * u + self.coef[2] * u * u

    @property
    def residuals(self) -> np.ndarray:
        return self.loss - self(self.x)


def _parabola(u, loss) -> np.ndarray:
    c2, c1, c0 = np.polyfit(u, loss, 2)
    return np.array([c0, c1, c2])


def profile_flag(x, loss, coef, x_ref) -> str:
    """'' if the profile has an interior minimum, else the reason it has none."""
    x = np.asarray(x, np.float64)
    if coef[2] <= 0:
        return "no minimum (the parabola opens downwards)"
    i = int(np.argmin(loss))
    if i in (0, len(x) - 1):
        return f"lowest loss at the {'smallest' if i == 0 else 'largest'} value tried"
    vertex = x_ref * math.exp(-coef[1] / (2 * coef[2]))
    if not x.min() < vertex < x.max():
        return "parabola minimum outside the values tried"
    return ""


def fit_profile(key, x, loss) -> Profile:
    """Least-squares parabola of loss in ln x (>= 4 distinct x), flagged if its minimum is not
    inside the values tried."""
    x, loss = np.asarray(x, np.float64), np.asarray(loss, np.float64)
    ok = np.isfinite(x) & np.isfinite(loss) & (x > 0)
    x, loss = x[ok], loss[ok]
    order = np.argsort(x)
    x, loss = x[order], loss[order]
    if len(np.unique(x)) < 4:
        raise UserError(f"a parabola through the losses of {key} needs >= 4 distinct values, got "
                        f"{len(np.unique(x))} (3 points leave no scatter to judge it by)")
    x_ref = float(np.exp(np.mean(np.log(x))))
    coef = _parabola(np.log(x / x_ref), loss)
    return Profile(key, x, loss, coef, x_ref, profile_flag(x, loss, coef, x_ref))


# ----------------------------------------------------------------------------- approach 2


def _allocation(profiles, fpt) -> dict:
    """The point estimates approach 2 derives from a set of usable profiles."""
    c = np.array([p.key for p in profiles])
    n_opt = np.array([p.x_opt for p in profiles])
    d_opt = c / fpt(n_opt)
    out = {"compute": c, "n_opt": n_opt, "d_opt": d_opt,
           "loss_opt": np.array([p.loss_opt for p in profiles])}
    if len(profiles) >= 2:
        out["a"], out["ln_kn"] = fit_loglog(c, n_opt)
        out["b"], out["ln_kd"] = fit_loglog(c, d_opt)
    return out


def _frontier_fit(alloc: dict, start: PowerLaw | None = None) -> PowerLaw | None:
    """The compute-optimal frontier: the loss at the profile minima against the budget,
    L*(C) = E + A·C^-gamma (the PowerLaw's alpha is gamma). Against C, not N_opt: the budgets
    are exact, N_opt is an estimate. With N_opt ∝ C^a it is L*(N) = E + A'·N^-(gamma/a).
    Needs >= 4 minima: a 3-parameter curve through 3 points says nothing about its fit."""
    if len(alloc["loss_opt"]) < 4:
        return None
    return fit_power_law(alloc["compute"], alloc["loss_opt"], start=start)


def isoflop_analysis(budgets: dict, flops_per_token: Callable, n_boot: int = 500,
                     seed: int = 0) -> dict:
    """Approach 2 on {compute: (n array, loss array)} with bootstrap CIs.

    `flops_per_token(N)` converts an optimal size into tokens, D_opt = C / fpt(N_opt).
    Returns the profiles (all, with flags) and, from the unflagged ones: N_opt, D_opt and the
    minimum loss per budget with CIs; a, b of N_opt ∝ C^a, D_opt ∝ C^b with CIs; the
    frontier L*(C) = E + A·C^-gamma and its L(N) exponent gamma / a, with CIs (>= 4 profiles).
    """
    profiles = [fit_profile(c, *budgets[c]) for c in sorted(budgets)]
    usable = [p for p in profiles if not p.flag]
    out = {"profiles": profiles, "usable": usable, "flagged": [p for p in profiles if p.flag]}
    if not usable:
        return out
    alloc = _allocation(usable, flops_per_token)
    frontier = _frontier_fit(alloc)
    dof = sum(len(p.x) - 3 for p in usable)
    sigma = math.sqrt(sum(float(np.sum(p.residuals ** 2)) for p in usable) / dof)
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in ("a", "b", "E", "A", "alpha", "alpha_n", "n_opt", "d_opt",
                             "loss_opt")}
    for _ in range(n_boot):
        replica = []
        for p in usable:
            loss = p(p.x) + rng.normal(0.0, sigma, len(p.x))
            replica.append(Profile(p.key, p.x, loss, _parabola(np.log(p.x / p.x_ref), loss),
                                   p.x_ref))
        if not all(q.coef[2] > 0 and q.x.min() < q.x_opt < q.x.max() for q in replica):
            continue  # a draw that would be flagged (no minimum inside the sizes) is dropped:
            # `accepted` < n_boot says how often that happened
        alloc_b = _allocation(replica, flops_per_token)
        for key in ("n_opt", "d_opt", "loss_opt"):
            draws[key].append(alloc_b[key])
        if "a" in alloc_b:
            draws["a"].append(alloc_b["a"])
            draws["b"].append(alloc_b["b"])
        if frontier is not None:
            fb = _frontier_fit(alloc_b, start=frontier)
            for key in ("E", "A", "alpha"):
                draws[key].append(getattr(fb, key))
            draws["alpha_n"].append(fb.alpha / alloc_b["a"])
    out.update(sigma=sigma, dof=dof, n_boot=n_boot, accepted=len(draws["n_opt"]))
    per = {key: np.array(draws[key]).reshape(-1, len(usable))
           for key in ("n_opt", "d_opt", "loss_opt")}
    per["tokens_per_param"] = per["d_opt"] / per["n_opt"]
    alloc["tokens_per_param"] = alloc["d_opt"] / alloc["n_opt"]
    out["optima"] = [{"compute": p.key, **{key: interval(alloc[key][i], per[key][:, i])
                                           for key in per}} for i, p in enumerate(usable)]
    if "a" in alloc:
        out["a"] = interval(alloc["a"], draws["a"])
        out["b"] = interval(alloc["b"], draws["b"])
        out["ln_kn"], out["ln_kd"] = alloc["ln_kn"], alloc["ln_kd"]
    if frontier is not None:
        out["frontier"] = frontier
        out["frontier_ci"] = {k: interval(getattr(frontier, k), draws[k])
                              for k in ("E", "A", "alpha")}
        out["frontier_ci"]["alpha_n"] = interval(frontier.alpha / alloc["a"], draws["alpha_n"])
    return out
