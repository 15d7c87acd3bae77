"""launch/maxtext_compare.py: MaxText's compile command, its output read back, gptjax's loop
correction applied to its compiles (MaxText itself is not needed here)."""

import json

import pytest
from conftest import REPO

from gptjax.config.loader import load_module
from gptjax.hardware.devices import DEVICES
from gptjax.model.flops import flops_per_token, param_counts

MT = load_module(str(REPO / "launch" / "maxtext_compare.py"))

# The closing lines of MaxText 0.2.4's train_compile (a 2-layer d=256 gpt3-6b on v5p-8,
# remat_policy=save_qkv_proj); its cost analysis has ~200 keys, trimmed here to four.
RECORDED = """\
Jitting and compilation complete!
Finished train_compile.py successfully!
Cost analysis: {'flops': 54850187264.0, 'utilization0{}': 977.25, 'optimal_seconds': \
0.0006469562067650259, 'bytes accessed': 1414998784.0}
Memory analysis: CompiledMemoryStats(generated_code_size_in_bytes=8883200, \
argument_size_in_bytes=42578432, output_size_in_bytes=42574208, alias_size_in_bytes=42568192, \
temp_size_in_bytes=86893216, host_generated_code_size_in_bytes=0, \
host_argument_size_in_bytes=0, host_output_size_in_bytes=0, host_alias_size_in_bytes=0, \
host_temp_size_in_bytes=0)
"""


def test_reads_train_compiles_cost_and_memory():
    out = MT.parse_output(RECORDED)
    assert out["cost_analysis"] == {"flops": 54850187264.0,
                                    "optimal_seconds": 0.0006469562067650259}
    assert out["memory"]["total_bytes"] == 42578432 + 42574208 - 42568192 + 86893216
    with pytest.raises(RuntimeError, match="no cost / memory analysis"):
        MT.parse_output("Jitting and compiling train step...\n")


def test_loop_free_command_is_maxtexts_with_its_documented_options():
    scanned = MT.command("py", "full")
    loop_free = MT.command("py", "full", layers=4)
    assert scanned[:4] == ["py", "-m", "maxtext.trainers.pre_train.train_compile",
                           "src/maxtext/configs/base.yml"]
    assert "remat_policy=full" in scanned and "scan_layers=False" not in scanned
    assert {a for a in scanned if not a.startswith("run_name=")} <= set(loop_free)
    assert {"scan_layers=False", "base_num_decoder_layers=4",
            "compile_xla_flags=--xla_jf_spmd_threshold_for_windowed_einsum_mib=1000000"} \
        <= set(loop_free)


def test_estimate_applies_gptjaxs_loop_correction(tmp_path, monkeypatch):
    """From recorded compiles (no MaxText run): the fit in the depth, the remat scale and
    splash attention at peak, as `gptjax compile --estimate-time` computes them."""
    monkeypatch.setattr(MT, "COMPILES", tmp_path / "compiles.jsonl")
    chips, peak = 32, DEVICES["v5p"].peak_bf16_flops
    records = [{"remat": "full", "layers": None, "matmul_flops": 60e12,
                "cost_analysis": {"optimal_seconds": 0.2}, "memory": {"total_bytes": 1},
                "kernels": {"tpu_custom_call": 96.0}, "collectives": {}, "compile_seconds": 1}]
    records += [{"remat": "full", "layers": n, "matmul_flops": 1e12 * n,
                 "cost_analysis": {"optimal_seconds": 0.1 + 0.1 * n}} for n in (2, 4, 8)]
    MT.COMPILES.write_text("".join(json.dumps(r) + "\n" for r in records))
    row = MT.estimate("never-run", "full")
    c = MT.GPTConfig.from_config(MT.load_config(MT.SHAPE).model)
    tokens = MT.PER_DEVICE_BATCH * chips * MT.SEQ
    attention = (flops_per_token(c, MT.SEQ) - 6 * param_counts(c)["flops_params"]) * tokens
    e = row["estimate"]
    assert e["flops_scale"] == pytest.approx(60 / 48)
    assert e["step_seconds"] == pytest.approx((0.1 + 0.1 * 48) * 60 / 48
                                              + attention / chips / peak)
    assert e["mfu"] == pytest.approx(flops_per_token(c, MT.SEQ) * tokens / chips / peak
                                     / e["step_seconds"])


def test_table_reports_a_partly_compiled_policy(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(MT, "OUT", tmp_path / "maxtext.jsonl")
    monkeypatch.setattr(MT, "COMPILES", tmp_path / "compiles.jsonl")
    MT.COMPILES.write_text(json.dumps({"remat": "save_qkv_proj", "layers": None,
                                       "memory": {"total_bytes": 3 * 2 ** 30}}) + "\n")
    MT.table()
    assert "remat=save_qkv_proj: 1 of 4 compiles recorded, the step as shipped 3.0 GiB" \
        in capsys.readouterr().out
