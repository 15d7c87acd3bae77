"""Shared by test_faults.py and test_bad_input.py: run `gptjax train` on the tiny synthetic
config in a subprocess (1 CPU device, optional injected fault) and read what it left on disk."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
STEPS, EVERY = 12, 4                      # checkpoints at steps 4, 8 and 12
TINY = ["--config", "configs/smoke.py:tiny", "--config.data.source=synthetic",
        "--config.train.log_every=1", "--config.train.eval_every=-1",
        "--config.train.plot=false", "--config.train.keep_checkpoints=2"]
TMP_RE = re.compile(r"\.orbax-checkpoint-tmp")
RUN_TIMEOUT = 300

# The session's persistent XLA compilation cache (tests/conftest.py): each run compiles the
# same tiny train step, so all but the first skip most of the compile time.
_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"]


def subprocess_env(fault: str | None = None, marker: Path | None = None,
                   devices: int = 1, extra: dict | None = None) -> dict:
    """The test process's environment, but with `devices` CPU devices and the given fault."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    env["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    env.pop("GPTJAX_FAULT", None)
    env.pop("GPTJAX_FAULT_MARKER", None)
    env.pop("GPTJAX_FAULT_PROCESS", None)
    if fault:
        env["GPTJAX_FAULT"] = fault
    if marker:
        env["GPTJAX_FAULT_MARKER"] = str(marker)
    env.update(extra or {})
    return env


def train_cmd(workdir: Path, steps: int = STEPS, every: int = EVERY, extra=()) -> list[str]:
    return [sys.executable, str(REPO / "tests" / "faults.py"), "train", *TINY,
            "--workdir", str(workdir),
            f"--config.train.steps={steps}", f"--config.train.ckpt_every={every}", *extra]


def run_train(workdir: Path, fault: str | None = None, steps: int = STEPS, every: int = EVERY,
              extra=()) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(workdir, steps, every, extra), cwd=REPO,
                          env=subprocess_env(fault), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)


def wait_for(predicate, proc, timeout: float = RUN_TIMEOUT, what: str = "") -> float:
    """Polls `predicate` until true (-> time.monotonic() then); fails if `proc` exits first."""
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return time.monotonic()


def file_has(path: Path, text: str):
    return lambda: path.is_file() and text in path.read_text(errors="replace")


@contextlib.contextmanager
def killed_on_exit(proc):
    """Yields `proc`; kills it on the way out if it still runs (a failed check, a timeout)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


def output(proc) -> str:
    return f"--- exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def ckpt_root(workdir: Path) -> Path:
    return Path(workdir) / "checkpoints"


def complete_steps(workdir: Path) -> list[int]:
    root = ckpt_root(workdir)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def tmp_dirs(workdir: Path) -> list[str]:
    root = ckpt_root(workdir)
    return sorted(p.name for p in root.iterdir() if TMP_RE.search(p.name)) if root.is_dir() else []


def read_losses(workdir: Path) -> dict[int, float]:
    """step -> logged train loss; asserts that every step is logged exactly once."""
    out: dict[int, float] = {}
    with open(Path(workdir) / "metrics.jsonl") as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a crash can cut the last line short
                continue
            if r.get("split") == "train":
                assert r["step"] not in out, f"step {r['step']} logged twice in metrics.jsonl"
                out[r["step"]] = float(r["loss"])
    return out


def read_state(workdir: Path, step: int | None = None) -> dict[str, np.ndarray]:
    """Every array of a checkpoint's train state (params, Adam moments, step, rng, ...)."""
    import jax
    import orbax.checkpoint as ocp
    step = max(complete_steps(workdir)) if step is None else step
    with ocp.PyTreeCheckpointer() as c:
        tree = c.restore(str(ckpt_root(workdir) / str(step) / "state"))
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_same_run(workdir: Path, ref: dict) -> None:
    """Bit-identical to the uninterrupted reference: every logged loss and every state array."""
    assert complete_steps(workdir)[-1] == STEPS
    losses = read_losses(workdir)
    assert sorted(losses) == list(range(1, STEPS + 1)), "some steps were lost or repeated"
    for s, loss in ref["losses"].items():
        assert losses[s] == loss, f"step {s}: loss {losses[s]!r} != uninterrupted {loss!r}"
    state = read_state(workdir)
    assert state.keys() == ref["state"].keys()
    for name, value in ref["state"].items():
        assert np.array_equal(state[name], value), f"{name} differs from the uninterrupted run"
    assert not tmp_dirs(workdir), f"incomplete checkpoints left behind: {tmp_dirs(workdir)}"
