"""Hugging Face GPT-2 interop: exact export -> import round trips, logits parity with a random
`transformers` GPT2LMHeadModel (needs the optional `gptjax[interop]` extra: torch, transformers),
and `gptjax convert import|export`."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.errors import UserError
from gptjax.inference import hf_gpt2 as interop
from gptjax.model.gpt import GPT, GPTConfig
from gptjax.workdir import open_run

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
