"""Every command in README.md and docs/*.md works as written (tests/doc_commands.py reads them).

Default suite: each `gptjax` command parses (subcommand, flags, config file and variant, every
`--config.KEY=VALUE`), and no command is an unrunnable fragment unless tagged. Slow suite
(`bash launch/test.sh --slow`): every untagged command runs, in document order, in a scratch
directory, with training commands scaled down to a few steps of a tiny model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from doc_commands import REPO, TAGS, commands

from gptjax import cli
from gptjax.config import loader as config

COMMANDS = commands()
GPTJAX = [c for c in COMMANDS if c.tag is None and c.argv[0] == "gptjax"]
# Scaled down: a few steps of a tiny model (keys that every config has; 3 layers, so that
# the compression report can drop two).
TINY = ["--config.model.num_layers=3", "--config.model.d_model=32", "--config.model.num_heads=2",
        "--config.model.head_dim=16", "--config.model.d_ff=64", "--config.train.steps=4",
        "--config.train.log_every=2", "--config.train.eval_every=2",
        "--config.train.eval_batches=1", "--config.train.ckpt_every=2"]
# Sweeps: two small budgets (IsoFLOP presets) or a few steps per run (fixed-token presets).
SWEEP = ["--config.sweep.flops=(3e9,6e9)", "--config.sweep.tokens=2048",
         "--config.sweep.min_steps=2", "--config.sweep.evals_per_run=1",
         "--config.sweep.n_boot=20", "--config.train.eval_batches=1"]
# bench: d_ff = 4 d_model, so that `--against nanogpt` (nanoGPT's fixed MLP width) runs too.
SCALE_DOWN = {"train": TINY, "finetune": TINY, "bench": [*TINY, "--config.model.d_ff=128"],
              "bench-decode": TINY,
              "bench-checkpoint": TINY,
              "data": ["--config.data.max_documents=200"], "sweep": SWEEP}


def test_commands_are_found_and_tagged_properly():
    assert len(GPTJAX) > 20
    for c in COMMANDS:
        assert c.tag is None or c.tag in TAGS, f"{c.id}: unknown tag [{c.tag}]"
        if c.tag is None:
            assert "..." not in c.text and "[--" not in c.text, (
                f"{c.id}: `{c.text}` cannot run as written; complete it or tag it")


@pytest.mark.parametrize("cmd", GPTJAX, ids=lambda c: c.id)
def test_command_parses(cmd, monkeypatch):
    """The subcommand exists, its flags parse and the config with its overrides loads."""
    seen = {}
    for name in cli.COMMANDS:
        monkeypatch.setattr(cli.command_module(name), "run",
                            lambda args: seen.setdefault("args", args) and 0)
    env = {k: v for k, v in (a.split("=", 1) for a in cmd.argv[:_env_len(cmd)])}
    assert not env or set(env) <= {"JAX_PLATFORMS"}, env
    assert cli.main(cmd.argv[_env_len(cmd) + 1:]) == 0, cmd.text
    assert "args" in seen


def _env_len(cmd) -> int:
    return next(i for i, a in enumerate(cmd.argv) if "=" not in a or a.startswith("-"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A directory that looks like the repository for relative paths, with `../shared` beside
    it as beside the repository. docs/ is a copy: commands that write there (a report, a plot)
    must not change the repository's files."""
    root = tmp_path_factory.mktemp("docs") / "repo"
    root.mkdir()
    for name in ("configs", "examples", "README.md", "launch", "tests", "gptjax", "tasks",
                 "pyproject.toml", ".venv"):
        if (REPO / name).exists():
            os.symlink(REPO / name, root / name)
    shutil.copytree(REPO / "docs", root / "docs")
    if (REPO.parent / "shared").exists():
        os.symlink(REPO.parent / "shared", root.parent / "shared")
    return root


def _run_in_process(cmd, monkeypatch) -> int:
    argv = cmd.argv[_env_len(cmd) + 1:]
    extra = SCALE_DOWN.get(argv[0], [])
    real = config.get_config
    monkeypatch.setattr(cli, "get_config", lambda spec, overrides: real(spec, [*overrides,
                                                                              *extra]))
    return cli.main(argv)


@pytest.mark.slow
@pytest.mark.parametrize("doc", sorted({c.doc for c in COMMANDS}))
def test_commands_run(doc, scratch, monkeypatch):
    """Every untagged command of `doc`, in order (later ones read what earlier ones wrote)."""
    monkeypatch.chdir(scratch)
    for cmd in [c for c in COMMANDS if c.doc == doc and c.tag is None]:
        n = _env_len(cmd)
        env = dict(a.split("=", 1) for a in cmd.argv[:n])
        if cmd.argv[n] == "gptjax":
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            code = _run_in_process(cmd, monkeypatch)
        else:
            argv = [sys.executable if a == "python" else a for a in cmd.argv[n:]]
            if argv[:2] == ["bash", "launch/quickstart.sh"]:  # the main job, scaled down
                argv += ["runs/quickstart", *TINY]
            if "gptjax" in argv:  # `launch/multiprocess.py ... -- gptjax CMD`: scaled down too
                argv += SCALE_DOWN.get(argv[argv.index("gptjax") + 1], [])
            code = subprocess.run(argv, cwd=scratch, timeout=1200,
                                  env={**os.environ, **env, "PYTHONPATH": str(REPO)}).returncode
        # An injected crash or full disk is the point of a fault example: it must not hang.
        allowed = (0, 2, -9) if "GPTJAX_FAULT" in env else (0,)
        assert code in allowed, f"{cmd.id}: `{cmd.text}` exited {code}"
