"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes
k tokens, the target checks all of them in one forward, and the output has exactly the target's
distribution (its sampling filters included).

One round, per row (rows keep their own positions; `lengths` differ):

    draft   k + 1 decode steps from the last token: proposes x_1..x_k from q_1..q_k (the last
            step only writes x_k into the draft's cache)
    target  one forward over [last, x_1..x_k] -> p_1..p_{k+1}
    accept  x_i while u_i < p_i(x_i) / q_i(x_i); at the first rejection draw from
            max(0, p_i - q_i) (renormalised); if all k pass, draw a bonus token from p_{k+1}

so a round yields 1..k+1 tokens. Greedy rows (temperature 0) have one-hot p and q: a proposal
passes iff it is the target's argmax, and the correction is that argmax, so greedy output is
the target's greedy output token for token. Keys and values written for rejected tokens sit
after the row's position: masked, then overwritten (as in gptjax/inference/generate.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.errors import UserError
from gptjax.inference import generate
from gptjax.inference import quantization as quant
from gptjax.inference import rows as R
from gptjax.model.gpt import GPT


def _forward(model: GPT, params, cache, tokens, positions):
    weights = quant.dequantize(params, model.config.dtype)
    logits, mutated = model.apply({"params": weights, "cache": cache}, tokens, positions,
                                  decode=True, mutable=["cache"])
    return logits, mutated["cache"]


def _probs(logits, vocab: int, rows: R.Rows):
    return R.probabilities(logits[..., :vocab], vocab, rows)


def speculate(target: GPT, draft: GPT, k: int, tparams, dparams, tcache, dcache, last, pos,
              rows: R.Rows):
    """One round. last [B]: each row's newest token, fed at pos [B] -> (tokens [B, k + 1],
    n [B]: how many of them are new (1..k+1), tcache, dcache, the target's log-probabilities
    [B, k + 1, V] that token i was drawn under, before filtering). Traceable."""
    vocab = target.config.vocab_size

    def step(carry, i):
        cache, token = carry
        logits, cache = generate.decode_step(draft, dparams, cache, token, pos + i)
        q = _probs(logits, vocab, rows)
        keys = R.keys(rows, 3 * i)
        nxt = jax.vmap(jax.random.categorical)(keys, jnp.log(q)).astype(jnp.int32)
        return (cache, nxt), (nxt, q)

    (dcache, _), (xs, qs) = jax.lax.scan(step, (dcache, last), jnp.arange(k + 1))
    proposal, q = xs[:k].T, jnp.swapaxes(qs[:k], 0, 1)      # [B, k], [B, k, V]
    seq = jnp.concatenate([last[:, None], proposal], axis=1)  # [B, k + 1]
    logits, tcache = _forward(target, tparams, tcache, seq, pos[:, None] + jnp.arange(k + 1))
    batch = seq.shape[0]
    p = jax.vmap(lambda lg: _probs(lg, vocab, rows), in_axes=1, out_axes=1)(logits)
    px = jnp.take_along_axis(p[:, :k], proposal[..., None], axis=-1)[..., 0]
    qx = jnp.take_along_axis(q, proposal[..., None], axis=-1)[..., 0]
    u = jax.vmap(lambda key: jax.random.uniform(key, (k,)))(R.keys(rows, 1))
    accepted = jnp.sum(jnp.cumprod(u * qx < px, axis=1), axis=1)  # [B] leading accepts
    rows_b = jnp.arange(batch)
    p_n = p[rows_b, accepted]
    q_n = jnp.where((accepted < k)[:, None], q[rows_b, jnp.minimum(accepted, k - 1)], 0.0)
    residual = jnp.maximum(p_n - q_n, 0.0)
    total = residual.sum(-1, keepdims=True)
    residual = jnp.where(total > 0, residual / jnp.where(total > 0, total, 1.0), p_n)
    correction = jax.vmap(jax.random.categorical)(R.keys(rows, 2), jnp.log(residual))
    padded = jnp.concatenate([proposal, jnp.zeros((batch, 1), jnp.int32)], axis=1)
    idx = jnp.arange(k + 1)[None]
    tokens = jnp.where(idx < accepted[:, None], padded,
                       jnp.where(idx == accepted[:, None], correction[:, None], 0))
    logp = jax.nn.log_softmax(jnp.where(jnp.arange(logits.shape[-1]) < vocab,
                                        logits.astype(jnp.float32), -jnp.inf), axis=-1)
    return tokens.astype(jnp.int32), accepted + 1, tcache, dcache, logp


def check_pair(target: GPT, draft: GPT) -> None:
    if target.config.vocab_size != draft.config.vocab_size:
        raise UserError(f"--draft: its vocabulary has {draft.config.vocab_size} tokens, the "
                        f"target's {target.config.vocab_size}: a draft needs the target's "
                        f"tokenizer")


class Speculator:
    """Compiled prefill + rounds for a batch of rows over caches of `cache_len` positions."""

    def __init__(self, target: GPT, tparams, draft: GPT, dparams, k: int):
        if k < 1:
            raise UserError(f"--draft-tokens {k} must be >= 1")
        check_pair(target, draft)
        self.target, self.draft, self.k = target, draft, k
        self.tparams, self.dparams = tparams, dparams
        self.round = jax.jit(lambda *a: speculate(target, draft, k, *a)[:4],
                             donate_argnums=(2, 3))

        def prefill(tparams, dparams, tcache, dcache, tokens, lengths, rows):
            logits, tcache = generate.prefill(target, tparams, tcache, tokens, lengths)
            _, dcache = generate.prefill(draft, dparams, dcache, tokens, lengths)
            return R.sample(logits, target.config.vocab_size, rows), tcache, dcache
        self.prefill = jax.jit(prefill, donate_argnums=(2, 3))


def generate_ids(spec: Speculator, prompts: list[list[int]], s: generate.Sampling,
                 seed: int = 0, stats: dict | None = None) -> list[list[int]]:
    """`generate.generate_ids` with a draft: token lists in, generated token lists out (cut
    before EOS). The context must hold prompt + max_new_tokens + k for a learned-position
    model. `stats` (a dict) gets `rounds` (target forwards, summed over the rows still
    generating) and `tokens` (the tokens they yielded): tokens / rounds is the speedup bound."""
    s.validate()
    k, n = spec.k, s.max_new_tokens
    tokens, lengths, _ = generate.pad_prompts(prompts, n, spec.target.config)
    cache_len = tokens.shape[1] + n + k
    for model in (spec.target, spec.draft):
        c = model.config
        if c.position == "learned" and cache_len > c.max_seq_len:
            raise UserError(f"prompt + max_new_tokens + draft tokens = {cache_len} exceeds a "
                            f"max_seq_len of {c.max_seq_len} (learned positions)")
    batch = len(prompts)
    rows = R.host_rows(batch, s.temperature, s.top_k, s.top_p,
                       seed=(seed * 1_000_003 + np.arange(batch)) % 2**32)
    tcache = generate.init_cache(spec.target, spec.tparams, batch, cache_len)
    dcache = generate.init_cache(spec.draft, spec.dparams, batch, cache_len)
    first, tcache, dcache = spec.prefill(spec.tparams, spec.dparams, tcache, dcache, tokens,
                                         lengths, rows)
    outs = [[int(t)] for t in np.asarray(first)]
    last, pos = np.asarray(first, np.int32), lengths.astype(np.int32)
    rows.count[:] = 1
    done = np.asarray([o[-1] == s.eos_id or len(o) >= n for o in outs])
    rounds = made = 0
    while not done.all():
        new, count, tcache, dcache = spec.round(spec.tparams, spec.dparams, tcache, dcache,
                                                last, pos, rows)
        new, count = np.asarray(new), np.asarray(count)
        rounds, made = rounds + int((~done).sum()), made + int(count[~done].sum())
        for b in np.flatnonzero(~done):
            for t in new[b, :count[b]].tolist():
                outs[b].append(t)
                if t == s.eos_id or len(outs[b]) >= n:
                    done[b] = True
                    break
        last = np.where(done, last, new[np.arange(batch), count - 1]).astype(np.int32)
        pos = np.where(done, pos, pos + count).astype(np.int32)  # finished rows stand still
        rows.count[:] += 1
    if stats is not None:
        stats["rounds"] = stats.get("rounds", 0) + rounds
        stats["tokens"] = stats.get("tokens", 0) + made
    return generate.trim(np.asarray([o + [s.eos_id] * (n - len(o)) for o in outs]), s.eos_id)
