"""`gptjax bench-decode`: KV-cache decode tokens/s of a config with random weights, against the
weight-bandwidth bound, with the weights' stored MB and the compiled program's peak memory
(gptjax/performance/decode_bench.py).

    gptjax bench-decode --config configs/gpt2.py:124m              # batch 1 and 32
    gptjax bench-decode --config configs/gpt3.py:xl --batch 1 --quantize int8
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from gptjax.commands.args import add_config_arg
from gptjax.inference import quantization as quant
from gptjax.model.gpt import GPTConfig
from gptjax.performance import decode_bench
from gptjax.performance.decode_bench import NEW_TOKENS, PROMPT_LEN


def add_args(parser: argparse.ArgumentParser) -> None:
    add_config_arg(parser)
    parser.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--prompt-len", type=int, default=None,
                        help=f"prompt tokens (default {PROMPT_LEN}; fewer if the model's "
                             f"window is shorter)")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help=f"tokens generated per row (default {NEW_TOKENS}; fewer if the "
                             f"model's window is shorter)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch size")
    parser.add_argument("--quantize", choices=quant.MODES, default="none")
    parser.add_argument("--bandwidth", type=float, default=0.0,
                        help="memory bandwidth in GB/s for the roofline (0 = measure a copy)")


def run(args) -> int:
    """Random-initialised model of --config; prints decode tokens/s and the bandwidth bound."""
    c = GPTConfig.from_config(args.config.model)
    prompt_len, new_tokens = decode_bench.fit_window(c, prompt_len=args.prompt_len,
                                                     new_tokens=args.new_tokens)
    asked = (PROMPT_LEN if args.prompt_len is None else args.prompt_len,
             NEW_TOKENS if args.new_tokens is None else args.new_tokens)
    if (prompt_len, new_tokens) != asked:
        print(f"gptjax bench-decode: note: {args.config.name} has a {c.max_seq_len}-token window "
              f"(learned positions): timing a {prompt_len}-token prompt + {new_tokens} new "
              f"tokens (--prompt-len / --new-tokens set them)", flush=True)
    model, params = decode_bench.random_model(c, quantize=args.quantize)
    weight_bytes = quant.weight_bytes(params)
    bandwidth = args.bandwidth * 1e9 or decode_bench.measure_copy_bandwidth()
    print(f"{args.config.name}: {c.num_layers} layers, d_model {c.d_model}, weights "
          f"{weight_bytes / 1e6:.1f} MB ({args.quantize}, compute {jnp.dtype(c.dtype).name}), "
          f"device {jax.devices()[0].device_kind}, bandwidth {bandwidth / 1e9:.1f} GB/s")
    for batch in (int(b) for b in args.batch.split(",")):
        t = decode_bench.time_decode(model, params, batch, prompt_len=prompt_len,
                                     new_tokens=new_tokens, repeats=args.repeats)
        # Each step reads every weight once: the bound is bandwidth / weight bytes (steps/s).
        bound = bandwidth / weight_bytes
        print(f"batch {batch:3d}: {t.tokens_per_s:10.1f} tokens/s ({t.steps_per_s:8.1f} "
              f"steps/s, {100 * t.steps_per_s / bound:5.1f}% of the weight-bandwidth bound "
              f"{bound:.1f} steps/s; compile+first run {t.compile_s:.1f} s; peak memory "
              f"{t.peak_bytes / 1e6:.2f} MB)")
    return 0
