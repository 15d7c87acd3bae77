#!/usr/bin/env python3
"""How far one step's gradients move when they are reduced over data x fsdp in bfloat16
instead of float32 (`optim.grad_reduce_dtype`), against a float32-everywhere single-device
reference. On 8 CPU devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python launch/grad_reduce_error.py

Prints, per row, the relative error of the global gradient norm, of the whole gradient
(||g - ref|| / ||ref||) and of the worst tensor (its name). The rows: bfloat16 compute on one
device (no reduction: the compute dtype's own error), then bfloat16 compute on the mesh with
each reduction dtype. XLA:CPU runs a bfloat16 collective in float32, so the bfloat16 row
measures the rounding of each device's partial gradient to bfloat16 before it is summed; a
TPU's bfloat16 reduce-scatter also rounds after every step of its ring.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from gptjax.config.loader import get_config
from gptjax.parallel import sharding
from gptjax.training import steps
from gptjax.training.state import abstract_train_state, create_train_state


def gradients(config: str, overrides: list[str], batch: dict) -> dict:
    """One step's gradients (float64 numpy, by parameter path) of `config` with `overrides`."""
    c = get_config(config, overrides)
    one = c.mesh.data * c.mesh.fsdp * c.mesh.tensor == 1
    mesh = sharding.single_device_mesh() if one else sharding.make_mesh(c.mesh)
    _, shardings = abstract_train_state(c, mesh)
    params = create_train_state(c, mesh).params
    fn = jax.jit(steps.make_loss_and_grads(c, param_shardings=shardings.params),
                 out_shardings=(sharding.replicated(mesh), shardings.params))
    with jax.set_mesh(mesh):
        _, grads = fn(params, sharding.global_batch(batch, mesh), jax.random.key(0))
    return {jax.tree_util.keystr(k): np.asarray(v, np.float64)
            for k, v in jax.tree_util.tree_leaves_with_path(jax.device_get(grads))}


def errors(grads: dict, ref: dict) -> tuple[float, float, float, str]:
    norm = lambda g: float(np.sqrt(sum(np.sum(x * x) for x in g.values())))  # noqa: E731
    diff = {k: grads[k] - ref[k] for k in ref}
    worst = max(ref, key=lambda k: np.linalg.norm(diff[k]) / max(np.linalg.norm(ref[k]), 1e-30))
    return (abs(norm(grads) - norm(ref)) / norm(ref), norm(diff) / norm(ref),
            float(np.linalg.norm(diff[worst]) / np.linalg.norm(ref[worst])), worst)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/smoke.py")
    ap.add_argument("--mesh", default="2,4", help="data,fsdp (their product: the devices)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    args = ap.parse_args(argv)
    data, fsdp = (int(x) for x in args.mesh.split(","))
    shape = [f"--config.train.batch_size={args.batch}", f"--config.data.seq_len={args.seq_len}"]
    vocab = get_config(args.config, []).model.vocab_size
    tokens = np.random.default_rng(0).integers(0, vocab, (args.batch, args.seq_len + 1))
    batch = {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32)}
    one = ["--config.mesh.data=1", "--config.mesh.fsdp=1", "--config.mesh.tensor=1"]
    on_mesh = [f"--config.mesh.data={data}", f"--config.mesh.fsdp={fsdp}", "--config.mesh.tensor=1"]
    bf16 = ["--config.model.dtype=bfloat16"]
    ref = gradients(args.config, shape + one + ["--config.model.dtype=float32"], batch)
    rows = [("bfloat16 compute, 1 device", shape + one + bf16)]
    rows += [(f"bfloat16 compute, data={data} fsdp={fsdp}, reduce {r}",
              shape + on_mesh + bf16 + [f"--config.optim.grad_reduce_dtype={r}"])
             for r in ("float32", "bfloat16")]
    print(f"{args.config}, batch {args.batch} x {args.seq_len}, one step at init, against "
          f"float32 on 1 device (jax {jax.__version__}, {jax.devices()[0].device_kind})")
    print(f"| {'run':<48} | norm rel. err | grad rel. err | worst tensor rel. err |")
    print(f"|{'-' * 50}|---------------|---------------|-----------------------|")
    for name, overrides in rows:
        norm_err, err, worst_err, worst = errors(gradients(args.config, overrides, batch), ref)
        print(f"| {name:<48} | {norm_err:13.2e} | {err:13.2e} | {worst_err:.2e} {worst} |")


if __name__ == "__main__":
    main()
