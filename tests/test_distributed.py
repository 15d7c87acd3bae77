"""How `gptjax.parallel.distributed` decides to call `jax.distributed.initialize` (pure, no
processes)."""

import subprocess
import sys

import pytest

from gptjax.config.defaults import base_config
from gptjax.errors import UserError
from gptjax.parallel import distributed


def _dist(**kw):
    d = base_config().distributed
    for k, v in kw.items():
        d[k] = v
    return d


def test_single_process_by_default():
    assert distributed.resolve(_dist(), environ={}) is None
    assert distributed.resolve(_dist(num_processes=1), environ={}) is None
    assert distributed.resolve(_dist(), environ={"JAX_NUM_PROCESSES": "1"}) is None


def test_explicit_from_config():
    kw = distributed.resolve(_dist(coordinator_address="10.0.0.1:1234", num_processes=4,
                                   process_id=3, initialization_timeout=20), environ={})
    assert kw == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3,
                  "initialization_timeout": 20, "heartbeat_timeout_seconds": 100}


def test_explicit_from_environment_and_config_wins():
    env = {"JAX_COORDINATOR_ADDRESS": "host:99", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": "1"}
    kw = distributed.resolve(_dist(), environ=env)
    assert (kw["coordinator_address"], kw["num_processes"], kw["process_id"]) == ("host:99", 2, 1)
    kw = distributed.resolve(_dist(process_id=0, local_device_ids="0,1"), environ=env)
    assert kw["process_id"] == 0 and kw["local_device_ids"] == [0, 1]


@pytest.mark.parametrize("dist,env,match", [
    ({"coordinator_address": "h:1"}, {}, "num_processes, process_id not set"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, {}, "must be in 0..1"),
    ({"coordinator_address": "nohost", "num_processes": 2, "process_id": 0}, {}, "host:port"),
    ({"num_processes": 2, "process_id": 0, "initialization_timeout": 0}, {}, "positive"),
    ({}, {"JAX_NUM_PROCESSES": "two"}, "must be an integer"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 0,
      "local_device_ids": "a"}, {}, "comma-separated"),
])
def test_bad_settings_are_user_errors(dist, env, match):
    with pytest.raises(UserError, match=match):
        distributed.resolve(_dist(**dist), environ=env)


SLURM = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_NTASKS": "16",
         "SLURM_STEP_NUM_TASKS": "16", "SLURM_PROCID": "5", "SLURM_LOCALID": "5"}


def test_slurm_auto_detect():
    kw = distributed.resolve(_dist(initialization_timeout=60), environ=SLURM)
    assert kw == {"cluster_detection_method": "slurm", "initialization_timeout": 60,
                  "heartbeat_timeout_seconds": 100}
    # one task: nothing to coordinate; auto_detect off: nothing either
    assert distributed.resolve(_dist(), environ=dict(SLURM, SLURM_NTASKS="1",
                                                     SLURM_STEP_NUM_TASKS="1")) is None
    assert distributed.resolve(_dist(auto_detect=False), environ=SLURM) is None
    # an sbatch script outside srun has no step node list: not a multi-process step
    batch_only = {k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"}
    assert distributed.resolve(_dist(), environ=batch_only) is None


def test_slurm_fills_what_the_config_leaves_out():
    kw = distributed.resolve(_dist(coordinator_address="node001:8476"), environ=SLURM)
    assert kw["coordinator_address"] == "node001:8476"
    assert kw["num_processes"] is None and kw["process_id"] is None  # JAX reads SLURM's


def test_tpu_detection_needs_libtpu(monkeypatch):
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: None)
    assert distributed.resolve(_dist(), environ={"TPU_WORKER_HOSTNAMES": "a,b"}) is None
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: object())
    kw = distributed.resolve(_dist(), environ={"TPU_WORKER_HOSTNAMES": "a,b"})
    assert kw == {"initialization_timeout": 300, "heartbeat_timeout_seconds": 100}
    assert distributed.resolve(_dist(), environ={"TPU_WORKER_HOSTNAMES": "a,b",
                                                 "JAX_PLATFORMS": "cpu"}) is None


def test_single_process_helpers():
    assert distributed.maybe_initialize(base_config()) is False
    assert distributed.is_main_process()
    calls = []

    @distributed.main_process_only
    def write(x):
        calls.append(x)
        return x

    assert write(3) == 3 and calls == [3]
    distributed.sync("noop")  # no-op with one process


def test_initialize_after_devices_is_a_user_error(repo_dir):
    code = ("import jax; jax.devices()\n"
            "from gptjax.config.defaults import base_config\n"
            "from gptjax.parallel import distributed\n"
            "c = base_config()\n"
            "c.distributed.coordinator_address = 'localhost:1'\n"
            "c.distributed.num_processes = 2\n"
            "c.distributed.process_id = 0\n"
            "try:\n"
            "    distributed.maybe_initialize(c)\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_dir, capture_output=True,
                         text=True, timeout=120)
    assert "UserError" in out.stdout and "before any device is used" in out.stdout
