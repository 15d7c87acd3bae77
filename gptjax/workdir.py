"""A workdir: the one directory that holds a run, local or a bucket URL.

    WORKDIR/config.json        the run's final config (`write_config` / `read_config`)
    WORKDIR/checkpoints/<step> Orbax checkpoints (gptjax/storage/checkpoint.py)
    WORKDIR/<tokenizer files>  the run's tokenizer, beside config.json (`save_tokenizer`)
    WORKDIR/quantized.npz      instead of checkpoints/, in a `gptjax quantize` output
    WORKDIR/metrics.jsonl      training metrics (gptjax/metrics/writer.py), loss.png
    WORKDIR/gptjax_manifest.json  size + CRC32C of config.json, the tokenizer, quantized.npz
                               (gptjax/storage/integrity.py), checked when they are read

This module is how every command opens one: `open_run` for sampling, evaluation, compression
and conversion (config, params, tokenizer, step), `prepare_workdir` and `write_config` for a run
that trains in it, `start_derived`, `write_derived` and `write_params` for a run made from
another (pruned, trimmed, quantized, imported), and `storage_errors` for the one line a full or
read-only disk becomes.
"""

from __future__ import annotations

import errno
import json
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp

from gptjax import data
from gptjax.config.defaults import base_config
from gptjax.config.loader import from_dict
from gptjax.data.store import cache_root
from gptjax.data.tokenizer import save_checked
from gptjax.errors import UserError
from gptjax.model.gpt import GPTConfig
from gptjax.parallel import sharding
from gptjax.parallel.params import abstract_params, param_shardings, with_shardings
from gptjax.storage import checkpoint, integrity, paths, quantized
from gptjax.storage.checkpoint import Checkpointer

CONFIG_FILE = "config.json"


class Run(NamedTuple):
    """A trained run as inference needs it."""
    config: Any
    params: Any
    tokenizer: Any
    step: int


def prepare_workdir(workdir: str, flag: str = "--workdir") -> str:
    """The resolved workdir (local or a bucket URL), checked to be writable now."""
    return paths.prepare_dir(workdir, flag)


def write_config(workdir: str, config) -> dict:
    """Writes the run's final config to `WORKDIR/config.json` (primary process); -> its dict."""
    config_dict = config.to_dict()
    if jax.process_index() == 0:
        paths.write_text(paths.join(workdir, CONFIG_FILE), json.dumps(config_dict, indent=2))
        integrity.update_manifest(workdir, [CONFIG_FILE])
    return config_dict


def has_run(workdir: str) -> bool:
    return paths.isfile(paths.join(workdir, CONFIG_FILE))


def read_config(workdir: str):
    """The run's final config (`WORKDIR/config.json`) as a ConfigDict; keys added to gptjax
    since the run was made take their defaults (gptjax/config/defaults.py)."""
    path = paths.join(workdir, CONFIG_FILE)
    if paths.isfile(workdir):
        raise UserError(f"--workdir {workdir} is a file, not a directory")
    if not paths.isfile(path):
        raise UserError(f"{path} not found: is {workdir} a gptjax workdir? "
                        f"(train first with `gptjax train --config ... --workdir {workdir}`)")
    integrity.verify(workdir, f"workdir {workdir}", names=[CONFIG_FILE])  # when listed
    try:
        saved = json.loads(paths.read_text(path))
        if not isinstance(saved, dict):
            raise ValueError(f"a JSON {type(saved).__name__}, not an object")
    except (ValueError, UnicodeDecodeError) as e:
        raise integrity.IntegrityError(f"{path} is not a readable config ({e})") from None
    return from_dict(_with_defaults(saved, base_config().to_dict()))


def _with_defaults(saved: dict, defaults: dict) -> dict:
    for key, value in defaults.items():
        if key not in saved:
            saved[key] = value
        elif isinstance(value, dict) and isinstance(saved[key], dict):
            _with_defaults(saved[key], value)
    return saved


def save_tokenizer(workdir: str, tokenizer) -> None:
    """Saves a tokenizer that has files (character, SentencePiece, HF, ...) beside config.json;
    `data.make_tokenizer(config, workdir)` reloads it from there."""
    if hasattr(tokenizer, "save"):
        save_checked(tokenizer, workdir)


def load_params(workdir: str, config, mesh=None, step: int | None = None):
    """Params of the newest (or given) complete checkpoint, unboxed, sharded per `mesh`.

    mesh=None puts every parameter whole on one device. Only the params are read from disk.
    """
    ckpt = Checkpointer(workdir, read_only=True, pytree=True)
    step = ckpt.latest_step() if step is None else int(step)
    if step is None:
        raise UserError(f"no complete checkpoint in {ckpt.directory}")
    if step not in ckpt.all_steps():
        raise UserError(f"no checkpoint for step {step} in {ckpt.directory}; "
                        f"have {ckpt.all_steps()}")
    if config.train.get("verify_restore", True):
        _verify(ckpt, step)
    if mesh is None:
        mesh = sharding.single_device_mesh()
    c = GPTConfig.from_config(config.model)
    shardings = param_shardings(config, mesh, c)
    abstract = abstract_params(c, config.data.seq_len)
    sharding.check_shardable(abstract, shardings, "parameter")
    target = with_shardings(abstract, shardings)
    saved = ckpt.state_metadata(step)
    saved_params = saved["params"] if isinstance(saved, dict) else saved.params
    checkpoint.check_compatible(saved_params, target, f"{ckpt.directory}/{step}")
    # Restore only the params subtree: a partial restore of the saved state.
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    with ckpt.reading(step):
        out = ckpt.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item={"params": target}, restore_args={"params": restore_args},
            partial_restore=True)))
    ckpt.close()
    return out["state"]["params"], step


def _verify(ckpt, step: int) -> None:
    try:
        ckpt.verify(step)
    except integrity.IntegrityError as e:
        older = [s for s in ckpt.all_steps() if s < step]
        hint = (f"; older checkpoints ({', '.join(map(str, older))}) can be chosen with --step "
                f"(sample, eval, evaluate-tasks, quantize)" if older else "")
        raise integrity.IntegrityError(f"{e}{hint} (`gptjax checkpoints --workdir "
                                       f"{ckpt.workdir} --verify` lists them)") from None


def open_run(workdir: str, mesh=None, step: int | None = None, config=None) -> Run:
    """-> (config, params, tokenizer, step) of a trained workdir: sample, eval, convert, ...

    `config`: the workdir's config with the caller's overrides applied (default: as saved)."""
    config = read_config(workdir) if config is None else config
    integrity.verify(workdir, f"workdir {workdir}")  # config, tokenizer, quantized.npz
    tokenizer = data.make_tokenizer(config, workdir)
    if tokenizer.vocab_size != config.model.vocab_size:
        raise UserError(f"tokenizer in {workdir} has {tokenizer.vocab_size} tokens but the "
                        f"checkpoint's config.model.vocab_size is {config.model.vocab_size}")
    if quantized.exists(workdir):  # `gptjax quantize` output: no float checkpoint
        params, info = quantized.load(workdir)
        return Run(config, params, tokenizer, int(info.get("step", 0)))
    params, step = load_params(workdir, config, mesh=mesh, step=step)
    return Run(config, params, tokenizer, step)


# ----------------------------------------------------------------------------- derived runs


def start_derived(out: str, config, tokenizer, source: str | None = None) -> str:
    """Creates `out` (which must hold no run yet) with config.json and the tokenizer; its data
    cache is the source run's (the tokenized splits are reused, not tokenized again)."""
    out = prepare_workdir(out)
    if has_run(out):
        raise UserError(f"--out {out} already holds a run; choose a new directory")
    if source and not config.data.cache_dir:
        config.data.cache_dir = cache_root(config, source)
    write_config(out, config)
    save_tokenizer(out, tokenizer)
    return out


def source_data_state(workdir: str, step: int) -> dict:
    """The input position saved with `workdir`'s checkpoint `step` (this process's)."""
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        out = ckpt.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
        return dict(out["data"])
    except FileNotFoundError:
        return {}
    finally:
        ckpt.close()


def write_checkpoint(workdir: str, config, state, step: int = 0, data_state=None,
                     keep: int = 0) -> None:
    """One synchronous checkpoint of `state` (a TrainState, or {"params": params}) at `step`."""
    ckpt = Checkpointer(workdir, keep=keep, async_save=False)
    ckpt.save(step, state, data_state or {}, config.to_dict())
    ckpt.close()


def write_derived(out: str, config, tokenizer, state, source: str | None = None,
                  step: int = 0) -> str:
    """A model made from `source` (pruned, trimmed, ...) as a new workdir `out`: config.json,
    tokenizer and one checkpoint of `state` at `step`, which carries on `source`'s input position
    (a recovery fine-tune reads on where the source stopped). -> the resolved `out`."""
    out = start_derived(out, config, tokenizer, source)
    write_checkpoint(out, config, state, step, source_data_state(source, step) if source else {})
    return out


def write_params(workdir: str, config, params, step: int = 0) -> str:
    """A workdir that `open_run` reads: config.json + checkpoints/<step>/ holding only the params
    (a train run would start its optimizer afresh from them); a local directory or a bucket URL.
    """
    workdir = paths.prepare_dir(workdir)
    write_config(workdir, config)
    write_checkpoint(workdir, config, {"params": params}, step, keep=1)
    return workdir


def storage_errors(fn, workdir: str):
    """Runs fn(); a full / read-only disk becomes one line (tests/test_faults.py)."""
    try:
        return fn()
    except OSError as e:
        local_error = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                  errno.EPERM)
        if not (local_error or paths.is_url(workdir)):  # a bucket: gcsfs's HTTP errors
            raise
        raise UserError(f"cannot write in --workdir {workdir}: {paths.first_line(e)}; its "
                        f"checkpoints are unchanged: fix the storage and rerun the same "
                        f"command") from None
