"""int8 weight-only quantization: per-output-channel scales, weight bytes vs bf16, and the
perplexity of a (briefly) trained model within 1% of float."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from gptjax import quant
from gptjax.config import get_config
from gptjax.errors import UserError
from gptjax.model import GPT, GPTConfig


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
    assert layer["attn"]["proj"]["kernel"].scale.shape == (g, 1, 1, 128)
    assert layer["mlp"]["fc"]["kernel"].scale.shape == (g, 1, 512)
    assert q["head"]["kernel"].scale.shape == (1, 72)
    assert q["wte"]["embedding"].scale.shape == (72, 1)
    assert not isinstance(q["wpe"], quant.QTensor)  # norms / biases / positions stay float
    assert not isinstance(layer["ln1"]["scale"], quant.QTensor)
    fc = params["layers"]["block_0"]["mlp"]["fc"]["kernel"]
    for w, qt in [(fc, layer["mlp"]["fc"]["kernel"]), (params["wte"]["embedding"],
                                                       q["wte"]["embedding"])]:
        assert qt.q.dtype == jnp.int8 and int(jnp.max(jnp.abs(qt.q))) == 127
        err = jnp.abs(quant.dequantize(qt, jnp.float32) - w)
        assert bool(jnp.all(err <= qt.scale / 2 + 1e-7))
    assert quant.quantize(params, "none") is params
    with pytest.raises(UserError, match="int8"):
        quant.quantize(params, "int4")


def test_weight_bytes_against_bf16():
    _, params = init()
    q = quant.quantize(params)
    bf16, int8 = quant.bf16_bytes(params), quant.weight_bytes(q)
    assert bf16 == sum(x.size for x in jax.tree.leaves(params)) * 2
    # int8 values + float32 scales per output channel + float norms / biases / wpe.
    assert 0.5 < int8 / bf16 < 0.6


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare_manual_dir):
    from gptjax import train
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
    from gptjax.evaluate import evaluate_workdir
    base = evaluate_workdir(str(trained), batches=4)
    q = evaluate_workdir(str(trained), batches=4, quantize="int8")
    assert base["tokens"] == q["tokens"] > 0
    assert base["loss"] < math.log(65) - 0.5  # the model did learn something
    assert abs(q["perplexity"] / base["perplexity"] - 1) < 0.01, (base, q)
    assert q["loss"] != base["loss"]  # int8 really changed the weights
