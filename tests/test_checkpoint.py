"""Orbax checkpoints: exact round trip, restore on another mesh, keep policy, unfinished saves."""

import os

import jax
import numpy as np
import pytest

from gptjax.config.loader import get_config
from gptjax.errors import UserError
from gptjax.parallel import sharding
from gptjax.storage import checkpoint
from gptjax.training.state import abstract_train_state, create_train_state
from gptjax.workdir import CONFIG_FILE, open_run, read_config


def tiny(mesh=(1, 1, 1)):
    c = get_config("configs/smoke.py:tiny")
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    c.data.source = "synthetic"
    c.optim.warmup_steps = 1
    return c


def mesh_of(c):
    return sharding.make_mesh(c.mesh, jax.devices()[: int(np.prod(
        [c.mesh.data, c.mesh.fsdp, c.mesh.tensor]))])


def target(c, mesh):
    abstract, shardings = abstract_train_state(c, mesh)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


def perturbed_state(c, mesh):
    """A state whose every leaf (Adam moments, counters) differs from its initial value."""
    _, sh = abstract_train_state(c, mesh)
    state = create_train_state(c, mesh)

    def perturb(state):
        leaves, tree = jax.tree.flatten(state)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        out = [x + (jax.random.normal(k, x.shape, x.dtype) if x.dtype.kind == "f" else 3)
               for x, k in zip(leaves, keys, strict=True)]
        return jax.tree.unflatten(tree, out)
    with jax.set_mesh(mesh):
        return jax.jit(perturb, out_shardings=sh)(state)


def assert_trees_equal(a, b):
    a, b = jax.device_get(a), jax.device_get(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def saved_on_222(tmp_path_factory):
    """A train state written from mesh (2, 2, 2), async, with a data position and config."""
    workdir = str(tmp_path_factory.mktemp("ckpt222"))
    c = tiny((2, 2, 2))
    state = perturbed_state(c, mesh_of(c))
    ckpt = checkpoint.Checkpointer.from_config(workdir, c)
    ckpt.save(2, state, {"step": 2, "epoch": 0}, c.to_dict())
    ckpt.close()
    return workdir, jax.device_get(state)


def test_round_trip_is_exact(saved_on_222):
    workdir, expected = saved_on_222
    c = tiny((2, 2, 2))
    mesh = mesh_of(c)
    ckpt = checkpoint.Checkpointer.from_config(workdir, c)
    assert ckpt.latest_step() == 2
    state, data_state = ckpt.restore(2, target(c, mesh))
    assert data_state == {"step": 2, "epoch": 0}
    assert ckpt.restore_config(2)["model"]["d_model"] == c.model.d_model
    assert_trees_equal(state, expected)
    assert int(state.step) == 3 and state.params["wte"]["embedding"].sharding.spec == \
        jax.sharding.PartitionSpec("tensor", "fsdp")


@pytest.mark.parametrize("shape", [(1, 1, 1), (8, 1, 1)])
def test_restore_on_a_different_mesh(saved_on_222, shape):
    workdir, expected = saved_on_222
    c = tiny(shape)
    mesh = mesh_of(c)
    ckpt = checkpoint.Checkpointer.from_config(workdir, c)
    want = target(c, mesh)
    state, _ = ckpt.restore(2, want)
    assert_trees_equal(state, expected)
    for leaf, t in zip(jax.tree.leaves(state), jax.tree.leaves(want), strict=True):
        assert leaf.sharding == t.sharding


def test_unfinished_checkpoint_is_ignored(saved_on_222, tmp_path):
    workdir, expected = saved_on_222
    c = tiny((1, 1, 1))
    # A save that died half-way: Orbax's temporary directory for step 7 with partial content.
    tmp = os.path.join(checkpoint.checkpoint_dir(workdir), "7.orbax-checkpoint-tmp-1234567")
    os.makedirs(os.path.join(tmp, "state"))
    with open(os.path.join(tmp, "state", "garbage"), "w") as f:
        f.write("partial")
    try:
        ckpt = checkpoint.Checkpointer.from_config(workdir, c)
        assert ckpt.latest_step() == 2
        assert ckpt.all_steps() == [2]
        state, _ = ckpt.restore(ckpt.latest_step(), target(c, mesh_of(c)))
        assert_trees_equal(state.params, expected.params)
    finally:  # Orbax may already have removed it (it cleans up temporaries when it opens)
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


def test_incompatible_config_names_the_parameter(saved_on_222):
    workdir, _ = saved_on_222
    c = tiny((1, 1, 1))
    c.model.d_ff = 64
    ckpt = checkpoint.Checkpointer.from_config(workdir, c)
    with pytest.raises(UserError, match=r"mlp/fc/kernel.*shape \(2, 16, 32\).*\(2, 16, 64\)"):
        ckpt.restore(2, target(c, mesh_of(c)))
    c = tiny((1, 1, 1))
    c.model.use_bias = True  # params the checkpoint does not have
    with pytest.raises(UserError, match=r"has no .*bias"):
        ckpt.restore(2, target(c, mesh_of(c)))


def test_keep_policy_and_async_saves(tmp_path):
    """keep_checkpoints=2 newest plus every keep_every=4-th step; saves do not block."""
    c = tiny()
    c.train.keep_checkpoints = 2
    c.train.keep_every = 4
    ckpt = checkpoint.Checkpointer.from_config(str(tmp_path), c)
    tree = {"w": jax.numpy.arange(8.0)}
    for step in range(1, 10):
        ckpt.save(step, {"w": tree["w"] + step}, {"step": step}, {"name": "x"})
    ckpt.close()
    ckpt = checkpoint.Checkpointer.from_config(str(tmp_path), c)
    assert ckpt.all_steps() == [4, 8, 9]
    restored, data_state = ckpt.restore(9, {"w": jax.ShapeDtypeStruct((8,), np.float32)})
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(8.0) + 9)
    assert data_state == {"step": 9}


def test_read_only_without_checkpoints_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoints"):
        checkpoint.Checkpointer(str(tmp_path), read_only=True)
    with pytest.raises(UserError, match="config.json not found"):
        open_run(str(tmp_path))


def test_a_workdir_from_before_a_config_key_existed_reads_with_its_default(tmp_path):
    """config.json of an older gptjax lacks keys added since (model.mup, a whole group):
    they take their defaults, and the keys the run did save are kept."""
    import json
    saved = get_config("configs/smoke.py:tiny", ["--config.train.steps=7"]).to_dict()
    del saved["model"]["mup"], saved["sweep"]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(saved))
    config = read_config(str(tmp_path))
    assert config.model.mup is False and config.sweep.workers == 1
    assert config.train.steps == 7 and config.model.d_model == saved["model"]["d_model"]
