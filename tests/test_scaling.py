"""Scaling-law fits, size families, token budgets, tables and plots (no training)."""

import math

import ml_collections
import numpy as np
import pytest

from gptjax import flops, scaling, scaling_report
from gptjax.config import load_module
from gptjax.errors import UserError

presets = load_module("configs/scaling.py")


@pytest.mark.parametrize("E,A,alpha", [(1.7, 30.0, 0.3), (2.5, 8.0, 0.15), (0.8, 200.0, 0.5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_power_law_fit_recovers_known_parameters(E, A, alpha, seed):
    # Sizes span 10^4 so that the loss approaches E: only then is E identifiable at all.
    rng = np.random.default_rng(seed)
    n = np.geomspace(1e3, 1e7, 9)
    clean = E + A * n ** -alpha
    noisy = clean * (1 + rng.normal(0, 0.002, n.shape))
    fit = scaling.fit_power_law(n, noisy)
    assert fit.alpha == pytest.approx(alpha, rel=0.05)
    assert fit.E == pytest.approx(E, rel=0.03)
    assert fit.A == pytest.approx(A, rel=0.1)
    np.testing.assert_allclose(fit(n), clean, rtol=0.01)
    assert 0 < fit.alpha_se < 0.05 and fit.r2 > 0.99


def test_power_law_fit_pure_and_degenerate():
    n = np.geomspace(1e3, 1e8, 6)
    fit = scaling.fit_power_law(n, 7.0 * n ** -0.076, fit_e=False)
    assert fit.E == 0 and fit.alpha == pytest.approx(0.076, rel=1e-3)
    assert fit.A == pytest.approx(7.0, rel=1e-2)
    with pytest.raises(UserError, match="distinct sizes"):
        scaling.fit_power_law([1e3, 1e3, 1e4], [3.0, 3.0, 2.0])


def test_nd_fit_and_compute_optimal_allocation():
    rng = np.random.default_rng(0)
    n, d = np.meshgrid(np.geomspace(1e5, 1e8, 6), np.geomspace(1e7, 1e10, 7))
    c = scaling.CHINCHILLA
    loss = c["E"] + c["A"] * n ** -c["alpha"] + c["B"] * d ** -c["beta"]
    fit = scaling.fit_loss_nd(n.ravel(), d.ravel(), (loss + rng.normal(0, 0.002, n.shape)).ravel())
    assert fit.alpha == pytest.approx(c["alpha"], rel=0.1)
    assert fit.beta == pytest.approx(c["beta"], rel=0.1)
    assert fit.E == pytest.approx(c["E"], abs=0.1)
    # The closed-form optimum is the minimum of L along C = 6ND (checked by brute force).
    budget = 1e20
    n_opt, d_opt = fit.optimal(budget)
    assert 6 * n_opt * d_opt == pytest.approx(budget, rel=1e-9)
    grid = np.geomspace(1e6, 1e12, 20001)
    assert n_opt == pytest.approx(grid[np.argmin(fit(grid, budget / (6 * grid)))], rel=0.01)
    # Bigger budgets want bigger models and more data.
    n2, d2 = fit.optimal(100 * budget)
    assert n2 > n_opt and d2 > d_opt
    cn, cd = scaling.chinchilla_optimal(budget)
    assert 6 * cn * cd == pytest.approx(budget)


def test_frontier_picks_the_lowest_curve():
    curves = [
        {"n": 1, "flops": [1e2, 1e3, 1e4], "loss": [3.0, 2.5, 2.4]},
        {"n": 2, "flops": [1e3, 1e4, 1e5], "loss": [2.8, 2.2, 1.9]},
    ]
    front = scaling.frontier_points(curves, n_levels=5)
    assert front[0]["n"] == 1 and front[-1]["n"] == 2
    assert all(p["compute"] > 0 for p in front)


def _sweep(**kw):
    sw = presets.get_config("austen_cpu").sweep
    sw = ml_collections.ConfigDict(sw.to_dict())
    sw.update(kw)
    return sw


@pytest.mark.parametrize("preset", sorted(presets.VARIANTS))
def test_size_families_grow_monotonically(preset):
    config = presets.get_config(preset)
    sizes = scaling.size_family(config.sweep)
    model = config.model.to_dict()
    counts = [flops.param_counts({**model, **s})["non_embedding_params"] for s in sizes]
    per_token = [flops.flops_per_token({**model, **s}, config.data.seq_len) for s in sizes]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert per_token == sorted(per_token)
    if preset in ("austen_cpu", "gpu_shards", "gpt3"):
        assert len(sizes) >= 6 and counts[-1] / counts[0] >= 30


def test_rule_derives_depth_heads_and_width():
    sizes = scaling.size_family(_sweep(d_models=(32, 64, 128), aspect=32.0, head_dim=16,
                                       ff_mult=4, min_layers=1))
    assert [s["num_layers"] for s in sizes] == [1, 2, 4]
    assert [s["num_heads"] for s in sizes] == [2, 4, 8]
    assert [s["d_ff"] for s in sizes] == [128, 256, 512]
    with pytest.raises(UserError, match="multiple of sweep.head_dim"):
        scaling.size_family(_sweep(d_models=(36,), head_dim=8))
    with pytest.raises(UserError, match="family"):
        scaling.size_family(_sweep(family="grid"))


def test_table_family_and_selection():
    table = (("a", 2, 64, 2, 32, 0), ("b", 4, 128, 4, 32, 512, 1e-3, 16))
    sizes = scaling.size_family(_sweep(family="table", table=table, sizes="b"))
    assert len(sizes) == 1 and sizes[0]["d_ff"] == 512 and sizes[0]["batch_size"] == 16
    assert scaling.size_family(_sweep(family="table", table=table))[0]["d_ff"] == 256
    with pytest.raises(UserError, match="unknown"):
        scaling.size_family(_sweep(family="table", table=table, sizes="c"))


def test_token_budgets():
    assert scaling.token_budget(_sweep(budget="fixed", tokens=1000), 10, 60) == 1000
    assert scaling.token_budget(_sweep(budget="proportional", tokens_per_param=20.0), 1000, 1) \
        == 20_000
    iso = _sweep(budget="iso_flops", flops=1e12)
    assert scaling.token_budget(iso, 1, 1000) == 10 ** 9
    with pytest.raises(UserError, match="budget"):
        scaling.token_budget(_sweep(budget="chinchilla"), 10, 60)
    with pytest.raises(UserError, match="sweep.tokens"):
        scaling.token_budget(_sweep(budget="fixed", tokens=0), 10, 60)
    assert scaling.kaplan_lr(1e4) > scaling.kaplan_lr(1e8) > 0


def test_tables_and_plots(tmp_path):
    rows, curves = [], []
    for i, n in enumerate([1e4, 3e4, 1e5, 3e5]):
        loss = 1.5 + 30 * n ** -0.3
        rows.append({"name": f"s{i}", "num_layers": i + 1, "d_model": 32 * (i + 1), "params": n,
                     "non_embedding_params": int(n), "tokens": int(20 * n), "steps": 10,
                     "flops": 120 * n * n, "eval_loss": loss, "train_loss": loss,
                     "wall_time_s": 1.5})
        f = np.geomspace(1e6, 120 * n * n, 5)
        curves.append({"n": n, "flops": f, "loss": loss + 1 / np.log(f), "tokens": f / (6 * n),
                       "train_tokens": f / (6 * n), "train_loss": loss + 1 / np.log(f)})
    scaling_report.write_csv(rows, tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("name,") and len(lines) == 5
    md = scaling_report.markdown_table(rows)
    assert md.count("\n") == 6 and "| s3 |" in md and "300,000" in md
    fit = scaling.fit_power_law([r["non_embedding_params"] for r in rows],
                                [r["eval_loss"] for r in rows])
    assert math.isfinite(fit.alpha)
    scaling_report.plot_loss_vs_params(rows, fit, str(tmp_path / "p.png"), "non_embedding_params")
    scaling_report.plot_loss_vs_compute(rows, curves, None, str(tmp_path / "c.png"))
    scaling_report.plot_training_curves(rows, curves, str(tmp_path / "t.png"))
    for name in ("p.png", "c.png", "t.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
