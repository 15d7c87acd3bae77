"""Batches. (Placeholder until the data issue lands: synthetic tokens only.)"""

from __future__ import annotations

import numpy as np

from gptjax.errors import UserError


class SyntheticIterator:
    """Deterministic random tokens; the state is the number of batches drawn."""

    def __init__(self, config, process_index: int, process_count: int, seed_offset: int = 0):
        if config.train.batch_size % process_count:
            raise UserError(f"train.batch_size={config.train.batch_size} is not divisible by "
                            f"{process_count} processes")
        self.batch = config.train.batch_size // process_count
        self.seq_len = config.data.seq_len
        self.vocab = config.model.vocab_size
        self.seed = config.data.seed + seed_offset
        self.process_index = process_index
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self):
        rng = np.random.default_rng([self.seed, self.step, self.process_index])
        tokens = rng.integers(0, self.vocab, (self.batch, self.seq_len + 1), dtype=np.int32)
        self.step += 1
        return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])


def make_train_iter(config, tokenizer, process_index: int = 0, process_count: int = 1):
    if config.data.source != "synthetic":
        raise UserError(f"data.source={config.data.source!r} is not available yet")
    return SyntheticIterator(config, process_index, process_count)


def make_eval_batches(config, tokenizer, process_index: int = 0, process_count: int = 1):
    it = SyntheticIterator(config, process_index, process_count, seed_offset=1_000_003)
    return [next(it) for _ in range(config.train.eval_batches)]
