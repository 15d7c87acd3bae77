"""The model's dense layer and the naming every layer shares.

`logical(init, names)` boxes a param initialiser with logical axis names ('embed', 'heads', ...)
and `constrain` names an activation's axes; gptjax/parallel/sharding.py maps the names onto the
mesh. `matmul` is the one contraction every projection goes through: the forward in the compute
dtype, the weight gradient in `config.grad_dtype` (docs/training.md, "The step"). `Dense` is
nn.DenseGeneral's layout on top of it.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name


class _Logical(nn.LogicallyPartitioned):
    """A logically partitioned param whose constraint is skipped while its rank differs from its
    names, instead of failing on the mismatch."""

    def unbox(self, apply_constraint=True):
        if getattr(self.value, "ndim", len(self.names)) != len(self.names):
            return self.value
        return super().unbox(apply_constraint)


def logical(init, names):
    def boxed_init(*args, **kwargs):
        return _Logical(init(*args, **kwargs), tuple(names))
    return boxed_init


constrain = nn.with_logical_constraint


# ----------------------------------------------------------------------------- matmuls


def matmul(spec: str, x, kernel, c, bias=None, out_dtype=None):
    """`einsum(spec, x, kernel) + bias` in `c.dtype`, the compute dtype (the result in
    `out_dtype`, default the compute dtype). `c` is the model's GPTConfig. The kernel's and the
    bias's gradients are computed in `c.grad_dtype` (default their own dtype, float32), not the
    compute dtype: with data or fsdp > 1 each
    device's weight gradient is a partial sum that XLA reduces across devices right where the
    layer's backward pass makes it, so this is the dtype that reduction runs in
    (docs/training.md, "The step")."""
    out_dtype, x = out_dtype or c.dtype, x.astype(c.dtype)
    if not isinstance(kernel, jax.Array):  # Qwix's w8a8 weights: its intercepted einsum runs
        y = jnp.einsum(spec, x, kernel, preferred_element_type=out_dtype)  # (inference only)
        y = y if bias is None else y + bias.astype(y.dtype)
    else:
        y = _matmul(spec, out_dtype, c.grad_dtype or kernel.dtype, c.flat_weight_grads, x,
                    kernel, bias)
    return checkpoint_name(y, "matmul")  # what remat=save_dots keeps


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _matmul(spec, out_dtype, grad_dtype, flat, x, kernel, bias):
    y = jnp.einsum(spec, x, kernel.astype(x.dtype), preferred_element_type=out_dtype)
    return y if bias is None else y + bias.astype(y.dtype)


def _matmul_fwd(spec, out_dtype, grad_dtype, flat, x, kernel, bias):
    return _matmul(spec, out_dtype, grad_dtype, flat, x, kernel, bias), (x, kernel, bias)


def _matmul_bwd(spec, out_dtype, grad_dtype, flat, residuals, g):
    x, kernel, bias = residuals
    x_ax, rest = spec.split(",")
    k_ax, y_ax = rest.split("->")
    dx = jnp.einsum(f"{y_ax},{k_ax}->{x_ax}", g, kernel.astype(x.dtype),
                    preferred_element_type=out_dtype).astype(x.dtype)
    if flat and x_ax[:2] == y_ax[:2] == "bt":
        dk = _flat_kernel_grad(x_ax[2:], y_ax[2:], k_ax, x, g, grad_dtype)
    else:
        dk = jnp.einsum(f"{x_ax},{y_ax}->{k_ax}", x, g, preferred_element_type=grad_dtype)
    db = None if bias is None else g.sum(tuple(range(g.ndim - bias.ndim)), dtype=grad_dtype)
    return dx, dk.astype(kernel.dtype), None if bias is None else db.astype(bias.dtype)


def _flat_kernel_grad(x_feat, y_feat, k_ax, x, g, dtype):
    """The kernel gradient sum_(b,t) x[b,t,...] g[b,t,...] as one 2-D matmul over the B*T rows,
    x_rows^T @ g_rows, laid out as the kernel (GPTConfig.flat_weight_grads, set on CPU). Written
    as one einsum over (b, t), XLA:CPU feeds its matmul transposed copies of the activations (for
    the MLP's output projection the [B*T, d_ff] one, every layer): docs/performance.md."""
    rows = x.shape[0] * x.shape[1]
    dk = jnp.matmul(x.reshape(rows, -1).T, g.reshape(rows, -1), preferred_element_type=dtype)
    dk = dk.reshape(*x.shape[2:], *g.shape[2:])
    return dk if x_feat + y_feat == k_ax else jnp.einsum(f"{x_feat}{y_feat}->{k_ax}", dk)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Dense(nn.Module):
    """x [B, T, *in] -> [B, T, *features] through `matmul`, contracting x's last `axes`
    dimensions; kernel [*in, *features] and bias [*features] as nn.DenseGeneral lays them out."""
    config: Any  # the model's GPTConfig (gptjax/model/gpt.py)
    features: tuple[int, ...]
    kernel_names: tuple
    bias_names: tuple
    std: float
    axes: int = 1

    @nn.compact
    def __call__(self, x):
        c = self.config
        shape = (*x.shape[x.ndim - self.axes:], *self.features)
        kernel = self.param("kernel", logical(nn.initializers.normal(self.std), self.kernel_names),
                            shape, c.param_dtype)
        bias = self.param("bias", logical(nn.initializers.zeros, self.bias_names),
                          self.features, c.param_dtype) if c.use_bias else None
        ins, outs = "defg"[:self.axes], "hijk"[:len(self.features)]
        return matmul(f"bt{ins},{ins}{outs}->bt{outs}", x, kernel, c, bias)
