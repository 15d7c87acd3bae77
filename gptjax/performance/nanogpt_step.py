"""nanoGPT's train step in torch, on the shape of a gptjax config: the reference side of
`gptjax bench --against nanogpt` (gptjax/performance/versus_nanogpt.py).

nanoGPT's `model.py` is imported from its own checkout (`--nanogpt-dir`), never copied here.
The step is the one of nanoGPT's `train.py` without gradient accumulation: forward with
targets (full logits, `F.cross_entropy`), backward, `clip_grad_norm_` when optim.grad_clip >
0, `AdamW.step()` from `GPT.configure_optimizers` (its weight-decay groups, torch's default
foreach implementation off CUDA), `zero_grad(set_to_none=True)`. Eager mode, float32.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import time

import numpy as np
import torch

from gptjax.errors import UserError


def load_model_module(nanogpt_dir: str):
    """nanoGPT's model.py as a module, loaded from `nanogpt_dir`."""
    path = os.path.join(nanogpt_dir, "model.py")
    if not os.path.isfile(path):
        raise UserError(f"--nanogpt-dir={nanogpt_dir!r}: no nanoGPT model.py there (a checkout "
                        f"of github.com/karpathy/nanoGPT)")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class NanoGPTRunner:
    """nanoGPT's model and AdamW on `shape` (gptjax.performance.versus_nanogpt.shape_of):
    `run(n)` times n train steps on one batch of random tokens."""

    def __init__(self, nanogpt_dir: str, shape: dict, threads: int, seed: int = 0):
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        nano = load_model_module(nanogpt_dir)
        config = nano.GPTConfig(block_size=shape["seq_len"], vocab_size=shape["vocab"],
                                n_layer=shape["layers"], n_head=shape["heads"],
                                n_embd=shape["d_model"], dropout=0.0, bias=shape["bias"])
        with contextlib.redirect_stdout(io.StringIO()):  # nanoGPT prints its parameter count
            self.model = nano.GPT(config)
            self.optimizer = self.model.configure_optimizers(
                shape["weight_decay"], shape["lr"], (shape["b1"], shape["b2"]), "cpu")
        for group in self.optimizer.param_groups:
            group["eps"] = shape["eps"]
        self.grad_clip = shape["grad_clip"]
        rng = np.random.default_rng(seed)
        tokens = torch.from_numpy(rng.integers(0, shape["vocab"], size=(
            shape["batch"], shape["seq_len"] + 1)).astype(np.int64))
        self.x, self.y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        self.model.train()
        self.loss = float("nan")

    def run(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            _, loss = self.model(self.x, self.y)
            loss.backward()
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.loss = float(loss.item())  # eager torch: the step is done when it returns
        return time.perf_counter() - t0
