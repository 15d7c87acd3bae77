"""`gptjax bench` times the real train step on CPU, without ever importing TensorFlow, and
`--against nanogpt` nanoGPT's torch step beside it."""

import json
import re
import subprocess
import sys

import pytest

from gptjax.config.loader import get_config
from gptjax.errors import UserError
from gptjax.performance import step_bench as bench
from gptjax.performance import versus_nanogpt

# Runs bench through the CLI in a fresh interpreter, then reports whether TensorFlow was loaded.
SCRIPT = """
import json, sys
from gptjax.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "tensorflow": "tensorflow" in sys.modules}))
"""


def test_bench_cli_json_without_tensorflow(repo_dir):
    args = ["bench", "--config", "configs/smoke.py:tiny", "--steps", "3", "--warmup", "1",
            "--json", "--config.mesh.data=4", "--config.mesh.fsdp=2"]
    out = subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=repo_dir,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    result, status = lines[0], lines[-1]
    assert status == {"code": 0, "tensorflow": False}
    assert result["num_devices"] == 8 and result["mesh"] == {"data": 4, "fsdp": 2, "tensor": 1}
    assert result["tokens_per_s"] > 0 and result["step_ms"] > 0
    assert result["tokens_per_s"] == pytest.approx(8 * 16 / (result["step_ms"] / 1e3), rel=1e-6)
    assert result["flops_per_token"] > 0 and result["tflops_per_device"] > 0
    assert "mfu" not in result  # CPUs are not in the peak table: no made-up MFU
    assert result["platform"] == "cpu" and result["versions"]["jax"]
    assert result["xla_memory_bytes"] > 0
    assert 3.0 < result["loss"] < 6.0  # ~ln(65) for random tokens


def test_format_result_mentions_mfu_only_when_known():
    r = {"name": "x", "num_devices": 1, "device_kind": "NVIDIA H100 80GB HBM3", "mesh": {},
         "batch_size": 8, "seq_len": 1024, "dtype": "bfloat16", "attention": "cudnn",
         "remat": "none", "tokens_per_s": 4e5, "step_ms": 20.0, "tflops_per_device": 300.0,
         "mfu": 30.3, "compile_s": 10.0, "loss": 10.9, "peak_memory_bytes": 30 * 2 ** 30,
         "versions": {"jax": "0.11.2", "flax": "0.12.10"}, "date": "2026-11-23T12:00Z"}
    text = bench.format_result(r)
    assert "MFU 30.3%" in text and "peak memory 30,720.0 MiB" in text
    del r["mfu"]
    assert "no MFU" in bench.format_result(r)


@pytest.mark.slow  # two fresh interpreters (jax, torch) and a compile: 25-150 s on 2 busy cores
def test_bench_against_nanogpt_prints_both_timings_and_the_ratio(repo_dir, shared_dir):
    pytest.importorskip("torch")
    nanogpt = shared_dir / "anchors" / "nanogpt"
    if not (nanogpt / "model.py").is_file():
        pytest.skip(f"no nanoGPT checkout at {nanogpt}")
    args = ["bench", "--config", "configs/smoke.py:tiny", "--against", "nanogpt",
            "--nanogpt-dir", str(nanogpt), "--windows", "2", "--steps", "1", "--warmup", "1",
            "--threads", "1", "--config.model.d_ff=64"]  # nanoGPT: d_ff = 4 d_model
    out = subprocess.run([sys.executable, "-m", "gptjax", *args], cwd=repo_dir,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert re.search(r"gptjax .*: [\d.]+ ms/iter \(median; windows [\d.]+-[\d.]+\)", text), text
    assert re.search(r"nanoGPT \(torch .* eager\): [\d.]+ ms/iter", text), text
    assert re.search(r"ratio gptjax / nanoGPT: [\d.]+ \(CPU time [\d.]+\)", text), text
    assert "1 threads" in text and "batch 8 x 16, 2 layers, d_model 16, vocab 72" in text


def test_bench_against_nanogpt_refuses_a_shape_nanogpt_lacks(repo_dir):
    config = get_config("configs/smoke.py:tiny", ["--config.model.position=rotary"])
    with pytest.raises(UserError, match="nanoGPT's model cannot run this config.*rotary"):
        versus_nanogpt.shape_of(config)
