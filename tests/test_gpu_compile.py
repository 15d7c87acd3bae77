"""`gptjax compile --topology h100-8`: GPU cluster names -> hosts and GPUs, the real XLA:GPU
compiler (jax's CUDA plugin, no GPU) on the train step gptjax trains, cuDNN's fused attention
in the compiled step, the fit verdict against the usable share of the GPU's memory, one-line
errors.

The default suite compiles configs/smoke.py on 8 H100s and configs/gpt2.py:124m on one; the
slow suite compiles every GPU config of docs/gpu.md (configs/gpt3_gpu.py).
"""

import json
import pathlib
import subprocess
import sys

import pytest
from conftest import needs_cuda_plugin

from gptjax import cli
from gptjax.config.loader import get_config, load_module
from gptjax.errors import UserError
from gptjax.hardware import gpu_clusters
from gptjax.hardware.gpu_clusters import parse_cluster
from gptjax.model import attention
from gptjax.performance.aot import compile_config

GPU_CONFIGS = load_module(str(pathlib.Path(__file__).resolve().parent.parent / "configs"
                              / "gpt3_gpu.py"))


@pytest.mark.parametrize("name,hosts,per_host,topology", [
    ("h100-1", 1, 1, "1x1x1"), ("h100-8", 1, 8, "1x1x8"), ("h200-4", 1, 4, "1x1x4"),
    ("a100-8", 1, 8, "1x1x8"), ("h100-128", 16, 8, "1x16x8"), ("h100-8x4", 4, 8, "1x4x8"),
    ("H100-8x16", 16, 8, "1x16x8"),
])
def test_cluster_names(name, hosts, per_host, topology):
    c = parse_cluster(name)
    assert (c.hosts, c.gpus_per_host, c.topology, c.chips) == (hosts, per_host, topology,
                                                               hosts * per_host)
    assert c.usable_bytes == int(0.9 * c.hbm_bytes)


@pytest.mark.parametrize("name,needle", [
    ("h100-12", "hosts of 8"), ("h300-8", "not a GPU cluster"), ("h100-16x2", "1-8 GPUs"),
    ("h100-0", "hosts of 8"), ("h100", "not a GPU cluster"),
])
def test_bad_cluster_is_one_line(name, needle):
    with pytest.raises(UserError, match=needle):
        parse_cluster(name)


def test_specs_are_packaged():
    for gpu in gpu_clusters.GPUS:
        text = gpu_clusters.target_config(gpu)
        assert "gpu_device_info" in text and "collective_memory_granularity:" not in text
        assert f"device_memory_size: {gpu_clusters.GPUS[gpu][1]}" in text


def _compile_json(argv, capsys) -> dict:
    assert cli.main(["compile", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _check(r, gpu: str, devices: int, layers: int):
    assert r["platform"] == "gpu" and r["chips"] == devices and r["generation"] == gpu
    assert r["fits"] and r["dtype"] == "bfloat16" and r["attention"] == "cudnn"
    m = r["memory"]
    assert 0 < m["params_bytes"] < m["argument_bytes"] and m["temp_bytes"] > 0
    assert m["total_bytes"] <= r["usable_bytes"] < r["hbm_bytes"]
    # cuDNN's forward and backward fused attention in every layer of every micro-batch (the
    # forward twice under remat full: once more in the backward pass)
    calls = layers * int(r.get("grad_accum", 1))
    assert r["kernels"]["__cudnn$fmhaSoftmaxBackward"] == calls
    assert r["kernels"]["__cudnn$fmhaSoftmax"] == calls * (2 if r["remat"] == "full" else 1)
    # XLA's matmuls vs 6N (cuDNN attention is not costed): 6N + the chunked loss's second head
    # matmul, and under remat full the layers' forward once more (at most 8N)
    upper = 1.15 if r["remat"] != "full" else 8 / 6
    assert 1.0 <= r["flops"]["xla_over_formula"] < upper, r["flops"]


@needs_cuda_plugin
def test_gpt2_on_one_h100(capsys):
    r = _compile_json(["--config", "configs/gpt2.py:124m", "--topology", "h100-1"], capsys)
    _check(r, "h100", 1, layers=12)
    assert r["eval"]["memory"]["total_bytes"] < r["memory"]["total_bytes"]
    assert not r["collectives"]


@needs_cuda_plugin
def test_smoke_fsdp_over_8_h100s(capsys):
    r = _compile_json(["--config", "configs/smoke.py", "--topology", "h100-8", "--mesh",
                       "data=1,fsdp=8", "--no-eval"], capsys)
    _check(r, "h100", 8, layers=get_config("configs/smoke.py").model.num_layers)
    assert r["mesh"]["fsdp"] == 8 and r["device_kind"] == "NVIDIA H100 80GB HBM3"
    assert {"all-gather", "reduce-scatter"} <= set(r["collectives"])


@needs_cuda_plugin
def test_misfit_is_one_line(capsys):
    """A program too large for the GPU still compiles: gptjax's own verdict stops it."""
    argv = ["compile", "--config", "configs/gpt2.py:124m", "--config.train.batch_size=384",
            "--topology", "h100-1", "--no-eval"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not fit h100-1" in err and "usable" in err, err


@needs_cuda_plugin
def test_attention_falling_back_to_xla_fails(monkeypatch):
    """attention=cudnn whose step holds no cuDNN call (here: planted, every fused attention
    run by XLA) is a failed check, not a report."""
    real = attention.jax.nn.dot_product_attention
    monkeypatch.setattr(attention.jax.nn, "dot_product_attention",
                        lambda *a, implementation=None, **k: real(*a, implementation="xla", **k))
    with pytest.raises(UserError, match="no cuDNN fused attention"):
        compile_config(get_config("configs/smoke.py"), parse_cluster("h100-1"), eval_step=False)


@pytest.mark.slow
@needs_cuda_plugin
@pytest.mark.parametrize("variant", list(GPU_CONFIGS.VARIANTS))
def test_gpu_configs_fit_as_shipped(variant, capsys):
    topology = GPU_CONFIGS.CLUSTERS[variant]
    r = _compile_json(["--config", f"configs/gpt3_gpu.py:{variant}", "--topology", topology,
                       "--no-eval"], capsys)
    _check(r, topology.split("-")[0], parse_cluster(topology).chips,
           layers=GPU_CONFIGS.VARIANTS[variant][0])


@needs_cuda_plugin
def test_too_big_for_one_h100_is_one_line(capsys):
    """6.7B parameters and their Adam state alone outgrow one H100: one line, before compiling."""
    argv = ["compile", "--config", "configs/gpt3.py:6.7b", "--topology", "h100-1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not fit h100-1" in err, err


@needs_cuda_plugin
def test_cli_stderr_is_the_one_line(repo_dir):
    """The CUDA plugin's libraries print "Could not find cuda drivers ..." from C++ as jax loads
    them on a machine without a GPU; gptjax keeps them out of its one-line errors."""
    out = subprocess.run([sys.executable, "-m", "gptjax", "compile", "--config",
                          "configs/gpt3.py:6.7b", "--topology", "h100-1"], cwd=repo_dir,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "does not fit h100-1" in out.stderr


@needs_cuda_plugin
def test_plan_asks_xla_gpu(capsys):
    argv = ["plan", "--config", "configs/smoke.py", "--mesh", "data=8", "--device", "h100",
            "--json"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["source"] == "XLA:GPU compiler (h100-8)"
    assert result["compiler"]["kernels"] and result["total_bytes"] > 0
    assert result["total_bytes"] == result["compiler"]["memory"]["total_bytes"]
