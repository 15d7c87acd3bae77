"""Meshes, logical rules and the shape checks; the same step gives the same numbers on any mesh."""

import functools

import jax
import numpy as np
import pytest

from gptjax.config.loader import get_config
from gptjax.errors import UserError
from gptjax.parallel import sharding
from gptjax.training import steps
from gptjax.training.state import abstract_train_state, create_train_state

MESHES = [(1, 1, 1), (8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2)]


def tiny(mesh=(1, 1, 1), **overrides):
    c = get_config("configs/smoke.py:tiny")
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    for key, value in overrides.items():
        section, name = key.split("__")
        c[section][name] = value
    return c


def host_batch(c, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, c.model.vocab_size, (c.train.batch_size, c.data.seq_len + 1))
    tokens = tokens.astype(np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}


def devices_for(shape):
    return jax.devices()[: int(np.prod(shape))]


@functools.lru_cache(maxsize=None)
def loss_and_grads_on(shape, accum=1):
    """(loss, grads as numpy) of one global batch for the same seed on mesh `shape`."""
    c = tiny(shape, train__grad_accum=accum)
    mesh = sharding.make_mesh(c.mesh, devices_for(shape))
    sharding.check_config(c, mesh)
    _, shardings = abstract_train_state(c, mesh)
    state = create_train_state(c, mesh)
    fn = steps.make_loss_and_grads(c)
    with jax.set_mesh(mesh):
        batch = sharding.global_batch(host_batch(c), mesh)
        jitted = jax.jit(fn, in_shardings=(shardings.params, sharding.batch_sharding(mesh), None),
                         out_shardings=(sharding.replicated(mesh), shardings.params))
        loss, grads = jitted(state.params, batch, jax.random.key(0))
    return float(loss), jax.device_get(grads), jax.device_get(state.params)


def max_rel(a_tree, b_tree):
    def rel(a, b):
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))
    return max(jax.tree.leaves(jax.tree.map(rel, a_tree, b_tree)))


# ----------------------------------------------------------------------------- mesh


def test_mesh_shape_resolves_minus_one():
    c = tiny((-1, 2, 1))
    assert sharding.mesh_shape(c.mesh, 8) == (4, 2, 1)
    mesh = sharding.make_mesh(c.mesh)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}


@pytest.mark.parametrize("shape,needle", [
    ((16, 1, 1), "needs 16 devices but only 8"),
    ((-1, -1, 1), "at most one axis"),
    ((3, -1, 1), "not divisible"),
    ((2, 2, 1), "uses 4 of 8"),
    ((0, 1, 1), "positive"),
])
def test_bad_mesh_is_a_user_error(shape, needle):
    with pytest.raises(UserError, match=needle):
        sharding.make_mesh(tiny(shape).mesh)


def test_rules_map_logical_axes_to_mesh_axes():
    c = tiny((2, 2, 2))
    mesh = sharding.make_mesh(c.mesh)
    _, sh = abstract_train_state(c, mesh)
    # qkv kernel [layers, embed, 3, heads, kv]: embed over fsdp, heads over tensor.
    spec = sh.params["layers"]["block_0"]["attn"]["qkv"]["kernel"].spec
    assert tuple(spec) == (None, "fsdp", None, "tensor", None)
    assert tuple(sh.params["wte"]["embedding"].spec) == ("tensor", "fsdp")
    # Adam moments follow their parameters; the step counter is replicated.
    mu = sh.opt_state[1].mu
    assert mu["wte"]["embedding"].spec == sh.params["wte"]["embedding"].spec
    assert tuple(sh.step.spec) == ()


def test_pure_data_parallel_replicates_params():
    c = tiny((8, 1, 1))
    mesh = sharding.make_mesh(c.mesh)
    state = create_train_state(c, mesh)
    kernel = state.params["layers"]["block_0"]["mlp"]["fc"]["kernel"]
    assert kernel.sharding.is_fully_replicated
    c = tiny((1, 8, 1))
    state = create_train_state(c, sharding.make_mesh(c.mesh))
    kernel = state.params["layers"]["block_0"]["mlp"]["fc"]["kernel"]
    assert not kernel.sharding.is_fully_replicated  # FSDP: sharded from birth
    assert kernel.addressable_shards[0].data.shape[1] == kernel.shape[1] // 8


@pytest.mark.parametrize("mesh,overrides,needle", [
    ((8, 1, 1), {"train__batch_size": 12}, "multiple of 8"),
    ((4, 2, 1), {"train__batch_size": 8, "train__grad_accum": 2}, "multiple of 16"),
    ((8, 1, 1), {"train__grad_accum": 3}, "not divisible by train.grad_accum"),
    ((1, 4, 2), {"model__num_heads": 3, "model__head_dim": 8}, "num_heads=3"),
    ((1, 1, 1), {"data__seq_len": 32}, "longer than model.max_seq_len"),
])
def test_shapes_that_do_not_fit_fail_before_compiling(mesh, overrides, needle):
    c = tiny(mesh, **overrides)
    m = sharding.make_mesh(c.mesh, devices_for(mesh))
    with pytest.raises(UserError, match=needle):
        sharding.check_config(c, m)


def test_parameter_that_does_not_divide_names_the_parameter():
    c = tiny((1, 8, 1), model__d_model=12)  # embed 12 over fsdp 8
    mesh = sharding.make_mesh(c.mesh)
    with pytest.raises(UserError, match=r"parameter .*does not divide over mesh axes"):
        abstract_train_state(c, mesh)


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("shape", MESHES[1:])
def test_loss_and_grads_agree_across_meshes(shape):
    ref_loss, ref_grads, ref_params = loss_and_grads_on((1, 1, 1))
    loss, grads, params = loss_and_grads_on(shape)
    assert max_rel(params, ref_params) == 0.0  # same init whatever the sharding
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    assert max_rel(grads, ref_grads) <= 1e-5


def test_grad_accumulation_matches_one_big_batch():
    ref_loss, ref_grads, _ = loss_and_grads_on((1, 1, 1))
    loss, grads, _ = loss_and_grads_on((1, 1, 1), accum=4)
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    assert max_rel(grads, ref_grads) <= 1e-5
    loss, grads, _ = loss_and_grads_on((2, 1, 2), accum=4)  # accumulation on a sharded mesh
    assert max_rel(grads, ref_grads) <= 1e-5


@pytest.mark.slow
def test_train_steps_agree_across_meshes():
    """Three full optimizer steps (clip, Adam, decay, schedule) on two very different meshes."""
    losses = {}
    for shape in [(1, 1, 1), (1, 4, 2)]:
        c = tiny(shape, optim__warmup_steps=1)
        mesh = sharding.make_mesh(c.mesh, devices_for(shape))
        _, sh = abstract_train_state(c, mesh)
        state = create_train_state(c, mesh)
        step = steps.make_train_step(c, mesh, sh)
        out = []
        with jax.set_mesh(mesh):
            for i in range(3):
                state, m = step(state, sharding.global_batch(host_batch(c, i), mesh))
                out.append(m["loss"])
        losses[shape] = (np.array(jax.device_get(out)), jax.device_get(state.params))
    a, b = losses[(1, 1, 1)], losses[(1, 4, 2)]
    assert a[0][2] < a[0][0]  # it learns
    np.testing.assert_allclose(b[0], a[0], rtol=1e-5)
    assert max_rel(b[1], a[1]) <= 1e-4
