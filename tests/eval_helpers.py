"""Small char-level models for the evaluation tests (scoring, tasks, harness): random weights
with a large init, so predictions are peaked rather than uniform; seconds to build."""

import jax

from gptjax.config.loader import get_config
from gptjax.data.tokenizer import CharTokenizer
from gptjax.evaluation import scoring
from gptjax.parallel import sharding
from gptjax.training import state
from gptjax.workdir import write_params


def tiny_config(text: str, window: int, text_file: str = "", **model):
    tok = CharTokenizer(sorted(set(text)), eos=False)
    overrides = {"vocab_size": tok.vocab_size, "max_seq_len": window, "init_std": 0.5,
                 "d_model": 32, "head_dim": 16, **model}
    config = get_config("configs/smoke.py:tiny", [f"--config.model.{k}={v}"
                                                  for k, v in overrides.items()])
    config.data.seq_len = window
    if text_file:
        config.data.source, config.data.files = "files", text_file
    return config, tok


def tiny_scorer(text: str, window: int, single_device: bool = False, batch_size: int = 16,
                **model):
    config, tok = tiny_config(text, window, **model)
    mesh = sharding.single_device_mesh() if single_device else sharding.make_mesh(config.mesh)
    params = state.create_train_state(config, mesh).params
    return scoring.Scorer(config, params, tok, mesh, batch_size)


def tiny_workdir(path: str, text_file: str, window: int = 32) -> str:
    """A workdir (config.json, tokenizer, step-0 params) that every gptjax command loads."""
    with open(text_file) as f:
        config, tok = tiny_config(f.read(), window, text_file)
    mesh = sharding.single_device_mesh()
    params = jax.device_get(state.create_train_state(config, mesh).params)
    write_params(path, config, params)
    tok.save(path)
    return path
