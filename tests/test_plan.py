"""`gptjax plan`: exact state bytes, activation estimate vs XLA's compiled buffer sizes."""

import json
import math
import subprocess
import sys

import pytest

from gptjax.config.loader import get_config
from gptjax.errors import UserError
from gptjax.parallel.sharding import parse_mesh
from gptjax.performance import memory_plan as plan


def _config(spec, *overrides):
    return get_config(spec, list(overrides))


# The planner models a scanned stack of one layer group per iteration (what GPUs and TPUs compile
# under model.scan_unroll=auto); CPU unrolls the stack by default, so CPU checks pin the scan.
SCANNED = ["--config.model.scan_unroll=1"]


def test_parse_mesh():
    assert parse_mesh("data=2,fsdp=4") == {"data": 2, "fsdp": 4, "tensor": 1}
    with pytest.raises(UserError, match="AXIS=SIZE"):
        parse_mesh("pipeline=2")
    with pytest.raises(UserError, match="not an integer"):
        parse_mesh("data=two")


def test_state_bytes_exact_and_sharded():
    """Params / Adam state follow the model's shapes; fsdp and tensor divide them."""
    cfg = _config("configs/gpt2.py:124m")
    one = plan.state_bytes(cfg, {"data": 1, "fsdp": 1, "tensor": 1})
    assert one["params"] == 124_475_904  # GPT-2 small with a 50304-row tied embedding
    assert one["param_bytes"] == 4 * one["params"]
    assert one["optimizer_bytes"] == pytest.approx(2 * one["param_bytes"], rel=1e-6)
    fsdp = plan.state_bytes(cfg, {"data": 1, "fsdp": 8, "tensor": 1})
    # Every parameter has an 'embed' axis except the vector-sized norms/biases of ln_f etc.
    assert one["param_bytes"] / 8 <= fsdp["param_bytes"] < one["param_bytes"] / 7.9
    with cfg.unlocked():
        cfg.optim.state_dtype = "bfloat16"
    half = plan.state_bytes(cfg, {"data": 1, "fsdp": 1, "tensor": 1})
    # optax keeps the first moment in state_dtype, the second in the parameters' dtype.
    assert half["optimizer_bytes"] == pytest.approx(1.5 * one["param_bytes"], rel=1e-6)


def test_plan_fits_and_remat_helps():
    cfg = _config("configs/gpt3.py:2.7b", "--config.train.batch_size=8",
                  "--config.model.remat=none")
    big = plan.plan(cfg, {"data": 1, "fsdp": 1, "tensor": 1}, "v5e")
    assert big.fits is False and big.total_bytes > 16 * 2 ** 30
    sharded = plan.plan(cfg, {"data": 1, "fsdp": 8, "tensor": 1}, "h100")
    assert sharded.param_bytes < big.param_bytes / 7.5
    with cfg.unlocked():
        cfg.model.remat = "full"
    full = plan.plan(cfg, {"data": 1, "fsdp": 8, "tensor": 1}, "h100")
    assert full.activation_bytes < sharded.activation_bytes / 5
    assert full.fits is True
    assert big.compute_dtype == "bfloat16"


def test_plan_says_when_the_stack_is_unrolled():
    """On CPU scan_unroll=auto unrolls the stack, which the activation counts do not model: the
    plan says so; the scanned layout (and GPUs under auto) plans without a note."""
    cfg = _config("configs/smoke.py")
    cpu = plan.plan(cfg, {"data": 1, "fsdp": 1, "tensor": 1}, "cpu")
    assert "scan_unroll resolves to" in cpu.note and "note: " in plan.format_plan(cpu)
    assert plan.plan(cfg, {"data": 1, "fsdp": 1, "tensor": 1}, "h100").note == ""
    scanned = _config("configs/smoke.py", *SCANNED)
    assert plan.plan(scanned, {"data": 1, "fsdp": 1, "tensor": 1}, "cpu").note == ""


def test_plan_rejects_bad_input():
    cfg = _config("configs/smoke.py:tiny")
    with pytest.raises(UserError, match="--device"):
        plan.plan(cfg, {"data": 1, "fsdp": 1, "tensor": 1}, "tpu9000")
    with pytest.raises(UserError, match="does not split"):
        plan.plan(cfg, {"data": 3, "fsdp": 1, "tensor": 1}, "h100")


# (config, overrides) measured in a test; docs/memory.md holds the full table.
VALIDATION = {
    "smoke, data=8": ("configs/smoke.py", ["--config.mesh.data=8", *SCANNED]),
    "smoke, data=2 fsdp=2 tensor=2, remat=full": (
        "configs/smoke.py", ["--config.mesh.data=2", "--config.mesh.fsdp=2",
                             "--config.mesh.tensor=2", "--config.model.remat=full", *SCANNED]),
}


@pytest.mark.parametrize("name", list(VALIDATION))
def test_estimate_within_15_percent_of_xla(name):
    """The planner's total vs XLA's own buffer assignment of the real compiled train step."""
    spec, overrides = VALIDATION[name]
    cfg = _config(spec, *overrides)
    try:
        measured = plan.measure(cfg)
    except UserError as e:  # a backend without memory analysis
        pytest.skip(str(e))
    mesh = {k: int(cfg.mesh[k]) for k in ("data", "fsdp", "tensor")}
    est = plan.plan(cfg, mesh, "cpu", num_devices=8)
    err = (est.total_bytes - measured["peak_bytes"]) / measured["peak_bytes"]
    assert abs(err) < 0.15, (name, est.as_dict(), measured)
    # the exact parts are exact: the arguments are the state plus the batch
    args = est.param_bytes + est.optimizer_bytes
    assert math.isclose(measured["argument_bytes"], args, rel_tol=0.02)


def test_cli_json(repo_dir):
    out = subprocess.run(
        [sys.executable, "-m", "gptjax", "plan", "--config", "configs/gpt3.py:xl",
         "--mesh", "data=2,fsdp=4", "--device", "h100", "--json"],
        cwd=repo_dir, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    assert result["fits"] in (True, False) and result["total_bytes"] > result["param_bytes"] > 0
    bad = subprocess.run(
        [sys.executable, "-m", "gptjax", "plan", "--config", "configs/smoke.py",
         "--mesh", "data=x"], cwd=repo_dir, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not an integer" in bad.stderr


def test_memory_table_measures_a_row_and_is_the_docs_table(repo_dir, tmp_path):
    """`launch/memory_table.py run` measures a row within the 15% bound; docs/memory.md's
    validation table is exactly `markdown` of the committed records."""
    out = tmp_path / "validation.jsonl"
    run = subprocess.run([sys.executable, "launch/memory_table.py", "run", "1", "--out", str(out)],
                         cwd=repo_dir, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    row = json.loads(out.read_text())
    assert row["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1} and row["tokens_per_device"] == 512
    assert abs(row["estimate_bytes"] / row["measured_bytes"] - 1) < 0.15
    table = subprocess.run([sys.executable, "launch/memory_table.py", "markdown"], cwd=repo_dir,
                           capture_output=True, text=True, timeout=120)
    rows = [ln for ln in table.stdout.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    docs = (repo_dir / "docs" / "memory.md").read_text().splitlines()
    assert len(rows) == 24 and all(ln in docs for ln in rows)
