"""KV-cache decode speed of a config with random weights: the library behind
`gptjax bench-decode` (gptjax/commands/measure/bench_decode.py).

It times the whole-program generator of gptjax/inference/generate.py (prefill + a
`lax.while_loop` of decode steps) and measures the device's memory bandwidth with a large copy:
every decode step reads every weight once, so `bandwidth / weight bytes` bounds steps/s. It
also reads the program's peak memory off XLA's memory analysis of the compiled program
(`peak_bytes`): what quantized weights save at run time, not just in storage.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from gptjax.inference import quantization as quant
from gptjax.inference.generate import Sampling, cast_params, make_generate, pad_prompts
from gptjax.model.gpt import GPT, GPTConfig

PROMPT_LEN = 16     # the defaults of `gptjax bench-decode`
NEW_TOKENS = 128


def measure_copy_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Device memory bandwidth in bytes/s from timing a large copy (bytes read + written)."""
    n = nbytes // 4
    x = jnp.ones((n,), jnp.float32)
    copy = jax.jit(lambda a: a + 1.0)
    copy(x).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(repeats):
        y = copy(x)
    y.block_until_ready()
    return 2 * n * 4 * repeats / (time.perf_counter() - t0)


class DecodeTiming(NamedTuple):
    tokens_per_s: float        # wall clock, the fastest run
    steps_per_s: float
    compile_s: float           # compile + first run
    tokens_per_cpu_s: float    # per second of this process's CPU time (all threads), the best
                               # run: what other jobs on a shared machine barely change
    peak_bytes: int            # the compiled program's peak memory (`peak_bytes`)


def peak_bytes(compiled) -> int:
    """Peak device memory of a compiled program by XLA's memory analysis: arguments + outputs
    - aliased + temporaries (as gptjax/performance/aot.py counts); -1 where the backend
    reports none."""
    ma = compiled.memory_analysis()
    if ma is None:
        return -1
    return int(ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
               + ma.temp_size_in_bytes)


def compile_decode(model: GPT, params, batch: int, prompt_len: int = PROMPT_LEN,
                   new_tokens: int = NEW_TOKENS):
    """-> (the compiled generator: `batch` rows of a `prompt_len`-token prompt, `new_tokens`
    each, top-k 50 sampling; its arguments but the rng key)."""
    s = Sampling(max_new_tokens=new_tokens, temperature=1.0, top_k=50)
    prompts, lengths, cache_len = pad_prompts([[1] * prompt_len] * batch, new_tokens,
                                              model.config)
    args = (params, prompts, lengths)
    return make_generate(model, s, cache_len).lower(*args, jax.random.key(0)).compile(), args


def time_decode(model: GPT, params, batch: int, prompt_len: int = PROMPT_LEN,
                new_tokens: int = NEW_TOKENS, repeats: int = 3) -> DecodeTiming:
    """The best of `repeats` timed generations of `new_tokens` per row (top-k 50 sampling)
    after a `prompt_len`-token prompt."""
    t0 = time.perf_counter()
    fn, (params, prompts, lengths) = compile_decode(model, params, batch, prompt_len, new_tokens)
    jax.block_until_ready(fn(params, prompts, lengths, jax.random.key(1)))
    compile_s = time.perf_counter() - t0
    wall, cpu = [], []
    for r in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out, steps = fn(params, prompts, lengths, jax.random.key(2 + r))
        jax.block_until_ready(out)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    steps = int(steps)
    return DecodeTiming(batch * steps / min(wall), steps / min(wall), compile_s,
                        batch * steps / max(min(cpu), 1e-9), peak_bytes(fn))


def fit_window(c: GPTConfig, prompt_len: int | None = None,
               new_tokens: int | None = None) -> tuple[int, int]:
    """(prompt_len, new_tokens): PROMPT_LEN / NEW_TOKENS for what is not given, shortened so
    that a learned-position model's window (max_seq_len) holds the prompt and the new tokens.

    Only defaults give way: when both are defaults, the prompt keeps at most an eighth of the
    window and the new tokens get the rest; a value that was given stays as given (if it leaves
    no room, generation says so)."""
    prompt = PROMPT_LEN if prompt_len is None else prompt_len
    new = NEW_TOKENS if new_tokens is None else new_tokens
    window = c.max_seq_len
    if c.position != "learned" or prompt + new <= window:
        return prompt, new
    if new_tokens is None:
        if prompt_len is None:
            prompt = min(prompt, max(window // 8, 1))
        new = min(new, window - prompt) if window > prompt else new
    elif prompt_len is None and window > new:
        prompt = window - new
    return prompt, new


def random_model(c: GPTConfig, quantize: str = "none"):
    """(model, params): `c` with random weights in its compute dtype, quantized as `quantize`
    (one of quantization.MODES)."""
    model = GPT(c)
    params = jax.jit(lambda r: nn.unbox(model.init(r, jnp.zeros((1, 1), jnp.int32))["params"]))(
        jax.random.key(0))
    params = cast_params(params, c.dtype)
    return quant.prepare(model, params, quantize)
