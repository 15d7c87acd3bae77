"""Generic fits with bootstrap confidence intervals, shared by the scaling-law fits.

    law = fit_power_law(x, y)                   # y = E + A·x^-alpha (least squares, scipy)
    out = bootstrap_power_law(x, y)             # ... and percentile CIs of E, A, alpha
    slope, intercept = fit_loglog(x, y)         # ln y = intercept + slope·ln x
    ci = interval(estimate, samples)            # {'value', 'lo', 'hi'} at LEVEL (95%)

The IsoFLOP profiles of approach 2 are `gptjax/scaling/isoflop_fit.py`; the parametric
L(N, D) of approach 3 is `gptjax/scaling/parametric_fit.py`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
from scipy import optimize

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
