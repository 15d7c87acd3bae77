"""Orbax checkpoints of a workdir: `WORKDIR/checkpoints/<step>/{state,config,data}`.

One checkpoint holds
  state   the train state (step, params, Adam state, rng, skipped counter), every leaf a global
          jax.Array, written shard by shard by the processes that own it (StandardSave);
  config  the full config the run used (JSON, primary process);
  data    each process's input-iterator position, `data/process_<i>.json`, written by that
          process itself (each host reads a different part of the data).
Saves are asynchronous: the step loop goes on while Orbax writes. A save is committed only when
every process has finished: on a local disk by renaming its temporary directory (an interrupted
save leaves a `<step>.orbax-checkpoint-tmp-*` directory), on `gs://` by writing
`<step>/commit_success.txt` last (a bucket has no rename); `latest_step` never returns an
uncommitted step. The workdir may be any path `gptjax.storage.paths` takes, a bucket URL included.
What else a workdir holds, and how a run is opened for inference, is gptjax/workdir.py's.

Integrity (docs/faults.md): every checkpoint holds `gptjax_manifest.json`, the size and CRC32C
of each of its files, written by the primary process once every process has written its part and
*before* Orbax commits the step (Orbax's post-finalization callback), so a committed checkpoint
always has its manifest. `verify(step)` reads the files back against it (each process a share);
a corrupt one is moved aside, never deleted (`move_aside`: WORKDIR/checkpoints_corrupt/).

Restoring takes the *target* shardings, so a run written on 8 devices restores on 1 (or on any
other mesh): Orbax reads each target shard from whichever files hold it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from gptjax.errors import UserError
from gptjax.storage import integrity, paths
from gptjax.storage.integrity import IntegrityError

# What a failing write raises: OSError (ENOSPC, EACCES, EROFS, ...), tensorstore's ValueError
# ("RESOURCE_EXHAUSTED: ... No space left on device"), RuntimeError from Orbax's threads.
_WRITE_ERRORS = (OSError, ValueError, RuntimeError)
# What a corrupt checkpoint raises when read: tensorstore's ValueError ("Data corruption
# detected"), json's JSONDecodeError (a ValueError), a missing file, Orbax's bare Exception
# ("Encountered error while reading array index").
_READ_ERRORS = (Exception,)
TMP_MARK = ".orbax-checkpoint-tmp"
CORRUPT_DIR = "checkpoints_corrupt"
# Rewritten (commit time) or written by the commit itself, after the manifest.
NOT_IN_MANIFEST = ("_CHECKPOINT_METADATA", "commit_success.txt")


def checkpoint_dir(workdir: str) -> str:
    return paths.join(paths.resolve(workdir), "checkpoints")


def _data_handler() -> ocp.JsonCheckpointHandler:
    # primary_host=None: every process writes (and reads) its own file.
    opts = ocp.options.MultiprocessingOptions(primary_host=None)
    return ocp.JsonCheckpointHandler(filename=f"process_{jax.process_index()}.json",
                                     multiprocessing_options=opts)


@contextlib.contextmanager
def _quiet_absl():
    """Orbax warns on every read-only open ("Given directory is read only"): not news here."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class Checkpointer:
    """A thin CheckpointManager: interval saves, keep policy, latest complete step, restore."""

    def __init__(self, workdir: str, keep: int = 3, keep_every: int = 0,
                 async_save: bool = True, read_only: bool = False, pytree: bool = False,
                 manifest: bool = True):
        self.workdir, self.directory = paths.resolve(workdir), checkpoint_dir(workdir)
        self.async_save, self._saving = bool(async_save), None
        self.manifest, self.manifest_s = bool(manifest), 0.0  # off only to measure its cost
        if read_only:  # the settings Orbax would otherwise override with a warning each
            options = ocp.CheckpointManagerOptions(max_to_keep=None, save_interval_steps=0,
                                                   create=False, read_only=True)
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max(int(keep), 1) if keep else None,
                keep_period=int(keep_every) if keep_every else None,
                # always Orbax's async path, whose commit callback writes the manifest; a
                # synchronous save waits for it (save)
                enable_async_checkpointing=True,
                async_options=ocp.AsyncOptions(post_finalization_callback=self._write_manifest),
                # reliability (tests/test_faults.py): delete leftovers of crashed saves
                # (`<step>.orbax-checkpoint-tmp*`) at start; they are never restored anyway.
                cleanup_tmp_directories=True,
                create=True)
        if read_only and not paths.isdir(self.directory):
            raise UserError(f"no checkpoints in {workdir}: expected {self.directory}/<step>/ "
                            f"(train first with `gptjax train --workdir {workdir}`)")
        with _quiet_absl():
            self.manager = ocp.CheckpointManager(
                self.directory, options=options,
                # pytree=True reads the same files with the handler that can restore a subtree.
                item_handlers={"state": (ocp.PyTreeCheckpointHandler() if pytree
                                         else ocp.StandardCheckpointHandler()),
                               "config": ocp.JsonCheckpointHandler(),
                               "data": _data_handler()})

    @classmethod
    def from_config(cls, workdir: str, config, read_only: bool = False) -> Checkpointer:
        tr = config.train
        return cls(workdir, keep=tr.keep_checkpoints, keep_every=tr.keep_every,
                   async_save=tr.async_checkpoint, read_only=read_only)

    def latest_step(self) -> int | None:
        self.manager.reload()
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        self.manager.reload()
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict, config_dict: dict,
             force: bool = True) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  config=ocp.args.JsonSave(config_dict),
                                  data=ocp.args.JsonSave(data_state))
        try:
            self.manager.wait_until_finished()  # the manifest callback reads self._saving
            self._saving = int(step)
            saved = self.manager.save(int(step), args=args, force=force)
            if not self.async_save:
                self.manager.wait_until_finished()
            return saved
        except _WRITE_ERRORS as e:  # also a failed *earlier* async save, surfacing here
            raise self._write_failed(e) from None

    def step_dir(self, step: int) -> str:
        return paths.join(self.directory, str(int(step)))

    def _write_manifest(self) -> None:
        """Orbax's commit callback (primary process, every process's files written): the
        manifest goes into the step's not yet committed directory (`<step>.orbax-checkpoint-tmp*`
        locally; on a bucket `<step>/` itself, committed by a marker object written next)."""
        if not self.manifest:
            return
        t0 = time.perf_counter()
        step = self._saving
        tmp = [n for n in paths.listdir(self.directory) if n.startswith(f"{step}{TMP_MARK}")]
        where = paths.join(self.directory, tmp[-1]) if tmp else self.step_dir(step)
        integrity.write_manifest(where, exclude=NOT_IN_MANIFEST)
        self.manifest_s += time.perf_counter() - t0

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except _WRITE_ERRORS as e:
            raise self._write_failed(e) from None

    def close(self) -> None:
        self.wait()
        self.manager.close()

    def _write_failed(self, e: BaseException) -> UserError:
        """Disk full, permissions, ... -> one line (reliability, tests/test_faults.py).

        Orbax commits a checkpoint only once it is complete, so every older one is intact.
        """
        try:
            self.manager.wait_until_finished()  # an earlier save may still be in flight
        except Exception:  # it failed too: the message still names the newest complete one
            pass
        try:
            kept = self.latest_step()
        except Exception:  # only for the message
            kept = None
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return UserError(f"could not write a checkpoint in {self.directory}: {detail}; the "
                         f"newest complete checkpoint (step {kept}) is kept: fix the storage "
                         f"and rerun the same command to resume")

    def state_metadata(self, step: int):
        """Tree of the saved arrays' metadata (shape, dtype), read without loading them."""
        with self.reading(step):
            meta = self.manager.item_metadata(step)
        tree = meta["state"] if meta is not None else None
        tree = getattr(tree, "tree", tree)
        if tree is None:
            raise UserError(f"checkpoint {self.directory}/{step} has no readable state")
        return tree

    def restore_config(self, step: int) -> dict:
        with self.reading(step):
            out = self.manager.restore(step,
                                       args=ocp.args.Composite(config=ocp.args.JsonRestore()))
            return dict(out["config"])

    @contextlib.contextmanager
    def reading(self, step: int):
        """A checkpoint that cannot be decoded -> one IntegrityError (not moved aside: only a
        manifest mismatch proves corruption; this may be the reader's problem)."""
        try:
            yield
        except UserError:
            raise
        except _READ_ERRORS as e:
            raise IntegrityError(f"checkpoint {self.step_dir(step)} cannot be read: "
                                 f"{type(e).__name__}: {paths.first_line(e)}") from None

    def has_manifest(self, step: int) -> bool:
        return paths.isfile(paths.join(self.step_dir(step), integrity.MANIFEST))

    def verify(self, step: int) -> str:
        """Reads every file of checkpoint `step` against its manifest (each process a share of
        them, the verdict agreed by all) -> "verified", or "no manifest" for a checkpoint of a
        gptjax from before manifests; raises IntegrityError naming the checkpoint and file."""
        where = self.step_dir(step)
        what = f"checkpoint {where}"
        manifest = integrity.read_manifest(where, what)
        if manifest is None:
            if any(self.has_manifest(s) for s in self.all_steps() if s < step):
                raise IntegrityError(f"{what} is incomplete: it has no {integrity.MANIFEST} "
                                     f"but older checkpoints have one (a partial copy?)")
            return "no manifest"
        names = sorted(manifest["files"])
        n, i = jax.process_count(), jax.process_index()
        found = integrity.first_problem(where, manifest, names[i::n])
        bad = i + n * found[0] if found else len(names)
        if n > 1:
            bad = int(np.min(multihost_utils.process_allgather(np.int64(bad))))
        if bad < len(names):
            detail = (integrity.problem(where, names[bad], manifest["files"][names[bad]])
                      or f"{names[bad]} did not match its manifest when read by another process")
            raise IntegrityError(f"{what} is corrupt: {detail}")
        return "verified"

    def move_aside(self, step: int) -> str:
        """Moves checkpoint `step` to WORKDIR/checkpoints_corrupt/<step>-<UTC time> (the primary
        process; the others wait) -> its new place. Nothing is deleted."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dst = paths.join(self.workdir, CORRUPT_DIR, f"{int(step)}-{stamp}")
        if jax.process_index() == 0:
            paths.move_tree(self.step_dir(step), dst)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"gptjax-move-aside-{step}")
        self.manager.reload()
        return dst

    def restore(self, step: int, abstract_state, with_data: bool = True):
        """-> (state, data_state or None). `abstract_state`: ShapeDtypeStructs with shardings."""
        check_compatible(self.state_metadata(step), abstract_state, f"{self.directory}/{step}")
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if with_data:
            items["data"] = ocp.args.JsonRestore()
        with self.reading(step):
            try:
                out = self.manager.restore(step, args=ocp.args.Composite(**items))
            except FileNotFoundError as e:
                if with_data:
                    raise UserError(f"checkpoint {self.directory}/{step} has no input "
                                    f"position for process {jax.process_index()} (was it "
                                    f"written with a different number of processes?): "
                                    f"{e}") from None
                raise
        return out["state"], (dict(out["data"]) if with_data else None)


def _keystr(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _flatten_dict_tree(tree) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))[0]
    return {_keystr(p): v for p, v in leaves}


def check_compatible(saved_meta, abstract_state, where: str) -> None:
    """Same parameter names and shapes as the target, or a UserError naming the first mismatch."""
    saved = _flatten_dict_tree(saved_meta)
    target = _flatten_dict_tree(abstract_state)
    for name, leaf in target.items():
        if name not in saved:
            raise UserError(f"checkpoint {where} has no {name!r}: it was written by a different "
                            f"model config (e.g. scan_layers, use_bias, tie_embeddings); use a "
                            f"new --workdir or the config it was trained with")
        s_shape = tuple(getattr(saved[name], "shape", ()) or ())
        if s_shape != tuple(leaf.shape):
            raise UserError(f"checkpoint {where}: {name!r} has shape {s_shape} but this config "
                            f"needs {tuple(leaf.shape)}; use a new --workdir or the config it "
                            f"was trained with")
    extra = sorted(set(saved) - set(target))
    if extra:
        raise UserError(f"checkpoint {where} holds {extra[0]!r}, which this config does not "
                        f"have; use a new --workdir or the config it was trained with")


def all_finite(tree) -> bool:
    """True when every floating leaf is finite (one small device->host transfer)."""
    leaves = [x for x in jax.tree.leaves(tree)
              if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)]
    if not leaves:
        return True
    return bool(np.asarray(_all_finite(leaves)))


@jax.jit
def _all_finite(leaves):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


# ----------------------------------------------------------------------------- inventory


def _saved_at(step_dir: str) -> float | None:
    try:
        meta = json.loads(paths.read_text(paths.join(step_dir, "_CHECKPOINT_METADATA")))
        ns = meta.get("commit_timestamp_nsecs") or meta.get("init_timestamp_nsecs")
        return ns / 1e9 if ns else None
    except (OSError, ValueError, AttributeError):
        return None


def _size(directory: str) -> int:
    return sum(paths.getsize(paths.join(directory, *f.split("/")))
               for f in paths.walk_files(directory))


def inventory(workdir: str, verify: bool = False) -> list[dict]:
    """Every checkpoint of `workdir`, oldest first: {step, time (s since the epoch or None),
    size (bytes), state, detail}. state: verified | corrupt | unchecked (has a manifest, not
    read: verify=False) | no manifest (written before gptjax wrote them) | incomplete (never
    committed: a crashed save, or a commit marker missing on a bucket)."""
    ckpt = Checkpointer(workdir, read_only=True)
    committed = set(ckpt.all_steps())
    rows = []
    for name in paths.listdir(ckpt.directory):
        step_name = name.split(TMP_MARK)[0]
        if not step_name.isdigit():
            continue
        where = paths.join(ckpt.directory, name)
        row = {"step": int(step_name), "path": where, "time": _saved_at(where),
               "size": _size(where), "detail": ""}
        if TMP_MARK in name or int(step_name) not in committed:
            row.update(state="incomplete", detail="never committed (a crashed or unfinished "
                                                  "save); never restored")
        elif not verify:
            row["state"] = "unchecked" if ckpt.has_manifest(int(name)) else "no manifest"
        else:
            try:
                row["state"] = ckpt.verify(int(name))
            except IntegrityError as e:
                row.update(state="corrupt", detail=str(e).split(" is corrupt: ", 1)[-1])
        rows.append(row)
    ckpt.close()
    return sorted(rows, key=lambda r: (r["step"], r["state"] != "incomplete"))


def moved_aside(workdir: str) -> list[str]:
    """What `move_aside` put in WORKDIR/checkpoints_corrupt/."""
    return paths.listdir(paths.join(paths.resolve(workdir), CORRUPT_DIR))
