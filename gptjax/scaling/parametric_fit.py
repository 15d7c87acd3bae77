"""Chinchilla's approach 3: L(N, D) = E + A/N^alpha + B/D^beta, with confidence intervals.

    law = fit_loss_nd(n, d, loss)               # Huber loss on ln L, grid of starts (scipy)
    out = bootstrap_loss_nd(n, d, loss, budgets=[1e18])   # CIs, and N_opt, D_opt per budget
    n_opt, d_opt = law.optimal(1e18)            # C = 6·N·D, or the sweep's own FLOPs per token

As Hoffmann et al. (2022, section 3.3 and appendix D.2): the loss is parametrised as
LSE(e, a - alpha·ln N, b - beta·ln D) and fitted with a Huber loss (delta 1e-3) on ln L from a
grid of initialisations; the CIs come from refitting runs resampled with replacement.
Approach 2, the IsoFLOP profiles, is `gptjax/scaling/isoflop_fit.py`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable

import numpy as np
from scipy import optimize

from gptjax.errors import UserError
from gptjax.scaling.stats import interval

HUBER_DELTA = 1e-3  # Hoffmann et al.'s delta, on ln L


@dataclasses.dataclass
class NDLaw:
    """Chinchilla's parametric loss L(N, D) = E + A·N^-alpha + B·D^-beta."""
    E: float
    A: float
    alpha: float
    B: float
    beta: float
    rmse: float = float("nan")
    n_points: int = 0

    def __call__(self, n, d):
        n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
        return self.E + self.A * n ** -self.alpha + self.B * d ** -self.beta

    def optimal(self, compute: float, flops_per_token: Callable | None = None):
        """(N_opt, D_opt) minimising L on a budget: D = C / fpt(N). Without `flops_per_token`
        it is Hoffmann et al.'s closed form for C = 6·N·D (their eq. 4)."""
        a, b = self.alpha, self.beta
        if self.A <= 0 or self.B <= 0 or a <= 0 or b <= 0:
            return float("nan"), float("nan")
        g = (a * self.A / (b * self.B)) ** (1 / (a + b))
        n = g * (compute / 6) ** (b / (a + b))
        if flops_per_token is None:
            return float(n), float(compute / (6 * n))
        res = optimize.minimize_scalar(
            lambda u: float(self(math.exp(u), compute / flops_per_token(math.exp(u)))),
            bounds=(math.log(n) - 8, math.log(n) + 8), method="bounded",
            options={"xatol": 1e-6})
        n = math.exp(res.x)
        return float(n), float(compute / flops_per_token(n))


def _nd_prepare(n, d, loss):
    n, d, y = (np.asarray(v, np.float64) for v in (n, d, loss))
    ok = np.isfinite(n) & np.isfinite(d) & np.isfinite(y) & (n > 0) & (d > 0) & (y > 0)
    n, d, y = n[ok], d[ok], y[ok]
    # N and D must vary independently: on a tokens-∝-parameters family ln D is a linear
    # function of ln N and the two power laws cannot be told apart.
    ln_n, ln_d = np.log(n), np.log(d)
    spread = len(y) >= 3 and np.ptp(ln_n) > 0 and np.ptp(ln_d) > 0
    r = np.corrcoef(ln_n, ln_d)[0, 1] if spread else 1.0
    if abs(r) > 0.98:
        raise UserError(f"L(N, D) is not identified: ln N and ln D are collinear (r = {r:.3f}); "
                        f"train several sizes per token count (sweep.budget='iso_flops')")
    if len(y) < 6 or len(np.unique(n)) < 3 or len(np.unique(d)) < 3:
        raise UserError("fitting L(N, D) needs >= 6 runs with >= 3 sizes and >= 3 token counts")
    return n, d, y


def _nd_solve(ln_n, ln_d, ln_y, starts, delta):
    """Best of least-squares Huber fits from `starts`; p = (e, a, alpha, b, beta) with
    L = exp(e) + exp(a - alpha·ln N) + exp(b - beta·ln D) in centred logs."""
    def residual(p):
        e, a, alpha, b, beta = p
        pred = np.logaddexp(np.logaddexp(e, a - alpha * ln_n), b - beta * ln_d)
        return pred - ln_y

    lo, hi = [-np.inf, -np.inf, 0.0, -np.inf, 0.0], [np.inf, np.inf, 4.0, np.inf, 4.0]
    best = None
    for p0 in starts:
        r = optimize.least_squares(residual, p0, bounds=(lo, hi), loss="huber", f_scale=delta)
        if best is None or r.cost < best.cost:
            best = r
    return best.x


def _nd_starts(y):
    """Initialisations: a grid over the exponents and the share of loss in E."""
    level = float(np.mean(y))
    for alpha, beta, e_share in itertools.product((0.1, 0.4, 1.0), (0.1, 0.4, 1.0),
                                                  (0.2, 0.5, 0.8)):
        rest = math.log(level * (1 - e_share) / 2)
        yield np.array([math.log(level * e_share), rest, alpha, rest, beta])


def _fit_nd(n, d, y, delta, starts=None) -> tuple[NDLaw, np.ndarray]:
    """-> (the law, its centred parameters: where each bootstrap refit starts)."""
    n0, d0 = float(np.exp(np.mean(np.log(n)))), float(np.exp(np.mean(np.log(d))))
    ln_n, ln_d = np.log(n / n0), np.log(d / d0)
    p = _nd_solve(ln_n, ln_d, np.log(y), list(starts or _nd_starts(y)), delta)
    e, a, alpha, b, beta = p
    law = NDLaw(E=math.exp(e), A=math.exp(a) * n0 ** alpha, alpha=float(alpha),
                B=math.exp(b) * d0 ** beta, beta=float(beta), n_points=int(len(y)))
    law.rmse = float(np.sqrt(np.mean((law(n, d) - y) ** 2)))
    return law, p


def fit_loss_nd(n, d, loss, delta: float = HUBER_DELTA) -> NDLaw:
    """L(N, D) = E + A/N^alpha + B/D^beta: Huber loss on ln L from a grid of starts (scipy)."""
    return _fit_nd(*_nd_prepare(n, d, loss), delta)[0]


def bootstrap_loss_nd(n, d, loss, budgets=(), flops_per_token=None, n_boot: int = 400,
                      seed: int = 0, delta: float = HUBER_DELTA) -> dict:
    """Fit L(N, D) and percentile CIs from refits on runs resampled with replacement.

    Intervals for E, A, alpha, B, beta, the allocation exponents a = beta/(alpha+beta) and
    b = alpha/(alpha+beta), and for each budget N_opt, D_opt and D_opt / N_opt.
    """
    n, d, y = _nd_prepare(n, d, loss)
    law, p = _fit_nd(n, d, y, delta)
    rng = np.random.default_rng(seed)
    keys = ("E", "A", "alpha", "B", "beta")
    draws = {k: [] for k in (*keys, "a", "b")}
    opt = [[] for _ in budgets]
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(n[idx])) < 3 or len(np.unique(d[idx])) < 3:
            continue  # a resample that lost the design's spread
        b = _fit_nd(n[idx], d[idx], y[idx], delta, starts=[p])[0]
        for k in keys:
            draws[k].append(getattr(b, k))
        draws["a"].append(b.beta / (b.alpha + b.beta))
        draws["b"].append(b.alpha / (b.alpha + b.beta))
        for i, c in enumerate(budgets):
            opt[i].append(b.optimal(c, flops_per_token))
    out = {"law": law, **{k: interval(getattr(law, k), draws[k]) for k in keys},
           "a": interval(law.beta / (law.alpha + law.beta), draws["a"]),
           "b": interval(law.alpha / (law.alpha + law.beta), draws["b"]),
           "n_boot": n_boot, "accepted": len(draws["E"]), "optima": []}
    for c, samples in zip(budgets, opt, strict=True):
        n_opt, d_opt = law.optimal(c, flops_per_token)
        s = np.array(samples).reshape(-1, 2)
        with np.errstate(over="ignore", divide="ignore"):  # a degenerate draw's ratio is inf,
            ratio = s[:, 1] / s[:, 0]                      # which `interval` leaves out
        out["optima"].append({"compute": float(c), "n_opt": interval(n_opt, s[:, 0]),
                              "d_opt": interval(d_opt, s[:, 1]),
                              "tokens_per_param": interval(d_opt / n_opt, ratio)})
    return out
