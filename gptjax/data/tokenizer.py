"""Tokenizers. (Placeholder until the data issue lands: synthetic data only.)"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Tokenizer:
    vocab_size: int
    eos_id: int = 0

    def encode(self, text: str) -> list[int]:
        return [b % self.vocab_size for b in text.encode()]

    def decode(self, ids) -> str:
        return "".join(chr(32 + int(i) % 95) for i in ids)


def make_tokenizer(config, workdir: str | None = None) -> Tokenizer:
    return Tokenizer(config.model.vocab_size)
