"""Scaling laws: model-size families, token budgets, power-law fits, compute-optimal sizes, plots.

Everything here is plain numpy (no scipy): the fits use *variable projection*. For fixed
exponents the loss is linear in the coefficients (E, A, B), so those come from a small
non-negative least-squares solve, and only the exponents are searched (a log grid refined
around its minimum). That is exact least squares for L = E + A·N^-α and, with a 2-D search,
for Chinchilla's L(N, D) = E + A·N^-α + B·D^-β, without an optimiser that needs a good start.

The parameter counts and FLOPs are `gptjax/flops.py`'s (6·N_matmul + 12·L·H·Q·T per token).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from gptjax.errors import UserError

# Published fits, for context in tables and docs.
KAPLAN_ALPHA_N = 0.076                                             # L(N) = (N_c / N)^0.076
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}

# ----------------------------------------------------------------------------- sizes


def _heads(d_model: int, head_dim: int) -> int:
    if d_model % head_dim:
        raise UserError(f"sweep: d_model={d_model} is not a multiple of sweep.head_dim={head_dim}; "
                        f"pick widths that are")
    return d_model // head_dim


def size_family(sweep) -> list[dict]:
    """The model shapes of a sweep, smallest first: a list of dicts of `config.model` fields.

    family='rule': one model per width in `sweep.d_models`, depth = round(d_model / aspect)
    (Kaplan et al. keep d_model / n_layer roughly constant), heads = d_model / head_dim,
    d_ff = ff_mult · d_model. family='table': rows (name, layers, d_model, heads, head_dim,
    d_ff[, lr, batch_size]) of `sweep.table` (0 = 4·d_model / the config's lr and batch),
    optionally only those named in `sweep.sizes`.
    """
    sizes = []
    if sweep.family == "rule":
        if not sweep.d_models:
            raise UserError("sweep.family='rule' needs sweep.d_models, e.g. (64, 128, 256)")
        for d in sweep.d_models:
            d = int(d)
            layers = max(int(sweep.min_layers), int(math.floor(d / float(sweep.aspect) + 0.5)))
            sizes.append(dict(name=f"d{d}-l{layers}", num_layers=layers, d_model=d,
                              num_heads=_heads(d, int(sweep.head_dim)),
                              head_dim=int(sweep.head_dim), d_ff=int(sweep.ff_mult * d)))
    elif sweep.family == "table":
        if not sweep.table:
            raise UserError("sweep.family='table' needs sweep.table rows "
                            "(name, layers, d_model, heads, head_dim, d_ff)")
        for row in sweep.table:
            if len(row) not in (6, 8):
                raise UserError(f"sweep.table row {row!r}: expected (name, layers, d_model, "
                                f"heads, head_dim, d_ff[, lr, batch_size])")
            name, layers, d, heads, head_dim, d_ff = row[:6]
            size = dict(name=str(name), num_layers=int(layers), d_model=int(d),
                        num_heads=int(heads), head_dim=int(head_dim), d_ff=int(d_ff) or 4 * int(d))
            if len(row) == 8:  # per-size learning rate and batch (0 = the config's)
                size.update(lr=float(row[6]), batch_size=int(row[7]))
            sizes.append(size)
        if sweep.sizes:
            wanted = [s.strip() for s in sweep.sizes.split(",")] \
                if isinstance(sweep.sizes, str) else list(sweep.sizes)
            known = {s["name"] for s in sizes}
            missing = [w for w in wanted if w not in known]
            if missing:
                raise UserError(f"sweep.sizes: unknown {missing}; the table has {sorted(known)}")
            sizes = [s for s in sizes if s["name"] in wanted]
    else:
        raise UserError(f"sweep.family={sweep.family!r}: choose rule or table")
    names = [s["name"] for s in sizes]
    if len(set(names)) != len(names):
        raise UserError(f"sweep: two sizes share a name in {names}")
    return sizes


def token_budget(sweep, n_params: int, flops_tok: int) -> int:
    """Tokens one run trains on: fixed; ∝ parameters (Chinchilla ~20/param); or iso-FLOPs."""
    if sweep.budget == "fixed":
        if sweep.tokens <= 0:
            raise UserError("sweep.budget='fixed' needs sweep.tokens > 0")
        return int(sweep.tokens)
    if sweep.budget == "proportional":
        if sweep.tokens_per_param <= 0:
            raise UserError("sweep.budget='proportional' needs sweep.tokens_per_param > 0")
        return int(math.ceil(sweep.tokens_per_param * n_params))
    if sweep.budget == "iso_flops":
        if sweep.flops <= 0:
            raise UserError("sweep.budget='iso_flops' needs sweep.flops > 0 (FLOPs per run)")
        return int(math.ceil(float(sweep.flops) / flops_tok))
    raise UserError(f"sweep.budget={sweep.budget!r}: choose fixed, proportional or iso_flops")


def kaplan_lr(n_non_embedding: int) -> float:
    """Kaplan et al. (2020) eq. D.1: LR(N) ≈ 0.003239 − 0.0001395·log(N)."""
    return max(1e-5, 0.003239 - 0.0001395 * math.log(max(n_non_embedding, 2)))


# ----------------------------------------------------------------------------- fits


def _nnls_small(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative least squares for a handful of columns, by trying every support set."""
    best_coef, best_sse = np.zeros(X.shape[1]), float(np.sum(y ** 2))
    cols = range(X.shape[1])
    for k in range(1, X.shape[1] + 1):
        for support in itertools.combinations(cols, k):
            sub = X[:, support]
            coef, *_ = np.linalg.lstsq(sub, y, rcond=None)
            if np.any(coef < 0):
                continue
            sse = float(np.sum((sub @ coef - y) ** 2))
            if sse < best_sse:
                best_sse = sse
                best_coef = np.zeros(X.shape[1])
                best_coef[list(support)] = coef
    return best_coef, best_sse


def _nnls_batch(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sum of squared residuals of `_nnls_small` for a stack of designs X [G, P, K] at once
    (normal equations: for grid searches; the chosen point is re-solved with `_nnls_small`)."""
    gram = np.einsum("gpk,gpl->gkl", X, X)
    xty = np.einsum("gpk,p->gk", X, y)
    best = np.full(X.shape[0], float(np.sum(y ** 2)))
    for k in range(1, X.shape[2] + 1):
        for support in itertools.combinations(range(X.shape[2]), k):
            idx = np.array(support)
            g = gram[:, idx[:, None], idx[None, :]]
            b = xty[:, idx]
            coef = np.einsum("gkl,gl->gk", np.linalg.pinv(g), b)
            sse = float(np.sum(y ** 2)) - 2 * np.sum(coef * b, 1) \
                + np.einsum("gk,gkl,gl->g", coef, g, coef)
            ok = np.all(coef >= 0, axis=1)
            best = np.where(ok & (sse < best), sse, best)
    return np.maximum(best, 0.0)


def _golden(f, lo: float, hi: float, iters: int = 60) -> float:
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (a + b) / 2


@dataclasses.dataclass
class PowerLaw:
    """y = E + A·x^-alpha, least squares; `alpha_se` is a jackknife standard error."""
    E: float
    A: float
    alpha: float
    rmse: float
    r2: float
    n_points: int
    alpha_se: float = float("nan")

    def __call__(self, x):
        return self.E + self.A * np.asarray(x, dtype=np.float64) ** -self.alpha

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def fit_power_law(x, y, *, fit_e: bool = True, alpha_range=(1e-3, 3.0),
                  jackknife: bool = True) -> PowerLaw:
    """Least-squares fit of y = E + A·x^-α with E, A >= 0 (E = 0 when fit_e is False)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[ok], y[ok]
    need = 3 if fit_e else 2
    if len(x) < need or len(np.unique(x)) < need:
        raise UserError(f"a power-law fit needs >= {need} points at distinct sizes, got {len(x)} "
                        f"(finish more runs of the sweep first)")
    x0 = float(np.exp(np.mean(np.log(x))))      # work with (x / x0) for conditioning
    u = np.log(x / x0)

    def solve(alpha):
        cols = [np.exp(-alpha * u)] + ([np.ones_like(u)] if fit_e else [])
        return _nnls_small(np.stack(cols, 1), y)

    lo, hi = np.log(alpha_range[0]), np.log(alpha_range[1])
    grid = np.exp(np.linspace(lo, hi, 300))
    powers = np.exp(-grid[:, None] * u[None, :])
    design = np.stack([powers] + ([np.ones_like(powers)] if fit_e else []), 2)
    sse = _nnls_batch(design, y)
    i = int(np.argmin(sse))
    a_lo, a_hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    alpha = _golden(lambda a: solve(a)[1], a_lo, a_hi) if a_hi > a_lo else grid[i]
    coef, best = solve(alpha)
    A = coef[0] * x0 ** alpha
    E = coef[1] if fit_e else 0.0
    tss = float(np.sum((y - y.mean()) ** 2))
    fit = PowerLaw(E=float(E), A=float(A), alpha=float(alpha), rmse=math.sqrt(best / len(y)),
                   r2=1 - best / tss if tss > 0 else float("nan"), n_points=int(len(y)))
    if jackknife and len(np.unique(x)) > need:
        alphas = []
        for j in range(len(x)):
            keep = np.arange(len(x)) != j
            if len(np.unique(x[keep])) >= need:
                alphas.append(fit_power_law(x[keep], y[keep], fit_e=fit_e,
                                            alpha_range=alpha_range, jackknife=False).alpha)
        n = len(alphas)
        if n > 1:
            alphas = np.array(alphas)
            fit.alpha_se = float(math.sqrt((n - 1) / n * np.sum((alphas - alphas.mean()) ** 2)))
    return fit


@dataclasses.dataclass
class NDLaw:
    """Chinchilla's parametric loss L(N, D) = E + A·N^-alpha + B·D^-beta."""
    E: float
    A: float
    alpha: float
    B: float
    beta: float
    rmse: float
    n_points: int

    def __call__(self, n, d):
        n = np.asarray(n, dtype=np.float64)
        d = np.asarray(d, dtype=np.float64)
        return self.E + self.A * n ** -self.alpha + self.B * d ** -self.beta

    def optimal(self, compute: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimising L under C = 6·N·D (Hoffmann et al. 2022, eq. 4)."""
        a, b = self.alpha, self.beta
        if self.A <= 0 or self.B <= 0:
            return float("nan"), float("nan")
        g = (a * self.A / (b * self.B)) ** (1 / (a + b))
        n = g * (compute / 6) ** (b / (a + b))
        return float(n), float(compute / (6 * n))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def fit_loss_nd(n, d, loss, exp_range=(0.02, 2.0), grid: int = 40, rounds: int = 4) -> NDLaw:
    """Least-squares fit of L(N, D): 2-D exponent grid, refined `rounds` times, NNLS inside."""
    n, d, y = (np.asarray(v, dtype=np.float64) for v in (n, d, loss))
    ok = np.isfinite(n) & np.isfinite(d) & np.isfinite(y) & (n > 0) & (d > 0)
    n, d, y = n[ok], d[ok], y[ok]
    if len(y) < 5 or len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        raise UserError("fitting L(N, D) needs >= 5 points with >= 2 sizes and >= 2 token counts")
    n0, d0 = np.exp(np.mean(np.log(n))), np.exp(np.mean(np.log(d)))
    un, ud = np.log(n / n0), np.log(d / d0)
    ones = np.ones_like(y)

    def solve(a, b):
        return _nnls_small(np.stack([ones, np.exp(-a * un), np.exp(-b * ud)], 1), y)

    lo, hi = np.log(exp_range[0]), np.log(exp_range[1])
    alo, ahi, blo, bhi = lo, hi, lo, hi
    best = (np.inf, 0.0, 0.0)
    for _ in range(rounds):
        la, lb = np.linspace(alo, ahi, grid), np.linspace(blo, bhi, grid)
        ga, gb = (g.ravel() for g in np.meshgrid(la, lb, indexing="ij"))
        design = np.stack([np.broadcast_to(ones, (len(ga), len(y))),
                           np.exp(-np.exp(ga)[:, None] * un[None, :]),
                           np.exp(-np.exp(gb)[:, None] * ud[None, :])], 2)
        sse = _nnls_batch(design, y)
        i = int(np.argmin(sse))
        if sse[i] < best[0]:
            best = (float(sse[i]), ga[i], gb[i])
        sa, sb = (ahi - alo) / (grid - 1), (bhi - blo) / (grid - 1)
        alo, ahi = best[1] - 2 * sa, best[1] + 2 * sa
        blo, bhi = best[2] - 2 * sb, best[2] + 2 * sb
    a, b = float(np.exp(best[1])), float(np.exp(best[2]))
    coef, sse = solve(a, b)
    return NDLaw(E=float(coef[0]), A=float(coef[1] * n0 ** a), alpha=a, B=float(coef[2] * d0 ** b),
                 beta=b, rmse=math.sqrt(sse / len(y)), n_points=int(len(y)))


def chinchilla_optimal(compute: float) -> tuple[float, float]:
    """Hoffmann et al.'s (N_opt, D_opt) for a budget, from their fitted L(N, D)."""
    c = CHINCHILLA
    law = NDLaw(c["E"], c["A"], c["alpha"], c["B"], c["beta"], 0.0, 0)
    return law.optimal(compute)


def frontier_points(curves: list[dict], n_levels: int = 24) -> list[dict]:
    """Kaplan/Chinchilla 'approach 1': at each compute level, the run with the lowest loss.

    `curves` holds per run {'n': params, 'flops': array, 'loss': array}; a run reaches a level
    only if it trained that far. Returns {'compute', 'n', 'loss'} at log-spaced levels.
    """
    reach = [c for c in curves if len(c["flops"]) >= 2]
    if not reach:
        return []
    lo = max(min(c["flops"][0] for c in reach), 1.0)
    hi = max(c["flops"][-1] for c in reach)
    out = []
    levels = np.exp(np.linspace(np.log(lo), np.log(hi), n_levels))
    levels[0], levels[-1] = lo, hi  # exactly the ends: exp(log(x)) may miss them by rounding
    for level in levels:
        best = None
        for c in reach:
            f, loss = np.asarray(c["flops"]), np.asarray(c["loss"])
            if f[0] <= level <= f[-1]:
                value = float(np.interp(np.log(level), np.log(f), loss))
                if best is None or value < best["loss"]:
                    best = {"compute": float(level), "n": c["n"], "loss": value,
                            "name": c.get("name", "")}
        if best:
            out.append(best)
    return out


# ----------------------------------------------------------------------------- tables & plots
