"""Trimming: dropping the least important layers, renumbering a character vocabulary (the
smaller model predicts exactly what the big one did on the kept tokens), clear errors; a
trimmed run keeps its source's eval set, and layers are chosen on the batches the compression
report scores."""

import jax
import numpy as np
import pytest
from compress_helpers import logits, tiny, train_tiny

from gptjax.compression import report, surgery, trim
from gptjax.data.tokenizer import CharTokenizer, SyntheticTokenizer
from gptjax.errors import UserError
from gptjax.evaluation.heldout import evaluate_workdir
from gptjax.model.gpt import GPT
from gptjax.parallel.sharding import single_device_mesh
from gptjax.training.state import model_config
from gptjax.workdir import read_config


def test_layer_importance_and_dropping():
    config, c, params = tiny(num_layers=3)
    tokens = jax.random.randint(jax.random.key(2), (2, 17), 0, c.vocab_size)
    batches = [{"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}]
    mesh = single_device_mesh()
    with jax.set_mesh(mesh):
        importance = trim.layer_importance(config, params, batches, mesh)
    assert len(importance) == 3 and all(np.isfinite(importance))
    small_config, small, drop = trim.drop_least_important(config, params, 2, importance)
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
            trim.drop_least_important(config, params, bad, importance)


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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory, "trim", "--config.model.num_layers=3")


def test_trimmed_run_keeps_the_source_eval_set(trained, tmp_path):
    """--eval-batches is what the layers are chosen on, not the new run's eval set: `gptjax
    eval` of the trimmed model scores the source's held-out tokens (train.eval_batches)."""
    source = read_config(trained).train
    assert source.eval_batches == 2  # configs/smoke.py:tiny
    trimmed = trim.trim_workdir(str(trained), str(tmp_path / "l2"), drop_layers=1,
                                eval_batches=1)
    assert len(trimmed.dropped) == 1 and len(trimmed.importance) == 3 and trimmed.vocab is None
    assert trim.trimmed_line(trimmed) == (
        f"dropped layers {trimmed.dropped} (held-out loss "
        f"+{trimmed.importance[trimmed.dropped[0]]:.4f}) -> {trimmed.out}")
    assert read_config(trimmed.out).train.eval_batches == 2
    assert read_config(trimmed.out).model.num_layers == 2
    tokens = 2 * source.batch_size * read_config(trained).data.seq_len
    assert evaluate_workdir(trimmed.out)["tokens"] == evaluate_workdir(str(trained))[
        "tokens"] == tokens


def test_report_chooses_layers_on_the_batches_it_scores(trained, tmp_path, monkeypatch):
    """A layer's importance is the rise in held-out loss the report's `measure` then shows for
    the model without it, and the report drops layers chosen on its own --eval-batches."""
    ctx = report.Settings(str(trained), str(tmp_path / "report"), str(tmp_path), recover_steps=0,
                          eval_batches=1, decode_batches=[1], decode_tokens=2, repeats=1)
    trimmed = trim.trim_workdir(str(trained), str(tmp_path / "l2"), drop_layers=1,
                                eval_batches=ctx.eval_batches)
    rise = (report.measure("l2", trimmed.out, "none", ctx)["eval_loss"]
            - report.measure("float", str(trained), "none", ctx)["eval_loss"])
    assert rise == pytest.approx(trimmed.importance[trimmed.dropped[0]], abs=1e-5)
    calls = []

    def fake_trim(workdir, out, **kw):
        calls.append(kw)
        return trim.Trimmed(out, [0, 1], [0.0, 0.0, 0.0], None)

    monkeypatch.setattr(trim, "trim_workdir", fake_trim)
    assert report._drop2(ctx) == [("drop2", str(tmp_path / "drop2"), "none")]
    assert calls == [{"drop_layers": 2, "eval_batches": ctx.eval_batches}]
