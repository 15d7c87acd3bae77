"""Multi-process runs on JAX's own multi-controller runtime (`jax.distributed`).

Every host runs the same program; `jax.distributed.initialize` connects them to a coordinator
(process 0) before any device is touched, after which `jax.devices()` lists the devices of all
hosts and jit-ted steps run as one SPMD program. There is no launcher of our own and no
collectives of our own: this module only decides *how* to call `initialize`:

1. explicit: `config.distributed.{coordinator_address,num_processes,process_id}`, or the
   environment variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`;
2. auto-detected: a multi-task SLURM step (`srun`), or a Cloud TPU VM (JAX reads the pod's
   worker list from the TPU metadata);
3. otherwise a single process, exactly as without this module.

A missing or dead peer: JAX's coordination client *aborts* the process (SIGABRT, exit -6)
when peers do not all register within `initialization_timeout`, or when a peer stops sending
heartbeats for `heartbeat_timeout` during the run. Python cannot catch an abort, so while
waiting to connect a watchdog thread fires a little before JAX would, prints what went wrong
and exits with `EXIT_PEER_TIMEOUT`. Aborts later in the run are explained by the launcher
(`launch/multiprocess.py`).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import threading
import time

from gptjax.errors import UserError

EXIT_PEER_TIMEOUT = 75          # os.EX_TEMPFAIL: not every process joined in time
_GRACE_S = 5                    # JAX's own deadline is this much later than our watchdog's


def _env_int(environ, name: str) -> int | None:
    text = environ.get(name, "")
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise UserError(f"${name}={text!r} must be an integer") from None


def _slurm_tasks(environ) -> int:
    """Number of tasks in this SLURM step (0 when not inside `srun`)."""
    needed = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
              "SLURM_LOCALID")
    if not all(k in environ for k in needed):
        return 0
    return _env_int(environ, "SLURM_STEP_NUM_TASKS") or _env_int(environ, "SLURM_NTASKS") or 0


def _on_tpu_vm(environ) -> bool:
    """A Cloud TPU VM (GCE or GKE): libtpu installed and TPU chips or a TPU worker list."""
    if environ.get("JAX_PLATFORMS", "") and "tpu" not in environ["JAX_PLATFORMS"]:
        return False
    if importlib.util.find_spec("libtpu") is None:
        return False
    workers = environ.get("TPU_WORKER_HOSTNAMES") or environ.get("TPU_PROCESS_ADDRESSES") or ""
    return "," in workers or os.path.exists("/dev/accel0") or os.path.isdir("/dev/vfio")


def resolve(dist_cfg, environ=None) -> dict | None:
    """The keyword arguments for `jax.distributed.initialize`, or None for a single process.

    Pure (reads only `dist_cfg` and `environ`), so every branch is unit-tested.
    """
    environ = os.environ if environ is None else environ
    address = dist_cfg.coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS", "")
    num = int(dist_cfg.num_processes) or _env_int(environ, "JAX_NUM_PROCESSES")
    pid = int(dist_cfg.process_id)
    pid = pid if pid >= 0 else _env_int(environ, "JAX_PROCESS_ID")
    timeouts = {"initialization_timeout": int(dist_cfg.initialization_timeout),
                "heartbeat_timeout_seconds": int(dist_cfg.heartbeat_timeout)}
    if timeouts["initialization_timeout"] <= 0 or timeouts["heartbeat_timeout_seconds"] <= 0:
        raise UserError("config.distributed.initialization_timeout and heartbeat_timeout must be "
                        "positive (seconds)")
    ids = None
    if dist_cfg.local_device_ids:
        try:
            ids = [int(x) for x in str(dist_cfg.local_device_ids).split(",")]
        except ValueError:
            raise UserError(f"config.distributed.local_device_ids={dist_cfg.local_device_ids!r}: "
                            f"expected comma-separated integers like '0,1'") from None

    if address or num is not None or pid is not None:
        if num == 1:
            return None
        slurm = _slurm_tasks(environ) > 1
        missing = [n for n, v in (("coordinator_address", address), ("num_processes", num),
                                  ("process_id", pid)) if not v and v != 0]
        if missing and not slurm:
            raise UserError(
                f"config.distributed: {', '.join(missing)} not set; a multi-process run needs "
                f"all of coordinator_address (host:port of process 0), num_processes and "
                f"process_id (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID)")
        if num is not None and num < 1:
            raise UserError(f"config.distributed.num_processes={num} must be >= 1")
        if num is not None and pid is not None and not 0 <= pid < num:
            raise UserError(f"config.distributed.process_id={pid} must be in 0..{num - 1}")
        if address and ":" not in address:
            raise UserError(f"config.distributed.coordinator_address={address!r}: expected "
                            f"host:port, e.g. 10.0.0.1:1234")
        kwargs = dict(coordinator_address=address or None, num_processes=num, process_id=pid,
                      **timeouts)
        if ids is not None:
            kwargs["local_device_ids"] = ids
        return kwargs
    if not dist_cfg.auto_detect:
        return None
    if _slurm_tasks(environ) > 1:
        kwargs = dict(cluster_detection_method="slurm", **timeouts)
    elif _on_tpu_vm(environ):
        kwargs = dict(timeouts)  # JAX reads the pod's workers from the TPU metadata server
    else:
        return None
    if ids is not None:
        kwargs["local_device_ids"] = ids
    return kwargs


def _describe(kwargs) -> str:
    if kwargs.get("cluster_detection_method") == "slurm":
        return "the SLURM step's processes"
    if kwargs.get("coordinator_address") is None:
        return "the TPU pod's workers"
    return (f"{kwargs['num_processes']} processes at coordinator "
            f"{kwargs['coordinator_address']}")


def _watchdog(kwargs, timeout: int) -> threading.Timer:
    pid = kwargs.get("process_id")
    who = f"process {pid}" if pid is not None else f"this process (pid {os.getpid()})"
    start = time.monotonic()

    def fire():
        print(f"gptjax: error: {who}: not all of {_describe(kwargs)} joined within "
              f"{timeout}s ({time.monotonic() - start:.0f}s waited). Start every process with "
              f"the same coordinator address and num_processes and a distinct process_id, check "
              f"that process 0's host:port is reachable from every host, or raise "
              f"config.distributed.initialization_timeout.", file=sys.stderr, flush=True)
        os._exit(EXIT_PEER_TIMEOUT)

    timer = threading.Timer(timeout, fire)
    timer.daemon = True
    return timer


def maybe_initialize(config) -> bool:
    """Calls `jax.distributed.initialize` when this is a multi-process run; True if it did.

    Must run before anything touches devices (`jax.devices()`, the first jit, ...). Idempotent.
    """
    import jax

    if jax.distributed.is_initialized():
        return True
    kwargs = resolve(config.distributed)
    if kwargs is None:
        return False
    try:  # private, but the one check jax offers before initialize fails cryptically
        from jax._src.xla_bridge import backends_are_initialized
    except ImportError:
        backends_are_initialized = lambda: False  # noqa: E731
    if backends_are_initialized():
        raise UserError("jax.distributed must start before any device is used: call "
                        "gptjax.parallel.distributed.maybe_initialize(config) first in the program")
    timeout = kwargs["initialization_timeout"]
    kwargs["initialization_timeout"] = timeout + _GRACE_S  # our watchdog speaks first
    timer = _watchdog(kwargs, timeout)
    timer.start()
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, TypeError) as e:  # bad explicit arguments, caught before connecting
        raise UserError(f"jax.distributed.initialize: {e}") from None
    finally:
        timer.cancel()
    print(f"gptjax: process {jax.process_index()} of {jax.process_count()} "
          f"({jax.local_device_count()} local of {jax.device_count()} devices)",
          file=sys.stderr, flush=True)
    return True


def process_index() -> int:
    import jax
    return jax.process_index()


def is_main_process() -> bool:
    """True on process 0: the one that writes logs, TensorBoard events and plots."""
    return process_index() == 0


def main_process_only(fn):
    """Decorator: run `fn` on process 0 only; other processes get None."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) if is_main_process() else None
    return wrapper


def sync(name: str) -> None:
    """Barrier across processes (no-op in a single process), e.g. before reading a checkpoint
    that process 0 just finished."""
    import jax
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def _client():
    from jax._src import distributed as jax_distributed  # the coordination client, no public API
    return jax_distributed.global_state.client


def _run_and_publish(client, key: str, fn):
    """fn(), then "ok" or "error: <its last line>" under `key` on the coordination service."""
    try:
        result = fn()
    except BaseException as e:
        lines = str(e).strip().splitlines()
        client.key_value_set(key, f"error: {lines[-1] if lines else type(e).__name__}")
        raise
    client.key_value_set(key, "ok")
    return result


def _await_ok(client, key: str, who: str, what: str, timeout: int) -> None:
    """Waits (at most `timeout` seconds) for `who` to publish "ok" under `key`; a timeout or a
    published error is one UserError on this process."""
    import jax
    me = jax.process_index()
    try:
        status = client.blocking_key_value_get(key, int(timeout) * 1000)
    except Exception as e:  # noqa: BLE001 - DEADLINE_EXCEEDED (or the service went away)
        raise UserError(f"process {me}: {who} did not {what} within {timeout}s "
                        f"(config.distributed.prepare_timeout): "
                        f"{str(e).strip().splitlines()[0]}") from None
    if status != "ok":
        raise UserError(f"process {me}: {who} failed to {what}: {status[len('error: '):]}")


def once(what: str, fn, timeout: int):
    """fn() on process 0 first; the others wait (at most `timeout` seconds) until it is done,
    then call fn() themselves, which finds its results on disk: process 0 trains the tokenizer
    and tokenizes the data once, the others read the same files. -> fn()'s result, everywhere.

    The wait is on the coordination service (no device collective), so it can be long; if
    process 0 fails, every other process stops with its error instead of waiting."""
    import jax
    if jax.process_count() == 1:
        return fn()
    client, key = _client(), f"gptjax/once/{what}"
    if jax.process_index() == 0:
        return _run_and_publish(client, key, fn)
    _await_ok(client, key, "process 0", what, timeout)
    return fn()


def each(what: str, fn, timeout: int):
    """fn() on every process, then a wait (at most `timeout` seconds) until every process has
    finished its own: each process tokenizes its part of the data, and none reads the data
    before all parts are written. -> fn()'s result. A failure on any process stops every
    process with its error instead of a wait. The wait is on the coordination service, as in
    `once`."""
    import jax
    if jax.process_count() == 1:
        return fn()
    client, me, key = _client(), jax.process_index(), f"gptjax/each/{what}"
    result = _run_and_publish(client, f"{key}/{me}", fn)
    for other in range(jax.process_count()):
        if other != me:
            _await_ok(client, f"{key}/{other}", f"process {other}", what, timeout)
    return result
