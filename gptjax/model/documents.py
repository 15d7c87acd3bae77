"""Packed documents (`data.document_mask`): which document each token of a window belongs to,
and its position inside that document, computed in the step from the window's own tokens.

    docs = Documents.from_config(config)       # None when data.document_mask is off
    kwargs = docs.model_inputs(inputs_bt)      # {'segment_ids': [B, T], 'positions': [B, T]?}

A window is a slice of the split's token stream `doc0 EOS doc1 EOS ...` (gptjax/data/store.py):
an EOS ends its document, so a token's segment id is the number of EOS tokens before it in the
window (the window's first, usually partial, document is segment 0). Attention then stays
inside a segment (gptjax/model/attention.py); with `data.positions_restart` the position ids
restart at 0 at every document's first token (and at the window's first token, as today).

Computed from the tokens rather than read from the data pipeline: nothing else crosses the
host -> device link, the batch stays {'inputs', 'targets'} and the input position, its exact
resume and `sharding.host_rows` reading are unchanged. The loss is unchanged too: the EOS
position still predicts the next document's first token (from its own document only).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gptjax.errors import UserError


def segment_ids(inputs_bt, eos_id: int):
    """int32 [B, T]: the number of EOS tokens before each token of its row."""
    eos = (inputs_bt == eos_id).astype(jnp.int32)
    return jnp.cumsum(eos, axis=1) - eos


def document_positions(segments_bt):
    """int32 [B, T]: each token's offset from its segment's first token in the row."""
    index = jnp.broadcast_to(jnp.arange(segments_bt.shape[1], dtype=jnp.int32),
                             segments_bt.shape)
    first = jnp.concatenate([jnp.ones_like(segments_bt[:, :1], bool),
                             segments_bt[:, 1:] != segments_bt[:, :-1]], axis=1)
    return index - jax.lax.cummax(jnp.where(first, index, 0), axis=1)


@dataclasses.dataclass(frozen=True)
class Documents:
    eos_id: int
    positions_restart: bool

    @classmethod
    def from_config(cls, config) -> Documents | None:
        d = config.data
        restart = bool(d.get("positions_restart", False))
        if not d.get("document_mask", False):
            if restart:
                raise UserError("data.positions_restart=True restarts positions per document: "
                                "it needs data.document_mask=True")
            return None
        eos = int(d.get("eos_id", -1))
        if eos < 0:
            raise UserError("data.document_mask=True needs data.eos_id, the tokenizer's EOS id "
                            "(a run sets it from its tokenizer; give --config.data.eos_id=ID)")
        return cls(eos, restart)

    def model_inputs(self, inputs_bt) -> dict:
        """The keyword arguments of `GPT.__call__` for these windows."""
        segments = segment_ids(inputs_bt, self.eos_id)
        out = {"segment_ids": segments}
        if self.positions_restart:
            out["positions"] = document_positions(segments)
        return out


def set_eos_id(config, tokenizer) -> None:
    """Sets data.eos_id to the tokenizer's when data.document_mask is on (config unlocked)."""
    d = config.data
    if not d.document_mask:
        return
    eos = getattr(tokenizer, "eos_id", None)
    if eos is None or not d.tokenizer.add_eos:
        raise UserError(f"data.document_mask=True splits documents at EOS, but the "
                        f"{tokenizer.kind} tokenizer's token stream has none "
                        f"(data.tokenizer.add_eos={d.tokenizer.add_eos}, eos_id={eos})")
    if int(d.eos_id) >= 0 and int(d.eos_id) != int(eos):
        raise UserError(f"data.eos_id={d.eos_id} but the tokenizer's EOS is {eos}; leave "
                        f"data.eos_id at -1 (set from the tokenizer)")
    d.eos_id = int(eos)
