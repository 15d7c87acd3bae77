#!/usr/bin/env python3
"""The token-embedding lookup two ways, forward and backward into the float32 table, at one
config's per-device shape: the gather gptjax runs (gptjax/model/embeddings.py: `take` from the
float32 table, the rows cast to the compute dtype; the backward a float32 scatter-add) against a
one-hot matmul (one_hot(tokens) @ table in the compute dtype through the model's `matmul`, whose
table gradient is a float32-accumulated matmul).

    python launch/embed_lookup.py --config configs/gpt3.py:small --topology v5p-8
    python launch/embed_lookup.py --config configs/smoke.py

With `--topology` (a TPU slice; needs libtpu, no TPU) it prints the TPU compiler's cost model for
one chip (`optimal_seconds`, FLOPs, bytes accessed); without, it runs both on this machine's
first device, the config's whole batch, and prints the measured median time. On a slice, one
chip's share: batch x seq_len split over its chips (over tensor), the whole [padded vocab,
d_model] table (data parallel; the reduction of the table's gradient across chips is the same
for both and not included).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.config.loader import get_config
from gptjax.hardware.tpu_slices import parse_topology, topology_devices
from gptjax.model.dense import matmul
from gptjax.model.embeddings import TokenEmbed
from gptjax.model.gpt import GPTConfig
from gptjax.performance.aot import cost_of


def gather(table, tokens, c: GPTConfig):
    embed = TokenEmbed(c.padded_vocab, c.d_model, c.dtype, c.param_dtype, jax.nn.initializers.zeros)
    return embed.apply({"params": {"embedding": table}}, tokens)


def one_hot(table, tokens, c: GPTConfig):
    return matmul("btv,vd->btd", jax.nn.one_hot(tokens, c.padded_vocab, dtype=c.dtype), table, c)


def forward_backward(lookup, c: GPTConfig):
    """(table, tokens, cotangent) -> (rows, the table's gradient)."""
    def fn(table, tokens, ct):
        rows, pull = jax.vjp(lambda t: lookup(t, tokens, c), table)
        return rows, pull(ct)[0]
    return fn


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/gpt3.py:small")
    ap.add_argument("--topology", help="a TPU slice (v5p-8, ...): the compiler's estimate")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls on this machine")
    args, overrides = ap.parse_known_args(argv)
    config = get_config(args.config, overrides)
    s = parse_topology(args.topology) if args.topology else None
    devices = topology_devices(s) if s else jax.devices()
    c = GPTConfig.from_config(config.model, backend="tpu" if s else jax.default_backend())
    rows = config.train.batch_size // (len(devices) // config.mesh.tensor if s else 1)
    shapes = (jax.ShapeDtypeStruct((c.padded_vocab, c.d_model), c.param_dtype),
              jax.ShapeDtypeStruct((rows, config.data.seq_len), jnp.int32),
              jax.ShapeDtypeStruct((rows, config.data.seq_len, c.d_model), c.dtype))
    where = (f"{args.topology}, one chip: the TPU compiler's cost model" if s
             else f"{devices[0].device_kind}, measured median of {args.repeats}")
    print(f"{args.config}: {rows} x {config.data.seq_len} tokens per device, table "
          f"{c.padded_vocab} x {c.d_model} {jnp.dtype(c.param_dtype).name}, compute "
          f"{jnp.dtype(c.dtype).name} ({where}; jax {jax.__version__})")
    device = jax.sharding.SingleDeviceSharding(devices[0])
    for name, lookup in (("gather", gather), ("one-hot", one_hot)):
        fn = jax.jit(forward_backward(lookup, c), in_shardings=device)
        compiled = fn.lower(*shapes).compile()
        if s:
            cost = cost_of(compiled)
            print(f"  {name:8s} {cost['optimal_seconds'] * 1e6:10.1f} µs  "
                  f"{cost['flops']:.3e} FLOPs  {cost['bytes accessed']:.3e} bytes")
            continue
        rng = np.random.default_rng(0)
        inputs = (jnp.asarray(rng.normal(size=shapes[0].shape), c.param_dtype),
                  jnp.asarray(rng.integers(0, config.model.vocab_size, shapes[1].shape), jnp.int32),
                  jnp.asarray(rng.normal(size=shapes[2].shape), c.dtype))
        jax.block_until_ready(compiled(*inputs))
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*inputs))
            times.append(time.perf_counter() - t0)
        print(f"  {name:8s} {statistics.median(times) * 1e6:10.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
