"""Real multi-process training on this machine: 2 processes x 4 CPU devices (gloo collectives)
against 1 process x 8 devices, through `launch/multiprocess.py` (the documented launcher).

The 2-process meshes put a mesh axis *across* the processes (`mesh.dcn_*`): fsdp, so that each
process holds non-contiguous rows of the batch, and tensor, so that both processes hold
replicas of the same rows. Mesh-aware per-host data (`sharding.host_rows`) feeds each process
exactly the rows its devices hold; the losses must equal the 1-process run's on the same
global batches."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import FAST_COMPILE

STEPS = 3
TRAIN = ["-m", "gptjax", "train", "--config", "configs/smoke.py:tiny",
         "--config.data.source=synthetic", f"--config.train.steps={STEPS}",
         "--config.train.log_every=1", "--config.train.eval_every=-1",
         "--config.train.plot=false", "--config.train.async_checkpoint=false"]


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env["XLA_FLAGS"] = f"{FAST_COMPILE} --xla_force_host_platform_device_count={devices}"
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    return env


def _losses(workdir) -> list[float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r["loss"] for r in rows if r.get("split") == "train"]


def _launch(repo_dir, args, timeout=300):
    return subprocess.run([sys.executable, "launch/multiprocess.py", *args], cwd=repo_dir,
                          env=_env(0), capture_output=True, text=True, timeout=timeout)


FSDP_ACROSS = ["--config.mesh.data=2", "--config.mesh.fsdp=4", "--config.mesh.dcn_fsdp=2"]
TENSOR_ACROSS = ["--config.mesh.data=4", "--config.mesh.tensor=2", "--config.mesh.dcn_tensor=2"]


def _two_processes(repo_dir, workdir, mesh: list[str]):
    return _launch(repo_dir, ["-n", "2", "--devices", "4", "--timeout", "120", "--",
                              "gptjax", *TRAIN[2:], *mesh, "--workdir", str(workdir)])


@pytest.fixture(scope="module")
def runs(repo_dir, tmp_path_factory):
    """The same 3 steps trained by 1 process x 8 devices (data=8) and by 2 processes x 4
    devices with fsdp across the processes."""
    one = tmp_path_factory.mktemp("one") / "w"
    two = tmp_path_factory.mktemp("two") / "w"
    # Both start at once: the 2-core machine overlaps one run's compile with the other's.
    ref = subprocess.Popen([sys.executable, *TRAIN, "--workdir", str(one)], cwd=repo_dir,
                           env=_env(8), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mp = _two_processes(repo_dir, two, FSDP_ACROSS)
    ref_out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_out
    assert mp.returncode == 0, mp.stdout + mp.stderr
    return one, two, mp.stdout


def test_two_processes_match_one(runs):
    one, two, log = runs
    assert "[p0] gptjax: process 0 of 2 (4 local of 8 devices)" in log
    assert "[p1] gptjax: process 1 of 2 (4 local of 8 devices)" in log
    assert "mesh {'data': 2, 'fsdp': 4, 'tensor': 1}" in log
    ref, got = _losses(one), _losses(two)
    assert len(ref) == len(got) == STEPS
    np.testing.assert_allclose(got, ref, rtol=2e-5)
    assert len(set(np.round(ref, 6))) > 1  # the losses move: the comparison means something


@pytest.mark.parametrize("mesh", [FSDP_ACROSS, TENSOR_ACROSS], ids=["fsdp", "tensor"])
def test_global_batch_rows_match_one_process(repo_dir, tmp_path, mesh):
    """The first global batch, gathered row by row, is the one a single process reads."""
    out = _launch(repo_dir, ["-n", "2", "--devices", "4", "--", sys.executable,
                             "tests/mp_batch.py", str(tmp_path), *mesh,
                             "--config.distributed.initialization_timeout=120"], timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("batch ok") == 2, out.stdout


def test_tensor_across_processes_matches_one(runs, repo_dir, tmp_path):
    """Both processes hold replicas of the same rows (tensor=2 spans them): both must be fed
    the same rows, all B of them, not B/2 different ones each."""
    one, _, _ = runs
    mp = _two_processes(repo_dir, tmp_path / "w", TENSOR_ACROSS)
    assert mp.returncode == 0, mp.stdout + mp.stderr
    assert "mesh {'data': 4, 'fsdp': 1, 'tensor': 2}" in mp.stdout
    np.testing.assert_allclose(_losses(tmp_path / "w"), _losses(one), rtol=2e-5)


def test_only_process_0_writes_logs(runs):
    _, two, log = runs
    assert "[p0] step 1/" in log and "[p1] step 1/" not in log
    assert len(_losses(two)) == STEPS  # one writer: no duplicated metrics lines


def test_two_process_checkpoint_restores_in_one_process(runs):
    """Every leaf was written as a global array; one process (1 device) reads it back."""
    import jax

    from gptjax.workdir import load_params, read_config

    one, two, _ = runs
    p_two, step = load_params(str(two), read_config(str(two)))
    p_one, _ = load_params(str(one), read_config(str(one)))
    assert step == STEPS
    leaves_two, leaves_one = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(p)])
                              for p in (p_two, p_one))
    np.testing.assert_allclose(leaves_two, leaves_one, rtol=1e-4, atol=1e-6)


def test_missing_peer_fails_fast(repo_dir, tmp_path):
    """Process 1 never starts: process 0 exits within the timeout with a clear message."""
    timeout = 6
    t0 = time.monotonic()
    out = _launch(repo_dir, ["-n", "2", "--devices", "4", "--timeout", str(timeout),
                             "--skip", "1", "--", "gptjax", *TRAIN[2:],
                             "--workdir", str(tmp_path / "w")], timeout=120)
    elapsed = time.monotonic() - t0
    assert out.returncode == 75, out.stdout + out.stderr
    assert "not all of 2 processes at coordinator localhost:" in out.stdout
    assert f"joined within {timeout}s" in out.stdout
    assert "peers did not join within the initialization timeout" in out.stdout
    assert elapsed < timeout + 30  # startup (imports) + the timeout, not JAX's default 300 s
