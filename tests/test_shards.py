"""Sharded token stores (gptjax/data/store.py, gptjax/storage/ranged.py): shards and index
round-trip; N workers prepare exactly what one process prepares; a killed preparation resumes
after its last shard; a missing, truncated or corrupted shard is one line; each process reads
only the windows of its rows, in place; resume with another process count; old single-file
stores still read."""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import FAST_COMPILE

from gptjax import data
from gptjax.cli import main
from gptjax.config.loader import load_module
from gptjax.data import pipeline
from gptjax.data.export import export_shards
from gptjax.data.store import TokenStore
from gptjax.data.tokenizer import CharTokenizer
from gptjax.errors import UserError
from gptjax.storage import integrity

get_config = load_module("configs/smoke.py").get_config

# Documents of uneven length (empty ones too), so shard and part boundaries fall mid-document.
DOCS = [f"document {i}: " + "the cat sat on the mat. " * (i % 9) for i in range(120)]
EVAL = [f"held out {i}: a dog lay on a rug.\n" for i in range(30)]


@pytest.fixture
def corpus():
    """A registered source of in-memory documents; counts the documents it hands out."""
    served = {"train": 0, "validation": 0}

    def documents(config, split):
        for doc in {"train": DOCS, "validation": EVAL}[split]:
            served[split] += 1
            yield doc

    data.register_source(data.Source(name="corpus", help="test documents", documents=documents))
    try:
        yield served
    finally:
        data.unregister_source("corpus")


def _config(tmp_path, shard_tokens=97, **kw):
    c = get_config("tiny")
    with c.unlocked():
        c.data.source, c.data.tokenizer.kind = "corpus", "char"
        c.data.shard_tokens, c.data.cache_dir = shard_tokens, str(tmp_path / "cache")
        c.data.seq_len, c.train.batch_size = 16, 8
        for k, v in kw.items():
            c.data[k] = v
    return c


def _tok():
    return CharTokenizer(sorted(set("".join(DOCS + EVAL))), eos=True)


def _reference(tok, docs=DOCS) -> np.ndarray:
    return np.concatenate([np.append(tok.encode_array(d), tok.eos_id) for d in docs])


def test_shards_and_index_round_trip(tmp_path):
    tok = _tok()
    store = TokenStore.create(str(tmp_path / "s"), tok, {"source": "test"})
    index = store.write_split("train", tok, iter(DOCS), add_eos=True, what="test",
                              shard_tokens=100)
    ref = _reference(tok)
    assert index["num_tokens"] == ref.size and index["num_documents"] == len(DOCS)
    assert index["tokenizer"] == tok.fingerprint and index["source"] == {"source": "test"}
    shards = index["shards"]
    assert len(shards) == -(-ref.size // 100) and all(s["tokens"] == 100 for s in shards[:-1])
    assert sum(s["documents"] for s in shards) == len(DOCS)
    d = store.split_dir("train")
    for s, start in zip(shards, range(0, ref.size, 100), strict=True):
        raw = open(os.path.join(d, s["file"]), "rb").read()
        assert np.array_equal(np.frombuffer(raw, np.uint16), ref[start:start + 100])
        assert s["crc32c"] == integrity.checksum(raw)
    tokens = TokenStore(store.directory).tokens("train")
    assert tokens.size == ref.size and np.array_equal(np.asarray(tokens), ref)
    starts = np.array([0, 95, 99, 100, 250, ref.size - 17])   # inside, across, at boundaries
    expect = np.stack([ref[s:s + 17] for s in starts])
    assert np.array_equal(tokens.windows(starts, 17), expect)
    assert np.array_equal(tokens[[[3, 150], [99, 100]]], ref[[[3, 150], [99, 100]]])
    assert store.splits() == ["train"]


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_workers_prepare_what_one_process_prepares(corpus, tmp_path, workers, capsys):
    config = _config(tmp_path)
    one, _, _ = export_shards(config, str(tmp_path / "one"), str(tmp_path / "w"))
    out = str(tmp_path / f"n{workers}")
    for w in reversed(range(workers)):     # any order; the last one writes the index
        _, written, _ = export_shards(config, out, str(tmp_path / "w"), worker=w,
                                      num_workers=workers)
        assert (written["train"] is None) == (w != 0)
    a, b = TokenStore(one), TokenStore(out)
    for split in ("train", "validation"):
        assert np.array_equal(np.asarray(a.tokens(split)), np.asarray(b.tokens(split)))
        assert b.meta(split)["num_workers"] == workers
        assert b.meta(split)["num_documents"] == a.meta(split)["num_documents"]
    assert np.array_equal(np.asarray(a.tokens("train")), _reference(_tok()))
    # Training reads the N-worker store exactly as the one-worker store.
    batches = []
    for d in (one, out):
        c = _config(tmp_path, source="shards", shards_dir=d)
        it = data.make_train_iter(c, data.make_tokenizer(c))
        batches.append([next(it)["inputs"] for _ in range(12)])
    assert np.array_equal(np.stack(batches[0]), np.stack(batches[1]))
    capsys.readouterr()
    assert main(["data", "info", "--config", "configs/smoke.py:tiny", "--json",
                 "--config.data.source=shards", f"--config.data.shards_dir={out}"]) == 0
    info = json.loads(capsys.readouterr().out)["splits"]["train"]
    assert info["shards"] == len(b.meta("train")["shards"]) > workers
    assert info["tokens"] == b.meta("train")["num_tokens"]


def test_killed_preparation_resumes_after_its_last_shard(corpus, tmp_path, monkeypatch):
    tok = _tok()
    store = TokenStore.create(str(tmp_path / "s"), tok, {"source": "test"})
    encoded = []
    real = CharTokenizer.encode_many
    monkeypatch.setattr(CharTokenizer, "encode_many",
                        lambda self, texts: (encoded.extend(texts), real(self, texts))[1])

    def dying(n):
        for i, doc in enumerate(DOCS):
            if i == n:
                raise KeyboardInterrupt    # the kill
            yield doc

    with monkeypatch.context() as m:
        m.setattr("gptjax.data.store.ENCODE_BATCH", (7, 1 << 22))   # a shard every few docs
        with pytest.raises(KeyboardInterrupt):
            store.write_part("train", tok, dying(60), True, "test", shard_tokens=150)
        d = store.split_dir("train")
        first = sorted(f for f in os.listdir(d) if f.endswith(".bin"))
        assert len(first) >= 3 and not store.has("train")
        mtimes = {f: os.stat(os.path.join(d, f)).st_mtime_ns for f in first}
        resume_doc = json.load(open(os.path.join(d, first[-1][:-4] + ".json")))["next"][0]
        encoded.clear()
        store.write_split("train", tok, iter(DOCS), True, "test", shard_tokens=150)
    assert encoded == DOCS[resume_doc:]        # no finished shard's document tokenized again
    assert resume_doc > 0
    assert {f: os.stat(os.path.join(d, f)).st_mtime_ns for f in first} == mtimes
    assert np.array_equal(np.asarray(store.tokens("train")), _reference(tok))
    assert store.meta("train")["num_documents"] == len(DOCS)


@pytest.mark.parametrize("damage", ["missing", "truncated", "corrupted"])
def test_bad_shard_is_one_line_exit_2(tmp_path, repo_dir, damage):
    tok = _tok()
    out = str(tmp_path / "s")
    store = TokenStore.create(out, tok, {"source": "test"})
    store.write_split("train", tok, iter(DOCS), True, "test", shard_tokens=100)
    tok.save(out)
    shard = os.path.join(store.split_dir("train"), store.meta("train")["shards"][3]["file"])
    raw = open(shard, "rb").read()
    if damage == "missing":
        os.remove(shard)
    else:
        open(shard, "wb").write(raw[:-2] if damage == "truncated" else raw[::-1])
    words = {"missing": "is missing", "truncated": "has 198 bytes, expected 200",
             "corrupted": "has checksum"}[damage]
    with pytest.raises(UserError, match=words):
        store.tokens("train")
    res = subprocess.run([sys.executable, "-m", "gptjax", "data", "info", "--config",
                          "configs/smoke.py:tiny", "--config.data.source=shards",
                          f"--config.data.shards_dir={out}", "--config.data.eval_split=train"],
                         cwd=repo_dir, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(repo_dir)))
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().count("\n") == 0 and words in res.stderr, res.stderr


def test_old_single_file_store_still_reads(tmp_path):
    tok = _tok()
    store = TokenStore.create(str(tmp_path / "old"), tok, {"source": "test"})
    ref = _reference(tok)
    ref.astype(np.uint16).tofile(tmp_path / "old" / "train.bin")
    (tmp_path / "old" / "train.meta.json").write_text(json.dumps(
        {"split": "train", "file": "train.bin", "num_tokens": int(ref.size),
         "num_documents": len(DOCS)}))
    again = TokenStore(store.directory)
    assert again.splits() == ["train"] and again.meta("train")["num_documents"] == len(DOCS)
    assert np.array_equal(np.asarray(again.tokens("train")), ref)


def _iter(config, tok, host, hosts, rows=None):
    it = data.make_train_iter(config, tok, host, hosts, rows=rows)
    it.prefetch = 0      # count exactly what each batch reads
    return it


def test_each_process_reads_only_its_rows_and_resumes_across_counts(corpus, tmp_path):
    config = _config(tmp_path, shard_tokens=53)
    with config.unlocked():
        config.train.batch_size = 12
    tok = data.make_tokenizer(config, str(tmp_path / "w"))
    one = _iter(config, tok, 0, 1)
    for _ in range(3):
        next(one)
    state = one.get_state()
    expect = [next(one)["inputs"] for _ in range(4)]
    parts, L = [], config.data.seq_len
    for host, rows in enumerate([None, None, [1, 5, 9], [0, 2, 3, 4, 6, 7, 8, 10, 11]]):
        it = _iter(config, tok, host, 2, rows) if rows is None else _iter(config, tok, 0, 1,
                                                                          rows)
        it.set_state(state)
        got = [next(it)["inputs"] for _ in range(4)]
        n = len(it.rows)
        tokens = it.tokens
        # one range per window, two for the few windows that cross a shard boundary
        assert 4 * n <= tokens.ranges_read <= 4 * n + 4 * n * L // 53 + 4
        assert tokens.bytes_read == 4 * n * (L + 1) * 2
        parts.append((it.rows, got))
    for (ra, a), (rb, b) in (parts[:2], parts[2:]):
        rows = np.concatenate([ra, rb])
        for k in range(4):
            whole = np.empty_like(expect[k])
            whole[rows] = np.concatenate([a[k], b[k]])
            assert np.array_equal(whole, expect[k])


def _config_file(tmp_path, repo_dir):
    """A config file that registers the corpus as a source, as a user's would."""
    cfg = tmp_path / "corpus_config.py"
    cfg.write_text(f"""
from gptjax.data import Source, register_source
from gptjax.config.loader import load_module

DOCS = {DOCS!r}
register_source(Source(name="corpus", help="docs", documents=lambda c, s: iter(DOCS)),
                replace=True)


def get_config():
    c = load_module({str(repo_dir / 'configs/smoke.py')!r}).get_config("tiny")
    c.data.source, c.data.tokenizer.kind, c.data.shard_tokens = "corpus", "char", 101
    c.data.eval_split = "train"
    return c
""")
    return cfg


def test_cli_workers_in_parallel(tmp_path, repo_dir):
    """Two `gptjax data export --worker I --num-workers 2` jobs at once write one store."""
    cfg = _config_file(tmp_path, repo_dir)
    env = dict(os.environ, PYTHONPATH=str(repo_dir), JAX_PLATFORMS="cpu")
    out = tmp_path / "shards"
    tok_dir = tmp_path / "w"
    export = [sys.executable, "-m", "gptjax", "data", "export", "--config", str(cfg), "--out",
              str(out), "--workdir", str(tok_dir), "--splits", "train", "--json"]
    # the tokenizer first (a char tokenizer trained on the text), then the workers at once
    subprocess.run([sys.executable, "-m", "gptjax", "data", "tokenizer", "--config", str(cfg),
                    "--workdir", str(tok_dir), "--text", "the cat"], env=env, check=True,
                   capture_output=True)
    jobs = [subprocess.Popen([*export, "--worker", str(i), "--num-workers", "2"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]
    results = [j.communicate(timeout=300) for j in jobs]
    assert all(j.returncode == 0 for j in jobs), results
    # each job writes its part, then looks for the other's: the later one finds both
    assert sum(json.loads(r[0])["splits"]["train"] is not None for r in results) >= 1, results
    store = TokenStore(str(out))
    assert store.meta("train")["num_workers"] == 2
    assert store.meta("train")["num_documents"] == len(DOCS)
    tok = data.load_tokenizer(str(out))
    assert np.array_equal(np.asarray(store.tokens("train")), _reference(tok))


def test_split_tokens_indexes_parts_prepared_elsewhere(corpus, tmp_path):
    """The training path: parts written by the processes, then split_tokens indexes them."""
    config = _config(tmp_path)
    tok = data.make_tokenizer(config, str(tmp_path / "w"))
    for w in range(3):
        data.prepare_splits(config, tok, str(tmp_path / "w"), w, 3)
    store = pipeline.token_store(config, tok, str(tmp_path / "w"))
    assert not store.has("train")
    served = dict(corpus)
    tokens = pipeline.split_tokens(config, tok, "train", str(tmp_path / "w"))
    assert corpus == served                    # indexed, not tokenized again
    assert store.meta("train")["num_workers"] == 3
    assert np.array_equal(np.asarray(tokens), _reference(tok))


@pytest.mark.slow
def test_every_process_of_a_training_job_tokenizes_its_part(tmp_path, repo_dir):
    """2 JAX processes (launch/multiprocess.py): process 0 trains the tokenizer, each process
    tokenizes its half of the documents, process 0 indexes the split after both are done; the
    store is a one-process preparation token for token, and training runs on it."""
    cfg = _config_file(tmp_path, repo_dir)
    workdir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(repo_dir), JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    env["XLA_FLAGS"] = FAST_COMPILE
    res = subprocess.run([sys.executable, "launch/multiprocess.py", "-n", "2", "--devices", "1",
                          "--timeout", "120", "--", "gptjax", "train", "--config", str(cfg),
                          "--config.train.steps=2", "--config.train.eval_every=-1",
                          "--config.train.plot=false", "--config.train.async_checkpoint=false",
                          "--workdir", str(workdir)], cwd=repo_dir, env=env,
                         capture_output=True, text=True, timeout=300)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    for i in (0, 1):
        assert len(re.findall(rf"\[p{i}\] gptjax: tokenized .* split 'train' part {i + 1}/2",
                              log)) == 1, log
    assert "[p1] gptjax: trained" not in log
    (store_dir,) = (workdir / "data" / "tokens").iterdir()
    store = TokenStore(str(store_dir))
    assert store.meta("train")["num_workers"] == 2
    tok = data.load_tokenizer(str(workdir))
    assert np.array_equal(np.asarray(store.tokens("train")), _reference(tok))


MANY = [f"doc {i}: the cat" for i in range(6000)]


def test_export_killed_with_sigkill_resumes_shard_by_shard(tmp_path, repo_dir):
    """`gptjax data export` killed -9 mid-way (its source slows down once the first 4096
    documents are tokenized and sharded), run again: the finished shards keep their files,
    the rest is written, the store is exact."""
    cfg = _config_file(tmp_path, repo_dir)
    text = cfg.read_text().replace("documents=lambda c, s: iter(DOCS)", "documents=slow")
    cfg.write_text(text.replace("register_source(", f'''import os, time


def slow(config, split):
    for i, doc in enumerate({MANY!r}):
        if i > 4200 and not os.environ.get("FAST"):
            time.sleep(0.05)
        yield doc


register_source(''', 1))
    env = dict(os.environ, PYTHONPATH=str(repo_dir), JAX_PLATFORMS="cpu")
    out = tmp_path / "shards"
    export = [sys.executable, "-m", "gptjax", "data", "export", "--config", str(cfg), "--out",
              str(out), "--workdir", str(tmp_path / "w"), "--splits", "train",
              "--config.data.shard_tokens=5000"]
    subprocess.run([sys.executable, "-m", "gptjax", "data", "tokenizer", "--config", str(cfg),
                    "--workdir", str(tmp_path / "w"), "--text", "the cat"],
                   env=dict(env, FAST="1"), check=True, capture_output=True)   # trained first
    job = subprocess.Popen(export, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    d = out / "train"
    try:
        deadline = time.monotonic() + 60
        while len(list(d.glob("*-shard-*.json"))) < 3:
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        job.kill()
        job.wait()
    before = {p.name: p.stat().st_mtime_ns for p in d.glob("*-shard-*")}
    assert not (d / "index.json").exists()
    res = subprocess.run(export, env=dict(env, FAST="1"), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    after = {p.name: p.stat().st_mtime_ns for p in d.glob("*-shard-*")}
    assert before and all(after[name] == t for name, t in before.items())
    assert len(after) > len(before)
    tok = data.load_tokenizer(str(out))
    assert np.array_equal(np.asarray(TokenStore(str(out)).tokens("train")),
                          _reference(tok, MANY))


def test_bench_reports_what_one_process_reads(corpus, tmp_path):
    from gptjax.performance import data_bench

    config = _config(tmp_path, prefetch=0)
    export_shards(config, str(tmp_path / "s"), str(tmp_path / "w"))
    shards = _config(tmp_path, source="shards", shards_dir=str(tmp_path / "s"), prefetch=0)
    r = data_bench.bench(shards, "numpy", 20, processes=2)
    L = shards.data.seq_len
    assert r["processes"] == 2 and r["numpy"]["tokens_per_s"] > 0
    assert r["numpy"]["bytes_per_batch"] == 4 * (L + 1) * 2      # 4 of the 8 rows
    assert 4 <= r["numpy"]["ranges_per_batch"] <= 8
    p = data_bench.prepare(config, str(tmp_path / "w"), num_workers=3)
    assert p["documents"] == len(DOCS) // 3 and p["tokens_per_s"] > 0


def test_windows_of_a_huge_split_are_a_computed_permutation(monkeypatch):
    """Above PERMUTATION_MAX windows an epoch's order is a keyed bijection (no stored
    permutation): every window once per epoch, seeded, epochs differ, exact at any position."""
    monkeypatch.setattr(pipeline, "PERMUTATION_MAX", 1000)
    n_tokens, L = 3000 * 16 + 16, 16
    w = pipeline.Windows(n_tokens, L, seed=3, shuffle=True, what="test")
    n = w.num_windows
    assert n > 1000
    perm, _ = w.epoch(0)
    assert isinstance(perm, tuple)              # keys, not n stored entries
    e0, e1 = w.starts(0, n), w.starts(n, n)
    for e in (e0, e1):
        assert np.array_equal(np.sort(e - e[0] % L), np.arange(n) * L + 0)  # each window once
    assert not np.array_equal(e0 - e0[0] % L, e1 - e1[0] % L)
    assert not np.array_equal(e0[:50], np.sort(e0[:50]))                   # shuffled
    other = pipeline.Windows(n_tokens, L, seed=4, shuffle=True, what="test")
    assert not np.array_equal(other.starts(0, 50), e0[:50])
    again = pipeline.Windows(n_tokens, L, seed=3, shuffle=True, what="test")
    pos = np.array([5, n - 1, n + 7, 3 * n + 2])
    assert np.array_equal(again.at(pos), w.starts(0, 4 * n)[pos])           # any position


def test_tfds_parts_are_slices_of_the_split(tmp_path):
    """The `files` source (a TFDS builder): worker i of 3 reads the TFDS slice train[a:b] of
    its block, and the parts in order are the split, also under data.max_documents."""
    from gptjax.data import registry

    docs = [f"document {i}: " + "words " * (i % 7) for i in range(50)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n")
    config = get_config("tiny")
    with config.unlocked():
        config.data.source, config.data.files = "files", str(path)
        config.data.data_dir, config.data.holdout_fraction = str(tmp_path / "tfds"), 0.0
    source = registry.of(config)
    whole = list(source.read(config, "train"))
    assert whole == docs
    parts = [list(source.read_part(config, "train", i, 3)) for i in range(3)]
    assert [len(p) for p in parts] == [16, 17, 17] and sum(parts, []) == whole
    with config.unlocked():
        config.data.max_documents = 20
    parts = [list(source.read_part(config, "train", i, 3)) for i in range(3)]
    assert sum(parts, []) == docs[:20] == list(source.read(config, "train"))
