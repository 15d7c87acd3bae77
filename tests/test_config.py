"""Config loading and command-line overrides: typos fail with one line naming the key."""

import json
import re
import subprocess
import sys

import pytest
from conftest import REPO

from gptjax.config.loader import get_config, load_module
from gptjax.errors import UserError
from gptjax.model.gpt import GPTConfig


def test_overrides_apply_with_types():
    c = get_config("configs/smoke.py:tiny", ["--config.model.num_layers=3",
                                             "--config.optim.lr=0.5",
                                             "--config.model.scan_layers=false",
                                             "--config.model.position=rotary"])
    assert (c.model.num_layers, c.optim.lr, c.model.scan_layers, c.model.position) == (
        3, 0.5, False, "rotary")


@pytest.mark.parametrize("override, message", [
    ("--config.model.nmu_layers=2", "unknown config key 'model.nmu_layers' (did you mean "
                                    "'model.num_layers'?)"),
    ("--config.model.num_layers=two", "expected a value of type int"),
    ("--config.model=3", "is a group"),
    ("--config.nosuch.key=1", "unknown config key 'nosuch.key'"),
])
def test_override_errors(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        get_config("configs/smoke.py:tiny", [override])


def test_missing_config_file():
    with pytest.raises(UserError, match="no such file"):
        get_config("configs/nope.py")


@pytest.mark.parametrize("field, value, message", [
    ("position", "absolute", "position='absolute'"),
    ("remat", "sometimes", "remat='sometimes'"),
    ("dtype", "float8", "dtype='float8'"),
])
def test_model_config_validation(field, value, message):
    c = get_config("configs/smoke.py:tiny", [f"--config.model.{field}={value}"])
    with pytest.raises(UserError, match=message):
        GPTConfig.from_config(c.model)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "gptjax", *args], capture_output=True,
                          text=True, timeout=120)


def test_cli_info_json():
    out = run_cli("info", "--config", "configs/gpt3.py:small", "--json")
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert abs(stats["params"] / 125e6 - 1) < 0.03
    assert {"params", "non_embedding_params", "flops_per_token"} <= set(stats)
    big = json.loads(run_cli("info", "--config", "configs/gpt3.py:175b", "--json").stdout)
    assert abs(big["params"] / 175e9 - 1) < 0.03


def test_cli_unknown_key_is_one_line():
    out = run_cli("info", "--config", "configs/gpt3.py:small", "--config.model.nmu_layers=2")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "model.nmu_layers" in lines[0] and "model.num_layers" in lines[0]
    assert "Traceback" not in out.stderr


def test_cli_unknown_command_and_argument():
    out = run_cli("trian")
    assert out.returncode == 2 and "unknown command 'trian'" in out.stderr
    out = run_cli("info", "--config", "configs/smoke.py", "--bogus")
    assert out.returncode == 2 and "--bogus" in out.stderr and len(out.stderr.splitlines()) == 1


def _all_variants():
    specs = []
    for path in sorted((REPO / "configs").glob("*.py")):
        names = list(getattr(load_module(str(path)), "VARIANTS", {})) or [None]
        specs += [f"configs/{path.name}" + (f":{v}" if v else "") for v in names]
    return specs


@pytest.mark.parametrize("spec", _all_variants())
def test_every_config_variant_loads(spec):
    c = get_config(spec)
    GPTConfig.from_config(c.model)  # the model section validates
    assert c.train.batch_size > 0 and c.data.seq_len > 0


@pytest.mark.parametrize("spec, message", [
    ("configs/gpt3.py:smal", "unknown variant 'smal' (did you mean 'small'?)"),
    ("configs/smoke.py:tny", "unknown variant 'tny' (did you mean 'tiny'?)"),
    ("configs/scaling.py:nope", "unknown variant 'nope'"),
    ("configs/shakespeare_char.py:big", "has no variants"),
])
def test_cli_bad_variant_is_one_line(spec, message):
    out = run_cli("info", "--config", spec)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr


def test_overrides_to_a_command_that_ignores_them_are_an_error(tmp_path):
    out = run_cli("plot", str(tmp_path), "--config.train.steps=3")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "takes no --config.KEY=VALUE overrides" in lines[0], out.stderr
