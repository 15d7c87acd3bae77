"""Pruning: sparsity targets, structurally pruned = masked logits, pruned weights stay exactly
zero through a recovery fine-tune and a checkpoint round trip, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compress_helpers import logits, tiny, train_tiny

from gptjax.compression import prune, surgery
from gptjax.errors import UserError
from gptjax.evaluation.heldout import evaluate_workdir
from gptjax.training.state import model_config
from gptjax.workdir import open_run


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_sparsity(scope):
    _, c, params = tiny()
    scores = prune.weight_scores(params, "magnitude")
    pruned = prune.unstructured(params, c, scores, 0.5, scope)
    assert abs(surgery.sparsity(pruned) - 0.5) < 0.01
    kernel = lambda p: np.asarray(p["layers"]["block_0"]["mlp"]["fc"]["kernel"])  # noqa: E731
    if scope == "layer":  # every matrix of every layer at the target
        assert all(abs(np.mean(k == 0) - 0.5) < 0.01 for k in kernel(pruned))
    # The smallest weights went: every zeroed one is no larger than every kept one.
    w, p = kernel(params), kernel(pruned)
    if scope == "layer":
        w, p = w[0], p[0]
    assert np.abs(w[p == 0]).max() <= np.abs(w[p != 0]).min()
    np.testing.assert_array_equal(np.asarray(pruned["wte"]["embedding"]),
                                  np.asarray(params["wte"]["embedding"]))


@pytest.mark.parametrize("scan", [True, False])
def test_structured_model_equals_masked_model(scan):
    config, c, params = tiny(scan, num_heads=4, head_dim=4, d_ff=32)
    tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, c.vocab_size)
    grads = jax.tree.map(lambda x: jnp.sin(x * 100), params)  # any "gradient" will do
    scores = prune.weight_scores(params, "first_order", grads)
    for kind, amount in (("heads", 0.25), ("neurons", 0.25), ("heads", 2)):
        keep = prune.choose(scores, c, kind, amount)
        assert len(keep) == c.num_layers and len({len(k) for k in keep}) == 1
        masked = prune.remove(params, c, kind, keep, slice_=False)
        small_config, small, _ = prune.structured(config, params, scores, kind, amount)
        sc = model_config(small_config)
        assert getattr(sc, prune.SIZE_KEY[kind]) == len(keep[0]) < getattr(c, prune.SIZE_KEY[kind])
        np.testing.assert_allclose(logits(sc, small, tokens), logits(c, masked, tokens),
                                   rtol=1e-5, atol=1e-5)
        assert not np.allclose(logits(c, masked, tokens), logits(c, params, tokens))


def test_bad_amounts_are_user_errors():
    config, c, params = tiny()
    scores = prune.weight_scores(params)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(UserError, match=r"\[0, 1\)"):
            prune.unstructured(params, c, scores, bad)
    with pytest.raises(UserError, match="removing 2 of the 2 heads"):
        prune.structured(config, params, scores, "heads", 2)
    with pytest.raises(UserError, match="removing 3 of the 2 heads"):
        prune.choose(scores, c, "heads", 3)
    with pytest.raises(UserError, match="score"):
        prune.weight_scores(params, "taylor")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory, "prune")


def prune_run(workdir, out, **kw):
    return prune.prune_workdir(str(workdir), str(out), calibration_batches=2, **kw)


def test_pruned_weights_stay_zero_through_recovery_and_checkpoints(trained, tmp_path):
    out, masked, _, _, zeros = prune_run(trained, tmp_path / "s50", sparsity=0.5,
                                         score="first_order")
    assert masked and abs(zeros - 0.5) < 0.01
    _, pruned, _, _ = open_run(out)
    assert abs(surgery.sparsity(pruned) - 0.5) < 0.01
    result = surgery.recover(out, str(tmp_path / "rec"), steps=6, lr=1e-2, masked=True)
    assert result["step"] == 6
    _, recovered, _, step = open_run(result["workdir"])
    assert step == 6
    changed = 0
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(pruned)[0],
                            jax.tree.leaves(recovered), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if surgery.prunable(path):
            assert np.all(b[a == 0] == 0), path  # exactly zero, after 6 AdamW steps
        changed += int(np.sum(a != b))
    assert changed > 0  # the other weights did train


def test_structured_workdir_loads_smaller(trained, tmp_path):
    result = prune_run(trained, tmp_path / "h", heads=1, neurons=0.25)
    assert not result.masked and (result.num_heads, result.d_ff) == (1, 24)
    assert prune.pruned_line(result) == (f"pruned (1 heads, d_ff 24, 0.0% of block weights "
                                         f"zero) -> {result.out}")
    out = result.out
    config, params, _, _ = open_run(out)
    assert (config.model.num_heads, config.model.d_ff) == (1, 24)
    assert np.isfinite(evaluate_workdir(out, batches=1)["loss"])
    with pytest.raises(UserError, match="already holds a run"):
        prune_run(trained, out, heads=1)
