"""What a scaling sweep trains: the model family, each run's token budget and learning rate.

Families vary one thing, so that neighbouring sizes differ smoothly:
- width:  every size has `sweep.depth` layers; d_model runs over `sweep.d_models`.
- aspect: depth runs over `sweep.depths` and d_model = `sweep.aspect` · depth, so the shape
  (d_model / num_layers) is the same at every size (Kaplan et al. 2020, section 3.1).
- table:  rows given explicitly (e.g. the GPT-3 sizes), for clusters.
Heads are d_model / head_dim and d_ff = ff_mult · d_model in the first two.

Budgets (`sweep.budget`): `fixed` tokens per run; `proportional`, tokens = tokens_per_param · N;
`iso_flops`, Chinchilla's IsoFLOP design: for each compute budget in `sweep.flops` the
`sweep.sizes_per_budget` sizes of the family nearest to a guessed optimum (D/N =
tokens_per_param), each trained on exactly C / (FLOPs per token) tokens.

Parameter counts and FLOPs are `gptjax/model/flops.py`'s.
"""

from __future__ import annotations

import math

import numpy as np

from gptjax.errors import UserError

# Published results, for context in tables and docs.
KAPLAN_ALPHA_N = 0.076      # L(N) = (N_c / N)^0.076 (Kaplan et al. 2020)
KAPLAN_A = 0.73             # N_opt ∝ C^0.73 (Kaplan et al. 2020, section 6)
CHINCHILLA_A = 0.50         # N_opt ∝ C^0.50 (Hoffmann et al. 2022, approaches 1-2: 0.50, 0.49)
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def _heads(d_model: int, head_dim: int) -> int:
    if d_model % head_dim:
        raise UserError(f"sweep: d_model={d_model} is not a multiple of sweep.head_dim={head_dim}; "
                        f"pick widths that are")
    return d_model // head_dim


def _shape(layers: int, d: int, sweep) -> dict:
    return dict(name=f"d{d}-l{layers}", num_layers=layers, d_model=d,
                num_heads=_heads(d, int(sweep.head_dim)), head_dim=int(sweep.head_dim),
                d_ff=int(sweep.ff_mult * d))


def _increasing(values, key: str) -> list[int]:
    values = [int(v) for v in values]
    if not values:
        raise UserError(f"sweep.{key} is empty")
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise UserError(f"sweep.{key}={tuple(values)} must increase strictly")
    return values


def _table_family(sweep) -> list[dict]:
    if not sweep.table:
        raise UserError("sweep.family='table' needs sweep.table rows "
                        "(name, layers, d_model, heads, head_dim, d_ff)")
    sizes = []
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
    return sizes


def size_family(sweep) -> list[dict]:
    """The model shapes of a sweep, smallest first: dicts of `config.model` fields + 'name'."""
    if sweep.family == "width":
        sizes = [_shape(int(sweep.depth), d, sweep) for d in _increasing(sweep.d_models,
                                                                          "d_models")]
    elif sweep.family == "aspect":
        sizes = []
        for layers in _increasing(sweep.depths, "depths"):
            d = sweep.aspect * layers
            if abs(d - round(d)) > 1e-9:
                raise UserError(f"sweep.aspect={sweep.aspect} x depth {layers} is not a whole "
                                f"d_model")
            sizes.append(_shape(layers, int(round(d)), sweep))
    elif sweep.family == "table":
        sizes = _table_family(sweep)
    else:
        hint = " ('rule' became 'aspect' and 'width')" if sweep.family == "rule" else ""
        raise UserError(f"sweep.family={sweep.family!r}: choose width, aspect or table{hint}")
    names = [s["name"] for s in sizes]
    if len(set(names)) != len(names):
        raise UserError(f"sweep: two sizes share a name in {names}")
    return sizes


def token_budget(sweep, n_params: int) -> int:
    """Tokens of one run under a `fixed` or `proportional` budget."""
    if sweep.budget == "fixed":
        if sweep.tokens <= 0:
            raise UserError("sweep.budget='fixed' needs sweep.tokens > 0")
        return int(sweep.tokens)
    if sweep.budget == "proportional":
        if sweep.tokens_per_param <= 0:
            raise UserError("sweep.budget='proportional' needs sweep.tokens_per_param > 0")
        return int(math.ceil(sweep.tokens_per_param * n_params))
    raise UserError(f"sweep.budget={sweep.budget!r}: choose fixed, proportional or iso_flops")


def compute_budgets(sweep) -> list[float]:
    """The IsoFLOP budgets, smallest first (sweep.flops: one number or several)."""
    flops = sweep.flops if isinstance(sweep.flops, (tuple, list)) else (sweep.flops,)
    flops = sorted(float(c) for c in flops)
    if not flops or flops[0] <= 0:
        raise UserError("sweep.budget='iso_flops' needs sweep.flops: one or more training "
                        "budgets in FLOPs, e.g. (1e12, 3e12, 1e13)")
    return flops


def isoflop_window(n, fpt, budget: float, per_budget: int, tokens_per_param: float) -> list[int]:
    """Indices of the `per_budget` consecutive sizes (of n, fpt: the sizes that can train on
    this budget) centred on the guessed optimum, the size whose D / N is nearest to
    `tokens_per_param` when D = C / fpt."""
    n, fpt = np.asarray(n, np.float64), np.asarray(fpt, np.float64)
    if len(n) < per_budget:
        raise UserError(f"sweep: budget {budget:.3g} FLOPs wants {per_budget} sizes, the family "
                        f"has {len(n)} that fit it; add sizes or lower sweep.sizes_per_budget")
    ratio = budget / (fpt * n)  # tokens per parameter each size would get
    centre = int(np.argmin(np.abs(np.log(ratio / tokens_per_param))))
    start = min(max(centre - per_budget // 2, 0), len(n) - per_budget)
    return list(range(start, start + per_budget))


def flops_tag(compute: float) -> str:
    """A short, file-name-safe label of a budget: 2.5e11, 1e12."""
    mantissa, exponent = f"{compute:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def kaplan_lr(n_non_embedding: int) -> float:
    """Kaplan et al. (2020) eq. D.1: LR(N) ≈ 0.003239 − 0.0001395·log(N)."""
    return max(1e-5, 0.003239 - 0.0001395 * math.log(max(n_non_embedding, 2)))
