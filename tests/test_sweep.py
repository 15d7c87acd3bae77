"""`gptjax sweep`: planning, resume/skip logic with a fake trainer, CLI modes, and a real
3-size micro sweep on CPU."""

import json
import os

import numpy as np
import pytest

from gptjax import cli, sweep
from gptjax.config import load_module
from gptjax.errors import UserError

presets = load_module("configs/scaling.py")


def _config(preset="micro", **sweep_overrides):
    config = presets.get_config(preset)
    config.sweep.update(sweep_overrides)
    config.lock()
    return config


def test_plan_derives_one_config_per_size(tmp_path):
    config = _config("austen_cpu")
    runs = sweep.plan(config, str(tmp_path))
    assert len(runs) >= 6
    n = [r["non_embedding_params"] for r in runs]
    assert n == sorted(n) and n[-1] / n[0] >= 30
    for r in runs:
        cfg = r["config"]
        step_tokens = cfg.train.batch_size * cfg.data.seq_len
        assert r["tokens"] == r["steps"] * step_tokens
        # 20 tokens per non-embedding parameter, rounded up to whole steps (or min_steps).
        assert r["tokens"] >= 20 * r["non_embedding_params"]
        wanted = -(-20 * r["non_embedding_params"] // step_tokens)
        assert r["steps"] == max(config.sweep.min_steps, wanted)
        assert cfg.train.steps == cfg.optim.decay_steps == r["steps"]
        assert 1 <= cfg.optim.warmup_steps <= r["steps"] // 10
        assert cfg.model.d_model == r["d_model"] and cfg.model.num_layers == r["num_layers"]
        assert cfg.data.cache_dir == os.path.join(str(tmp_path), "data_cache")
    lrs = [r["lr"] for r in runs]
    assert lrs == sorted(lrs, reverse=True)  # Kaplan: smaller models take larger steps


def _fake_train(calls, fail_on=None):
    """Writes metrics.jsonl / config.json like gptjax.train, with a known L(N, D)."""
    def train(config, workdir):
        calls.append(config.name)
        os.makedirs(workdir, exist_ok=True)
        if fail_on and config.name.endswith(fail_on):
            os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
            return {"step": 2, "loss": 3.0, "interrupted": True}
        n = 12 * config.model.num_layers * config.model.d_model ** 2
        step_tokens = config.train.batch_size * config.data.seq_len
        with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
            for step in range(1, config.train.steps + 1):
                d = step * step_tokens
                loss = 1.0 + 40 * n ** -0.4 + 30 * d ** -0.35
                f.write(json.dumps({"step": step, "split": "train", "loss": loss + 0.05}) + "\n")
                if step % config.train.eval_every == 0 or step == config.train.steps:
                    f.write(json.dumps({"step": step, "split": "eval", "loss": loss}) + "\n")
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f)
        return {"step": config.train.steps, "loss": loss + 0.05, "eval_loss": loss,
                "wall_time": 0.1}
    return train


def test_sweep_skips_finished_runs_and_retries_interrupted_ones(tmp_path):
    config = _config("micro", d_models=(8, 16, 24, 32, 48), budget="proportional",
                     tokens_per_param=20.0, min_steps=4, evals_per_run=4)
    workdir = str(tmp_path)
    calls = []
    results = sweep.run_sweep(config, workdir, _fake_train(calls, fail_on="d24-l2"), log=print)
    assert len(calls) == 5 and results[2] is None
    assert not os.path.exists(os.path.join(workdir, "runs", "d24-l2", "result.json"))
    calls.clear()
    results = sweep.run_sweep(config, workdir, _fake_train(calls), log=print)
    assert calls == ["scaling-micro/d24-l2"]  # only the interrupted run trains again
    assert all(r is not None and r["status"] == "done" for r in results)
    calls.clear()
    sweep.run_sweep(config, workdir, _fake_train(calls), log=print)
    assert calls == []

    fits = sweep.collect(config, workdir, log=lambda s: None)
    assert fits["runs"] == 5 and fits["pending"] == []
    for name in ("results.csv", "results.md", "fits.json", "loss_vs_params.png",
                 "loss_vs_compute.png", "training_curves.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    nd = fits["loss_vs_params_and_tokens"]
    assert nd["alpha"] == pytest.approx(0.4, rel=0.1) and nd["beta"] == pytest.approx(0.35, rel=0.1)
    for p in fits["compute_optimal"]:
        assert 6 * p["n_opt"] * p["d_opt"] == pytest.approx(p["compute"], rel=1e-6)
    assert all(p["nearest_size"] in {"d8-l1", "d16-l1", "d24-l2", "d32-l2", "d48-l3"}
               for p in fits["compute_optimal"])
    ns = [p["n_opt"] for p in fits["compute_optimal"]]
    assert ns == sorted(ns)
    assert "| d48-l3 |" in open(os.path.join(workdir, "results.md")).read()


def test_only_and_unknown_runs(tmp_path):
    calls = []
    sweep.run_sweep(_config(), str(tmp_path), _fake_train(calls), only=["d16-l1"], log=print)
    assert calls == ["scaling-micro/d16-l1"]
    with pytest.raises(UserError, match="not in this sweep"):
        sweep.run_sweep(_config(), str(tmp_path), _fake_train(calls), only=["huge"])


def test_print_commands_and_stored_config(tmp_path, capsys):
    workdir = str(tmp_path / "sw")
    assert cli.main(["sweep", "--config", "configs/scaling.py:micro", "--workdir", workdir,
                     "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("# afterwards")
    assert lines[0] == f"gptjax sweep --workdir {workdir} --run d8-l1"
    stored = sweep.load_sweep_config(workdir)
    assert stored.sweep.d_models == (8, 16, 32) and stored.mesh.rules[0][1] == ("data", "fsdp")
    # A different config for the same workdir is refused unless replaced explicitly.
    assert cli.main(["sweep", "--config", "configs/scaling.py:micro", "--workdir", workdir,
                     "--config.sweep.min_steps=9", "--print-commands"]) == 2
    assert "different sweep config" in capsys.readouterr().err
    assert cli.main(["sweep", "--workdir", str(tmp_path / "none"), "--collect"]) == 2
    assert "start the sweep with --config" in capsys.readouterr().err


def test_micro_sweep_end_to_end_and_resume(tmp_path, capsys):
    """Three tiny models really train on CPU; a rerun trains nothing; a run without its
    result.json resumes from its checkpoint instead of starting over."""
    workdir = str(tmp_path / "micro")
    argv = ["sweep", "--config", "configs/scaling.py:micro", "--workdir", workdir]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("sweep: training") == 3 and "## Fits" in out
    rows = open(os.path.join(workdir, "results.csv")).read().strip().splitlines()
    assert len(rows) == 4
    for name in ("d8-l1", "d16-l1", "d32-l2"):
        result = json.load(open(os.path.join(workdir, "runs", name, "result.json")))
        assert result["steps"] == 8 and np.isfinite(result["eval_loss"])
        assert os.path.isdir(os.path.join(workdir, "runs", name, "checkpoints"))

    assert cli.main(["sweep", "--workdir", workdir]) == 0
    out = capsys.readouterr().out
    assert "sweep: training" not in out and out.count("already finished") == 3

    os.remove(os.path.join(workdir, "runs", "d32-l2", "result.json"))
    assert cli.main(["sweep", "--workdir", workdir, "--run", "d32-l2"]) == 0
    out = capsys.readouterr().out
    assert "resuming d32-l2" in out and "resumed at step 8" in out
    assert json.load(open(os.path.join(workdir, "runs", "d32-l2", "result.json")))["resumed"]


@pytest.mark.slow  # a fresh Python + JAX + compile: ~15 s idle, more on a busy machine
def test_isolated_runs_are_subprocesses(tmp_path):
    """sweep.isolate: each size is `python -m gptjax sweep --workdir W --run NAME`."""
    workdir = str(tmp_path / "iso")
    calls = []
    results = sweep.run_sweep(_config(), workdir, _fake_train(calls), only=["d8-l1"],
                              isolate=True)
    assert calls == []  # the in-process trainer was not used
    assert results[0]["status"] == "done" and results[0]["steps"] == 8
    assert os.path.isfile(os.path.join(workdir, "runs", "d8-l1", "metrics.jsonl"))
