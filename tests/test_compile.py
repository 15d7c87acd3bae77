"""`gptjax compile`: TPU accelerator types -> slices, the real TPU compiler (libtpu, no TPU) on
the train step gptjax trains, HLO FLOP counting with loop trip counts, one-line errors.

The default suite compiles configs/smoke.py and configs/gpt2.py:124m for two TPU generations
(with tests/test_doc_plans.py, which runs docs/tpu.md's GPT-2 command for v5e-8);
the slow suite compiles every GPT-3 size on the slice configs/gpt3.py documents for it.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import pytest
from conftest import needs_libtpu

from gptjax import cli
from gptjax.config.loader import get_config, load_module
from gptjax.errors import UserError
from gptjax.hardware import hlo
from gptjax.hardware.tpu_slices import parse_topology
from gptjax.performance import step_time
from gptjax.performance.aot import compile_config

GPT3 = load_module(str(pathlib.Path(__file__).resolve().parent.parent / "configs" / "gpt3.py"))


@pytest.mark.parametrize("name,grid,chips,hosts", [
    ("v5p-8", "2x2x1", 4, 1), ("v5p-32", "2x2x4", 16, 4), ("v5p-128", "4x4x4", 64, 16),
    ("v5p-1024", "8x8x8", 512, 128), ("v4-32", "2x2x4", 16, 4), ("v5e-1", "1x1", 1, 1),
    ("v5litepod-8", "2x4", 8, 1), ("v5e-64", "8x8", 64, 16), ("v6e-256", "16x16", 256, 64),
    ("v6e:8x16", "8x16", 128, 32), ("v5p:4x4x12", "4x4x12", 192, 48),
])
def test_accelerator_types_map_to_slices(name, grid, chips, hosts):
    s = parse_topology(name)
    assert (s.topology, s.chips, s.hosts) == (grid, chips, hosts)


@pytest.mark.parametrize("name,needle", [
    ("v5q-8", "not a TPU accelerator type"), ("v5p-7", "counts 2 core"),
    ("v5p-384", "power-of-two"), ("v6e:4x4x4", "2-D grids"), ("tpu", "not a TPU"),
])
def test_bad_topology_is_one_line(name, needle):
    with pytest.raises(UserError, match=needle):
        parse_topology(name)


def test_cli_typo_is_one_line(capsys):
    assert cli.main(["compile", "--config", "configs/smoke.py", "--topology", "v5q-8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "v5q-8" in err


@needs_libtpu
def test_too_small_slice_is_one_line(capsys):
    assert cli.main(["compile", "--config", "configs/gpt3.py:xl", "--topology", "v5e-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not fit v5e-1" in err, err


def test_hlo_counts_loop_bodies_by_trip_count():
    """cost_analysis() counts a while body once; hlo.analyze weighs it by its trip count."""
    def f(x, w):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=5)[0]
    x = jax.ShapeDtypeStruct((64, 32), jnp.float32)
    w = jax.ShapeDtypeStruct((32, 32), jnp.float32)
    compiled = jax.jit(f).lower(x, w).compile()
    assert hlo.analyze(compiled.as_text())["matmul_flops"] == 5 * 2 * 64 * 32 * 32


def _check(report, generation):
    assert report["generation"] == generation and report["fits"]
    m = report["memory"]
    assert 0 < m["params_bytes"] < m["argument_bytes"] and m["temp_bytes"] >= 0
    assert m["total_bytes"] <= report["hbm_bytes"]
    assert report["attention"] == "splash" and report["dtype"] == "bfloat16"
    # XLA's matmuls vs 6N (splash kernels are not costed): 6N plus the chunked loss's second
    # head matmul (2·V·D per token), and nothing else.
    assert 1.0 <= report["flops"]["xla_over_formula"] < 1.15, report["flops"]
    assert report["kernels"]["tpu_custom_call"] >= 3  # splash forward, dq, dkv


@needs_libtpu
@pytest.mark.parametrize("topology,generation,slices", [("v5p-8", "v5p", 1), ("v5e-4", "v5e", 2)])
def test_compile_smoke(topology, generation, slices):
    """Two generations; the second as two slices (multislice: data parallel across them)."""
    report = compile_config(get_config("configs/smoke.py"), parse_topology(topology, slices))
    _check(report, generation)
    assert report["mesh"] == {"data": 4 * slices, "fsdp": 1, "tensor": 1}
    # Data parallel: gradients are all-reduced (across slices in two levels: reduce-scatter in
    # each slice, all-reduce between them, all-gather back).
    assert "all-reduce" in report["collectives"]
    assert set(report["collectives"]) <= {"all-reduce", "reduce-scatter", "all-gather"}
    assert report["eval"]["memory"]["total_bytes"] > 0


@needs_libtpu
@pytest.mark.parametrize("topology,generation", [("v4-16", "v4")])
def test_compile_gpt2_124m(topology, generation):
    """A second generation; docs/tpu.md's own command compiles it for v5e-8
    (tests/test_doc_plans.py)."""
    config = get_config("configs/gpt2.py:124m", ["--config.mesh.data=1", "--config.mesh.fsdp=-1"])
    report = compile_config(config, parse_topology(topology), eval_step=False)
    _check(report, generation)
    assert report["memory"]["temp_bytes"] > 2 ** 30
    # FSDP: parameters gathered, gradients scattered (reduce-scatter, or XLA's windowed
    # matmuls that pass shards around with collective-permutes).
    assert "all-gather" in report["collectives"]
    assert {"reduce-scatter", "collective-permute"} & set(report["collectives"])


@pytest.mark.slow
@needs_libtpu
@pytest.mark.parametrize("size", list(GPT3.VARIANTS))
def test_gpt3_compiles_and_fits_on_its_documented_slice(size, capsys):
    """As users run it: only --topology, the JSON says fits: true."""
    argv = ["compile", "--config", f"configs/gpt3.py:{size}", "--topology", GPT3.SLICES[size],
            "--json", "--no-eval"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fits"] is True and report["batch"] * 2048 == GPT3.VARIANTS[size][4]


@needs_libtpu
def test_time_estimate_corrects_for_loops(capsys):
    """cost_analysis() counts each loop body once; the estimate's fit over loop-free variants
    reproduces the loop-weighted matmul FLOPs of the real step (scanned layers, chunked loss,
    two micro-batches) at full depth, and its time is the corrected one."""
    argv = ["compile", "--config", "configs/smoke.py:tiny", "--config.train.grad_accum=2",
            "--config.train.batch_size=32", "--topology", "v5p-8", "--no-eval",
            "--estimate-time", "--json"]
    assert cli.main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    e = r["estimate"]
    assert [p["layers"] for p in e["points"]] == [2, 4, 8]
    assert e["extrapolated_matmul_flops"] == pytest.approx(e["loop_weighted_matmul_flops"],
                                                           rel=1e-3)
    assert r["cost_analysis"]["flops"] < 0.7 * e["loop_weighted_matmul_flops"]  # loops once
    assert e["step_seconds"] > e["raw_optimal_seconds"] > 0
    assert 0 < e["mfu"] < e["raw_mfu"]


@needs_libtpu
def test_time_estimate_the_cost_model_cannot_cost_is_one_line(monkeypatch):
    """libtpu prices an op it cannot cost at -1 s (seen: the async call XLA made of a
    per-device float32 gradient with one row per chip); a time <= 0 is refused in one line,
    never reported. The compile is stubbed: today's steps no longer make that call."""
    class Compiled:
        def as_text(self):
            return ""
    monkeypatch.setattr(step_time.aot, "compile_train", lambda *a, **k: (Compiled(), None))
    monkeypatch.setattr(step_time.aot, "cost_of", lambda compiled: {"optimal_seconds": -1.0})
    config = get_config("configs/smoke.py:tiny")
    with pytest.raises(UserError, match="could not cost the 2-layer") as e:
        step_time._point(config, parse_topology("v5p-8"), 2)
    assert len(str(e.value).splitlines()) == 1


def test_time_estimate_needs_a_tpu(capsys):
    argv = ["compile", "--config", "configs/smoke.py", "--topology", "h100-1", "--estimate-time"]
    assert cli.main(argv) == 2
    assert "no cost model" in capsys.readouterr().err


def test_time_estimate_fit_and_scale():
    """The loop correction's arithmetic: the cost model's seconds fitted linearly in depth and
    read at full depth, times the micro-batches, scaled where the real step does more matmul
    work than the fit, plus splash attention's FLOPs at peak."""
    points = [{"layers": n, "seconds": 1.0 + 0.5 * n, "matmul_flops": 10.0 * n} for n in (2, 4, 8)]
    report = {"chips": 4, "attention": "splash", "kernels": {"tpu_custom_call": 3},
              "cost_analysis": {"optimal_seconds": 2.0},
              "flops": {"formula_attention": 400.0, "xla_matmul": 4 * 480.0, "formula": 4000.0}}
    e = step_time.summarize(points, report, depth=12, accum=2, peak=100.0)
    assert e["extrapolated_matmul_flops"] == pytest.approx(2 * 120.0)
    assert e["flops_scale"] == pytest.approx(2.0)  # 480 loop-weighted vs 240 extrapolated
    assert e["attention_seconds"] == pytest.approx(1.0)  # 400 / 4 chips / 100 FLOP/s
    assert e["step_seconds"] == pytest.approx(2 * 7.0 * 2.0 + 1.0)  # t(12) = 7 s
    assert e["mfu"] == pytest.approx(1000.0 / 100.0 / 29.0)
    assert e["raw_mfu"] == pytest.approx(1000.0 / 100.0 / 2.0)
