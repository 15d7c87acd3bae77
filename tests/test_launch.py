"""launch/: what can be checked without a TPU pod, a SLURM cluster or a GPU: syntax, argument
handling and the exact commands the scripts would run (their dry-run modes)."""

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

SCRIPTS = ["launch/tpu_pod.sh", "launch/slurm_gpu.sbatch", "launch/gpu_bench.sh",
           "launch/env/gpu.env", "launch/env/tpu.env", "launch/env/cpu.env", "launch/test.sh",
           "launch/setup.sh", "launch/quickstart.sh", ".ci/run"]


def _bash(repo_dir, args, env=None, **kw):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU_"))}
    full.update(env or {})
    return subprocess.run(["bash", *args], cwd=repo_dir, env=full, capture_output=True,
                          text=True, timeout=60, **kw)


def _commands(stdout: str) -> list[list[str]]:
    """The `+ cmd args` lines printed by --dry-run, split back into argv lists."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_syntax(repo_dir, script):
    out = subprocess.run(["bash", "-n", script], cwd=repo_dir, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_clean(repo_dir):
    out = subprocess.run(["shellcheck", "-x", *SCRIPTS], cwd=repo_dir, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout


def test_ci_runs_the_readme_test_command(repo_dir):
    """CI is the README's second command: .ci/run does nothing but run it, and that command
    installs the extras the suite tests (no `GPTJAX_EXTRAS` needed in front of it)."""
    readme = (repo_dir / "README.md").read_text()
    quickstart = readme[readme.index("## Quickstart"):]
    block = quickstart[quickstart.index("```bash") + len("```bash"):].split("```")[0]
    command = block.strip().splitlines()[1].split("#")[0].strip()
    assert command == "bash launch/test.sh"
    ci = [ln for ln in (repo_dir / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.startswith("#")]
    assert ci[-1] == f"exec {command}", ci
    assert not any(re.search(r"\bpip\b|GPTJAX_EXTRAS", ln) for ln in ci), ci
    test_sh = (repo_dir / "launch" / "test.sh").read_text()
    for extra in ("interop-test", "eval-test", "tpu", "gcs-test", "serve-test", "wandb",
                  "gpu-compile"):
        assert extra in test_sh.split("GPTJAX_EXTRAS-", 1)[1].splitlines()[0], extra


TPU = {"TPU_NAME": "gpt", "ZONE": "us-east5-a", "ACCELERATOR": "v5p-32"}


def test_tpu_create_picks_the_software_version(repo_dir):
    out = _bash(repo_dir, ["launch/tpu_pod.sh", "--dry-run", "create"], TPU)
    assert out.returncode == 0, out.stderr
    assert _commands(out.stdout) == [[
        "gcloud", "compute", "tpus", "tpu-vm", "create", "gpt", "--accelerator-type=v5p-32",
        "--version=v2-alpha-tpuv5", "--zone=us-east5-a"]]
    for acc, version in (("v4-32", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"),
                         ("v6e-64", "v2-alpha-tpuv6e")):
        out = _bash(repo_dir, ["launch/tpu_pod.sh", "--dry-run", "create"],
                    dict(TPU, ACCELERATOR=acc, PROJECT="proj"))
        (cmd,) = _commands(out.stdout)
        assert f"--version={version}" in cmd and "--project=proj" in cmd


def test_tpu_train_runs_the_same_command_on_all_workers(repo_dir):
    out = _bash(repo_dir, ["launch/tpu_pod.sh", "--dry-run", "train", "--config",
                           "configs/gpt3.py:xl", "--workdir", "gs://bucket/runs/my run"], TPU)
    assert out.returncode == 0, out.stderr
    (cmd,) = _commands(out.stdout)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "gpt"]
    assert "--worker=all" in cmd and "--zone=us-east5-a" in cmd
    remote = next(a for a in cmd if a.startswith("--command="))[len("--command="):]
    assert "source launch/env/tpu.env" in remote
    train = shlex.split(remote.split("&&")[-1])
    assert train == [".venv/bin/gptjax", "train", "--config", "configs/gpt3.py:xl",
                     "--workdir", "gs://bucket/runs/my run"]


def test_tpu_setup_copies_and_installs_without_a_fuse_mount(repo_dir):
    out = _bash(repo_dir, ["launch/tpu_pod.sh", "--dry-run", "setup"], TPU)
    assert out.returncode == 0, out.stderr
    cmds = _commands(out.stdout)
    assert cmds[0][:3] == ["git", "-C", str(repo_dir)] and "archive" in cmds[0]
    assert cmds[1][4] == "scp" and "--worker=all" in cmds[1]
    assert "pip install -q -e '.[tpu]'" in cmds[2][-2]
    assert len(cmds) == 3 and "gcsfuse" not in out.stdout   # gs:// workdirs need no mount


def test_tpu_multislice_is_a_queued_resource_addressed_on_every_node(repo_dir):
    env = dict(TPU, NUM_SLICES="2")
    create = _commands(_bash(repo_dir, ["launch/tpu_pod.sh", "--dry-run", "create"], env).stdout)
    assert create == [["gcloud", "compute", "tpus", "queued-resources", "create", "gpt",
                       "--node-count=2", "--node-prefix=gpt", "--accelerator-type=v5p-32",
                       "--runtime-version=v2-alpha-tpuv5", "--zone=us-east5-a"]]
    (train,) = _commands(_bash(repo_dir, ["launch/tpu_pod.sh", "--dry-run", "train", "--config",
                                          "c.py", "--config.mesh.dcn_data=2"], env).stdout)
    assert train[3:6] == ["queued-resources", "ssh", "gpt"]
    assert "--node=all" in train and "--worker=all" in train
    (delete,) = _commands(_bash(repo_dir, ["launch/tpu_pod.sh", "--dry-run", "delete"],
                                env).stdout)
    assert delete[3:6] == ["queued-resources", "delete", "gpt"] and "--force" in delete


@pytest.mark.parametrize("env,args,message", [
    ({}, ["create"], "set TPU_NAME"),
    (dict(TPU, ACCELERATOR="v9-8"), ["create"], "ACCELERATOR=v9-8"),
    (TPU, ["train"], "train needs gptjax train arguments"),
    (TPU, ["launch"], "unknown command 'launch'"),
    (dict(TPU, NUM_SLICES="0"), ["create"], "NUM_SLICES=0: expected a positive integer"),
])
def test_tpu_bad_input(repo_dir, env, args, message):
    out = _bash(repo_dir, ["launch/tpu_pod.sh", "--dry-run", *args], env)
    assert out.returncode == 2 and message in out.stderr, out.stderr


def _sbatch(repo_dir, env, *args):
    base = {"DRY_RUN": "1", "SLURM_SUBMIT_DIR": str(repo_dir), "SLURM_JOB_ID": "7"}
    return _bash(repo_dir, ["launch/slurm_gpu.sbatch", *args], {**base, **env})


def test_slurm_one_process_per_gpu(repo_dir):
    out = _sbatch(repo_dir, {"SLURM_NTASKS_PER_NODE": "8"}, "--config", "configs/gpt2.py",
                  "--workdir", "/shared/w")
    assert out.returncode == 0, out.stderr
    cmd = shlex.split(out.stdout)
    assert cmd[:4] == ["srun", "--kill-on-bad-exit=1", "--cpu-bind=none", ".venv/bin/python"]
    assert cmd[4:] == ["-m", "gptjax", "train", "--config", "configs/gpt2.py",
                       "--workdir", "/shared/w"]


def test_slurm_one_process_per_node_gets_all_gpus(repo_dir):
    out = _sbatch(repo_dir, {"SLURM_NTASKS_PER_NODE": "1", "SLURM_GPUS_ON_NODE": "4",
                             "GPTJAX_PYTHON": "python3"}, "--config", "c.py", "--workdir", "w")
    assert out.returncode == 0, out.stderr
    cmd = shlex.split(out.stdout)
    assert cmd[-1] == "--config.distributed.local_device_ids=0,1,2,3"
    assert cmd[3] == "python3"
    bad = _sbatch(repo_dir, {})
    assert bad.returncode == 2 and "give gptjax train arguments" in bad.stderr


def test_slurm_env_reaches_gptjax_distributed():
    """The variables srun sets are the ones gptjax.parallel.distributed auto-detects."""
    from gptjax.config.defaults import base_config
    from gptjax.parallel.distributed import resolve
    srun_env = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NTASKS": "16",
                "SLURM_STEP_NUM_TASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1"}
    dist = base_config().distributed
    dist.local_device_ids = "0,1,2,3"
    kw = resolve(dist, environ=srun_env)
    assert kw["cluster_detection_method"] == "slurm" and kw["local_device_ids"] == [0, 1, 2, 3]


def test_gpu_bench_dry_run_lists_the_table(repo_dir, tmp_path):
    out = _bash(repo_dir, ["launch/gpu_bench.sh"], {"DRY_RUN": "1", "OUT": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    tags = [line.split(":")[0][3:] for line in out.stdout.splitlines() if line.startswith("== ")]
    assert "gpt2-124m-b8" in tags and "gpt2-124m-b16-xla" in tags
    assert "gpt3-2.7b-t2048-b4-full-bf16adam" in tags and "shakespeare_char" in tags
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in out.stdout  # launch/env/gpu.env
    one = _bash(repo_dir, ["launch/gpu_bench.sh", "attention"], {"DRY_RUN": "1",
                                                                "OUT": str(tmp_path)})
    assert one.stdout.count("== ") == 2
    bad = _bash(repo_dir, ["launch/gpu_bench.sh", "everything"], {"DRY_RUN": "1",
                                                                  "OUT": str(tmp_path)})
    assert bad.returncode == 2 and "unknown group" in bad.stderr


def _load(repo_dir, name):
    spec = importlib.util.spec_from_file_location(name, repo_dir / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_table(repo_dir, tmp_path):
    table = _load(repo_dir, "bench_table")
    ok = {"name": "gpt2-124m", "tag": "gpt2-124m-b16", "num_devices": 1,
          "device_kind": "NVIDIA H100 80GB HBM3", "params": 124_475_904, "batch_size": 16,
          "seq_len": 1024, "dtype": "bfloat16", "attention": "cudnn", "remat": "none",
          "tokens_per_s": 401234.7, "step_ms": 40.8, "tflops_per_device": 312.0, "mfu": 31.5,
          "peak_memory_bytes": 20 * 2 ** 30, "date": "2026-11-23T12:00Z", "steps": 20,
          "warmup": 2, "versions": {"jax": "0.11.2", "flax": "0.12.10", "optax": "0.2.8",
                                    "python": "3.12.3"}}
    path = tmp_path / "bench.jsonl"
    path.write_text(json.dumps(ok) + "\n" + json.dumps({"tag": "big", "error": "OOM"}) + "\n")
    out = subprocess.run([sys.executable, "launch/bench_table.py", str(path)], cwd=repo_dir,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("| run | device |")
    assert "| gpt2-124m-b16 | 1x NVIDIA H100 80GB HBM3 | 124M | 16 x 1024 |" in lines[2]
    assert "401,235" in lines[2] and "31.5%" in lines[2] and "20.0 GiB" in lines[2]
    assert "failed: OOM" in lines[3] and "jax 0.11.2" in out.stdout
    assert table.main([]) == 2


def test_multiprocess_launcher_arguments(repo_dir):
    mp = _load(repo_dir, "multiprocess")
    env = mp.child_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --foo"},
                       rank=1, n=2, port=1234, devices=4, platform="cpu")
    assert env["JAX_COORDINATOR_ADDRESS"] == "localhost:1234"
    assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"], env["JAX_PLATFORMS"]) == \
        ("2", "1", "cpu")
    assert env["XLA_FLAGS"] == "--foo --xla_force_host_platform_device_count=4"
    assert "did not join" in mp.explain(0, mp.EXIT_PEER_TIMEOUT, "5s")
    assert "SIGABRT" in mp.explain(1, -6, "5s")
    from gptjax.parallel.distributed import EXIT_PEER_TIMEOUT
    assert mp.EXIT_PEER_TIMEOUT == EXIT_PEER_TIMEOUT
    for bad in ([], ["-n", "2", "--skip", "2", "--", "true"], ["-n", "0", "--", "true"]):
        with pytest.raises(SystemExit):
            mp.main(bad)


def test_multiprocess_launcher_reports_a_crashed_process(repo_dir):
    code = "import os, sys; sys.exit(3 if os.environ['JAX_PROCESS_ID'] == '1' else 0)"
    out = subprocess.run([sys.executable, "launch/multiprocess.py", "-n", "2", "--devices", "0",
                          "--", sys.executable, "-c", code], cwd=repo_dir, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 3
    assert "[launcher] process 1: exited with status 3" in out.stdout
