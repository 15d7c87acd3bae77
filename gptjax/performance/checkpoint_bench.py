"""What the integrity manifest costs: the time of a synchronous checkpoint save of a config's
full train state (params + optimizer state), with and without the CRC32C manifest, and the time
to verify it (read every file back) at restore.

    result = bench(config, repeats=3, directory="/tmp/ckpt-bench")

Saves alternate (without, with, without, ...) into fresh step directories so that page cache
and disk state favour neither; the medians are reported. `manifest_s` is the time spent in the
manifest callback itself (listing, reading back and checksumming every file, writing the JSON).
"""

from __future__ import annotations

import datetime
import shutil
import statistics
import tempfile
import time

import google_crc32c
import jax
import orbax.checkpoint as ocp

from gptjax.errors import UserError
from gptjax.model.flops import model_stats
from gptjax.model.gpt import GPT
from gptjax.parallel import sharding
from gptjax.performance.step_bench import _versions
from gptjax.storage import checkpoint
from gptjax.training.optim import make_optimizer
from gptjax.training.state import abstract_train_state, create_train_state, model_config


def _save_s(workdir: str, state, step: int, manifest: bool) -> tuple[float, float]:
    ckpt = checkpoint.Checkpointer(workdir, keep=0, async_save=False, manifest=manifest)
    t0 = time.perf_counter()
    ckpt.save(step, state, {}, {})
    elapsed = time.perf_counter() - t0
    ckpt.close()
    return elapsed, ckpt.manifest_s


def _drop(root: str, step: int) -> None:
    shutil.rmtree(checkpoint.Checkpointer(root, read_only=True).step_dir(step))


def bench(config, repeats: int = 3, directory: str | None = None) -> dict:
    if repeats < 1:
        raise UserError(f"--repeats={repeats} must be >= 1")
    mesh = sharding.make_mesh(config.mesh)
    model, tx = GPT(model_config(config)), make_optimizer(config)
    _, shardings = abstract_train_state(config, mesh, model, tx)
    state = jax.block_until_ready(create_train_state(config, mesh, model, tx, shardings))
    root = tempfile.mkdtemp(prefix="gptjax-ckpt-bench-", dir=directory)
    plain, checked, manifest_s, verify_s = [], [], [], []
    try:
        _save_s(root, state, 0, True)  # warm-up: Orbax's first save also sets itself up
        size = checkpoint.inventory(root)[-1]["size"]
        _drop(root, 0)
        for i in range(repeats):  # one checkpoint on disk at a time
            plain.append(_save_s(root, state, 2 * i + 1, False)[0])
            _drop(root, 2 * i + 1)
            elapsed, in_callback = _save_s(root, state, 2 * i + 2, True)
            checked.append(elapsed)
            manifest_s.append(in_callback)
            ckpt = checkpoint.Checkpointer(root, read_only=True)
            t0 = time.perf_counter()
            ckpt.verify(2 * i + 2)
            verify_s.append(time.perf_counter() - t0)
            ckpt.close()
            _drop(root, 2 * i + 2)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    save, with_manifest = statistics.median(plain), statistics.median(checked)
    devices = jax.devices()
    return {
        "name": config.name,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "device_kind": devices[0].device_kind, "num_devices": len(devices),
        "params": model_stats(model.config, config.data.seq_len,
                              config.optim.state_dtype)["params"],
        "checkpoint_bytes": size, "repeats": repeats,
        "save_s": save, "save_with_manifest_s": with_manifest,
        "manifest_s": statistics.median(manifest_s),
        "overhead_pct": 100 * statistics.median(manifest_s) / save,
        "verify_s": statistics.median(verify_s),
        "crc32c_hardware": google_crc32c.implementation == "c",
        "versions": {**_versions(), "orbax": ocp.__version__},
    }


def _t(s: float) -> str:
    return f"{s:.2f}s" if s >= 1 else f"{s * 1e3:.1f} ms"


def format_result(r: dict) -> str:
    return (f"{r['name']}: {r['params']:,} params, checkpoint {r['checkpoint_bytes'] / 2**20:.1f}"
            f" MiB on {r['num_devices']} x {r['device_kind']}: save {_t(r['save_s'])} without "
            f"the manifest, {_t(r['save_with_manifest_s'])} with it; the manifest itself "
            f"{_t(r['manifest_s'])} = {r['overhead_pct']:.1f}% of a save; verifying it at "
            f"restore {_t(r['verify_s'])} (median of {r['repeats']})")
