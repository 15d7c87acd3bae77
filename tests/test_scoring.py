"""Scoring primitives (gptjax/evaluation/scoring.py): log-likelihoods equal a direct full
forward pass, batched == unbatched, rolling windows, greedy generation with stop strings, on 8
CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eval_helpers import tiny_scorer

from gptjax.evaluation import scoring
from gptjax.inference import generate

WINDOW = 24


@pytest.fixture(scope="module")
def text(shakespeare_manual_dir):
    return (shakespeare_manual_dir / "input.txt").read_text()


@pytest.fixture(scope="module")
def scorer(text):
    return tiny_scorer(text, WINDOW)


def direct_loglikelihood(scorer, tokens, n):
    """Sum of log-probs of the last n tokens from ONE full forward over the last L+1 tokens."""
    tokens = tokens[-(scorer.window + 1):]
    logits = scorer.model.apply({"params": scorer.params}, jnp.asarray([tokens[:-1]]))[0]
    logp = jax.nn.log_softmax(logits[:, :scorer.model.config.vocab_size].astype(jnp.float32))
    targets = np.asarray(tokens[1:])
    picked = np.asarray(logp)[np.arange(len(targets)), targets][-n:]
    greedy = np.asarray(jnp.argmax(logp, -1))[-n:] == targets[-n:]
    return float(picked.sum()), bool(greedy.all())


def requests(text):
    """(context, continuation) pairs: short, long (left-truncated), empty context, spaces;
    continuations fit the window (longer ones: test_rolling_equals_the_sum_over_windows)."""
    lines = [ln for ln in text[:5000].splitlines() if ln.strip()]
    pairs = [(a + "\n", b[:20]) for a, b in zip(lines[:12], lines[1:13], strict=True)]
    pairs += [(text[:200], " the"), ("", "ROMEO:"), ("First Citizen: ", "Speak."),
              ("To be", " or not"), ("a", "b")]
    return pairs


def test_windows_cover_every_scored_token_once():
    assert scoring.windows(10, 3, 8, 8) == [(10, 3)]
    assert scoring.windows(21, 20, 8, 8) == [(9, 8), (17, 8), (21, 4)]
    assert scoring.windows(21, 20, 8, 3) == [(9, 8), (12, 3), (15, 3), (18, 3), (21, 3)]
    for n_tokens, n, size, stride in [(50, 49, 8, 8), (50, 30, 8, 5), (9, 8, 8, 1)]:
        spans = scoring.windows(n_tokens, n, size, stride)
        scored = [t for end, count in spans for t in range(end - count, end)]
        assert scored == list(range(n_tokens - n, n_tokens))


def test_windows_match_the_harness_rolling_windows():
    utils = pytest.importorskip("lm_eval.utils", reason="pip install 'gptjax[eval]'")
    tokens = list(range(1, 38))
    for size, stride in [(8, 8), (8, 3), (5, 1)]:
        want = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
            tokens, prefix_token=0, max_seq_len=size, context_len=size - stride + 1)]
        full = [0] + tokens
        got = []
        for end, count in scoring.windows(len(full), len(tokens), size, stride):
            start = max(0, end - 1 - size)
            got.append((full[start:end - count], full[end - count:end]))
        assert got == want


def test_loglikelihood_equals_a_direct_full_forward(scorer, text):
    pairs = requests(text)
    # The model's own greedy continuation is greedy when scored (a context ending in
    # whitespace would move it into the continuation, as the harness does).
    pairs.append(("ROMEO:", scorer.generate_until([("ROMEO:", [], 5)])[0]))
    got = scorer.loglikelihood(pairs)
    assert scorer.stats.windows == len(pairs)  # each fits one window
    for (context, continuation), (ll, greedy) in zip(pairs, got, strict=True):
        ctx, cont = scorer.encode_pair(context, continuation)
        want, want_greedy = direct_loglikelihood(scorer, ctx + cont, len(cont))
        assert ll == pytest.approx(want, abs=1e-4)
        assert greedy == want_greedy
    assert got[-1][1] and not all(g for _, g in got)
    # Trailing spaces move to the continuation; an empty context is the prefix token (newline).
    assert scorer.encode_pair("First Citizen: ", "Speak.")[1][0] == scorer.tokenizer.encode(" ")[0]
    assert scorer.encode_pair("", "ROMEO:")[0] == scorer.tokenizer.encode("\n")


def test_batched_equals_unbatched(scorer, text):
    pairs = requests(text)
    one = tiny_scorer(text, WINDOW, single_device=True, batch_size=1)
    batched = scorer.loglikelihood(pairs)
    single = [one.loglikelihood([p])[0] for p in pairs]
    np.testing.assert_allclose([b[0] for b in batched], [s[0] for s in single], atol=1e-4)
    assert [b[1] for b in batched] == [s[1] for s in single]
    # Rows are sorted and packed into few padded shapes, whatever the request order.
    assert len([k for k in scorer._programs if k[0] == "score"]) <= 3
    shuffled = scorer.loglikelihood(pairs[::-1])[::-1]
    np.testing.assert_allclose([b[0] for b in batched], [s[0] for s in shuffled], atol=1e-5)


@pytest.mark.parametrize("stride", [WINDOW, 7])
def test_rolling_equals_the_sum_over_windows(scorer, text, stride):
    docs = [text[:100], text[300:330], text[1000:1010]]
    got = scorer.loglikelihood_rolling(docs, stride=stride)
    for doc, ll in zip(docs, got, strict=True):
        tokens = [scorer.prefix] + scorer.tokenizer.encode(doc)
        parts = [direct_loglikelihood(scorer, tokens[:end], count)[0]
                 for end, count in scoring.windows(len(tokens), len(doc), WINDOW, stride)]
        assert ll == pytest.approx(sum(parts), abs=1e-3)
    # A short text is one window: the log-likelihood of the whole text after the prefix.
    assert got[2] == pytest.approx(scorer.loglikelihood([("", text[1000:1010])])[0][0], abs=1e-4)
    # A continuation longer than the window is scored in windows too, not truncated.
    long_ll = scorer.loglikelihood([("", text[:100])])[0][0]
    assert long_ll == pytest.approx(scorer.loglikelihood_rolling([text[:100]])[0], abs=1e-3)


def test_generate_until_is_greedy_generation_cut_at_stops(scorer, text):
    contexts = ["ROMEO:\n", "First Citizen:\nBefore we proceed", text[:300]]
    got = scorer.generate_until([(c, [], 8) for c in contexts])
    s = generate.Sampling(max_new_tokens=8, temperature=0.0)
    for context, out in zip(contexts, got, strict=True):
        prompt = scorer.tokenizer.encode(context)[-(WINDOW - 8):]
        want = generate.generate_ids(scorer.model, scorer.params, [prompt], s)[0]
        assert out == scorer.tokenizer.decode(want)
    stop = got[0][3:5]
    cut = scorer.generate_until([(contexts[0], [stop], 8), (contexts[0], ["\n\n"], 3)])
    assert cut[0] == got[0].split(stop)[0] and cut[1] == got[0][:3]


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_generate_until_caps_max_tokens_only_for_learned_positions(text, position):
    """Learned positions: prompt + new tokens fit the window (at most window - 1 new tokens,
    the context left-truncated to the rest); rotary: any number after a window of context."""
    scorer = tiny_scorer(text, WINDOW, single_device=True, batch_size=1, position=position)
    context, asked = text[:200], 2 * WINDOW
    [got] = scorer.generate_until([(context, [], asked)])
    n = asked if position == "rotary" else WINDOW - 1
    assert len(got) == n  # a character model without EOS: one character a token
    prompt = scorer.tokenizer.encode(context)[-(WINDOW if position == "rotary" else 1):]
    s = generate.Sampling(max_new_tokens=n, temperature=0.0)
    assert got == scorer.tokenizer.decode(generate.generate_ids(scorer.model, scorer.params,
                                                                [prompt], s)[0])
