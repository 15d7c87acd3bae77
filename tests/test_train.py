"""The training job end to end (synthetic data, tiny model): outputs, exact resume, non-finite
steps, signals and bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import faults
import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from conftest import FAST_COMPILE

from gptjax.config.loader import get_config
from gptjax.errors import UserError
from gptjax.storage import checkpoint
from gptjax.training import state as state_lib
from gptjax.training import train
from gptjax.training.state import abstract_train_state, model_config
from gptjax.workdir import load_params, open_run


def tiny(**overrides):
    c = get_config("configs/smoke.py:tiny")
    c.data.source = "synthetic"
    c.train.steps = 8
    c.train.log_every = 1
    c.train.eval_every = 4
    c.train.ckpt_every = 2
    c.train.plot = False        # matplotlib costs seconds; the full run draws it
    c.optim.warmup_steps = 2
    c.optim.decay_steps = 8     # the same schedule whether a run stops early or not
    for key, value in overrides.items():
        section, name = key.split("__")
        c[section][name] = value
    return c


def records(workdir, split="train"):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["split"] == split]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("full"))
    result = train.train(tiny(train__plot=True), workdir)
    return workdir, result


def test_outputs_of_a_run(full_run):
    workdir, result = full_run
    assert result["step"] == 8 and not result["interrupted"]
    assert np.isfinite(result["eval_loss"]) and result["eval_perplexity"] > 1
    for name in ("config.json", "metrics.jsonl", "loss.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tb")))
    train_records = records(workdir)
    assert [r["step"] for r in train_records] == list(range(1, 9))
    for key in ("loss", "lr", "grad_norm", "step_time", "tokens_per_s", "tflops_per_device"):
        assert all(np.isfinite(r[key]) for r in train_records), key
    assert all("mfu" not in r for r in train_records)  # CPU: no peak FLOP/s, no made-up MFU
    assert [r["step"] for r in records(workdir, "eval")] == [4, 8]
    # keep_checkpoints=3 newest of the interval saves (2, 4, 6, 8)
    assert checkpoint.Checkpointer(workdir, read_only=True).all_steps() == [4, 6, 8]
    # the warmup then cosine schedule of config.optim, as the run logged it
    lrs = [r["lr"] for r in train_records]
    peak = tiny().optim.lr
    assert lrs[0] == pytest.approx(peak / 2) and lrs[1] == pytest.approx(peak)
    assert lrs[-1] == pytest.approx(peak * tiny().optim.min_lr_ratio, rel=1e-4)


def test_eval_and_plot_commands_on_the_run(full_run, tmp_path):
    from gptjax.evaluation.heldout import evaluate_workdir
    from gptjax.metrics import curves
    workdir, result = full_run
    out = evaluate_workdir(workdir)
    assert out["step"] == 8
    assert out["loss"] == pytest.approx(result["eval_loss"], rel=1e-6)
    assert out["bits_per_char"] == pytest.approx(out["loss"] / np.log(2))
    png = curves.plot(workdir, str(tmp_path / "curve.png"))
    assert os.path.getsize(png) > 1000


def test_resumed_run_matches_uninterrupted_run_exactly(full_run, tmp_path):
    workdir, _ = full_run
    resumed = str(tmp_path / "resumed")
    first = train.train(tiny(train__steps=3, train__ckpt_every=3, train__eval_every=-1), resumed)
    assert first["step"] == 3 and "eval_loss" not in first
    second = train.train(tiny(), resumed)  # finds checkpoint 3, restores state + data position
    assert second["step"] == 8
    expected = [r["loss"] for r in records(workdir)]
    got = [r["loss"] for r in records(resumed)]
    assert got == expected  # bit-exact on CPU, same mesh
    assert second["eval_loss"] == full_run[1]["eval_loss"]


def test_load_for_inference_on_one_device(full_run):
    workdir, _ = full_run
    config, params, tokenizer, _ = open_run(workdir)
    assert tokenizer.vocab_size == config.model.vocab_size
    leaves = jax.tree.leaves(params)
    assert all(len(x.sharding.device_set) == 1 for x in leaves)
    mesh = jax.make_mesh((1, 8, 1), ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    sharded, step = load_params(workdir, config, mesh=mesh)
    assert step == 8
    assert not sharded["layers"]["block_0"]["mlp"]["fc"]["kernel"].sharding.is_fully_replicated
    for a, b in zip(leaves, jax.tree.leaves(sharded), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nonfinite_step_is_skipped(tmp_path, monkeypatch):
    faults.install("nan_at_batch:3", monkeypatch.setattr)
    workdir = str(tmp_path)
    result = train.train(tiny(train__steps=4, train__ckpt_every=1,
                              train__keep_checkpoints=10, train__eval_every=-1), workdir)
    assert result["skipped"] == 1 and result["step"] == 4
    recs = {r["step"]: r for r in records(workdir)}
    assert recs[3].get("skipped_steps") == 1 and "skipped_steps" not in recs[4]
    assert [recs[s]["skipped"] for s in (1, 2, 3, 4)] == [0, 0, 1, 1]
    assert np.isfinite(recs[4]["loss"])
    # Step 3 changed nothing but the schedule's count: params and Adam state after it equal
    # those after step 2; the learning-rate schedule advanced (training/optim.keep_finite).
    c = tiny()
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    abstract, sh = abstract_train_state(c, mesh)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, sh)
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
    s2, _ = ckpt.restore(2, target)
    s3, _ = ckpt.restore(3, target)
    def split(state):
        is_sched = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
        nodes = jax.tree.leaves(state.opt_state, is_leaf=is_sched)
        counts = [int(n.count) for n in nodes if is_sched(n)]
        rest = [n for n in nodes if not is_sched(n)]
        return jax.tree.leaves((state.params, rest)), counts
    (kept2, counts2), (kept3, counts3) = split(s2), split(s3)
    for a, b in zip(kept2, kept3, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert counts2 == [2] and counts3 == [3]
    assert int(s3.skipped) == 1 and int(s3.step) == 3


def test_nonfinite_stop_raises_and_keeps_checkpoints_clean(tmp_path, monkeypatch):
    faults.install("nan_at_batch:3", monkeypatch.setattr)
    workdir = str(tmp_path)
    with pytest.raises(UserError, match=r"step 3: .*not finite"):
        train.train(tiny(train__steps=6, train__nonfinite="stop",
                         train__log_every=2, train__ckpt_every=2, train__eval_every=-1), workdir)
    assert checkpoint.Checkpointer(workdir, read_only=True).all_steps() == [2]


def test_bad_input_fails_before_compiling(tmp_path, full_run):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        train.train(tiny(), str(path))
    with pytest.raises(UserError, match="needs 16 devices"):
        train.train(tiny(mesh__data=16), str(tmp_path / "w1"))
    with pytest.raises(UserError, match="nonfinite"):
        train.train(tiny(train__nonfinite="ignore"), str(tmp_path / "w2"))
    # An existing run with another model / vocabulary in the same workdir.
    workdir, _ = full_run
    with pytest.raises(UserError, match=r"mlp/fc/kernel"):
        train.train(tiny(model__d_ff=64), workdir)
    with pytest.raises(UserError, match=r"vocabulary of 65 .* 70"):
        train.train(tiny(model__vocab_size=70), workdir)


def test_cli_bad_mesh_is_one_line(tmp_path, repo_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "gptjax", "train", "--config", "configs/smoke.py:tiny",
         "--workdir", str(tmp_path / "w"), "--config.data.source=synthetic",
         "--config.mesh.tensor=3"],
        cwd=repo_dir, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "mesh" in proc.stderr


@pytest.mark.slow  # test_faults.py's SIGTERM cases cover it in the default suite
def test_sigterm_checkpoints_and_exits_cleanly(tmp_path, repo_dir):
    workdir = tmp_path / "sig"
    cmd = [sys.executable, "-m", "gptjax", "train", "--config", "configs/smoke.py:tiny",
           "--workdir", str(workdir), "--config.data.source=synthetic",
           "--config.train.steps=100000", "--config.train.log_every=20",
           "--config.train.ckpt_every=0", "--config.train.eval_every=-1",
           "--config.train.plot=false"]
    env = dict(os.environ, XLA_FLAGS=FAST_COMPILE)
    proc = subprocess.Popen(cmd, cwd=repo_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped by signal SIGTERM" in out
    steps = checkpoint.Checkpointer(str(workdir), read_only=True).all_steps()
    assert len(steps) == 1 and 20 <= steps[0] < 100000
    # Rerunning resumes after the saved step (here with a shorter horizon, in-process).
    stopped = steps[0]
    c = get_config("configs/smoke.py:tiny")
    c.data.source, c.train.plot, c.train.eval_every = "synthetic", False, -1
    c.train.steps, c.train.log_every = stopped + 2, 1
    result = train.train(c, str(workdir))
    assert result["step"] == stopped + 2
    assert [r["step"] for r in records(str(workdir))][-2:] == [stopped + 1, stopped + 2]


@pytest.mark.parametrize("kind,peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("TPU v4", 275e12), ("TPU v5 lite", 197e12),
    ("TPU v5p", 459e12), ("TPU v6 lite", 918e12), ("cpu", None), ("NVIDIA GeForce RTX 3090", None),
])
def test_peak_flops_table_and_mfu(kind, peak):
    from gptjax.hardware.devices import peak_flops, throughput
    assert peak_flops(kind) == peak
    out = throughput(tokens_per_s=1e5, flops_per_token=6e9, num_devices=8, device_kind=kind)
    assert out["tflops_per_device"] == pytest.approx(1e5 * 6e9 / 8 / 1e12)
    if peak is None:
        assert "mfu" not in out
    else:
        assert out["mfu"] == pytest.approx(100 * 1e5 * 6e9 / 8 / peak)


def test_weight_decay_mask_and_schedule():
    from gptjax.parallel.params import abstract_params
    from gptjax.training.optim import decay_mask, schedule
    c = tiny(model__use_bias=True, model__tie_embeddings=False)
    mask = decay_mask(nn.unbox(abstract_params(model_config(c))))
    flat = {"/".join(str(getattr(k, "key", k)) for k in p): v
            for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    decayed = sorted(k for k, v in flat.items() if v)
    assert decayed == sorted(["head/kernel", "layers/block_0/attn/proj/kernel",
                              "layers/block_0/attn/qkv/kernel", "layers/block_0/mlp/fc/kernel",
                              "layers/block_0/mlp/proj/kernel"])
    assert not flat["wte/embedding"] and not flat["wpe"] and not flat["ln_f/scale"]
    assert not flat["layers/block_0/mlp/fc/bias"]
    o = c.optim
    o.lr, o.warmup_steps, o.decay_steps, o.min_lr_ratio = 1.0, 10, 110, 0.1
    lr = schedule(o, 1000)
    # finished steps s -> lr of step s + 1: warmup reaches the peak at step 10, the floor at 110
    assert float(lr(0)) == pytest.approx(0.1) and float(lr(9)) == pytest.approx(1.0)
    assert float(lr(59)) == pytest.approx(0.55, abs=1e-6)  # half-way down the cosine
    assert float(lr(109)) == pytest.approx(0.1) and float(lr(500)) == pytest.approx(0.1)


def test_nonfinite_params_are_never_saved(tmp_path):
    """The checkpoint hook's last line of defence: a state whose params hold a NaN is refused
    with one line naming the step, and nothing is written."""
    from gptjax.parallel import sharding
    from gptjax.training import loop
    c = tiny()
    mesh = sharding.make_mesh(c.mesh)
    good = state_lib.create_train_state(c, mesh)
    bad = good.replace(params=jax.tree.map(lambda p: p.at[(0,) * p.ndim].set(np.nan),
                                           good.params))
    ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)

    class Batches:
        def get_state(self):
            return {}

    saving = train.Saving(ckpt, Batches(), c.to_dict(), None)
    with pytest.raises(UserError, match="step 5: parameters are not finite"):
        saving(loop.StepInfo(5, bad, {}, False, False, 0.0))
    saving(loop.StepInfo(4, good, {}, False, False, 0.0))
    ckpt.close()
    assert checkpoint.Checkpointer(str(tmp_path), read_only=True).all_steps() == [4]
