"""KV-cache generation: cached logits == full recomputation, greedy == uncached greedy,
sampling filters, EOS, sharded params on 8 CPU devices, and the sample / bench-decode CLIs."""

import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.config.loader import get_config
from gptjax.errors import UserError
from gptjax.inference import generate as G
from gptjax.model.gpt import GPT, GPTConfig
from gptjax.parallel import sharding
from gptjax.performance import decode_bench
from gptjax.workdir import write_params

# float32 on CPU: the cached path (explicit softmax over the cache) and the uncached one
# (jax.nn.dot_product_attention) differ only by summation order.
ATOL = 2e-5

VARIANTS = {
    "learned": dict(),
    "rotary": dict(position="rotary"),
    "sinusoidal-unrolled": dict(position="sinusoidal", scan_layers=False),
    "local-window": dict(local_window=3, num_layers=4),
}
PROMPTS = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11, 12]]


def tiny(**kw):
    kw = {"vocab_size": 37, "vocab_multiple": 16, "num_layers": 2, "d_model": 32, "num_heads": 4,
          "head_dim": 8, "d_ff": 64, "max_seq_len": 24, "init_std": 0.2, **kw}
    c = GPTConfig(**kw)
    model = GPT(c)
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    return model, params


@functools.cache
def _forward(model):
    return jax.jit(lambda p, t: model.apply({"params": p}, t))


def full_logits(model, params, seq):
    """Next-token logits after `seq`, recomputed without a cache. The sequence is right-padded
    to max_seq_len so that one compiled program serves every length: with causal attention the
    padding cannot change the logits at position len(seq) - 1."""
    tokens = np.zeros((1, model.config.max_seq_len), np.int32)
    tokens[0, :len(seq)] = seq
    return _forward(model)(params, tokens)[0, len(seq) - 1]


def uncached_greedy(model, params, prompt, n):
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(jnp.argmax(full_logits(model, params, seq)[:model.config.vocab_size])))
    return seq[len(prompt):]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kv_cache_equals_full_recomputation(variant):
    """At every decode step the cached logits equal a full recomputation of each row's
    sequence, and the compiled greedy program reproduces uncached greedy decoding exactly."""
    model, params = tiny(**VARIANTS[variant])
    c = model.config
    steps = 8
    tokens, lengths, cache_len = G.pad_prompts(PROMPTS, steps, c)
    cache = G.init_cache(model, params, len(PROMPTS), cache_len)
    logits, cache = jax.jit(lambda p, ca: G.prefill(model, p, ca, tokens, lengths))(params, cache)
    step = jax.jit(lambda p, ca, t, pos: G.decode_step(model, p, ca, t, pos))
    seqs = [list(p) for p in PROMPTS]
    for s in range(steps):
        for b, seq in enumerate(seqs):
            np.testing.assert_allclose(logits[b], full_logits(model, params, seq), atol=ATOL,
                                       err_msg=f"{variant}: row {b}, step {s}")
        nxt = np.asarray(jnp.argmax(logits[:, :c.vocab_size], -1), np.int32)
        positions = np.asarray([len(q) for q in seqs], np.int32)
        logits, cache = step(params, cache, nxt, positions)
        for b, seq in enumerate(seqs):
            seq.append(int(nxt[b]))

    out, n = G.make_generate(model, G.Sampling(steps, temperature=0.0), cache_len)(
        params, tokens, lengths, jax.random.key(0))
    assert int(n) == steps
    assert np.asarray(out).tolist() == [seq[len(p):] for seq, p in zip(seqs, PROMPTS,
                                                                       strict=True)]


def test_sampling_filters_and_seed():
    model, params = tiny()
    c = model.config
    n = 8
    tokens, lengths, cache_len = G.pad_prompts(PROMPTS, n, c)

    def program(**kw):
        return G.make_generate(model, G.Sampling(n, **kw), cache_len)

    def run(fn, seed=0):
        return np.asarray(fn(params, tokens, lengths, jax.random.key(seed))[0])

    greedy = [uncached_greedy(model, params, p, n) for p in PROMPTS]
    assert run(program(temperature=1.0, top_k=1)).tolist() == greedy
    assert run(program(temperature=1.0, top_p=1e-6)).tolist() == greedy
    hot = program(temperature=2.0)
    assert np.array_equal(run(hot, 3), run(hot, 3))
    assert not np.array_equal(run(hot, 3), run(hot, 4))
    # top-k: every sampled token is among the k most likely under the full-recompute logits,
    # never in the padded vocabulary.
    k = 3
    out = run(program(temperature=5.0, top_k=k), 5)
    assert out.max() < c.vocab_size
    for prompt, row in zip(PROMPTS, out.tolist(), strict=True):
        seq = list(prompt)
        for tok in row:
            top_k = np.argsort(np.asarray(full_logits(model, params, seq)[:c.vocab_size]))[-k:]
            assert tok in top_k
            seq.append(tok)


def test_logits_filters_directly():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05, 0.0]]) + 1e-12)
    keys = jax.random.split(jax.random.key(0), 400)

    def draws(**kw):
        s = G.Sampling(temperature=1.0, **kw)
        out = jax.vmap(lambda k: G.sample_logits(k, logits, 4, s))(keys)
        return set(np.asarray(out).ravel().tolist())

    assert draws(top_p=0.7) == {0, 1}  # 0.5 + 0.3 reaches 0.7
    assert draws(top_k=3) == {0, 1, 2}
    assert draws() == {0, 1, 2, 3}  # the padded 5th entry never


def test_eos_stops_rows_and_the_loop():
    model, params = tiny()
    n = 10
    ref = uncached_greedy(model, params, PROMPTS[0], n)
    eos = ref[2]
    stop = ref.index(eos)
    tokens, lengths, cache_len = G.pad_prompts(PROMPTS[:1], n, model.config)
    out, steps = G.make_generate(model, G.Sampling(n, temperature=0.0, eos_id=eos), cache_len)(
        params, tokens, lengths, jax.random.key(0))
    out = np.asarray(out)[0].tolist()
    assert out[:stop + 1] == ref[:stop + 1] and all(t == eos for t in out[stop:])
    assert int(steps) == stop + 1 < n  # the while loop ended early: every row was done
    assert G.trim([out], eos) == [ref[:stop]]


def test_generate_ids_runs_past_a_learned_context():
    model, params = tiny(max_seq_len=12)
    out = G.generate_ids(model, params, PROMPTS, G.Sampling(20, temperature=0.0))
    assert [len(o) for o in out] == [20] * len(PROMPTS)
    # The first chunk is exact greedy decoding (it fits the context).
    first = 12 - max(map(len, PROMPTS))
    assert [o[:first] for o in out] == [uncached_greedy(model, params, p, first) for p in PROMPTS]
    with pytest.raises(UserError, match="max_seq_len"):
        G.pad_prompts(PROMPTS, 20, model.config)
    with pytest.raises(UserError, match="at least one token"):
        G.pad_prompts([[1], []], 2, model.config)
    with pytest.raises(UserError, match="top_p"):
        G.make_generate(model, G.Sampling(top_p=0.0), 8)


def test_sharded_params_on_8_devices_give_the_same_tokens():
    assert jax.device_count() == 8
    config = get_config("configs/smoke.py:tiny", ["--config.mesh.data=2", "--config.mesh.fsdp=2",
                                                  "--config.mesh.tensor=2"])
    rules = sharding.logical_rules(config)
    mesh = sharding.make_mesh(config.mesh)
    c = GPTConfig(vocab_size=37, vocab_multiple=16, num_layers=2, d_model=32, num_heads=4,
                  head_dim=8, d_ff=64, max_seq_len=24, init_std=0.2, position="rotary")
    model = GPT(c)
    boxed = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    params = nn.unbox(boxed)
    shardings = sharding.logical_to_sharding(nn.get_partition_spec(boxed), mesh, rules)
    sharded = jax.device_put(params, shardings)
    assert len(sharded["layers"]["block_0"]["mlp"]["fc"]["kernel"].sharding.device_set) == 8
    prompts = PROMPTS + [[5, 4, 3]]  # 4 rows: the batch splits over data x fsdp
    tokens, lengths, cache_len = G.pad_prompts(prompts, 8, c)
    s = G.Sampling(8, temperature=0.7, top_k=5)
    expected = G.make_generate(model, s, cache_len)(params, tokens, lengths, jax.random.key(1))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        got = G.make_generate(model, s, cache_len)(sharded, tokens, lengths, jax.random.key(1))
        streamed = {}
        greedy = G.generate_ids(model, sharded, prompts, G.Sampling(8, temperature=0.0),
                                stream=lambda step, toks: streamed.update({int(step): toks}))
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(expected[0]))
    assert greedy == [uncached_greedy(model, params, p, 8) for p in prompts]
    # Streaming works on a mesh too (unordered host callbacks, keyed by step).
    assert np.stack([streamed[i] for i in range(8)], 1).tolist() == greedy


@pytest.fixture(scope="module")
def char_workdir(tmp_path_factory, shakespeare_manual_dir):
    """A workdir as training leaves it (config.json, tokenizer.json, checkpoints/0), holding
    random params: sampling needs no trained model, and this is much faster than training."""
    from gptjax.data.tokenizer import CharTokenizer
    workdir = tmp_path_factory.mktemp("gen") / "run"
    text = (shakespeare_manual_dir / "input.txt").read_text()
    tok = CharTokenizer.train([[text]], eos=False)
    config = get_config("configs/smoke.py:tiny", [
        "--config.data.source=files", f"--config.model.vocab_size={tok.vocab_size}",
        "--config.model.max_seq_len=32"])
    model = GPT(GPTConfig.from_config(config.model))
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    write_params(str(workdir), config, params)
    tok.save(str(workdir))
    return workdir


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "gptjax", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_sample_cli_stream_and_int8(char_workdir):
    r = _cli("sample", "--workdir", char_workdir, "--prompt", "ROMEO:", "--prompt", "To be",
             "--num-samples", "2", "--max-new-tokens", "20", "--stream", "--quantize", "int8",
             "--config.sample.temperature=0.5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ROMEO:")  # streamed first
    assert r.stdout.count("---------- sample") == 3 and "To be" in r.stdout
    assert "4 samples, 80 tokens" in r.stderr and "int8 weights" in r.stderr
    bad = _cli("sample", "--workdir", char_workdir, "--top-p", "0")
    assert bad.returncode == 2 and "top_p" in bad.stderr and "Traceback" not in bad.stderr


def test_bench_decode_cli_prints_tokens_per_second():
    r = _cli("bench-decode", "--config", "configs/smoke.py:tiny", "--batch", "1,4",
             "--prompt-len", "4", "--new-tokens", "8", "--repeats", "1", "--bandwidth", "10")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("batch")]
    assert len(lines) == 2 and all("tokens/s" in ln and "peak memory" in ln for ln in lines)
    peaks = [float(ln.split("peak memory")[1].split()[0]) for ln in lines]
    assert 0 < peaks[0] <= peaks[1]  # the compiled program's, measured: batch 4 holds more cache
    assert float(lines[1].split(":")[1].split()[0]) > 0


@pytest.mark.slow  # the benchmark command at its defaults
def test_bench_decode_defaults_fit_a_short_window():
    """As documented (16-token prompt, 128 new tokens) on smoke's 128-token learned window: the
    defaults shrink to fit, with a note, instead of exit 2; explicit values stay as given."""
    r = _cli("bench-decode", "--config", "configs/smoke.py", "--batch", "1", "--repeats", "1",
             "--bandwidth", "10")
    assert r.returncode == 0, r.stderr
    assert "128-token window" in r.stdout and "16-token prompt + 112 new tokens" in r.stdout
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("batch")]
    bad = _cli("bench-decode", "--config", "configs/smoke.py:tiny", "--batch", "1",
               "--prompt-len", "16", "--new-tokens", "8", "--bandwidth", "10")
    assert bad.returncode == 2 and "exceeds the model's max_seq_len=16" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("position,given,fitted", [
    ("learned", (None, None), (2, 14)),    # both defaults: the prompt keeps an eighth
    ("learned", (4, None), (4, 12)),       # the default gives way to the given value
    ("learned", (None, 8), (8, 8)),
    ("learned", (16, 8), (16, 8)),         # both given: as given (generation says it's too long)
    ("learned", (20, None), (20, 128)),    # nothing left for a default: as given
    ("rotary", (None, None), (16, 128)),   # no window to fit
])
def test_decode_bench_fit_window(position, given, fitted):
    c = GPTConfig(vocab_size=37, num_layers=1, d_model=16, num_heads=2, head_dim=8, d_ff=32,
                  max_seq_len=16, position=position)
    assert decode_bench.fit_window(c, *given) == fitted
