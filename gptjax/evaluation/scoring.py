"""Scoring primitives for in-context evaluation: what `gptjax evaluate-tasks` and the
lm-evaluation-harness model class (gptjax/evaluation/harness.py) both run.

    scorer = load_scorer("runs/quickstart")
    scorer.loglikelihood([(context, continuation), ...])     # [(sum of log-probs, is_greedy)]
    scorer.loglikelihood_rolling([text, ...], stride=None)    # [sum of log-probs of every token]
    scorer.generate_until([(context, stop strings, max tokens), ...])   # [generated text]

Every scored request becomes one or more *windows*: at most `max_seq_len` input tokens whose
last `count` targets are scored. A context too long for the model is left-truncated (the
harness's rule); a scored span longer than the window is split, each later window predicting
`stride` new tokens from the tokens before them (`stride = max_seq_len` is the harness's
disjoint rolling windows; a smaller stride gives every token more context, at more cost).

Windows are sorted by length and packed into [batch_size, bucket] arrays (bucket: the next power
of two, at most max_seq_len), so a whole task compiles a handful of shapes. One jitted step,
the model as `make_forward` runs it and the loss `cross_entropy` computes, splits
the rows over the mesh's batch axes; results come back in request order. Generation uses the
KV-cache program of gptjax/inference/generate.py on the same packed, sharded rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax.config.loader import apply_overrides
from gptjax.data.tokenizer import prefix_id
from gptjax.errors import UserError
from gptjax.inference import generate
from gptjax.inference import quantization as quant
from gptjax.model.gpt import GPT
from gptjax.parallel import sharding
from gptjax.parallel.sharding import inference_mesh
from gptjax.training.loss import cross_entropy, make_forward
from gptjax.training.state import model_config
from gptjax.workdir import open_run, read_config

MIN_BUCKET = 16


def bucket(length: int, cap: int) -> int:
    """The padded length of a batch whose longest row has `length` tokens."""
    return min(cap, max(MIN_BUCKET, 1 << max(0, length - 1).bit_length()))


def windows(n_tokens: int, n_scored: int, size: int, stride: int) -> list[tuple[int, int]]:
    """-> [(end, count)]: each window predicts tokens[end - count:end] from the up to `size`
    tokens before `end - 1`. The first window scores up to `size` tokens, each later one the
    next `stride` (with every earlier token it can hold as context)."""
    start = n_tokens - n_scored
    if start < 1:
        raise ValueError("a scored request needs at least one context token")
    out, end = [], start
    while end < n_tokens:
        count = min(size if not out else stride, n_tokens - end)
        end += count
        out.append((end, count))
    return out


def make_score_step(config, mesh, param_shardings, model: GPT):
    """Jitted `(params, batch) -> (log-prob sum [B], all-greedy [B])` per row, where batch =
    {'inputs', 'targets', 'weights'} [B, T]: the eval step's forward and loss, kept per row.
    Padded vocabulary columns are masked, so an imported GPT-2 matches its original.
    Quantized weights (gptjax/inference/quantization.py) are dequantized inside the step, as
    `gptjax eval` does."""
    forward = make_forward(config, model, lambda p: quant.dequantize(p, model.config.dtype))
    vocab = model.config.vocab_size
    row_loss = jax.vmap(cross_entropy)

    def score(params, batch):
        logits = forward(params, batch["inputs"])
        logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab, logits, -jnp.inf)
        weights = batch["weights"]
        loss, _ = row_loss(logits[:, None], batch["targets"][:, None], weights[:, None])
        hit = (jnp.argmax(logits, axis=-1) == batch["targets"]) | (weights == 0)
        return -loss, jnp.all(hit, axis=-1)

    return jax.jit(score, in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh))


@dataclasses.dataclass
class Stats:
    """Work done so far; `seconds` excludes compilation (timed apart in `compile_seconds`)."""
    requests: int = 0
    windows: int = 0
    tokens: int = 0
    seconds: float = 0.0
    compile_seconds: float = 0.0


class Scorer:
    """The scoring primitives for one model on one mesh (see the module docstring)."""

    def __init__(self, config, params, tokenizer, mesh, batch_size: int = 32,
                 model: GPT | None = None):
        """`model`: what runs the params (default: the config's GPT; a Qwix w8a8 model and
        its params come from `quant.prepare`)."""
        self.config, self.params, self.tokenizer, self.mesh = config, params, tokenizer, mesh
        self.model = model or GPT(model_config(config))
        self.window = self.model.config.max_seq_len
        shards = sharding.axis_size(mesh, sharding.BATCH_AXES)
        self.batch_size = -(-max(1, int(batch_size)) // shards) * shards
        self.prefix = prefix_id(tokenizer)
        self.stats = Stats()
        # Quantized trees (a `gptjax quantize` workdir's) are placed by their arrays, as in
        # `gptjax eval`.
        param_shardings = None if quant.is_quantized(params) else jax.tree.map(
            lambda x: x.sharding, params)
        self._step = make_score_step(config, mesh, param_shardings, self.model)
        self._programs: dict = {}

    # ------------------------------------------------------------------------- text level

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Tokens of (context, continuation) as the harness splits them: the pair is encoded
        whole and cut after the context's tokens; trailing spaces move to the continuation;
        an empty context becomes the prefix token."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            cont = self.tokenizer.encode(continuation)
            if cont and cont[0] == self.prefix:
                return cont[:1], cont[1:]
            return [self.prefix], cont
        ctx = self.tokenizer.encode(context)
        return ctx, self.tokenizer.encode(context + continuation)[len(ctx):]

    def loglikelihood(self, pairs) -> list[tuple[float, bool]]:
        """[(context, continuation)] -> [(log P(continuation | context), is it the greedy
        continuation)]; the continuation's tokens are all scored (in windows if it is longer
        than the model's context)."""
        requests = []
        for context, continuation in pairs:
            ctx, cont = self.encode_pair(context, continuation)
            requests.append((ctx + cont, len(cont)))
        return self.score_tokens(requests)

    def loglikelihood_rolling(self, texts, stride: int | None = None) -> list[float]:
        """[text] -> [log P(text | prefix token)], every token scored once in windows of
        max_seq_len tokens advancing by `stride` (default max_seq_len, the harness's)."""
        requests = []
        for text in texts:
            tokens = [self.prefix] + list(self.tokenizer.encode(text))
            requests.append((tokens, len(tokens) - 1))
        return [ll for ll, _ in self.score_tokens(requests, stride)]

    # ------------------------------------------------------------------------- token level

    def score_tokens(self, requests, stride: int | None = None) -> list[tuple[float, bool]]:
        """[(tokens, n)] -> [(sum of log-probs of the last n tokens, all of them greedy)]."""
        stride = self.window if stride is None else int(stride)
        if not 1 <= stride <= self.window:
            raise ValueError(f"stride={stride} must be in [1, max_seq_len={self.window}]")
        rows = []  # (request, inputs, targets, count)
        for r, (tokens, n) in enumerate(requests):
            tokens = list(tokens)
            for end, count in (windows(len(tokens), n, self.window, stride) if n else ()):
                start = max(0, end - 1 - self.window)
                rows.append((r, tokens[start:end - 1], tokens[start + 1:end], count))
        logprob, greedy = np.zeros(len(requests)), np.ones(len(requests), bool)
        t0, compile_before = time.perf_counter(), self.stats.compile_seconds
        for chunk, batch in self._batches(rows):
            lp, ok = jax.device_get(self._run(batch))
            for i, row in enumerate(chunk):
                logprob[rows[row][0]] += lp[i]
                greedy[rows[row][0]] &= bool(ok[i])
        self._count(len(requests), len(rows), sum(len(r[1]) for r in rows), t0, compile_before)
        return [(float(a), bool(b)) for a, b in zip(logprob, greedy, strict=True)]

    def _batches(self, rows):
        """Rows sorted longest first, packed into [batch_size, bucket] arrays."""
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][1]))
        for i in range(0, len(order), self.batch_size):
            chunk = order[i:i + self.batch_size]
            length = bucket(len(rows[chunk[0]][1]), self.window)
            batch = {"inputs": np.zeros((self.batch_size, length), np.int32),
                     "targets": np.zeros((self.batch_size, length), np.int32),
                     "weights": np.zeros((self.batch_size, length), np.float32)}
            for b, row in enumerate(chunk):
                _, inputs, targets, count = rows[row]
                batch["inputs"][b, :len(inputs)] = inputs
                batch["targets"][b, :len(targets)] = targets
                batch["weights"][b, len(targets) - count:len(targets)] = 1.0
            yield chunk, batch

    def _run(self, batch):
        batch = self._place(batch)
        program = self._compiled(("score", batch["inputs"].shape), self._step, self.params, batch)
        return program(self.params, batch)

    def _compiled(self, key, jitted, *args):
        """`jitted` compiled ahead of time for these shapes, once (timed in the stats)."""
        if key not in self._programs:
            t0 = time.perf_counter()
            with self._on_mesh():
                self._programs[key] = jitted.lower(*args).compile()
            self.stats.compile_seconds += time.perf_counter() - t0
        return self._programs[key]

    def _count(self, requests, rows, tokens, t0, compile_before):
        compiled = self.stats.compile_seconds - compile_before
        self.stats.requests += requests
        self.stats.windows += rows
        self.stats.tokens += tokens
        self.stats.seconds += time.perf_counter() - t0 - compiled

    def _place(self, arrays: dict) -> dict:
        """Host arrays every process holds in full -> global arrays split over the batch."""
        return {k: jax.make_array_from_callback(
            v.shape, sharding.batch_sharding(self.mesh, v.ndim), lambda index, v=v: v[index])
            for k, v in arrays.items()}

    @contextlib.contextmanager
    def _on_mesh(self):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.logical_rules(self.config)):
            yield

    # ------------------------------------------------------------------------- generation

    def generate_until(self, requests, temperature: float = 0.0, seed: int = 0, top_k: int = 0,
                       top_p: float = 1.0) -> list[str]:
        """[(context, stop strings, max tokens)] -> [text generated after the context, cut
        before the first stop string or EOS]. Greedy unless temperature > 0 (then top-k / top-p
        filtered as `gptjax sample` does). Learned positions hold prompt + new tokens in the
        window: max tokens is capped at max_seq_len - 1 and the context left-truncated to
        max_seq_len - max tokens (the harness's rule). Rotary / sinusoidal models take any
        max tokens after a context left-truncated to max_seq_len."""
        out = [""] * len(requests)
        groups: dict[int, list[int]] = {}
        for i, (_, _, max_tokens) in enumerate(requests):
            groups.setdefault(self._new_tokens(max_tokens), []).append(i)
        t0, compile_before = time.perf_counter(), self.stats.compile_seconds
        for n, members in groups.items():
            prompts = {i: self._prompt(requests[i][0], self._room(n)) for i in members}
            members.sort(key=lambda i: -len(prompts[i]))
            for j in range(0, len(members), self.batch_size):
                chunk = members[j:j + self.batch_size]
                s = generate.Sampling(max_new_tokens=n, temperature=float(temperature),
                                      top_k=int(top_k), top_p=float(top_p), eos_id=self._eos())
                ids = self._generate([prompts[i] for i in chunk], s, seed + j)
                for i, row in zip(chunk, ids, strict=True):
                    out[i] = _cut(self.tokenizer.decode(row), requests[i][1])
        self._count(len(requests), 0, 0, t0, compile_before)
        return out

    def _new_tokens(self, max_tokens: int) -> int:
        """How many tokens a request for `max_tokens` generates (see generate_until)."""
        n = max(1, int(max_tokens))
        return min(n, self.window - 1) if self.model.config.position == "learned" else n

    def _room(self, n: int) -> int:
        """Context tokens kept before `n` new ones."""
        return self.window - n if self.model.config.position == "learned" else self.window

    def _eos(self) -> int:
        return -1 if self.tokenizer.eos_id is None else int(self.tokenizer.eos_id)

    def _prompt(self, context: str, room: int) -> list[int]:
        return (list(self.tokenizer.encode(context)) or [self.prefix])[-room:]

    def _generate(self, prompts, s: generate.Sampling, seed: int):
        """Continuations of `prompts` as one padded, sharded batch."""
        c = self.model.config
        filler = [[self.prefix]] * (self.batch_size - len(prompts))
        tokens, lengths, _ = generate.pad_prompts(list(prompts) + filler, s.max_new_tokens, c)
        width = bucket(tokens.shape[1], self._room(s.max_new_tokens))
        tokens = np.pad(tokens, ((0, 0), (0, width - tokens.shape[1])))
        args = (self.params, *self._place({"t": tokens, "n": lengths}).values(),
                jax.random.key(seed))
        program = self._compiled(("generate", width, s), generate.make_generate(
            self.model, s, width + s.max_new_tokens), *args)
        with self._on_mesh():
            ids, _ = program(*args)
        return generate.trim(jax.device_get(ids), s.eos_id)[:len(prompts)]


def _cut(text: str, stops) -> str:
    """`text` up to the first occurrence of any stop string (the harness's rule)."""
    for stop in stops or ():
        if stop:
            text = text.split(stop)[0]
    return text


def load_scorer(workdir: str, step: int | None = None, batch_size: int = 32,
                overrides=()) -> Scorer:
    """A Scorer for a trained (or fine-tuned, or imported) workdir, on `sharding.inference_mesh`
    (the run's mesh when it fits this machine, else data parallel over every device)."""
    config = read_config(workdir)
    rest = apply_overrides(config, list(overrides))
    if rest:
        raise UserError(f"unrecognised arguments: {' '.join(rest)}")
    mesh = inference_mesh(config)
    config, params, tokenizer, _ = open_run(workdir, mesh, step, config)
    # a quantized workdir's layers are dequantized inside each layer (quant.prepare)
    model, params = quant.prepare(GPT(model_config(config)), params)
    return Scorer(config, params, tokenizer, mesh, batch_size, model=model)

