"""Speculative decoding (gptjax/inference/speculative.py): greedy output is the target's greedy
output token for token, and sampled sequences follow the target's distribution exactly (their
frequencies match the target's probabilities, not the draft's)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import cli
from gptjax.config.loader import get_config
from gptjax.data.tokenizer import CharTokenizer
from gptjax.errors import UserError
from gptjax.inference import generate as G
from gptjax.inference import rows as R
from gptjax.inference import speculative as S
from gptjax.inference.sample import sample
from gptjax.model.gpt import GPT, GPTConfig
from gptjax.performance import speculative_bench
from gptjax.workdir import write_params


def tiny(seed, **kw):
    kw = {"vocab_size": 37, "vocab_multiple": 16, "num_layers": 2, "d_model": 32, "num_heads": 4,
          "head_dim": 8, "d_ff": 64, "max_seq_len": 32, "init_std": 0.2, **kw}
    model = GPT(GPTConfig(**kw))
    params = nn.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"])
    return model, params


PROMPTS = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11, 12]]


@pytest.mark.parametrize("draft_seed,k", [pytest.param(0, 3, marks=pytest.mark.slow), (1, 2)])
def test_greedy_is_the_targets_greedy(draft_seed, k):
    target, tparams = tiny(0)
    # seed 0: the draft is the target (every proposal accepted); seed 1: a smaller stranger
    draft, dparams = tiny(0) if draft_seed == 0 else tiny(1, num_layers=1, d_model=16,
                                                              head_dim=4)
    s = G.Sampling(max_new_tokens=12, temperature=0.0)
    stats = {}
    got = S.generate_ids(S.Speculator(target, tparams, draft, dparams, k), PROMPTS, s, 0, stats)
    assert got == G.generate_ids(target, tparams, PROMPTS, s)
    per_round = stats["tokens"] / stats["rounds"]
    if draft_seed == 0:
        assert per_round > k  # all k proposals + the bonus token, except at the end
    else:
        assert per_round < k + 1


def _joint(model, params, prompt, rows, vocab):
    """Exact p(t1, t2, t3 | prompt) under `rows`' sampling filters: [V, V, V]."""
    seqs = np.asarray([prompt + [a, b] for a in range(vocab) for b in range(vocab)], np.int32)
    logits = model.apply({"params": params}, jnp.asarray(seqs))[:, len(prompt) - 1:]
    n = seqs.shape[0]
    flat = R.Rows(*(np.repeat(np.asarray(f)[:1], n * 3) for f in rows))
    p = np.asarray(R.probabilities(logits.reshape(n * 3, -1)[:, :vocab], vocab, flat))
    p = p.reshape(vocab, vocab, 3, vocab)
    return p[0, 0, 0][:, None, None] * p[:, 0, 1][:, :, None] * p[:, :, 2]


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0),
                                               pytest.param(0.8, 3, marks=pytest.mark.slow)])
def test_sampled_frequencies_are_the_targets(temperature, top_k):
    vocab, n = 6, 4000
    target, tparams = tiny(0, vocab_size=vocab, init_std=0.4)
    # The draft: the target's weights with noise, so that proposals are often but not always
    # accepted (both paths of the acceptance test run).
    noise = jax.tree.map(lambda x: jax.random.normal(jax.random.key(9), x.shape), tparams)
    dparams = jax.tree.map(lambda x, e: x + 0.05 * e, tparams, noise)
    prompt = [1, 2, 3]
    s = G.Sampling(max_new_tokens=3, temperature=temperature, top_k=top_k)
    stats = {}
    out = np.asarray(S.generate_ids(S.Speculator(target, tparams, target, dparams, 2),
                                    [prompt] * n, s, seed=3, stats=stats))
    assert 1.2 < stats["tokens"] / stats["rounds"] < 2.8  # some accepted, some not
    freq = np.zeros((vocab,) * 3)
    np.add.at(freq, tuple(out.T), 1.0 / n)
    rows = R.host_rows(1, temperature, top_k)
    p_target = _joint(target, tparams, prompt, rows, vocab)
    p_draft = _joint(target, dparams, prompt, rows, vocab)
    # TV distance from n exact draws of the target: what sampling noise alone gives
    rng = np.random.default_rng(0)
    null = [0.5 * np.abs(rng.multinomial(n, p_target.ravel() / p_target.sum()) / n
                         - p_target.ravel()).sum() for _ in range(50)]
    tv = 0.5 * np.abs(freq - p_target).sum()
    assert tv < 1.3 * max(null), (tv, max(null))
    assert 0.5 * np.abs(freq - p_draft).sum() > 3 * max(null)  # the draft's would be far off


def test_bad_pairs_are_one_line():
    target, tparams = tiny(0)
    other, oparams = tiny(1, vocab_size=40)
    with pytest.raises(UserError, match="tokenizer"):
        S.Speculator(target, tparams, other, oparams, 2)
    with pytest.raises(UserError, match="max_seq_len"):
        S.generate_ids(S.Speculator(target, tparams, target, tparams, 4), [[1] * 20],
                       G.Sampling(max_new_tokens=10), 0)


def _target_and_draft(tmp_path) -> None:
    """Workdirs `target` and `draft`: the same tiny character model, two random inits."""
    config = get_config("configs/smoke.py:tiny", ["--config.data.source=files",
                                                  "--config.model.vocab_size=40",
                                                  "--config.model.max_seq_len=48"])
    tok = CharTokenizer(sorted("abcdefghijklmnopqrstuvwxyz .,:;!?'\n-ABCD"), eos=False)
    for name, seed in (("target", 0), ("draft", 1)):
        model = GPT(GPTConfig.from_config(config.model))
        params = nn.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"])
        write_params(str(tmp_path / name), config, params)
        tok.save(str(tmp_path / name))


def test_sample_with_a_draft_workdir(tmp_path, capsys):
    _target_and_draft(tmp_path)
    kw = dict(prompts=["to be, or"], max_new_tokens=16, num_samples=1, temperature=0.0)
    plain = sample(str(tmp_path / "target"), **kw)
    assert sample(str(tmp_path / "target"), draft=str(tmp_path / "draft"), draft_tokens=3,
                  **kw) == plain
    assert "tokens per target forward" in capsys.readouterr().err


@pytest.mark.slow  # the benchmark command end to end
def test_bench_speculative_measures_acceptance(tmp_path, capsys):
    """`gptjax bench-speculative`: the target as its own draft accepts every proposal (k + 1
    tokens per target forward); a stranger accepts fewer; greedy output is the target's."""
    _target_and_draft(tmp_path)
    target, draft = str(tmp_path / "target"), str(tmp_path / "draft")
    assert cli.main(["bench-speculative", "--workdir", target, "--draft", f"{target},{draft}",
                     "--draft-tokens", "3", "--temperature", "0", "--new-tokens", "16",
                     "--repeats", "1", "--prompt", "to be, or"]) == 0
    header, _, *lines = capsys.readouterr().out.splitlines()
    assert header == speculative_bench.HEADER.splitlines()[0]
    same, stranger = ([cell.strip() for cell in line.strip("|").split("|")] for line in lines)
    assert same[:5] == [target, "3", "0", "1.000", "4.00"] and same[-1] == "yes"
    assert stranger[0] == draft and float(stranger[3]) < 1.0 and stranger[-1] == "yes"
    assert 1.0 <= float(stranger[4]) < 4.0 and float(stranger[5].replace(",", "")) > 0
