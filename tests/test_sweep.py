"""`gptjax sweep`: planning, resume/skip logic and collection with a fake trainer, cluster
launch forms, and a real 3-size micro sweep on CPU."""

import json
import math
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

from gptjax import cli
from gptjax.config.loader import load_module
from gptjax.errors import UserError
from gptjax.scaling import cluster as sweep_launch
from gptjax.scaling import collect as sweep_collect
from gptjax.scaling import family as scaling
from gptjax.scaling import local as sweep_local
from gptjax.scaling import runs as sweep_runs
from gptjax.scaling import sweep

presets = load_module("configs/scaling.py")


def _config(preset="micro", **sweep_overrides):
    config = presets.get_config(preset)
    config.sweep.update(sweep_overrides)
    config.lock()
    return config


def _isoflop(**overrides):
    """The micro model on an IsoFLOP design: 3 budgets x 5 of 8 widths."""
    return _config("micro", d_models=(8, 16, 24, 32, 48, 64, 96, 128), depth=2, budget="iso_flops",
                   flops=BUDGETS, sizes_per_budget=5, tokens_per_param=20.0,
                   min_steps=4, evals_per_run=2, **overrides)


BUDGETS = (4e9, 4e10, 4e11)


def test_isoflop_plan_trains_each_budget_exactly(tmp_path):
    config = _isoflop()
    runs = sweep_runs.plan(config, str(tmp_path))
    assert len(runs) == 15 and len({r["name"] for r in runs}) == 15
    for budget in BUDGETS:
        group = [r for r in runs if r["budget"] == budget]
        assert len(group) == 5
        assert all(r["name"].endswith(f"_{scaling.flops_tag(budget)}") for r in group)
        for r in group:  # whole steps: the budget is met to within one step's FLOPs
            step_flops = r["flops_per_token"] * r["tokens"] / r["steps"]
            assert budget <= r["flops"] < budget + step_flops
            assert r["config"].train.steps == r["config"].optim.decay_steps == r["steps"]
            every = r["config"].train.eval_every  # evaluated at its multiples and at the end
            evals = set(range(every, r["steps"] + 1, every)) | {r["steps"]}
            assert len(evals) == config.sweep.evals_per_run, (r["steps"], every)
        n = [r["non_embedding_params"] for r in group]
        assert n == sorted(n)
    assert any(r["steps"] % config.sweep.evals_per_run for r in runs)  # ones that do not divide
    # Bigger budgets move the window towards bigger sizes.
    smallest = [min(r["non_embedding_params"] for r in runs if r["budget"] == b)
                for b in BUDGETS]
    assert smallest[0] <= smallest[1] < smallest[2]


def test_plan_lr_grid_and_rules(tmp_path):
    config = _config("micro", lrs=(1e-3, 3e-3))
    runs = sweep_runs.plan(config, str(tmp_path))
    assert [r["name"] for r in runs[:2]] == ["d8-l1_lr0.001", "d8-l1_lr0.003"]
    assert [r["config"].optim.lr for r in runs[:2]] == [1e-3, 3e-3]
    kaplan = sweep_runs.plan(_config("micro", lr_rule="kaplan"), str(tmp_path))
    lrs = [r["lr"] for r in kaplan]
    assert lrs == sorted(lrs, reverse=True)
    with pytest.raises(UserError, match="lr_rule"):
        sweep_runs.plan(_config("micro", lr_rule="cosine"), str(tmp_path))


def _fake_train(calls, fail_on=None, noise=0.0):
    """Writes metrics.jsonl / config.json like gptjax.training.train, from a known L(N, D)."""
    rng = np.random.default_rng(0)

    def train(config, workdir):
        calls.append(config.name)
        os.makedirs(workdir, exist_ok=True)
        if fail_on and config.name.endswith(fail_on):
            os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
            return {"step": 2, "loss": 3.0, "interrupted": True}
        m = config.model
        n = 12 * m.num_layers * m.d_model ** 2
        step_tokens = config.train.batch_size * config.data.seq_len
        steps = config.train.steps
        with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
            for step in [s for s in range(1, steps + 1) if s % config.train.eval_every == 0
                         or s == steps]:
                d = step * step_tokens
                loss = (1.0 + 40 * n ** -0.4 + 30 * d ** -0.35) * (1 + noise * rng.normal())
                f.write(json.dumps({"step": step, "split": "train", "loss": loss + 0.05}) + "\n")
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
    results = sweep.run_sweep(config, workdir, _fake_train(calls, fail_on="d24-l1"), log=print)
    # A run stopped by a signal stops the sweep: the later sizes are not started.
    assert len(calls) == 3 and results[2:] == [None, None, None]
    assert not os.path.exists(os.path.join(workdir, "runs", "d24-l1", "result.json"))
    calls.clear()
    results = sweep.run_sweep(config, workdir, _fake_train(calls), log=print)
    assert calls == [f"scaling-micro/{s}" for s in ("d24-l1", "d32-l1", "d48-l1")]
    assert all(r is not None and r["status"] == "done" for r in results)
    calls.clear()
    sweep.run_sweep(config, workdir, _fake_train(calls), log=print)
    assert calls == []

    report = sweep_collect.collect(config, workdir, log=lambda s: None)
    assert report["runs"] == 5 and report["pending"] == []
    for name in ("results.csv", "results.md", "fits.json", "loss_vs_params.png",
                 "training_curves.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    assert report["loss_vs_params"]["law"]["r2"] > 0.9
    # Tokens ∝ parameters: N and D move together, so L(N, D) is refused, not fitted.
    assert "collinear" in report["loss_nd"]["error"]


def test_isoflop_sweep_collects_profiles_exponents_and_approach3(tmp_path):
    config = _isoflop()
    workdir = str(tmp_path)
    sweep.run_sweep(config, workdir, _fake_train([], noise=0.002), log=lambda s: None)
    report = sweep_collect.collect(config, workdir, log=lambda s: None)
    iso = report["isoflop"]
    assert len(iso["profiles"]) == 3
    assert all(len(p["sizes"]) == 5 and p["n"] == sorted(p["n"]) for p in iso["profiles"])
    usable = [p for p in iso["profiles"] if not p["flag"]]
    assert usable and len(iso["optima"]) == len(usable)
    for o in iso["optima"]:
        assert o["n_opt"]["lo"] <= o["n_opt"]["value"] <= o["n_opt"]["hi"]
    if len(usable) >= 2:
        assert 0 < iso["a"]["value"] < 1
    nd = report["loss_nd"]
    assert nd["alpha"]["value"] == pytest.approx(0.4, abs=0.1)
    assert nd["beta"]["value"] == pytest.approx(0.35, abs=0.1)
    for p in report["compute_optimal"]:
        assert p["n_opt_approach3"]["value"] > 0
    for name in ("isoflop_profiles.png", "training_curves.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    text = open(os.path.join(workdir, "results.md")).read()
    assert "IsoFLOP profiles" in text and "approach 3" in text
    assert json.load(open(os.path.join(workdir, "fits.json")))["isoflop"]["profiles"]


def test_lr_grid_collects_the_best_lr_per_size(tmp_path):
    config = _config("micro", lrs=(1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2))
    workdir = str(tmp_path)
    best = {8: 4e-3, 16: 4e-3, 32: 4e-3}

    def train(cfg, run_dir):  # loss is a parabola in ln LR around `best`: it transfers
        os.makedirs(run_dir, exist_ok=True)
        loss = 2.0 + 0.1 * math.log(cfg.optim.lr / best[cfg.model.d_model]) ** 2
        return {"step": cfg.train.steps, "loss": loss, "eval_loss": loss}

    sweep.run_sweep(config, workdir, train, log=lambda s: None)
    lr = sweep_collect.collect(config, workdir, log=lambda s: None)["lr_sweep"]
    assert len(lr["sizes"]) == 3
    for s in lr["sizes"]:
        assert s["lr_opt"] == pytest.approx(4e-3, rel=1e-3) and not s["flag"]
    assert abs(lr["lr_opt_vs_width"]) < 1e-3
    assert os.path.getsize(os.path.join(workdir, "lr_sweep.png")) > 0


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
    stored = sweep_runs.load_sweep_config(workdir)
    assert stored.sweep.d_models == (8, 16, 32) and stored.mesh.rules[0][1] == ("data", "fsdp")
    # A different config for the same workdir is refused unless replaced explicitly.
    assert cli.main(["sweep", "--config", "configs/scaling.py:micro", "--workdir", workdir,
                     "--config.sweep.min_steps=9", "--print-commands"]) == 2
    assert "different sweep config" in capsys.readouterr().err
    assert cli.main(["sweep", "--workdir", str(tmp_path / "none"), "--collect"]) == 2
    assert "start the sweep with --config" in capsys.readouterr().err


def test_slurm_and_tpu_forms(tmp_path, capsys):
    workdir = str(tmp_path / "sw")
    argv = ["sweep", "--config", "configs/scaling.py:micro", "--workdir", workdir,
            "--config.sweep.slurm_args=--partition=gpu --time=01:00:00",
            "--config.sweep.launch_setup=source /opt/venv/bin/activate",
            "--config.sweep.tpu_args=--zone=us-central2-b --accelerator-type=v4-8 "
            "--runtime-version=tpu-ubuntu2204-base", "--print-commands"]
    assert cli.main(argv + ["slurm"]) == 0
    script = capsys.readouterr().out.splitlines()
    assert script[0] == "#!/bin/bash" and "#SBATCH --array=0-2" in script
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --time=01:00:00" in script
    runs = script[script.index("RUNS=(") + 1:script.index(")")]
    assert [r.strip() for r in runs] == ["d8-l1", "d16-l1", "d32-l1"]  # one line per run
    assert script[-2].endswith('--run "${RUNS[$SLURM_ARRAY_TASK_ID]}"')
    assert "source /opt/venv/bin/activate" in script

    assert cli.main(["sweep", "--workdir", workdir, "--print-commands", "tpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("gcloud compute tpus queued-resources create scaling-micro-d8-l1 "
                               "--node-id=scaling-micro-d8-l1 --zone=us-central2-b")
    assert f"startup-script=source /opt/venv/bin/activate && gptjax sweep --workdir {workdir} " \
           f"--run d8-l1'" in lines[0]
    assert sweep_launch.tpu_name(_config(), "D64_1.5e12") == "scaling-micro-d64-1-5e12"


@pytest.mark.slow  # a whole sweep of trainings (~1-2 min)
def test_micro_sweep_end_to_end_and_resume(tmp_path, capsys):
    """Three tiny models really train on CPU; a rerun trains nothing; a run without its
    result.json resumes from its checkpoint instead of starting over."""
    workdir = str(tmp_path / "micro")
    argv = ["sweep", "--config", "configs/scaling.py:micro", "--workdir", workdir]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("sweep: training") == 3 and "## L(N)" in out
    rows = open(os.path.join(workdir, "results.csv")).read().strip().splitlines()
    assert len(rows) == 4
    for name in ("d8-l1", "d16-l1", "d32-l1"):
        result = json.load(open(os.path.join(workdir, "runs", name, "result.json")))
        assert result["steps"] == 8 and np.isfinite(result["eval_loss"])
        assert os.path.isdir(os.path.join(workdir, "runs", name, "checkpoints"))

    assert cli.main(["sweep", "--workdir", workdir]) == 0
    out = capsys.readouterr().out
    assert "sweep: training" not in out and out.count("already finished") == 3

    os.remove(os.path.join(workdir, "runs", "d32-l1", "result.json"))
    assert cli.main(["sweep", "--workdir", workdir, "--run", "d32-l1"]) == 0
    out = capsys.readouterr().out
    assert "resuming d32-l1" in out and "resumed at step 8" in out
    assert json.load(open(os.path.join(workdir, "runs", "d32-l1", "result.json")))["resumed"]


@pytest.mark.slow  # fresh Pythons + JAX + compiles: ~30 s idle, more on a busy machine
def test_isolated_and_parallel_runs_are_subprocesses(tmp_path):
    """sweep.workers=2: each run is `python -m gptjax sweep --workdir W --run NAME` (which
    trains in-process, whatever the stored config says), two at a time."""
    workdir = str(tmp_path / "iso")
    calls = []
    results = sweep.run_sweep(_config(workers=2), workdir, _fake_train(calls), log=print)
    assert calls == []  # the in-process trainer was not used
    assert [r["status"] for r in results] == ["done"] * 3 and results[0]["steps"] == 8
    for name in ("d8-l1", "d16-l1", "d32-l1"):
        assert "sweep: training" in open(os.path.join(workdir, "runs", name, "train.log")).read()


def test_a_signal_to_a_parallel_sweep_stops_its_runs_and_starts_no_more(tmp_path, monkeypatch):
    """workers=2: SIGTERM to the sweep reaches both running runs (each saves and exits, like
    `gptjax train`), the queued runs never start, and the sweep returns at once."""
    child = ("import pathlib, signal, sys, time\n"
             "run = pathlib.Path(sys.argv[1])\n"
             "run.mkdir(parents=True, exist_ok=True)\n"
             "signal.signal(signal.SIGTERM, lambda *a: ((run / 'term').touch(), sys.exit(0)))\n"
             "(run / 'started').touch()\n"
             "if run.name == 'r0':\n"
             "    (run / 'result.json').write_text('{}')\n"
             "    sys.exit(0)\n"
             "time.sleep(120)\n")
    monkeypatch.setattr(sweep_local, "command",
                        lambda workdir, name: [sys.executable, "-c", child,
                                               os.path.join(workdir, name)])
    runs = [{"name": f"r{i}", "workdir": str(tmp_path / f"r{i}")} for i in range(6)]

    def result(run_dir):
        return {} if os.path.isfile(os.path.join(run_dir, "result.json")) else None

    def signal_when_two_run():
        deadline = time.time() + 60
        while time.time() < deadline and len(list(tmp_path.glob("r[1-5]/started"))) < 2:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=signal_when_two_run, daemon=True).start()
    t0 = time.time()
    failed, stopped = sweep_local.run_parallel(str(tmp_path), runs, 2, result, log=print)
    assert stopped and failed == [] and time.time() - t0 < 60
    started = sorted(p.parent.name for p in tmp_path.glob("r*/started"))
    assert started == ["r0", "r1", "r2"]
    assert sorted(p.parent.name for p in tmp_path.glob("r*/term")) == ["r1", "r2"]
    assert signal.getsignal(signal.SIGTERM) is not None   # the sweep's handler is removed
