"""muP's coordinate check (Yang et al. 2021, "Tensor Programs V", section 7 / Fig. 5).

Train copies of one model at several widths for a few Adam steps on the same batch and record
the mean absolute value of each layer's output ("coordinate size") after every step. Under the
standard parametrisation the coordinates of later layers and of the logits grow with width (the
updates of a width-d matrix add up d aligned terms); under muP (`model.mup=True`) they stay
flat, which is what lets one learning rate work at every width.

    python -m gptjax.scaling.mup --out docs/scaling/mup_coord_check.png

The muP rules themselves live in `gptjax/model/gpt.py` (init, attention and readout scaling) and
`gptjax/training/optim.py` (per-layer learning rates).
"""

from __future__ import annotations

import argparse
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gptjax.config.defaults import base_config
from gptjax.metrics import plotting
from gptjax.model.gpt import GPT, GPTConfig
from gptjax.scaling.stats import fit_loglog
from gptjax.training.optim import make_optimizer


def check_config(width: int, mup: bool, lr: float, layers: int = 2, head_dim: int = 8,
                 base_width: int = 32, seq_len: int = 32) -> ml_collections.ConfigDict:
    """A small model of the given width; constant LR (no warmup, no decay within the check)."""
    c = base_config()
    c.model.update(vocab_size=64, vocab_multiple=8, num_layers=layers, d_model=width,
                   num_heads=width // head_dim, head_dim=head_dim, d_ff=4 * width,
                   max_seq_len=seq_len, use_bias=False, scan_layers=False, dtype="float32",
                   mup=mup, mup_base_width=base_width)
    c.optim.update(lr=lr, warmup_steps=0, decay_steps=10**6, weight_decay=0.0, grad_clip=0.0)
    c.train.steps = 10**6
    return c


def _batch(config, batch_size: int = 8, seed: int = 0):
    """A fixed batch of a learnable sequence: each token mostly follows from the one before."""
    rng = np.random.default_rng(seed)
    v, t = config.model.vocab_size, config.model.max_seq_len
    step = rng.integers(1, v, (batch_size, 1))
    noise = rng.random((batch_size, t + 1)) < 0.2
    tokens = (rng.integers(0, v, (batch_size, 1)) + step * np.arange(t + 1)) % v
    tokens = np.where(noise, rng.integers(0, v, tokens.shape), tokens)
    return jnp.asarray(tokens[:, :-1], jnp.int32), jnp.asarray(tokens[:, 1:], jnp.int32)


def _coordinate_sizes(model, params, inputs) -> dict:
    """Mean |x| of the embedding, every block's output and the logits."""
    logits, state = model.apply({"params": params}, inputs, capture_intermediates=True)
    inter = state["intermediates"]
    out = {"embedding": inter["wte"]["__call__"][0]}
    for i in range(model.config.num_layers):
        out[f"block {i}"] = inter[f"layer_{i}"]["__call__"][0]
    out["logits"] = logits
    return {k: jnp.mean(jnp.abs(v.astype(jnp.float32))) for k, v in out.items()}


def _compile(fn, *args):
    """jit for programs that run a handful of times: compile them fast rather than well."""
    return jax.jit(fn).lower(*args).compile(compiler_options={
        "xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})


def coord_check(config, steps: int = 4, seed: int = 0) -> list[dict]:
    """Coordinate sizes before training and after each of `steps` Adam steps (one dict each)."""
    model = GPT(GPTConfig.from_config(config.model, backend="cpu"))
    inputs, targets = _batch(config)
    tx = make_optimizer(config)

    def loss_fn(p):
        logits = model.apply({"params": p}, inputs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    def measure_and_step(params, opt_state):
        updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state, params)
        sizes = _coordinate_sizes(model, params, inputs)
        return sizes, optax.apply_updates(params, updates), opt_state

    key = jax.random.key(seed)
    params = _compile(lambda k: nn.unbox(model.init(k, inputs)["params"]), key)(key)
    opt_state = tx.init(params)
    step = _compile(measure_and_step, params, opt_state)
    history = []
    for _ in range(steps + 1):  # the last update is never measured
        sizes, params, opt_state = step(params, opt_state)
        history.append(sizes)
    return [{k: float(v) for k, v in h.items()} for h in jax.device_get(history)]


def width_slopes(results: dict, step: int = -1) -> dict:
    """{name: slope of ln(coordinate size) against ln(width)} at one step of the check."""
    widths = sorted(results)
    names = results[widths[0]][step].keys()
    return {name: fit_loglog(widths, [results[w][step][name] for w in widths])[0]
            for name in names}


def run_check(widths, lr: float, steps: int) -> dict:
    """{'sp': {width: history}, 'mup': {...}} for the same widths, LR and batch."""
    return {kind: {w: coord_check(check_config(w, kind == "mup", lr), steps) for w in widths}
            for kind in ("sp", "mup")}


def plot(results: dict, path: str, lr: float) -> None:
    plt = plotting.pyplot()
    kinds = list(results)
    widths = sorted(results[kinds[0]])
    steps = len(results[kinds[0]][widths[0]])
    names = list(results[kinds[0]][widths[0]][0])
    fig, axes = plt.subplots(len(kinds), steps, figsize=(2.6 * steps, 2.4 * len(kinds)),
                             sharex=True, sharey="row", squeeze=False)
    colors = plotting.colors(len(names))
    for r, kind in enumerate(kinds):
        for t in range(steps):
            ax = axes[r][t]
            for name, color in zip(names, colors, strict=True):
                ax.plot(widths, [results[kind][w][t][name] for w in widths], "o-", ms=3,
                        color=color, label=name)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{'muP' if kind == 'mup' else 'standard'}, step {t}", fontsize=9)
            ax.grid(alpha=0.3, which="both")
            if r == len(kinds) - 1:
                ax.set_xlabel("width (d_model)")
        axes[r][0].set_ylabel("mean |coordinate|")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"coordinate check: Adam, lr {lr:g}, same batch at every width", fontsize=10)
    plotting.save(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gptjax.scaling.mup", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--widths", default="32,64,128,256,512")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default="mup_coord_check.png", help="PNG; slopes go beside "
                        "it as .json")
    args = parser.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    results = run_check(widths, args.lr, args.steps)
    slopes = {kind: width_slopes(r) for kind, r in results.items()}
    plot(results, args.out, args.lr)
    with open(args.out.rsplit(".", 1)[0] + ".json", "w") as f:
        json.dump({"widths": widths, "lr": args.lr, "steps": args.steps,
                   "slope_at_last_step": slopes}, f, indent=2)
    for kind, s in slopes.items():
        print(f"{kind:>4}: d ln|x| / d ln width after {args.steps} steps: "
              + ", ".join(f"{k} {v:+.2f}" for k, v in s.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
