"""Supervised fine-tuning on JSONL prompt/response pairs (`gptjax finetune`): the `Finetuning`
recipe.

    {"prompt": "Translate: cheese", "response": " fromage"}     one example per line

Each example becomes one sequence `prompt + response (+ EOS)`, right-padded or cut to
data.seq_len + 1 tokens. The loss is gptjax/training/loss.py's cross-entropy with a weight of 1
where the predicted token belongs to the response and 0 on prompt and padding, so the model is never
trained to reproduce prompts.

The run starts from `finetune.init_from`: a gptjax workdir (its model config, tokenizer and
newest params) or `hf:PATH` (Hugging Face GPT-2 weights; prompts are then tokenized with the
tokenizer.json next to them). It runs through the training loop (gptjax/training/train.py), so it
resumes after a crash or SIGTERM, skips non-finite steps, and writes an ordinary workdir
(config.json, tokenizer, checkpoints/<step>/, metrics.jsonl, TensorBoard events, loss.png) that
`gptjax sample` / `eval` / `convert export` read.
"""

from __future__ import annotations

import copy
import json
import os

import jax
import numpy as np

from gptjax.errors import UserError
from gptjax.inference import hf_gpt2
from gptjax.model.gpt import GPTConfig
from gptjax.parallel import sharding
from gptjax.training.recipes import RunData
from gptjax.training.state import state_from_params
from gptjax.workdir import open_run, save_tokenizer

# ----------------------------------------------------------------------------- data


def read_jsonl(path: str, prompt_key: str, response_key: str) -> list[tuple[str, str]]:
    if not os.path.isfile(path):
        raise UserError(f"fine-tuning file {path!r} does not exist")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pairs.append((str(row[prompt_key]), str(row[response_key])))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise UserError(f"{path}:{n}: expected a JSON object with {prompt_key!r} and "
                                f"{response_key!r} ({type(e).__name__}: {e})") from None
    if not pairs:
        raise UserError(f"{path} holds no examples")
    return pairs


def encode_example(tokenizer, prompt: str, response: str, seq_len: int, add_eos: bool):
    """-> (inputs [T], targets [T], weights [T]); weight 1 exactly on response targets.

    Too long: the prompt loses tokens from its start (the end of a prompt matters most), then
    the response is cut at the end."""
    p = list(tokenizer.encode(prompt))
    r = list(tokenizer.encode(response))
    if add_eos and tokenizer.eos_id is not None:
        r.append(int(tokenizer.eos_id))
    if not p or not r:
        raise UserError("every example needs a non-empty prompt and response")
    room = seq_len + 1
    if len(p) + len(r) > room:
        p = p[-max(1, room - len(r)):]
        r = r[:room - len(p)]
    seq = np.zeros(room, np.int32)
    seq[:len(p) + len(r)] = p + r
    weights = np.zeros(seq_len, np.float32)
    # targets[t] = seq[t + 1]: the response tokens are targets len(p)-1 ... len(p)+len(r)-2.
    weights[len(p) - 1:len(p) + len(r) - 1] = 1.0
    return seq[:-1], seq[1:], weights


def encode_all(tokenizer, pairs, seq_len: int, add_eos: bool) -> dict:
    rows = [encode_example(tokenizer, p, r, seq_len, add_eos) for p, r in pairs]
    return {k: np.stack([row[i] for row in rows]) for i, k in
            enumerate(("inputs", "targets", "weights"))}


class ExampleBatches:
    """Shuffled full batches of encoded examples, epoch after epoch, resumable.

    Each process yields the rows of every global batch that its devices hold (`rows`:
    gptjax.parallel.sharding.host_rows)."""

    def __init__(self, data: dict, batch_size: int, seed: int, rows):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.epoch, self.index = 0, 0
        self.rows = rows

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        n = len(self.data["inputs"])
        if (self.index + 1) * self.batch_size > n:
            self.epoch, self.index = self.epoch + 1, 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        idx = order[self.index * self.batch_size:(self.index + 1) * self.batch_size][self.rows]
        self.index += 1
        return {k: v[idx] for k, v in self.data.items()}

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def set_state(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def eval_batches(data: dict | None, batch_size: int, mesh) -> list:
    """The held-out examples as global batches whose rows split over the data-parallel axes."""
    if data is None:
        return []
    shards = sharding.axis_size(mesh, sharding.BATCH_AXES)
    n = len(data["inputs"]) // shards * shards
    if n == 0:
        raise UserError(f"{len(data['inputs'])} eval examples do not split over the {shards} "
                        f"data-parallel devices; add eval examples")
    size = max(shards, batch_size // shards * shards)
    rows = sharding.host_rows(mesh, size)
    return [sharding.global_batch({k: v[i + rows] for k, v in data.items()}, mesh, size)
            for i in range(0, n - size + 1, size)]


# ----------------------------------------------------------------------------- the recipe


def load_start(config, mesh):
    """-> (model config section, data config section or None, params on `mesh`, tokenizer)
    of finetune.init_from."""
    source = config.finetune.init_from
    if not source:
        raise UserError("config.finetune.init_from is empty: give a pretrained gptjax workdir "
                        "or hf:PATH")
    if source.startswith("hf:"):
        hf_config, state = hf_gpt2.load_hf(source[3:])
        model_cfg = copy.deepcopy(config.model)
        model_cfg.update(hf_gpt2.config_from_hf(hf_config, int(config.model.vocab_multiple)))
        params = hf_gpt2.hf_to_params(state, GPTConfig.from_config(model_cfg))
        return model_cfg, None, params, hf_gpt2.hf_tokenizer(source[3:])
    pre_config, params, tokenizer, _ = open_run(source, mesh=mesh)
    return pre_config.model, pre_config.data, params, tokenizer


def _examples(ft, tokenizer, seq_len: int, batch_size: int):
    train_pairs = read_jsonl(ft.train_file, ft.prompt_key, ft.response_key)
    if ft.eval_file:
        eval_pairs = read_jsonl(ft.eval_file, ft.prompt_key, ft.response_key)
    else:
        n_eval = max(1, int(len(train_pairs) * ft.eval_fraction)) if ft.eval_fraction > 0 else 0
        eval_pairs, train_pairs = train_pairs[:n_eval], train_pairs[n_eval:]
    if len(train_pairs) < batch_size:
        raise UserError(f"{len(train_pairs)} training examples do not fill one batch of "
                        f"train.batch_size={batch_size}; lower the batch size")
    return (encode_all(tokenizer, train_pairs, seq_len, ft.add_eos),
            encode_all(tokenizer, eval_pairs, seq_len, ft.add_eos) if eval_pairs else None)


class Finetuning:
    """Response-weighted next-token loss on `config.finetune`'s JSONL, from init_from."""

    def prepare(self, config, workdir: str, mesh) -> RunData:
        model_cfg, data_cfg, params, tokenizer = load_start(config, mesh)
        # The run keeps the start's data section (how its tokenizer is made) so that
        # `open_run` rebuilds the same tokenizer; only seq_len is the fine-tuning one.
        seq_len = min(int(config.data.seq_len), int(model_cfg.max_seq_len))
        config.model = copy.deepcopy(model_cfg)
        if data_cfg is not None:
            config.data = copy.deepcopy(data_cfg)
        else:
            config.data.tokenizer.kind = "hf"  # HF start: the saved hf_tokenizer.json
        config.data.seq_len = seq_len
        sharding.check_config(config, mesh)
        tr = config.train
        train_data, eval_data = _examples(config.finetune, tokenizer, seq_len, tr.batch_size)
        if jax.process_index() == 0:
            save_tokenizer(workdir, tokenizer)
        n = len(train_data["inputs"])
        return RunData(
            config, tokenizer, ExampleBatches(train_data, tr.batch_size, int(tr.seed),
                                              sharding.host_rows(mesh, tr.batch_size)),
            lambda: eval_batches(eval_data, tr.batch_size, mesh),
            lambda cfg, mesh, model, tx, sh: state_from_params(cfg, mesh, params, tx, sh),
            describe=f" (fine-tuning on {n} examples from {config.finetune.init_from})",
            eval_first=True)
