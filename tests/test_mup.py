"""muP: the coordinate check, per-layer learning rates, and that it is off by default."""

import jax
import numpy as np
import pytest

from gptjax.config.defaults import base_config
from gptjax.model.gpt import GPTConfig
from gptjax.scaling import mup
from gptjax.training.optim import make_optimizer, mup_hidden_mask

WIDTHS = (32, 128)


@pytest.fixture(scope="module")
def checks():
    """Coordinate sizes after 3 Adam steps (lr 1e-2) at two widths, standard vs muP."""
    return {kind: {w: mup.coord_check(mup.check_config(w, kind == "mup", 1e-2, layers=1,
                                                        seq_len=16), steps=3) for w in WIDTHS}
            for kind in ("sp", "mup")}


def test_coordinate_check_is_flat_with_mup_and_grows_without(checks):
    sp, mu = mup.width_slopes(checks["sp"]), mup.width_slopes(checks["mup"])
    # d ln|x| / d ln(width) after 3 steps: muP keeps every layer within ±0.25 of flat ...
    assert all(abs(s) < 0.25 for s in mu.values()), mu
    # ... the standard parametrisation blows up the block output and the logits with width.
    assert sp["block 0"] > 0.5 and sp["logits"] > 0.4, sp
    # Before any step both are O(1); the embedding never depends on width.
    assert abs(sp["embedding"]) < 0.2 and abs(mu["embedding"]) < 0.2


def test_mup_learning_rates_and_init():
    c = mup.check_config(256, True, 1e-2, layers=1, base_width=64)
    model = GPTConfig.from_config(c.model, backend="cpu")
    assert model.width_mult == 4 and model.hidden_std == pytest.approx(0.01)
    assert model.attn_scale == pytest.approx(1 / 8)
    params = {"wte": {"embedding": np.ones((8, 4))},
              "layer_0": {"attn": {"qkv": {"kernel": np.ones((4, 3, 1, 4))}},
                          "mlp": {"fc": {"kernel": np.ones((4, 16))}},
                          "ln1": {"scale": np.ones(4)}}}
    mask = mup_hidden_mask(params)
    assert mask["layer_0"]["attn"]["qkv"]["kernel"] and mask["layer_0"]["mlp"]["fc"]["kernel"]
    assert not mask["wte"]["embedding"] and not mask["layer_0"]["ln1"]["scale"]
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = make_optimizer(c).update(grads, make_optimizer(c).init(params), params)
    # Adam's first step is lr·sign(g): hidden matrices get lr / width_mult, the rest lr.
    np.testing.assert_allclose(updates["layer_0"]["mlp"]["fc"]["kernel"], -1e-2 / 4, rtol=1e-3)
    np.testing.assert_allclose(updates["wte"]["embedding"], -1e-2, rtol=1e-3)


def test_mup_is_off_by_default():
    c = base_config()
    assert not c.model.mup
    model = GPTConfig.from_config(c.model, backend="cpu")
    assert model.width_mult == 1 and model.hidden_std == model.init_std
    assert model.attn_scale == pytest.approx(1 / np.sqrt(model.head_dim))
