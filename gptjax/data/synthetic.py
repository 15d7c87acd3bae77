"""The `synthetic` source: deterministic random tokens of model.vocab_size (benchmarks, tests).

It has no text: its tokenizer is a stand-in that only knows the vocabulary size.
"""

from __future__ import annotations

import numpy as np

from gptjax.data.pipeline import batch_rows
from gptjax.errors import UserError


class SyntheticIterator:
    """Deterministic random tokens; the state is the batch count."""

    def __init__(self, config, process_index: int, process_count: int, seed_offset: int = 0,
                 rows=None):
        self.rows = batch_rows(config, process_index, process_count, rows)
        self.global_batch = config.train.batch_size
        self.seq_len = config.data.seq_len
        self.vocab = config.model.vocab_size
        self.seed = config.data.seed + seed_offset
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self):
        # (multi-host helper) one global batch per step, this process takes its rows: the same
        # data whatever the process count, so N processes reproduce a 1-process run.
        rng = np.random.default_rng([self.seed, self.step])
        tokens = rng.integers(0, self.vocab, (self.global_batch, self.seq_len + 1),
                              dtype=np.int32)[self.rows]
        self.step += 1
        return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        if "step" not in state:
            raise UserError(f"input-iterator state {state!r} is not a synthetic-source state")
        self.step = int(state["step"])

    def close(self) -> None:
        pass


class SyntheticTokenizer:
    """Stand-in tokenizer of a source without text: a vocabulary size and nothing to learn."""

    kind = "synthetic"

    def __init__(self, vocab_size: int):
        self.vocab_size = int(vocab_size)
        self.eos_id = 0
        self.bos_id = self.pad_id = None
        self.fingerprint = f"synthetic-{vocab_size}"

    def encode(self, text: str) -> list[int]:
        return [b % self.vocab_size for b in text.encode()]

    def encode_many(self, texts):
        return [np.asarray(self.encode(t), np.int32) for t in texts]

    def decode(self, ids) -> str:
        return "".join(chr(32 + int(i) % 95) for i in ids)

    def save(self, directory: str) -> str | None:
        return None
