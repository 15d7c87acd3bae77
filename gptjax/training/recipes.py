"""Recipes: what a run trains on. A recipe's `prepare(config, workdir, mesh)` returns a
`RunData`: the tokenizer, the host batches (which report and restore their position), the eval
set, the starting state and, where it has one, its own objective. `train(config, workdir,
recipe)` (gptjax/training/train.py) runs every recipe through the same loop.

    Pretraining()                     next-token prediction on config.data (here)
    Finetuning()                      prompt/response pairs (gptjax/training/finetune.py)
    Distillation()                    a teacher's soft targets (gptjax/training/distill.py)
    Continued(workdir, masked=True)   recovery of a pruned model (gptjax/compression/surgery.py)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import jax

from gptjax import data
from gptjax.errors import UserError
from gptjax.model.documents import set_eos_id
from gptjax.parallel import distributed, sharding
from gptjax.training.evaluation import prepare_eval_batches
from gptjax.training.state import create_train_state
from gptjax.workdir import save_tokenizer


@dataclasses.dataclass
class RunData:
    """What a recipe hands the loop: batches that can report and restore their position."""
    config: object                      # the run's final config (model section included)
    tokenizer: object
    batches: Iterator                   # host batches; .get_state() / .set_state(dict)
    eval_batches: Callable[[], list]    # -> global eval batches (called once, if eval is on)
    init_state: Callable                # (config, mesh, model, tx, shardings) -> TrainState
    describe: str = ""                  # one phrase for the start line
    eval_first: bool = False            # also evaluate the starting params (fine-tuning)
    # A recipe's own objective: (config, model, param_shardings) -> loss_and_grads(params, batch,
    # key, frozen); None = next-token loss. `frozen`: arrays it reads but never trains (a
    # distillation teacher, pruning masks), already placed on the mesh.
    objective: Callable | None = None
    frozen: object = None


class Pretraining:
    """Next-token prediction on `config.data` (gptjax.data)."""

    def prepare(self, config, workdir: str, mesh) -> RunData:
        rows = sharding.host_rows(mesh, config.train.batch_size)  # mesh-aware per-host data

        timeout = config.distributed.prepare_timeout
        # Process 0 trains the tokenizer (where one is trained); the others then load it.
        tokenizer = distributed.once("prepare the tokenizer",
                                     lambda: data.make_tokenizer(config, workdir), timeout)
        check_vocab(config, tokenizer)
        set_eos_id(config, tokenizer)  # data.document_mask splits at the tokenizer's EOS
        # Every process tokenizes its part of each split not yet in the token store ...
        distributed.each("tokenize its part of the data", lambda: data.prepare_splits(
            config, tokenizer, workdir, jax.process_index(), jax.process_count()), timeout)

        def load():  # ... process 0 indexes the splits, the others then read the same index
            batches = data.make_train_iter(config, tokenizer, jax.process_index(),
                                           jax.process_count(), rows=rows)
            evals = (prepare_eval_batches(config, tokenizer, mesh)
                     if config.train.eval_every >= 0 else [])
            return batches, evals

        batches, evals = distributed.once("prepare the data", load, timeout)
        return RunData(config, tokenizer, batches, lambda: evals,
                       lambda cfg, mesh, model, tx, sh: create_train_state(cfg, mesh, model, tx,
                                                                            sh))


def check_vocab(config, tokenizer) -> None:
    """model.vocab_size must be the tokenizer's, unless model.vocab_from_tokenizer says the
    tokenizer decides (then it is set here, and the start line shows it)."""
    have, want = int(tokenizer.vocab_size), int(config.model.vocab_size)
    if have == want:
        return
    if config.model.vocab_from_tokenizer:
        config.model.vocab_size = have
        return
    raise UserError(f"config.model.vocab_size={want} but the {tokenizer.kind} tokenizer has "
                    f"{have} tokens; give data.tokenizer settings that make {want} (GPT-2's own "
                    f"files: data.tokenizer.kind=gpt2, data.tokenizer.path=DIR with vocab.json "
                    f"and merges.txt), or let the tokenizer decide with "
                    f"--config.model.vocab_from_tokenizer=true")


def inherited_batches(config, tokenizer, workdir: str, mesh):
    """Training batches for a run that takes its data and tokenizer from another workdir
    (distillation, recovery fine-tunes): the tokenizer is saved in `workdir` by process 0."""
    if jax.process_index() == 0:
        save_tokenizer(workdir, tokenizer)
    return data.make_train_iter(config, tokenizer, jax.process_index(), jax.process_count(),
                                rows=sharding.host_rows(mesh, config.train.batch_size))
