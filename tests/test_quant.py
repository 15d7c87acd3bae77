"""Quantization through Qwix: int8 per-channel and int4 grouped scales with errors bounded by
the scale, packed int4 files, w8a8, weight bytes vs bf16, per-layer dequantization (the whole-tree
path's tokens at a lower peak memory than float's), and the perplexity of a (briefly) trained
model within 1% of float (int8) and within 5% (int4)."""

import math
import os

import flax.linen as nn
import flax.traverse_util as traverse
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.config.loader import get_config
from gptjax.errors import UserError
from gptjax.evaluation.heldout import evaluate_workdir
from gptjax.inference import generate
from gptjax.inference import quantization as quant
from gptjax.model.gpt import GPT, GPTConfig
from gptjax.performance import decode_bench
from gptjax.storage import quantized
from gptjax.training import train


def init(**kw):
    c = GPTConfig(**{"vocab_size": 65, "vocab_multiple": 8, "num_layers": 2, "d_model": 128,
                     "num_heads": 4, "head_dim": 32, "d_ff": 512, "max_seq_len": 64, **kw})
    model = GPT(c)
    init_fn = jax.jit(lambda key: nn.unbox(model.init(key, jnp.zeros((1, 8), jnp.int32))["params"]))
    return model, init_fn(jax.random.key(0))


def test_scales_are_per_output_channel_and_error_is_bounded():
    model, params = init(tie_embeddings=False)
    q = quant.quantize(params)
    layer = q["layers"]["block_0"]
    g = model.config.num_layers
    assert layer["attn"]["qkv"]["kernel"].scale.shape == (g, 1, 3, 4, 32)
    assert layer["attn"]["proj"]["kernel"].scale.shape == (g, 4, 1, 128)  # per head x output
    assert layer["mlp"]["fc"]["kernel"].scale.shape == (g, 1, 512)
    assert q["head"]["kernel"].scale.shape == (1, 72)
    assert q["wte"]["embedding"].scale.shape == (72, 1)
    assert not quant.is_qarray(q["wpe"])  # norms / biases / positions stay float
    assert not quant.is_qarray(layer["ln1"]["scale"])
    fc = params["layers"]["block_0"]["mlp"]["fc"]["kernel"]
    for w, qt in [(fc, layer["mlp"]["fc"]["kernel"]), (params["wte"]["embedding"],
                                                       q["wte"]["embedding"])]:
        assert qt.qvalue.dtype == jnp.int8 and int(jnp.max(jnp.abs(qt.qvalue))) >= 127
        err = jnp.abs(quant.dequantize(qt, jnp.float32) - w)
        assert bool(jnp.all(err <= qt.scale / 2 + 1e-7))
    assert quant.quantize(params, "none") is params
    with pytest.raises(UserError, match="int8, int4"):
        quant.quantize(params, "int2")


def test_int4_grouped_round_trip_is_bounded_by_the_scale(tmp_path):
    _, params = init(tie_embeddings=False)
    q = quant.quantize(params, "int4", group=32)
    fc_q = q["layers"]["block_0"]["mlp"]["fc"]["kernel"]
    assert fc_q.qvalue.dtype == jnp.int4
    assert fc_q.scale.shape == (2, 128 // 32, 512)  # a scale per 32 input channels
    fc = params["layers"]["block_0"]["mlp"]["fc"]["kernel"]
    scale = jnp.repeat(fc_q.scale, 32, axis=1)
    err = jnp.abs(quant.dequantize(fc_q, jnp.float32) - fc)
    assert bool(jnp.all(err <= scale / 2 + 1e-7))
    assert float(jnp.max(err)) > 0
    # Saved packed two values a byte; loaded back bit for bit, without the float params.
    path = quantized.save(str(tmp_path), q, {"mode": "int4", "group": 32, "step": 7})
    loaded, info = quantized.load(str(tmp_path))
    assert info["step"] == 7
    for a, b in zip(jax.tree.leaves(q), jax.tree.leaves(loaded), strict=True):
        assert a.dtype == b.dtype and bool(jnp.all(a == b))
    assert os.path.getsize(path) < quant.weight_bytes(q) + 20_000  # packed: no hidden bytes
    assert quant.weight_bytes(q) < 0.7 * quant.weight_bytes(quant.quantize(params, "int8"))
    with pytest.raises(UserError, match="does not divide"):
        quant.quantize(params, "int4", group=48)


def test_weight_bytes_against_bf16():
    _, params = init()
    q = quant.quantize(params)
    bf16, int8 = quant.bf16_bytes(params), quant.weight_bytes(q)
    assert bf16 == sum(x.size for x in jax.tree.leaves(params)) * 2
    # int8 values + float32 scales per output channel + float norms / biases / wpe.
    assert 0.5 < int8 / bf16 < 0.6
    int4 = quant.weight_bytes(quant.quantize(params, "int4"))
    assert 0.25 < int4 / bf16 < 0.4


def test_w8a8_through_qwix_is_close_to_float():
    model, params = init()
    tokens = jax.random.randint(jax.random.key(3), (2, 16), 0, 65)
    ref = model.apply({"params": params}, tokens)
    qmodel, qparams = quant.prepare(model, params, "w8a8")
    out = jax.jit(lambda p, t: qmodel.apply({"params": quant.dequantize(p, jnp.float32)}, t))(
        qparams, tokens)
    assert 0 < float(jnp.max(jnp.abs(out - ref))) < 0.05
    with pytest.raises(UserError, match="already quantized"):
        quant.prepare(model, quant.quantize(params), "int8")


def test_qwix_model_ptq_limits():
    """What docs/inference.md says Qwix's model-level PTQ cannot do (so gptjax works around it):
    one scale for all scanned layers (the scanned apply then fails), and the token embedding
    left float when every module is quantized."""
    import qwix
    model, params = init()
    tokens = jnp.zeros((1, 4), jnp.int32)
    rule = qwix.QuantizationRule(module_path="layers/.*", weight_qtype=jnp.int8)
    qmodel = qwix.quantize_model(model, qwix.PtqProvider([rule]))
    abstract = jax.eval_shape(qmodel.init, jax.random.key(0), tokens)["params"]
    naive = qwix.quantize_params(params, abstract)
    assert naive["layers"]["block_0"]["mlp"]["fc"]["kernel"].array.scale.shape[0] == 1
    ours = quant.quantize_w8a8(model, params)[1]
    assert ours["layers"]["block_0"]["mlp"]["fc"]["kernel"].array.scale.shape[0] == 2
    with pytest.raises(ValueError, match="scan got `length` argument of 2"):
        qmodel.apply({"params": naive}, tokens)
    everything = qwix.quantize_model(model, qwix.PtqProvider([qwix.QuantizationRule(
        module_path=".*", weight_qtype=jnp.int8)]))
    whole = qwix.quantize_params(params, jax.eval_shape(everything.init, jax.random.key(0),
                                                        tokens)["params"])
    assert isinstance(whole["wte"]["embedding"], jax.Array)
    assert not isinstance(whole["layers"]["block_0"]["mlp"]["fc"]["kernel"], jax.Array)


@pytest.mark.parametrize("mode,scan", [("int8", True), ("int4", True), ("int8", False)])
def test_per_layer_dequantize_gives_the_whole_tree_paths_tokens(mode, scan):
    """`prepare`'s model dequantizes each layer inside its scan step (unscanned layers are
    stacked and scanned): the same logits and generated tokens as dequantizing the whole tree
    in the step (a plain model given `quantize`'s tree, the path before)."""
    model, params = init(scan_layers=scan, tie_embeddings=scan)
    whole = quant.quantize(params, mode)
    pmodel, pparams = quant.prepare(model, params, mode)
    kernels = [x for path, x in traverse.flatten_dict(pparams).items()
               if path[0] == "layers" and path[-1] == "kernel"]
    assert len(kernels) == 4 and all(isinstance(x, quant.InLayer) for x in kernels)
    assert quant.is_qarray(pparams["wte"]["embedding"])  # dequantized outside the layers
    assert pmodel.config.scan_layers and pmodel.layer_params is not None
    tokens = jax.random.randint(jax.random.key(3), (2, 16), 0, 65)
    logits = [jax.jit(lambda p, m=m: m.apply({"params": quant.dequantize(p, jnp.float32)},
                                             tokens))(p)
              for m, p in ((model, whole), (pmodel, pparams))]
    np.testing.assert_allclose(logits[1], logits[0], rtol=0, atol=1e-5)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9]]
    settings = [generate.Sampling(max_new_tokens=12, temperature=0.0)]
    if scan and mode == "int8":
        settings.append(generate.Sampling(max_new_tokens=12, temperature=1.0, top_k=20))
    for s in settings:
        want = generate.generate_ids(model, whole, prompts, s, seed=5)
        assert generate.generate_ids(pmodel, pparams, prompts, s, seed=5) == want


def test_quantized_generate_peaks_below_float():
    """XLA's memory analysis of the compiled generate program (arguments + temporaries): with
    the weights dequantized one layer at a time, int8 and int4 peak below float, not above it
    (dequantizing the whole tree in the step held every layer's float weights at once)."""
    model, params = init(num_layers=4, d_model=256, num_heads=4, head_dim=64, d_ff=1024)
    peak, stored = {}, {}
    for mode in ("none", "int8", "int4"):
        m, p = quant.prepare(model, params, mode)
        compiled, _ = decode_bench.compile_decode(m, p, batch=1, prompt_len=8, new_tokens=8)
        peak[mode], stored[mode] = decode_bench.peak_bytes(compiled), quant.weight_bytes(p)
    assert peak["none"] > stored["none"] > 0
    assert peak["int8"] < peak["none"] and peak["int4"] < peak["none"], (peak, stored)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare_manual_dir):
    workdir = tmp_path_factory.mktemp("quant") / "run"
    config = get_config("configs/smoke.py:tiny", [
        "--config.data.source=files",
        f"--config.data.files={shakespeare_manual_dir / 'input.txt'}",
        "--config.model.d_model=64", "--config.model.d_ff=256", "--config.model.num_heads=4",
        "--config.model.head_dim=16", "--config.model.max_seq_len=64",
        "--config.data.seq_len=64", "--config.train.steps=60", "--config.optim.lr=3e-3",
        "--config.train.eval_every=0", "--config.train.plot=false",
        "--config.train.async_checkpoint=false"])
    train.train(config, str(workdir))
    return workdir


def test_int8_perplexity_within_one_percent_of_float(trained):
    """`gptjax eval --quantize int8` vs float on the same held-out batches."""
    base = evaluate_workdir(str(trained), batches=4)
    q = evaluate_workdir(str(trained), batches=4, quantize="int8")
    assert base["tokens"] == q["tokens"] > 0
    assert base["loss"] < math.log(65) - 0.5  # the model did learn something
    assert abs(q["perplexity"] / base["perplexity"] - 1) < 0.01, (base, q)
    assert q["loss"] != base["loss"]  # int8 really changed the weights
    q4 = evaluate_workdir(str(trained), batches=4, quantize="int4")
    assert abs(q4["perplexity"] / base["perplexity"] - 1) < 0.05, (base, q4)


def test_scorer_of_a_quantized_workdir_dequantizes_per_layer(trained, tmp_path):
    """The harness's scorer on a `gptjax quantize` workdir runs the per-layer model and scores
    as the whole-tree path does."""
    from gptjax.compression.surgery import quantize_workdir
    from gptjax.evaluation import scoring
    out = tmp_path / "int8"
    quantize_workdir(str(trained), str(out), mode="int8")
    scorer = scoring.load_scorer(str(out), batch_size=2)
    assert scorer.model.layer_params is not None
    whole = scoring.Scorer(scorer.config, quantized.load(str(out))[0], scorer.tokenizer,
                           scorer.mesh, batch_size=2)
    assert whole.model.layer_params is None
    pairs = [("ROMEO:", " I will"), ("First Citizen:", " Before we proceed")]
    got, want = scorer.loglikelihood(pairs), whole.loglikelihood(pairs)
    np.testing.assert_allclose([g for g, _ in got], [w for w, _ in want], rtol=1e-5)
