"""Parameter layouts: scanned layers (one stacked tree per block of a group, the default) <->
one subtree per layer (`layer_i`), for GPT-2 import/export and structural surgery."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gptjax.model.gpt import GPTConfig


def scanned_to_layers(params, c: GPTConfig):
    """Scanned params {'layers': {'block_j': stacked}} -> unrolled {'layer_i': ...}."""
    params = dict(params)
    stacked = params.pop("layers")
    for i in range(c.num_layers):
        group, j = divmod(i, c.group_size)
        params[f"layer_{i}"] = jax.tree.map(lambda a, g=group: a[g], stacked[f"block_{j}"])
    return params


def layers_to_scanned(params, c: GPTConfig):
    """Inverse of `scanned_to_layers`."""
    params = dict(params)
    layers = [params.pop(f"layer_{i}") for i in range(c.num_layers)]
    g = c.group_size
    params["layers"] = {f"block_{j}": jax.tree.map(lambda *a: jnp.stack(a), *layers[j::g])
                        for j in range(g)}
    return params
