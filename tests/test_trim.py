"""Trimming: dropping the least important layers, renumbering a character vocabulary (the
smaller model predicts exactly what the big one did on the kept tokens), clear errors."""

import jax
import numpy as np
import pytest
from compress_helpers import logits, tiny

from gptjax import surgery, trim
from gptjax.data.tokenizer import CharTokenizer, SyntheticTokenizer
from gptjax.errors import UserError
from gptjax.model import GPT
from gptjax.sharding import single_device_mesh
from gptjax.state import model_config


def test_layer_importance_and_dropping():
    config, c, params = tiny(num_layers=3)
    tokens = jax.random.randint(jax.random.key(2), (2, 17), 0, c.vocab_size)
    batches = [{"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}]
    mesh = single_device_mesh()
    with jax.set_mesh(mesh):
        importance = trim.layer_importance(config, params, batches, mesh)
    assert len(importance) == 3 and all(np.isfinite(importance))
    small_config, small, drop = trim.drop_layers(config, params, 2, importance)
    assert drop == sorted(np.argsort(importance)[:2].tolist())
    sc = model_config(small_config)
    assert sc.num_layers == 1
    kept = [i for i in range(3) if i not in drop][0]
    _, layers = surgery.split_layers(params, c)
    _, small_layers = surgery.split_layers(small, sc)
    for a, b in zip(jax.tree.leaves(layers[kept]), jax.tree.leaves(small_layers[0]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.isfinite(np.asarray(logits(sc, small, tokens[:, :-1]))).all()
    for bad in (3, 5, -1):
        with pytest.raises(UserError, match="has 3 layers"):
            trim.drop_layers(config, params, bad, importance)


@pytest.mark.parametrize("tied", [True, False])
def test_vocabulary_trim_keeps_the_predictions(tied):
    config, c, params = tiny(vocab_size=5, vocab_multiple=4, tie_embeddings=tied)
    tok = CharTokenizer(list("abcd"), eos=True)  # ids a0 b1 c2 d3 <eos>4
    used = np.array([0, 2, 4])
    small_config, small, new_tok = trim.trim_vocab(config, params, tok, used)
    assert new_tok.chars == ["a", "c"] and new_tok.eos_id == 2 and new_tok.vocab_size == 3
    sc = model_config(small_config)
    text = "acca" * 3
    old = np.asarray(GPT(c).apply({"params": params}, np.array([tok.encode(text)])))
    new = np.asarray(GPT(sc).apply({"params": small}, np.array([new_tok.encode(text)])))
    np.testing.assert_allclose(new[..., :3], old[..., used], rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="character tokenizer"):
        trim.trim_vocab(config, params, SyntheticTokenizer(5), used)
