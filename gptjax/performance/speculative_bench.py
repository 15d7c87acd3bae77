"""Speculative decoding measured (`gptjax bench-speculative`): acceptance rate and speedup of
draft models over their target, on trained workdirs.

For each draft, k (`--draft-tokens`) and temperature, the same rows are generated twice after
one untimed run of each (compilation):

    target      `gptjax sample`'s whole-program generator (gptjax/inference/generate.py): every
                step on the device, no host round trip
    speculative gptjax/inference/speculative.py's rounds: k draft steps + one k+1-token target
                forward per round, the round loop on the host (as `gptjax sample --draft`)

Printed: the acceptance rate (accepted proposals / proposals: a round yields its accepted
proposals + 1 token), tokens per target forward and row, tokens/s of both (the best of
`repeats` runs) and their ratio, the speedup. Both generate exactly `new_tokens` per row (EOS
does not stop them), and a greedy row must come out identical token for token (checked).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from gptjax.errors import UserError
from gptjax.inference import generate, speculative
from gptjax.inference.sample import load_model


@dataclasses.dataclass
class Row:
    draft: str
    k: int
    temperature: float
    acceptance: float          # accepted proposals / proposals
    tokens_per_forward: float  # tokens per target forward and row (at most k + 1)
    tokens_per_s: float        # speculative, the best run
    target_tokens_per_s: float
    identical: bool | None     # greedy: the target's tokens exactly (None when sampling)

    @property
    def speedup(self) -> float:
        return self.tokens_per_s / self.target_tokens_per_s


def _best(fn, repeats: int) -> tuple[float, object]:
    """fn() once untimed (compiles), then the fastest of `repeats` timed calls -> (s, result)."""
    fn()
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def time_target(model, params, prompts, s: generate.Sampling, repeats: int):
    """-> (seconds of the fastest run, generated ids [B, new tokens])."""
    tokens, lengths, cache_len = generate.pad_prompts(prompts, s.max_new_tokens, model.config)
    program = generate.make_generate(model, s, cache_len)

    def run():
        return np.asarray(jax.block_until_ready(program(params, tokens, lengths,
                                                        jax.random.key(0))[0]))
    return _best(run, repeats)


def time_speculative(spec: speculative.Speculator, prompts, s: generate.Sampling,
                     repeats: int):
    """-> (seconds of the fastest run, generated ids, {'rounds', 'tokens'} of one run)."""
    stats: dict = {}

    def run():
        stats.clear()
        return speculative.generate_ids(spec, prompts, s, 0, stats)
    seconds, ids = _best(run, repeats)
    return seconds, ids, dict(stats)


def bench(workdir: str, drafts, ks=(4,), temperatures=(0.0, 1.0), prompts=("\n",),
          new_tokens: int = 96, repeats: int = 3, log=print) -> list[Row]:
    """Every (draft, k, temperature) of `drafts` (workdirs) against the target `workdir`."""
    if new_tokens < 1 or repeats < 1:
        raise UserError("--new-tokens and --repeats must be >= 1")
    _, model, params, tokenizer = load_model(workdir)
    rows_in = [list(tokenizer.encode(p)) for p in prompts]
    width = len(rows_in)
    target: dict[float, tuple[float, np.ndarray]] = {}
    out = []
    for draft in drafts:
        _, dmodel, dparams, _ = load_model(draft)
        for k in ks:
            spec = speculative.Speculator(model, params, dmodel, dparams, int(k))
            for t in temperatures:
                s = generate.Sampling(max_new_tokens=new_tokens, temperature=float(t),
                                      top_k=0, top_p=1.0, eos_id=-1)
                if t not in target:
                    target[t] = time_target(model, params, rows_in, s, repeats)
                seconds, ids, stats = time_speculative(spec, rows_in, s, repeats)
                rounds, made = stats["rounds"], stats["tokens"]
                base_s, base_ids = target[t]
                row = Row(draft, int(k), float(t), (made - rounds) / (rounds * k),
                          made / rounds, width * new_tokens / seconds,
                          width * new_tokens / base_s,
                          bool(np.array_equal(np.asarray(ids), base_ids)) if t == 0 else None)
                log(line(row))
                out.append(row)
    return out


HEADER = ("| draft | k | temperature | acceptance | tokens / target forward | tokens/s | "
          "target alone tokens/s | speedup | greedy identical |\n|---|---|---|---|---|---|---|"
          "---|---|")


def line(r: Row) -> str:
    same = {True: "yes", False: "NO", None: "—"}[r.identical]
    return (f"| {r.draft} | {r.k} | {r.temperature:g} | {r.acceptance:.3f} | "
            f"{r.tokens_per_forward:.2f} | {r.tokens_per_s:,.0f} | {r.target_tokens_per_s:,.0f} "
            f"| {r.speedup:.2f}x | {same} |")
