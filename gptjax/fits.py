"""Scaling-law fits with confidence intervals, on scipy.

    profile = fit_profile(C, n, loss)           # one IsoFLOP profile: parabola in ln N
    iso = isoflop_analysis({C: (n, loss)}, fpt) # N_opt ∝ C^a, D_opt ∝ C^b, frontier, CIs
    law = fit_power_law(x, y)                   # y = E + A·x^-alpha (least squares)
    out = bootstrap_power_law(x, y)             # ... and percentile CIs of E, A, alpha

Approach 2 (Hoffmann et al. 2022, "Chinchilla", section 3.2): at each compute budget a range of
sizes is trained on exactly that budget; a parabola in log N through final loss gives the
budget's optimal size N_opt(C), and straight lines in log-log give N_opt ∝ C^a, D_opt ∝ C^b.
A profile whose lowest loss is at an end of its sizes, or whose parabola opens downwards or has
its vertex outside the sizes, is *flagged* and left out of the exponent fits.
Uncertainty is a parametric bootstrap: every profile's losses are redrawn around its parabola
with the pooled residual scatter, and every fit downstream is repeated on each draw; a draw in
which some profile's parabola has no minimum inside its sizes is dropped, as the profile would be.

Approach 3, the parametric L(N, D), is `gptjax/loss_nd.py`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable

import numpy as np
from scipy import interpolate, optimize

from gptjax.errors import UserError

LEVEL = 0.95  # two-sided confidence level of every interval


def interval(value: float, samples, level: float = LEVEL) -> dict:
    """{'value', 'lo', 'hi'}: the estimate and a percentile interval of bootstrap samples."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if len(s) < 10:
        return {"value": float(value), "lo": float("nan"), "hi": float("nan")}
    q = 100 * (1 - level) / 2
    return {"value": float(value), "lo": float(np.percentile(s, q)),
            "hi": float(np.percentile(s, 100 - q))}


def interval_reaches_zero(e_interval: dict, tol: float = 1e-6) -> bool:
    """Whether an irreducible loss E (bounded below by 0) has an interval that reaches its
    bound: the data do not bound it away from 0. Draws that run E to the bound end at ~1e-12
    (the optimiser's bound), so "reaches" is a lower end below `tol`."""
    return bool(np.isfinite(e_interval["lo"]) and e_interval["lo"] <= tol)


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


# ----------------------------------------------------------------------------- power laws


@dataclasses.dataclass
class PowerLaw:
    """y = E + A·x^-alpha, least squares with E >= 0."""
    E: float
    A: float
    alpha: float
    r2: float
    rmse: float
    n_points: int
    e_at_bound: bool = False

    def __call__(self, x):
        return self.E + self.A * np.asarray(x, dtype=np.float64) ** -self.alpha


def fit_power_law(x, y, fit_e: bool = True, start: PowerLaw | None = None) -> PowerLaw:
    """y = E + A·x^-alpha (E = 0 when not fit_e), by scipy's bounded least squares from a few
    starting exponents (or from `start` alone); E is bounded by [0, min(y)) and `e_at_bound`
    says when it sits on 0."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[ok], y[ok]
    need = 3 if fit_e else 2
    if len(np.unique(x)) < need:
        raise UserError(f"a power-law fit needs >= {need} distinct x, got {len(np.unique(x))}")
    x0 = float(np.exp(np.mean(np.log(x))))
    u = np.log(x / x0)

    def model(p):  # p = (ln A', alpha[, E]) with A' = A·x0^-alpha
        return np.exp(p[0] - p[1] * u) + (p[2] if fit_e else 0.0)

    lo = [-np.inf, 0.0] + ([0.0] if fit_e else [])
    hi = [np.inf, 5.0] + ([float(y.min()) * (1 - 1e-9)] if fit_e else [])
    if start is not None:
        e0 = min(start.E, 0.99 * float(y.min())) if fit_e else 0.0
        starts = [(start.alpha, e0)]
    else:
        starts = [(alpha, frac * float(y.min())) for alpha, frac in itertools.product(
            (0.1, 0.3, 1.0), (0.0, 0.5, 0.9) if fit_e else (0.0,))]
    best = None
    for alpha0, e0 in starts:
        p0 = [math.log(max(float(np.mean(y)) - e0, 1e-12)), alpha0] + ([e0] if fit_e else [])
        r = optimize.least_squares(lambda p: model(p) - y, p0, bounds=(lo, hi))
        if best is None or r.cost < best.cost:
            best = r
    p = best.x
    sse = float(np.sum((model(p) - y) ** 2))
    tss = float(np.sum((y - y.mean()) ** 2))
    E = float(p[2]) if fit_e else 0.0
    return PowerLaw(E=E, A=float(math.exp(p[0]) * x0 ** p[1]), alpha=float(p[1]),
                    r2=1 - sse / tss if tss > 0 else float("nan"),
                    rmse=math.sqrt(sse / len(y)), n_points=int(len(y)),
                    e_at_bound=fit_e and E <= 1e-9 * float(y.max()))


def bootstrap_power_law(x, y, n_boot: int = 500, seed: int = 0) -> dict:
    """fit_power_law and percentile CIs of E, A, alpha from a residual bootstrap (residuals
    inflated by sqrt(n / (n - 3)) for the parameters the fit used up)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    law = fit_power_law(x, y)
    fitted = law(x)
    resid = (y - fitted) * math.sqrt(len(y) / max(len(y) - 3, 1))
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in ("E", "A", "alpha")}
    for _ in range(n_boot):
        b = fit_power_law(x, fitted + rng.choice(resid, len(y)), start=law)
        for k in draws:
            draws[k].append(getattr(b, k))
    return {"law": law, **{k: interval(getattr(law, k), v) for k, v in draws.items()}}


def fit_loglog(x, y) -> tuple[float, float]:
    """(slope, intercept) of ln y = intercept + slope·ln x (ordinary least squares)."""
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(slope), float(intercept)


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
