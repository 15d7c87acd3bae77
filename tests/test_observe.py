"""What a run can be watched with besides TensorBoard: a jax.profiler trace of chosen steps
(`train.profile_steps`) and Weights & Biases (`train.wandb`, here in its offline mode)."""

import glob
import json
import os

import pytest
from jax.profiler import ProfileData

from gptjax.config.loader import get_config
from gptjax.errors import UserError
from gptjax.training import train


def tiny(**overrides):
    c = get_config("configs/smoke.py:tiny")
    c.data.source = "synthetic"
    c.train.steps = 4
    c.train.log_every = 1
    c.train.eval_every = -1
    c.train.ckpt_every = 2
    c.train.plot = False
    for key, value in overrides.items():
        section, name = key.split("__")
        c[section][name] = value
    return c


def test_profile_steps_write_a_trace_the_profiler_tooling_reads(tmp_path):

    train.train(tiny(train__profile_steps="1:2"), str(tmp_path))
    traces = glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    assert len(traces) == 1, traces
    data = ProfileData.from_file(traces[0])
    planes = [p.name for p in data.planes]
    assert any("/host:CPU" in name for name in planes), planes
    events = [e.name for p in data.planes for line in p.lines for e in line.events]
    assert any("train_step" in name for name in events)  # the jitted step ran inside it


def test_bad_profile_steps_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="START:COUNT"):
        train.train(tiny(train__profile_steps="5"), str(tmp_path))


@pytest.mark.slow
def test_wandb_offline_logs_the_scalars_and_resumes_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    workdir = tmp_path / "run"
    train.train(tiny(train__steps=2, train__wandb=True), str(workdir))
    run_id = (workdir / "wandb_id").read_text().strip()
    train.train(tiny(train__steps=4, train__wandb=True), str(workdir))  # resumes at step 2
    assert (workdir / "wandb_id").read_text().strip() == run_id
    runs = sorted(glob.glob(str(workdir / "wandb" / f"offline-run-*-{run_id}")))
    assert len(runs) == 2, runs  # both processes logged to the one run id
    logged = b"".join(open(f, "rb").read() for f in glob.glob(os.path.join(runs[-1], "*.wandb")))
    train_records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    scalars = {f"train/{k}" for r in train_records for k, v in r.items()
               if k not in ("step", "split", "time") and isinstance(v, (int, float))}
    assert {"train/loss", "train/lr", "train/grad_norm"} <= scalars
    for key in scalars:  # the records of a W&B run file hold their keys as plain bytes
        assert key.encode() in logged, key
