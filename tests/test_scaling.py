"""Scaling-law fits on synthetic data with known answers, size families, token budgets."""

import ml_collections
import numpy as np
import pytest

from gptjax.config.loader import load_module
from gptjax.errors import UserError
from gptjax.model import flops
from gptjax.scaling import family as scaling
from gptjax.scaling import isoflop_fit as fits
from gptjax.scaling import parametric_fit as loss_nd
from gptjax.scaling import stats

presets = load_module("configs/scaling.py")


def _inside(entry, truth):
    return entry["lo"] <= truth <= entry["hi"]


# ----------------------------------------------------------------------------- parabolas


def _profiles(a=0.45, k=0.3, curvature=0.05, sigma=0.004, budgets=(1e11, 3e11, 1e12, 3e12),
              seed=0):
    """IsoFLOP profiles that are exact parabolas in ln N with their vertex at k·C^a."""
    rng = np.random.default_rng(seed)
    offsets = np.linspace(-1.4, 1.4, 6)
    out = {}
    for c in budgets:
        n_opt = k * c ** a
        loss_opt = 1.5 + 30 * c ** -0.15
        n = n_opt * np.exp(offsets + 0.1)  # the sizes are not centred on the optimum
        loss = loss_opt + curvature * np.log(n / n_opt) ** 2 + rng.normal(0, sigma, len(n))
        out[c] = (n, loss)
    return out


def test_parabola_recovers_the_vertex():
    n = np.geomspace(1e4, 1e6, 7)
    loss = 2.0 + 0.08 * np.log(n / 8e4) ** 2
    p = fits.fit_profile(1e12, n, loss)
    assert p.flag == "" and p.x_opt == pytest.approx(8e4, rel=1e-6)
    assert p.loss_opt == pytest.approx(2.0, abs=1e-9)
    np.testing.assert_allclose(p.residuals, 0, atol=1e-9)


@pytest.mark.parametrize("shift,flag", [(3.0, "lowest loss at the smallest"),
                                        (-3.0, "lowest loss at the largest")])
def test_profiles_with_the_minimum_at_an_edge_are_flagged(shift, flag):
    n = np.geomspace(1e4, 1e6, 5)
    loss = 2.0 + 0.05 * (np.log(n / 1e5) + shift) ** 2
    assert flag in fits.fit_profile(1e12, n, loss).flag
    concave = fits.fit_profile(1e12, n, 2.0 - 0.05 * np.log(n / 1e5) ** 2)
    assert "no minimum" in concave.flag
    with pytest.raises(UserError, match=">= 4"):
        fits.fit_profile(1e12, n[:3], loss[:3])


def test_flagged_profiles_are_left_out_of_the_exponents():
    budgets = _profiles()
    n, loss = budgets[1e12]
    budgets[1e12] = (n, loss - 0.3 * np.log(n / n.min()))  # falls all the way: edge minimum
    iso = fits.isoflop_analysis(budgets, lambda n: 6 * np.asarray(n), n_boot=100)
    assert [p.key for p in iso["flagged"]] == [1e12]
    assert [o["compute"] for o in iso["optima"]] == [1e11, 3e11, 3e12]


@pytest.mark.parametrize("seed", [0, 1])
def test_isoflop_exponents_recover_known_values_within_their_cis(seed):
    a, k = 0.45, 0.3
    iso = fits.isoflop_analysis(_profiles(a=a, k=k, seed=seed), lambda n: 6 * np.asarray(n),
                                n_boot=300, seed=seed)
    assert not iso["flagged"] and iso["accepted"] == 300
    assert _inside(iso["a"], a) and _inside(iso["b"], 1 - a)  # C = 6ND: a + b = 1
    assert iso["a"]["hi"] - iso["a"]["lo"] < 0.15
    # 95% intervals: most, not necessarily all four, cover their budget's true optimum.
    covered = [_inside(o["n_opt"], k * o["compute"] ** a) for o in iso["optima"]]
    assert sum(covered) >= 3, iso["optima"]
    for o in iso["optima"]:
        assert o["d_opt"]["value"] == pytest.approx(o["compute"] / (6 * o["n_opt"]["value"]))


def test_frontier_fit_needs_four_minima_and_recovers_e():
    # Minima of a known frontier L = E + A·N_opt^-alpha over 2.5 decades of N.
    e, a_coef, alpha = 1.2, 40.0, 0.4
    budgets, rng = {}, np.random.default_rng(0)
    for c in np.geomspace(1e10, 1e15, 6):
        n_opt = 0.3 * c ** 0.5
        n = n_opt * np.exp(np.linspace(-1.2, 1.2, 5))
        budgets[c] = (n, e + a_coef * n_opt ** -alpha + 0.05 * np.log(n / n_opt) ** 2
                      + rng.normal(0, 0.002, 5))
    iso = fits.isoflop_analysis(budgets, lambda n: 6 * np.asarray(n), n_boot=200)
    ci = iso["frontier_ci"]  # L*(C) = E + A'·C^-(alpha / 2), since N_opt ∝ C^0.5
    assert _inside(ci["E"], e) and _inside(ci["alpha"], alpha / 2)
    assert _inside(ci["alpha_n"], alpha)
    assert not stats.interval_reaches_zero(ci["E"]) and not iso["frontier"].e_at_bound
    assert iso["frontier"].r2 > 0.99
    three = {c: budgets[c] for c in sorted(budgets)[:3]}
    assert "frontier" not in fits.isoflop_analysis(three, lambda n: 6 * np.asarray(n),
                                                   n_boot=20)


def test_a_floor_the_runs_do_not_bound_away_from_zero_is_said_to_reach_it():
    # One decade of a pure power law (E = 0) with noise: the fit may put E above 0, but its
    # interval reaches the bound, and the report and the plot say so instead of drawing E.
    budgets, rng = {}, np.random.default_rng(0)
    for c in np.geomspace(1e11, 1e12, 4):
        n_opt = 0.3 * c ** 0.5
        n = n_opt * np.exp(np.linspace(-1.2, 1.2, 5))
        budgets[c] = (n, 40.0 * n_opt ** -0.2 + 0.05 * np.log(n / n_opt) ** 2
                      + rng.normal(0, 0.01, 5))
    iso = fits.isoflop_analysis(budgets, lambda n: 6 * np.asarray(n), n_boot=200)
    assert stats.interval_reaches_zero(iso["frontier_ci"]["E"])
    assert not stats.interval_reaches_zero({"value": 1.2, "lo": 1.1, "hi": 1.3})
    assert not stats.interval_reaches_zero({"value": 1.2, "lo": float("nan"), "hi": float("nan")})


def test_bootstrap_drops_draws_that_would_be_flagged():
    # Shallow, noisy profiles whose vertex sits near their largest size: many redrawn parabolas
    # put it outside the sizes (or open downwards). Those draws are dropped, not fitted.
    rng = np.random.default_rng(1)
    budgets = {}
    for i, c in enumerate(np.geomspace(1e11, 1e12, 4)):
        n = 1e4 * 2 ** i * np.exp(np.linspace(-1.0, 1.0, 5))
        n_opt = n[3]
        budgets[c] = (n, 2.0 - 0.1 * i + 0.02 * np.log(n / n_opt) ** 2
                      + rng.normal(0, 0.01, 5))
    iso = fits.isoflop_analysis(budgets, lambda n: 6 * np.asarray(n), n_boot=200)
    assert not iso["flagged"] and 10 <= iso["accepted"] < 200
    for o in iso["optima"]:  # every kept draw has its vertex inside the sizes
        n = budgets[o["compute"]][0]
        assert n.min() < o["n_opt"]["lo"] <= o["n_opt"]["value"] <= o["n_opt"]["hi"] < n.max()
    assert "frontier" in iso and np.isfinite(iso["frontier_ci"]["E"]["lo"])

# ----------------------------------------------------------------------------- power laws


@pytest.mark.parametrize("E,A,alpha", [(1.7, 30.0, 0.3), (0.8, 200.0, 0.5)])
def test_power_law_recovers_known_parameters_within_cis(E, A, alpha):
    rng = np.random.default_rng(0)
    n = np.geomspace(1e3, 1e7, 9)
    clean = E + A * n ** -alpha
    out = stats.bootstrap_power_law(n, clean * (1 + rng.normal(0, 0.003, n.shape)), n_boot=200)
    for key, truth in (("E", E), ("A", A), ("alpha", alpha)):
        assert _inside(out[key], truth), (key, out[key])
    assert out["law"].r2 > 0.99 and not out["law"].e_at_bound


def test_power_law_without_e_and_at_its_bound():
    n = np.geomspace(1e3, 1e8, 6)
    pure = stats.fit_power_law(n, 7.0 * n ** -0.076, fit_e=False)
    assert pure.E == 0 and pure.alpha == pytest.approx(0.076, rel=1e-3)
    # A pure power law fitted with E: E goes to its bound 0 and says so.
    assert stats.fit_power_law(n, 7.0 * n ** -0.3).e_at_bound
    with pytest.raises(UserError, match="distinct"):
        stats.fit_power_law([1e3, 1e3, 1e4], [3.0, 3.0, 2.0])


# ----------------------------------------------------------------------------- approach 3


def _chinchilla_like(seed, sigma=0.003):
    """Losses of an IsoFLOP-style design from a known L(N, D), multiplicative noise."""
    law = loss_nd.NDLaw(E=1.4, A=40.0, alpha=0.35, B=60.0, beta=0.3)
    rng = np.random.default_rng(seed)
    n, d = [], []
    for c in np.geomspace(1e11, 1e13, 4):
        n_opt, _ = law.optimal(c)
        sizes = n_opt * np.geomspace(0.25, 4, 5)
        n += list(sizes)
        d += list(c / (6 * sizes))
    n, d = np.array(n), np.array(d)
    return law, n, d, law(n, d) * np.exp(rng.normal(0, sigma, len(n)))


@pytest.mark.parametrize("seed", [0, 1])
def test_approach3_recovers_known_parameters_within_cis(seed):
    law, n, d, loss = _chinchilla_like(seed)
    out = loss_nd.bootstrap_loss_nd(n, d, loss, budgets=[1e14], n_boot=100, seed=seed)
    for key in ("E", "A", "alpha", "B", "beta"):
        assert _inside(out[key], getattr(law, key)), (key, out[key])
    assert _inside(out["a"], law.beta / (law.alpha + law.beta))
    n_true, d_true = law.optimal(1e14)
    assert _inside(out["optima"][0]["n_opt"], n_true)
    assert _inside(out["optima"][0]["tokens_per_param"], d_true / n_true)


def test_approach3_refuses_collinear_designs_and_optimum_is_the_minimum():
    n = np.geomspace(1e4, 1e7, 8)
    with pytest.raises(UserError, match="collinear"):
        loss_nd.fit_loss_nd(n, 20 * n, 2 + n ** -0.3)
    law = loss_nd.NDLaw(**scaling.CHINCHILLA)
    budget = 1e20
    n_opt, d_opt = law.optimal(budget)
    assert 6 * n_opt * d_opt == pytest.approx(budget, rel=1e-9)
    grid = np.geomspace(1e6, 1e12, 20001)
    assert n_opt == pytest.approx(grid[np.argmin(law(grid, budget / (6 * grid)))], rel=0.01)
    # With the sweep's own FLOPs per token the numeric optimum matches the closed form at 6N.
    n_num, d_num = law.optimal(budget, lambda n: 6 * np.asarray(n, dtype=float))
    assert n_num == pytest.approx(n_opt, rel=1e-4) and d_num == pytest.approx(d_opt, rel=1e-4)
    n2, d2 = law.optimal(100 * budget)
    assert n2 > n_opt and d2 > d_opt


def test_flops_curve_interpolates_in_log_log():
    fpt = fits.flops_curve([1e3, 1e4, 1e5], [1e4, 8e4, 7e5])
    assert fpt(1e4) == pytest.approx(8e4)
    assert 8e4 < fpt(3e4) < 7e5 and fpt(1e6) > 7e5


# ----------------------------------------------------------------------------- families


def _sweep(**kw):
    sw = ml_collections.ConfigDict(presets.get_config("shakespeare_isoflop").sweep.to_dict())
    sw.update(kw)
    return sw


@pytest.mark.parametrize("preset", sorted(presets.VARIANTS))
def test_families_grow_smoothly(preset):
    config = presets.get_config(preset)
    sizes = scaling.size_family(config.sweep)
    model = config.model.to_dict()
    counts = [flops.param_counts({**model, **s})["non_embedding_params"] for s in sizes]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    ratios = np.array(counts[1:]) / np.array(counts[:-1])
    if config.sweep.family != "table":
        shapes = {s["d_model"] / s["num_layers"] for s in sizes}
        depths = {s["num_layers"] for s in sizes}
        assert len(shapes) == 1 or len(depths) == 1  # one thing varies
        assert ratios.max() < 4.0


def test_width_and_aspect_families():
    sizes = scaling.size_family(_sweep(family="width", depth=3, d_models=(32, 64), head_dim=16))
    assert [(s["num_layers"], s["d_model"], s["num_heads"], s["d_ff"]) for s in sizes] == \
        [(3, 32, 2, 128), (3, 64, 4, 256)]
    sizes = scaling.size_family(_sweep(family="aspect", depths=(2, 3, 4), aspect=32.0,
                                       head_dim=16))
    assert [(s["num_layers"], s["d_model"]) for s in sizes] == [(2, 64), (3, 96), (4, 128)]
    with pytest.raises(UserError, match="multiple of sweep.head_dim"):
        scaling.size_family(_sweep(family="width", d_models=(36,), head_dim=8))
    with pytest.raises(UserError, match="increase"):
        scaling.size_family(_sweep(family="width", d_models=(64, 32)))
    with pytest.raises(UserError, match="'rule' became"):
        scaling.size_family(_sweep(family="rule"))


def test_table_family_and_selection():
    table = (("a", 2, 64, 2, 32, 0), ("b", 4, 128, 4, 32, 512, 1e-3, 16))
    sizes = scaling.size_family(_sweep(family="table", table=table, sizes="b"))
    assert len(sizes) == 1 and sizes[0]["d_ff"] == 512 and sizes[0]["batch_size"] == 16
    assert scaling.size_family(_sweep(family="table", table=table))[0]["d_ff"] == 256
    with pytest.raises(UserError, match="unknown"):
        scaling.size_family(_sweep(family="table", table=table, sizes="c"))


def test_budgets_windows_and_tags():
    assert scaling.token_budget(_sweep(budget="fixed", tokens=1000), 10) == 1000
    assert scaling.token_budget(_sweep(budget="proportional", tokens_per_param=20.0), 1000) \
        == 20_000
    with pytest.raises(UserError, match="budget"):
        scaling.token_budget(_sweep(budget="chinchilla"), 10)
    assert scaling.compute_budgets(_sweep(flops=(1e12, 1e11))) == [1e11, 1e12]
    with pytest.raises(UserError, match="sweep.flops"):
        scaling.compute_budgets(_sweep(flops=()))
    n = np.geomspace(1e4, 1e6, 9)
    window = scaling.isoflop_window(n, 6 * n, 6 * 20 * 1e5 ** 2, 5, 20.0)
    assert window == [2, 3, 4, 5, 6]  # centred on N = 1e5, where D / N = 20
    assert scaling.isoflop_window(n, 6 * n, 1.0, 5, 20.0) == [0, 1, 2, 3, 4]  # clipped
    assert [scaling.flops_tag(c) for c in (1e12, 2.5e11, 1.25e13)] == ["1e12", "2.5e11",
                                                                        "1.25e13"]
    assert scaling.kaplan_lr(1e4) > scaling.kaplan_lr(1e8) > 0
