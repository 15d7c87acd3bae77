"""gs:// workdirs against a real GCS server: gcp-storage-emulator on 127.0.0.1, started by the
`gcs` fixture (tests/gcs_emulator.py, tests/gcs_helpers.py).

Train with a gs:// workdir, kill -9 inside a checkpoint save, resume bit-identically, restore
on another mesh, eval, sample and plot from the bucket; two processes sharing a gs:// workdir
(data prepared once, preemption timed); a missing bucket and a 403 as one line at start; a
token store in a bucket.
None of these can pass with local paths in disguise: every run starts in an empty directory
with HOME in the test's tmp dir, the tests read what they check over the emulator's own HTTP
API (not through gcsfs / tensorstore, the clients under test), and they assert that nothing
of the workdir is on the local disk.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from gptjax.workdir import load_params, read_config

# Not imported here: gcsfs reads its settings from the environment the `gcs` fixture sets.
if not all(importlib.util.find_spec(m) for m in ("gcsfs", "gcp_storage_emulator")):
    pytest.skip("needs gcsfs and gcp-storage-emulator: pip install -e '.[gcs-test]'",
                allow_module_level=True)

from fault_helpers import (  # noqa: E402
    REPO,
    RUN_TIMEOUT,
    STEPS,
    TINY,
    file_has,
    killed_on_exit,
    output,
    subprocess_env,
    train_cmd,
    wait_for,
)
from gcs_helpers import (  # noqa: E402
    BUCKET,
    DENIED,
    MISSING,
    Emulator,
    children,
    committed_steps,
    local_files,
    read_losses,
    restore_env,
    set_env,
    step_objects,
)


@pytest.fixture(scope="module")
def gcs():
    import fsspec.config

    emulator = Emulator()
    old = set_env(emulator.env())   # in-process reads (Orbax restores, gptjax eval / sample)
    gs_conf = fsspec.config.conf.setdefault("gs", {})
    gs_conf["token"] = "anon"       # fsspec read $FSSPEC_GS_TOKEN at import, maybe earlier
    try:
        yield emulator
    finally:
        gs_conf.pop("token", None)
        restore_env(old)
        emulator.stop()


def _env(gcs, home, fault=None, marker=None) -> dict:
    return subprocess_env(fault, marker, extra={**gcs.env(), "HOME": str(home)})


def _state(workdir: str, step: int) -> dict[str, np.ndarray]:
    """Every array of a checkpoint's train state, restored onto one device."""
    import jax

    from gptjax.parallel import sharding
    from gptjax.parallel.params import with_shardings
    from gptjax.storage import checkpoint
    from gptjax.training.state import abstract_train_state

    abstract, shardings = abstract_train_state(read_config(workdir),
                                               sharding.single_device_mesh())
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
    state, _ = ckpt.restore(step, with_shardings(abstract, shardings), with_data=False)
    ckpt.close()
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(state)[0]}


@pytest.fixture(scope="module")
def trained(gcs, tmp_path_factory):
    """An uninterrupted reference run, and a run killed -9 inside the save of step 8 (files
    written, commit pending) and then resumed: both in the bucket, each run in an empty cwd."""
    root = tmp_path_factory.mktemp("gcs")
    cwd, home = root / "cwd", root / "home"
    cwd.mkdir()
    home.mkdir()
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    ref, run = f"gs://{BUCKET}/{prefix}/reference", f"gs://{BUCKET}/{prefix}/run"
    reference = subprocess.Popen(train_cmd(ref), cwd=cwd, env=_env(gcs, home),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marker = root / "paused"
    killed = subprocess.Popen(train_cmd(run), cwd=cwd,
                              env=_env(gcs, home, "pause_in_save:8", marker),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with killed_on_exit(killed):
        wait_for(marker.is_file, killed, what="the save of step 8 to pause")
        at_kill = {"committed": committed_steps(gcs, f"{prefix}/run"),
                   "step8": step_objects(gcs, f"{prefix}/run", 8)}
    # killed here (SIGKILL), with the save of step 8 written but not committed
    ref_out, _ = reference.communicate(timeout=RUN_TIMEOUT)
    assert reference.returncode == 0, ref_out
    resumed = subprocess.run(train_cmd(run), cwd=cwd, env=_env(gcs, home), capture_output=True,
                             text=True, timeout=RUN_TIMEOUT)
    return {"prefix": prefix, "ref": ref, "run": run, "at_kill": at_kill, "killed": killed,
            "resumed": resumed, "cwd": cwd, "home": home, "root": root}


def test_kill9_inside_a_gcs_save_then_resume_is_bit_identical(gcs, trained):
    p = trained["prefix"]
    assert trained["killed"].returncode == -signal.SIGKILL
    assert trained["at_kill"]["committed"] == [4]
    step8 = trained["at_kill"]["step8"]
    assert any("/state/" in n for n in step8), "the save of step 8 wrote nothing to the bucket"
    assert f"{p}/run/checkpoints/8/commit_success.txt" not in step8   # written, not committed
    resumed = trained["resumed"]
    assert resumed.returncode == 0, output(resumed)
    assert "resumed at step 4" in resumed.stdout, output(resumed)
    assert committed_steps(gcs, f"{p}/run") == [8, 12] == committed_steps(gcs, f"{p}/reference")
    ref_losses, losses = read_losses(gcs, f"{p}/reference"), read_losses(gcs, f"{p}/run")
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses == ref_losses
    ref_state, state = _state(trained["ref"], STEPS), _state(trained["run"], STEPS)
    assert state.keys() == ref_state.keys()
    for name, value in ref_state.items():
        assert np.array_equal(state[name], value), f"{name} differs from the uninterrupted run"


def test_gcs_workdir_is_in_the_bucket_and_not_on_local_disk(gcs, trained):
    p = trained["prefix"]
    names = gcs.objects(f"{p}/run/")
    for expected in ("config.json", "metrics.jsonl", "checkpoints/12/commit_success.txt",
                     "checkpoints/12/data/process_0.json"):
        assert f"{p}/run/{expected}" in names, names
    assert any(n.startswith(f"{p}/run/tb/events.out.tfevents") for n in names), names
    assert not [n for n in names if ".gptjax-write-test" in n]  # the start-up probe is removed
    assert local_files(trained["cwd"], trained["home"]) == []
    assert not list(REPO.glob("gs:*")) and not list(trained["root"].rglob("gs:*"))


def test_eval_sample_plot_and_restore_on_another_mesh_from_the_bucket(gcs, trained, capsys,
                                                                     tmp_path):
    import jax

    from gptjax.cli import main
    from gptjax.metrics import curves
    from gptjax.parallel import sharding

    url, p = trained["run"], trained["prefix"]
    assert main(["eval", "--workdir", url, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == STEPS and np.isfinite(result["loss"])
    assert main(["sample", "--workdir", url, "--max-new-tokens", "4", "--num-samples", "1",
                 "--prompt", "ab"]) == 0
    assert capsys.readouterr().out.strip()
    # compress reads a bucket workdir, but its variants need a local --scratch: one line
    assert main(["compress", "--workdir", url, "--out", str(tmp_path / "report")]) == 2
    assert "needs --scratch DIR" in capsys.readouterr().err
    curves.plot(url)
    assert f"{p}/run/loss.png" in gcs.objects(f"{p}/run/")
    config = read_config(url)
    with config.unlocked():
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    mesh = sharding.make_mesh(config.mesh)
    params, step = load_params(url, config, mesh=mesh)
    assert step == STEPS
    saved = {k: v for k, v in _state(url, STEPS).items() if k.startswith(".params")}
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    assert len(leaves) == len(saved)
    for path, leaf in leaves:
        assert leaf.sharding.mesh.shape == mesh.shape
        name = ".params" + jax.tree_util.keystr(path)
        assert np.array_equal(np.asarray(leaf), saved[name]), name


@pytest.mark.parametrize("bucket,words", [
    (MISSING, f"bucket gs://{MISSING} does not exist"),
    (DENIED, "cannot write there: Forbidden"),
])
def test_missing_bucket_or_permission_error_is_one_line_at_start(gcs, tmp_path, bucket, words):
    url = f"gs://{bucket}/run"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gptjax", "train", *TINY, "--workdir", url],
                          cwd=tmp_path, env=_env(gcs, tmp_path), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, output(proc)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("gptjax: error:")]
    assert len(errors) == 1 and words in errors[0] and url in errors[0], output(proc)
    assert "Traceback" not in proc.stderr and "compiled" not in proc.stdout, output(proc)
    assert MISSING not in gcs.buckets()        # gcsfs would create a missing bucket: not us
    print(f"{bucket}: {elapsed:.1f}s to the error")


def _corpus(path) -> None:
    rng = np.random.default_rng(0)
    words = ["the", "gcs", "bucket", "holds", "every", "shard", "of", "a", "run", "and", "its"]
    lines = [" ".join(rng.choice(words, 12)) for _ in range(1500)]
    path.write_text("\n".join(lines) + "\n")


def test_two_processes_share_a_gcs_workdir_and_stop_on_sigterm(gcs, tmp_path):
    """2 processes x 4 CPU devices, one gs:// workdir, text files: process 0 alone trains the
    tokenizer, each process tokenizes its part of the documents (into the bucket); SIGTERM to
    process 1 only stops both after the same step with a committed checkpoint. Prints the time
    from SIGTERM to the commit."""
    corpus = tmp_path / "corpus.txt"
    _corpus(corpus)
    prefix = f"mp-{uuid.uuid4().hex[:8]}"
    url = f"gs://{BUCKET}/{prefix}"
    cmd = [sys.executable, "launch/multiprocess.py", "-n", "2", "--devices", "4", "--timeout",
           "120", "--", "gptjax", "train", *TINY, "--config.data.source=files",
           f"--config.data.files={corpus}", f"--config.data.data_dir={tmp_path / 'tfds'}",
           "--config.train.steps=100000", "--config.train.ckpt_every=0",
           "--config.train.log_every=10", "--config.train.eval_every=-1", "--workdir", url]
    log = tmp_path / "log.txt"
    env = _env(gcs, tmp_path / "home")
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    with open(log, "w") as f:
        launcher = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    with killed_on_exit(launcher):
        wait_for(file_has(log, "[p0] step 20/"), launcher, what="step 20")
        pids = children(launcher.pid)
        assert sorted(pids) == [0, 1], pids
        t0 = time.monotonic()
        os.kill(pids[1], signal.SIGTERM)          # the preemption notice reaches one host
        t1 = wait_for(lambda: committed_steps(gcs, prefix), launcher, 120,
                      "a committed checkpoint")
        launcher.wait(timeout=RUN_TIMEOUT)
    text = log.read_text()
    assert launcher.returncode == 0, text
    stops = re.findall(r"\[p(\d)\] .*stopped by signal SIGTERM after step (\d+); checkpoint "
                       r"saved in ([\d.]+)s", text)
    assert len(stops) == 1 and stops[0][0] == "0", text   # process 0 reports, once
    step, save_s = int(stops[0][1]), float(stops[0][2])
    assert committed_steps(gcs, prefix) == [step]
    names = gcs.objects(f"{prefix}/")
    for i in (0, 1):
        assert f"{prefix}/checkpoints/{step}/data/process_{i}.json" in names
    assert f"{prefix}/tokenizer.chars.json" in names
    # (one text file is one document: part 0 of 2 is empty, part 1 holds the shards)
    for part in ("part-00000-of-00002.json", "part-00001-of-00002-shard-00000.bin",
                 "part-00001-of-00002.json", "index.json"):
        assert any(n.startswith(f"{prefix}/data/tokens/") and n.endswith(f"/train/{part}")
                   for n in names), names
    assert len(re.findall(r"\[p\d\] gptjax: trained a char tokenizer", text)) == 1, text
    assert "[p0] gptjax: trained a char tokenizer" in text
    for i in (0, 1):        # each process its half of the documents, once
        assert len(re.findall(rf"\[p{i}\] gptjax: tokenized .* split 'train' part {i + 1}/2",
                              text)) == 1, text
    print(f"preemption: SIGTERM to process 1 -> both stopped after step {step}, its checkpoint "
          f"committed in the bucket {t1 - t0:.1f}s after the signal ({t1 - t0 - save_s:.1f}s "
          f"to agree on the step, {save_s:.1f}s to save and commit)")


def test_token_store_in_a_bucket_is_read_in_place(gcs, tmp_path, monkeypatch):
    """A sharded split in gs:// (as the token cache of a gs:// workdir is, or an export there):
    each process reads the windows of its rows by ranged reads, nothing is downloaded whole or
    kept on local disk, and the batches are those of the same store on local disk. A shard
    whose object differs from the index is one line, from the bucket's own checksum."""
    from gptjax import data
    from gptjax.config.loader import get_config
    from gptjax.data.store import TokenStore
    from gptjax.data.tokenizer import CharTokenizer
    from gptjax.errors import UserError
    from gptjax.storage import paths

    monkeypatch.setattr(paths, "REMOTE_CACHE", str(tmp_path / "remote"))
    docs = [f"to be or not to be, that is question {i}\n" * (1 + i % 5) for i in range(60)]
    tok = CharTokenizer(sorted(set("".join(docs))), eos=True)
    prefix = f"shards-{uuid.uuid4().hex[:8]}"
    batches = {}
    for where in (f"gs://{BUCKET}/{prefix}", str(tmp_path / "local")):
        store = TokenStore.create(where, tok, {"source": "test"})
        store.write_split("train", tok, docs, add_eos=True, what="test", shard_tokens=300)
        tok.save(where)
        config = get_config("configs/smoke.py:tiny", [
            "--config.data.source=shards", f"--config.data.shards_dir={where}",
            "--config.data.prefetch=0", "--config.train.batch_size=8"])
        tok2 = data.make_tokenizer(config)
        got, ranges = [], []
        for host in (0, 1):
            it = data.make_train_iter(config, tok2, host, 2)
            got.append(np.concatenate([next(it)["inputs"] for _ in range(5)]))
            ranges.append((it.tokens.ranges_read, it.tokens.bytes_read))
        batches[where.startswith("gs://")] = got
        L = config.data.seq_len
        for n_ranges, n_bytes in ranges:      # 5 batches x 4 rows of windows of L + 1 tokens
            assert 20 <= n_ranges <= 40 and n_bytes == 20 * (L + 1) * 2
    assert all(np.array_equal(a, b) for a, b in zip(batches[True], batches[False], strict=True))
    names = set(gcs.objects(f"{prefix}/"))
    assert f"{prefix}/train/index.json" in names and len(names) > 10
    assert local_files(tmp_path / "remote") == []      # nothing downloaded
    index = json.loads(gcs.read(f"{prefix}/train/index.json"))
    shard = f"gs://{BUCKET}/{prefix}/train/{index['shards'][2]['file']}"
    raw = paths.read_bytes(shard)
    paths.write_bytes(shard, raw[::-1])               # same size, other bytes
    with pytest.raises(UserError, match="has checksum"):
        TokenStore(f"gs://{BUCKET}/{prefix}").tokens("train")


def test_export_import_and_quantize_write_to_the_bucket(gcs, trained, tmp_path, monkeypatch,
                                                         capsys):
    """The other commands that write a workdir or a shards dir: `data export --out gs://`,
    `quantize --out gs://` and `convert import --workdir gs://` put every file in the bucket
    (and those workdirs are read back from it); `sweep` refuses a URL in one line."""
    from gptjax.cli import main
    from gptjax.data.store import TokenStore
    from gptjax.storage import paths

    monkeypatch.setattr(paths, "REMOTE_CACHE", str(tmp_path / "remote"))
    monkeypatch.chdir(tmp_path)
    p = f"cmds-{uuid.uuid4().hex[:8]}"
    corpus = tmp_path / "corpus.txt"
    _corpus(corpus)
    shards = f"gs://{BUCKET}/{p}/shards"
    assert main(["data", "export", "--config", "configs/smoke.py:tiny", "--out", shards,
                 "--config.data.source=files", f"--config.data.files={corpus}"]) == 0
    names = set(gcs.objects(f"{p}/shards/"))
    assert {f"{p}/shards/{n}" for n in ("index.json", "train/index.json",
                                        "validation/index.json", "train/part-00000-of-00001"
                                        "-shard-00000.bin", "tokenizer.chars.json")} <= names, names
    assert TokenStore(shards).splits() == ["train", "validation"]

    quantized = f"gs://{BUCKET}/{p}/int8"
    assert main(["quantize", "--workdir", trained["run"], "--out", quantized]) == 0
    assert f"{p}/int8/quantized.npz" in gcs.objects(f"{p}/int8/")
    assert main(["eval", "--workdir", quantized, "--json"]) == 0
    capsys.readouterr()

    assert main(["sweep", "--config", "configs/scaling.py:micro", "--workdir",
                 f"gs://{BUCKET}/{p}/sweep", "--list"]) == 2
    assert "gptjax sweep writes a local directory" in capsys.readouterr().err
    assert not list(tmp_path.rglob("gs:*"))


def test_hf_import_into_the_bucket_samples_with_its_tokenizer(gcs, tmp_path, monkeypatch,
                                                               capsys):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from test_interop import _random_hf_model
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from gptjax.cli import main

    monkeypatch.chdir(tmp_path)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["the gcs bucket holds every shard of a run"] * 20, trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_dir = tmp_path / "hf"
    _random_hf_model(torch, transformers, vocab_size=tok.get_vocab_size(), n_positions=64,
                     n_layer=2).save_pretrained(hf_dir)
    tok.save(str(hf_dir / "tokenizer.json"))
    p = f"hf-{uuid.uuid4().hex[:8]}"
    url = f"gs://{BUCKET}/{p}/run"
    assert main(["convert", "import", "--hf", str(hf_dir), "--workdir", url]) == 0
    names = set(gcs.objects(f"{p}/run/"))
    assert {f"{p}/run/config.json", f"{p}/run/hf_tokenizer.json",
            f"{p}/run/checkpoints/0/commit_success.txt"} <= names, names
    assert main(["sample", "--workdir", url, "--prompt", "the bucket", "--max-new-tokens", "4",
                 "--num-samples", "1"]) == 0
    assert "the bucket" in capsys.readouterr().out
    assert not list(tmp_path.rglob("gs:*"))


def test_a_corrupt_checkpoint_in_the_bucket_is_named_moved_aside_and_resume_is_bit_identical(
        gcs, trained, capsys):
    """Integrity on gs:// (docs/faults.md): the manifest of each checkpoint holds the bucket's
    own crc32c of every object; one flipped bit in an array object of checkpoint 12 is one line
    in `checkpoints --verify` and `eval`, and `train` moves checkpoint 12 aside (copied under
    checkpoints_corrupt/, not lost), resumes from 8 and ends bit-identical to the reference."""
    from gptjax.cli import main

    p = trained["prefix"]
    src, prefix = f"{p}/run/", f"{p}/corrupt"
    for name in gcs.objects(src):                  # a copy of the finished run
        gcs.write(f"{prefix}/{name[len(src):]}", gcs.read(name))
    url = f"gs://{BUCKET}/{prefix}"
    step12 = f"{prefix}/checkpoints/12"
    manifest = json.loads(gcs.read(f"{step12}/gptjax_manifest.json"))["files"]
    for rel, entry in manifest.items():
        assert entry["crc32c"] == gcs.crc32c(f"{step12}/{rel}"), rel
    data = max((n for n in manifest if "/ocdbt.process_0/d/" in n),
               key=lambda n: manifest[n]["size"])
    blob = bytearray(gcs.read(f"{step12}/{data}"))
    blob[len(blob) // 2] ^= 0x01
    gcs.write(f"{step12}/{data}", bytes(blob))
    assert main(["checkpoints", "--workdir", url, "--verify"]) == 1
    assert f"corrupt: {data} has checksum" in capsys.readouterr().out
    assert main(["eval", "--workdir", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"checkpoint {url}/checkpoints/12 is corrupt: {data}" in err[0]
    resumed = subprocess.run(train_cmd(url), cwd=trained["cwd"], env=_env(gcs, trained["home"]),
                             capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert resumed.returncode == 0, output(resumed)
    assert "resumed at step 8" in resumed.stdout, output(resumed)
    assert len([ln for ln in resumed.stdout.splitlines() if "is corrupt" in ln]) == 1
    moved = [n for n in gcs.objects(f"{prefix}/checkpoints_corrupt/") if n.endswith(data)]
    assert len(moved) == 1 and gcs.read(moved[0]) == bytes(blob)   # kept, as it was
    assert committed_steps(gcs, prefix) == [8, 12]
    assert read_losses(gcs, prefix) == read_losses(gcs, f"{p}/reference")
    ref_state, state = _state(trained["ref"], STEPS), _state(url, STEPS)
    for name, value in ref_state.items():
        assert np.array_equal(state[name], value), f"{name} differs from the uninterrupted run"
    gcs.write(f"{prefix}/config.json", b"{garbage")
    assert main(["eval", "--workdir", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"workdir {url} is corrupt: config.json has 8 bytes" in err[0], err
