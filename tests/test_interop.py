"""Hugging Face GPT-2 interop: exact export -> import round trips, logits parity with a random
`transformers` GPT2LMHeadModel (needs the optional `gptjax[interop]` extra: torch, transformers),
and `gptjax convert import|export`, whose export carries the run's tokenizer (transformers loads
it and generates gptjax sample's greedy text)."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gptjax import cli
from gptjax.config.defaults import base_config
from gptjax.config.loader import get_config
from gptjax.data import gpt2_bpe, hf_tokenizer
from gptjax.data.spm import train_sentencepiece
from gptjax.data.tokenizer import CharTokenizer
from gptjax.errors import UserError
from gptjax.inference import hf_gpt2 as interop
from gptjax.inference.sample import sample
from gptjax.model.gpt import GPT, GPTConfig
from gptjax.workdir import open_run, save_tokenizer, write_params

HF_TINY = {"model_type": "gpt2", "vocab_size": 61, "n_positions": 32, "n_embd": 32, "n_layer": 3,
           "n_head": 4, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}


def gptjax_tiny(scan_layers=True, seed=0):
    keys = interop.config_from_hf(HF_TINY, vocab_multiple=16)
    c = GPTConfig(**keys, scan_layers=scan_layers, init_std=0.1)
    model = GPT(c)
    shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0),
                                                        jnp.zeros((1, 4), jnp.int32))["params"]))
    # Random values everywhere (norms and biases too), so a swapped or dropped one shows.
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32), shapes)
    # The padded vocabulary rows are zero after an import: make them so here too.
    params["wte"]["embedding"][c.vocab_size:] = 0.0
    return model, params


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_export_import_round_trip_is_exact(scan_layers):
    model, params = gptjax_tiny(scan_layers)
    state = interop.params_to_hf(params, model.config)
    assert state["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)
    assert state["transformer.wte.weight"].shape == (61, 32)  # padding rows dropped
    assert_trees_equal(interop.hf_to_params(state, model.config), params)


def test_safetensors_files_round_trip(tmp_path):
    pytest.importorskip("safetensors", reason="install the optional extra: pip install "
                                              "'gptjax[interop]'")
    model, params = gptjax_tiny()
    interop.save_hf(str(tmp_path), params, model.config)
    hf_config, state = interop.load_hf(str(tmp_path))
    c = GPTConfig(**interop.config_from_hf(hf_config, vocab_multiple=16), init_std=0.1)
    assert c == model.config
    assert_trees_equal(interop.hf_to_params(state, c), params)


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="cannot export as GPT-2"):
        interop.config_to_hf(GPTConfig(position="rotary", use_bias=False))
    with pytest.raises(UserError, match="activation_function"):
        interop.config_from_hf({**HF_TINY, "activation_function": "relu"})
    with pytest.raises(UserError, match="config.json"):
        interop.load_hf(str(tmp_path))
    model, params = gptjax_tiny()
    state = interop.params_to_hf(params, model.config)
    del state["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(UserError, match="c_fc.bias"):
        interop.hf_to_params(state, model.config)


def _random_hf_model(torch, transformers, **overrides):
    """HF_TINY (with `overrides`), random weights; tests/test_harness.py uses it too."""
    torch.manual_seed(0)
    keys = {**{k: v for k, v in HF_TINY.items() if k != "model_type"}, **overrides}
    config = transformers.GPT2Config(**keys, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     initializer_range=0.2)  # logits of order 1, not 0.01
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # perturb norms and biases too (they start at 1 and 0)
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("fmt", ["safetensors", "pytorch"])
def test_logits_match_transformers_gpt2(tmp_path, fmt):
    torch = pytest.importorskip("torch", reason="parity test needs the optional extra: "
                                                "pip install 'gptjax[interop]'")
    transformers = pytest.importorskip("transformers", reason="parity test needs the optional "
                                                              "extra: pip install "
                                                              "'gptjax[interop]'")
    hf = _random_hf_model(torch, transformers)
    hf.save_pretrained(tmp_path, safe_serialization=fmt == "safetensors")
    hf_config, state = interop.load_hf(str(tmp_path))
    c = GPTConfig(**interop.config_from_hf(hf_config), dtype=jnp.float32)
    params = interop.hf_to_params(state, c)
    tokens = np.random.default_rng(0).integers(0, 61, size=(2, 32))
    with torch.no_grad():
        want = hf(torch.as_tensor(tokens)).logits.numpy()
    got = np.asarray(GPT(c).apply({"params": params}, jnp.asarray(tokens)))[..., :61]
    assert np.max(np.abs(got - want)) <= 1e-4
    # ... and the export loads back into transformers with the same logits.
    out = tmp_path / "exported"
    interop.save_hf(str(out), params, c)
    again = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        np.testing.assert_allclose(again(torch.as_tensor(tokens)).logits.numpy(), want,
                                   atol=1e-6)


def test_convert_cli_import_then_export(tmp_path):
    pytest.importorskip("safetensors", reason="pip install 'gptjax[interop]'")
    model, params = gptjax_tiny(seed=3)
    interop.save_hf(str(tmp_path / "hf"), params, model.config)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "gptjax", "convert", *map(str, args)],
                              capture_output=True, text=True, timeout=300, env=env)

    r = cli("import", "--hf", tmp_path / "hf", "--workdir", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "run" / "config.json") as f:
        assert json.load(f)["model"]["num_layers"] == 3
    r = cli("export", "--workdir", tmp_path / "run", "--out", tmp_path / "back")
    assert r.returncode == 0, r.stderr
    _, state = interop.load_hf(str(tmp_path / "back"))
    assert_trees_equal(interop.hf_to_params(state, model.config), params)
    bad = cli("import", "--hf", tmp_path / "missing", "--workdir", tmp_path / "x")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_import_with_a_tokenizer_sets_tokenizer_kind_hf(tmp_path):
    pytest.importorskip("safetensors", reason="pip install 'gptjax[interop]'")
    tokenizers = pytest.importorskip("tokenizers", reason="pip install 'gptjax[interop]'")
    model, params = gptjax_tiny(seed=4)
    interop.save_hf(str(tmp_path / "hf"), params, model.config)
    vocab = {"<|endoftext|>": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(59)}}  # 61 ids
    hf_tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    hf_tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf_tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    interop.import_to_workdir(str(tmp_path / "hf"), str(tmp_path / "run"))
    with open(tmp_path / "run" / "config.json") as f:
        saved = json.load(f)["data"]
    assert saved["tokenizer"]["kind"] == "hf" and saved["source"] != "synthetic"
    config, _, tok, _ = open_run(str(tmp_path / "run"))
    assert tok.kind == "hf" and tok.vocab_size == config.model.vocab_size == 61
    assert tok.encode("w3 w7 nope") == [5, 9, 1] and tok.eos_id == 0


# ----------------------------------------------------------------------------- export + tokenizer


PROBE_EXTRA = " caf\u00e9 42  \t"  # beyond the corpus: bytes, digits, spaces


def _tokenizer(kind: str, text: str):
    """A tokenizer of each family gptjax trains, on `text` (seconds)."""
    if kind == "char":
        return CharTokenizer(sorted(set(text + PROBE_EXTRA)), eos=True)
    if kind == "gpt2":
        return gpt2_bpe.train([text], 300)
    tcfg = ml_collections.ConfigDict({**base_config().data.tokenizer,
                                      "kind": kind.removesuffix("_spm"),
                                      "vocab_size": 400, "train_sentences": 5000})
    return train_sentencepiece([text], tcfg)


def _gpt2_shaped_run(path, tok, kind: str) -> None:
    """A workdir of random GPT-2-shaped params holding `tok`."""
    config = get_config("configs/smoke.py:tiny", [
        "--config.data.source=synthetic", f"--config.model.vocab_size={tok.vocab_size}",
        "--config.model.use_bias=True", "--config.model.max_seq_len=64",
        "--config.model.init_std=0.3"])
    config.data.tokenizer.kind = kind
    model = GPT(GPTConfig.from_config(config.model))
    params = nn.unbox(model.init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"])
    write_params(str(path), config, params)
    save_tokenizer(str(path), tok)


@pytest.mark.parametrize("kind", ["char", "gpt2"])  # sentencepiece's: the test below
def test_export_loads_in_transformers_and_generates_as_gptjax_sample(tmp_path, kind,
                                                                     shakespeare_manual_dir):
    """`convert export` writes the run's tokenizer beside the weights: transformers'
    AutoTokenizer + AutoModelForCausalLM load the directory offline as is, encode and decode
    text as gptjax does and generate gptjax sample's greedy tokens."""
    torch = pytest.importorskip("torch", reason="pip install 'gptjax[interop-test]'")
    transformers = pytest.importorskip("transformers", reason="pip install "
                                                              "'gptjax[interop-test]'")
    text = (shakespeare_manual_dir / "input.txt").read_text()[:60000]
    tok = _tokenizer(kind, text)
    _gpt2_shaped_run(tmp_path / "run", tok, kind)
    out = tmp_path / "hf"
    assert cli.main(["convert", "export", "--workdir", str(tmp_path / "run"),
                     "--out", str(out)]) == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    probe = text[50000:51000] + PROBE_EXTRA
    assert hf_tok(probe)["input_ids"] == list(tok.encode(probe))
    assert hf_tok.decode(tok.encode(probe)) == tok.decode(tok.encode(probe))
    assert hf_tok.eos_token_id == tok.eos_id == hf.config.eos_token_id
    prompt = "ROMEO:\nWhat"
    want = sample(str(tmp_path / "run"), [prompt], max_new_tokens=24, num_samples=1,
                  temperature=0.0)[0]
    ids = hf_tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        got = hf.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=0)
    # (gptjax's decode of transformers' ids: a random model emits byte pieces that are not
    # UTF-8, which the two decoders render with different numbers of U+FFFD)
    new = [t for t in got[0, ids.shape[1]:].tolist() if t != tok.eos_id]
    assert prompt + tok.decode(new) == want and len(new) > 0


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_export_converts_sentencepiece_models_gptjax_trains(kind, shakespeare_manual_dir):
    pytest.importorskip("tokenizers", reason="pip install 'gptjax[interop]'")
    text = (shakespeare_manual_dir / "input.txt").read_text()[:30000]
    spm = _tokenizer(kind, text)
    hf, eos = hf_tokenizer.convert(spm)
    probe = text[20000:24000] + PROBE_EXTRA
    assert hf.encode(probe, add_special_tokens=False).ids == spm.encode(probe)
    assert hf.decode(spm.encode(probe)) == probe and eos == "</s>"


def test_export_refuses_a_tokenizer_it_cannot_convert(tmp_path, shakespeare_manual_dir, capsys):
    """A sentencepiece char model: one line, exit 2, and nothing written."""
    pytest.importorskip("safetensors", reason="pip install 'gptjax[interop]'")
    text = (shakespeare_manual_dir / "input.txt").read_text()[:30000]
    _gpt2_shaped_run(tmp_path / "run", _tokenizer("char_spm", text), "path")
    assert cli.main(["convert", "export", "--workdir", str(tmp_path / "run"),
                     "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert "sentencepiece char model" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "hf").exists()
