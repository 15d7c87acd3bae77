"""Input pipeline: TFDS offline, tokenizers, determinism, host slicing, exact resume, bad input.

Everything runs offline: tiny_shakespeare is built by the real TFDS builder from the shared
`input.txt` (manual_dir) into a temporary data_dir once per session.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from gptjax import data
from gptjax.config.loader import load_module
from gptjax.data import pipeline, sources
from gptjax.data.export import export_shards
from gptjax.data.store import TokenStore
from gptjax.errors import UserError
from gptjax.training import train

get_config = load_module("configs/smoke.py").get_config

TRAIN_CHARS = 1_003_854


def _config(**data_overrides):
    c = get_config("tiny")
    with c.unlocked():
        for key, value in data_overrides.items():
            node = c
            *path, leaf = key.split(".")
            for p in path:
                node = node[p]
            node[leaf] = value
    return c


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def shakespeare_text(shakespeare_manual_dir):
    return (shakespeare_manual_dir / "input.txt").read_text()


@pytest.fixture(scope="session")
def char_run(tfds_dir, shakespeare_manual_dir, tmp_path_factory):
    """(config, workdir, tokenizer) of a char-level tiny_shakespeare run, tokenized once."""
    workdir = str(tmp_path_factory.mktemp("char_run"))
    config = _config(**{"data.data_dir": tfds_dir, "data.manual_dir": str(shakespeare_manual_dir),
                        "data.tokenizer.kind": "char", "data.seq_len": 64,
                        "train.batch_size": 8})
    tok = data.make_tokenizer(config, workdir)
    return config, workdir, tok


# ----------------------------------------------------------------------------- sources

def test_tiny_shakespeare_through_tfds_offline(char_run, shakespeare_text):
    config = char_run[0]
    train = list(sources.documents(config, "train"))
    valid = list(sources.documents(config, "validation"))
    assert [len(t) for t in train] == [TRAIN_CHARS]
    assert train[0] == shakespeare_text[:TRAIN_CHARS]
    n = len(shakespeare_text)
    assert valid == [shakespeare_text[TRAIN_CHARS:TRAIN_CHARS + len(valid[0])]]
    assert abs(len(valid[0]) - 0.05 * n) < 2


def test_unprepared_dataset_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTJAX_OFFLINE", "1")
    empty = tmp_path / "manual"
    empty.mkdir()
    config = _config(**{"data.data_dir": str(tmp_path / "tfds"), "data.manual_dir": str(empty),
                        "data.tokenizer.kind": "char"})
    start = time.time()
    with pytest.raises(UserError, match="manual_dir") as e:
        list(sources.documents(config, "train"))
    assert time.time() - start < 30
    assert "input.txt" in str(e.value) and str(empty) in str(e.value)


def test_unknown_tfds_name_lists_close_names(tmp_path):
    config = _config(**{"data.data_dir": str(tmp_path), "data.tfds_name": "tiny_shakespear"})
    with pytest.raises(UserError, match="close names: .*tiny_shakespeare"):
        list(sources.documents(config, "train"))


def test_missing_split_and_text_key(char_run):
    config = _config(**{"data.data_dir": char_run[0].data.data_dir, "data.text_key": "body"})
    with pytest.raises(UserError, match="no text feature 'body'.*text"):
        list(sources.documents(config, "train"))
    with pytest.raises(UserError, match="no split 'dev'"):
        list(sources.documents(char_run[0], "dev"))


# ----------------------------------------------------------------------------- local files

def _files_config(tmp_path, files, **kw):
    return _config(**{"data.source": "files", "data.files": str(files),
                      "data.data_dir": str(tmp_path / "tfds"),
                      "data.cache_dir": str(tmp_path / "cache"), **kw})


def test_local_files_builder_on_austen(tmp_path, austen_path):
    config = _files_config(tmp_path, austen_path)
    train = list(sources.documents(config, "train"))
    valid = list(sources.documents(config, "validation"))
    text = austen_path.read_text()
    assert len(train) == len(valid) == 1                     # one file -> split inside it
    assert train[0] + valid[0] == text
    assert train[0].endswith("\n")                            # cut at a line break
    assert abs(len(valid[0]) / len(text) - 0.05) < 0.01
    builder = sources.files_builder(config)
    assert builder.is_prepared() and "gptjax_local_text" in builder.data_dir
    # Cached like any TFDS dataset: the second read does not rebuild.
    mtime = os.path.getmtime(builder.data_dir)
    sources.files_builder(config)
    assert os.path.getmtime(builder.data_dir) == mtime


def test_local_jsonl_documents_holdout(tmp_path):
    docs = [f"document number {i}\nwith two lines." for i in range(200)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"body": d}) for d in docs) + "\n")
    config = _files_config(tmp_path, tmp_path / "*.jsonl", **{"data.jsonl_key": "body",
                                                              "data.holdout_fraction": 0.1})
    train = list(sources.documents(config, "train"))
    valid = list(sources.documents(config, "validation"))
    assert sorted(train + valid) == sorted(docs) and not set(train) & set(valid)
    assert 5 <= len(valid) <= 40
    assert train == [d for d in docs if d in set(train)]     # file order is kept


@pytest.mark.parametrize("case", ["nomatch", "empty", "binary", "badjson", "nokey", "suffix"])
def test_local_files_bad_input(tmp_path, case):
    f = tmp_path / "x.txt"
    overrides = {}
    if case == "nomatch":
        f = tmp_path / "nothing*.txt"
        match = "matches no file"
    elif case == "empty":
        f.write_text("")
        match = "empty"
    elif case == "binary":
        f.write_bytes(b"hello \xff\xfe world\n")
        match = "not UTF-8 at offset 6.*encoding_errors"
    elif case == "badjson":
        f = tmp_path / "x.jsonl"
        f.write_text('{"text": "ok"}\n{not json\n')
        match = "x.jsonl:2: not valid JSON"
    elif case == "nokey":
        f = tmp_path / "x.jsonl"
        f.write_text('{"content": "ok"}\n')
        match = "no string field 'text'"
    else:
        f = tmp_path / "x.csv"
        f.write_text("a,b\n")
        match = "not a .txt, .md or .jsonl file"
    config = _files_config(tmp_path, f, **overrides)
    with pytest.raises(UserError, match=match):
        list(sources.documents(config, "train"))


def test_holdout_fraction_zero_gives_train_only(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("some text\n" * 10)
    config = _files_config(tmp_path, f, **{"data.holdout_fraction": 0.0})
    assert list(sources.documents(config, "train")) == ["some text\n" * 10]
    with pytest.raises(UserError, match="no split 'validation'; it has train"):
        list(sources.documents(config, "validation"))


def test_non_utf8_replace_is_documented_behaviour(tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes(b"hello \xff world\n" * 20)
    config = _files_config(tmp_path, f, **{"data.encoding_errors": "replace"})
    train = list(sources.documents(config, "train"))
    assert "\ufffd" in train[0] and train[0].startswith("hello")


# ----------------------------------------------------------------------------- tokenizers

def test_char_tokenizer_is_nanogpts_65(char_run, shakespeare_text):
    config, workdir, tok = char_run
    assert tok.vocab_size == 65 and tok.eos_id is None
    assert tok.chars == sorted(set(shakespeare_text))
    sample = shakespeare_text[:500]
    assert tok.decode(tok.encode(sample)) == sample
    assert tok.encode("\n ")[0] == 0 and tok.encode("\n ")[1] == 1    # nanoGPT's ids
    again = data.make_tokenizer(config, workdir)            # loaded from the workdir
    assert os.path.isfile(os.path.join(workdir, "tokenizer.chars.json"))
    assert again.fingerprint == tok.fingerprint
    with pytest.raises(UserError, match="outside the char vocabulary"):
        tok.encode("€")


def test_char_tokenizer_adds_eos_for_many_documents(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"ab{i % 3}"}) for i in range(60)))
    tok = data.make_tokenizer(_files_config(tmp_path, f, **{"data.tokenizer.kind": "char"}))
    assert tok.eos_id == tok.vocab_size - 1 == len(tok.chars)


@pytest.fixture(scope="session")
def austen_bpe(tmp_path_factory, austen_path):
    root = tmp_path_factory.mktemp("austen_bpe")
    workdir = str(root / "run")
    config = _config(**{"data.source": "files", "data.files": str(austen_path),
                        "data.data_dir": str(root / "tfds"), "data.tokenizer.kind": "bpe",
                        "data.tokenizer.vocab_size": 1000, "data.tokenizer.train_sentences": 20000,
                        "data.tokenizer.user_defined_symbols": "<sep>,<cls>"})
    return config, workdir, data.make_tokenizer(config, workdir)


def test_bpe_tokenizer_round_trips_and_reloads(austen_bpe, austen_path):
    config, workdir, tok = austen_bpe
    assert tok.vocab_size == 1000 and tok.kind == "bpe"
    assert (tok.eos_id, tok.bos_id, tok.pad_id) == (2, 1, 3)
    text = austen_path.read_text()[10_000:12_000] + "\n\n  two  spaces\ttab <sep> é ü 😀\n"
    assert tok.decode(tok.encode(text)) == text             # newlines, spaces, bytes survive
    assert tok.sp.piece_to_id("<sep>") in tok.encode("a <sep> b")
    loaded = data.make_tokenizer(config, workdir)
    assert os.path.isfile(os.path.join(workdir, "tokenizer.model"))
    assert loaded.encode(text) == tok.encode(text)
    # kind=path loads an existing .model
    other = _config(**{"data.source": "files", "data.files": config.data.files,
                       "data.cache_dir": config.data.data_dir,
                       "data.tokenizer.kind": "path",
                       "data.tokenizer.path": os.path.join(workdir, "tokenizer.model")})
    assert data.make_tokenizer(other).fingerprint == tok.fingerprint
    # parallel chunked encoding equals encoding the text whole
    big = austen_path.read_text()[:300_000]
    assert np.array_equal(tok.encode_many([big])[0], tok.encode(big))


def test_unigram_tokenizer_and_vocab_too_large(tmp_path):
    f = tmp_path / "small.txt"
    f.write_text("the cat sat on the mat.\nthe dog sat on the log.\n" * 50)
    config = _files_config(tmp_path, f, **{"data.tokenizer.kind": "unigram",
                                           "data.tokenizer.vocab_size": 20,
                                           "data.tokenizer.byte_fallback": False})
    tok = data.make_tokenizer(config)
    assert tok.vocab_size == 20 and tok.decode(tok.encode("the cat\n")) == "the cat\n"
    with config.unlocked():
        config.data.tokenizer.kind = "bpe"
        config.data.tokenizer.vocab_size = 5000
    with pytest.raises(UserError, match=r"vocab_size=5000 is more than this corpus supports"):
        data.make_tokenizer(config)
    with config.unlocked():
        config.data.tokenizer.vocab_size = 100
        config.data.tokenizer.byte_fallback = True
    with pytest.raises(UserError, match=r"vocab_size=100 is too small: .* need \d+"):
        data.make_tokenizer(config)


# ----------------------------------------------------------------------------- pipeline

def _toy_iter(n_tokens=5000, seq_len=16, batch=8, seed=0, host=0, hosts=1, loader="numpy",
              shuffle=True, prefetch=2):
    tokens = np.arange(n_tokens, dtype=np.uint32) % 65521
    windows = pipeline.Windows(n_tokens, seq_len, seed, shuffle, "toy")
    return pipeline.TrainIterator(tokens, windows, batch, host, hosts, loader, prefetch)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return all(np.array_equal(x["inputs"], y["inputs"]) and
               np.array_equal(x["targets"], y["targets"]) for x, y in zip(a, b, strict=True))


def test_batches_are_shifted_windows_of_the_data(char_run):
    config, workdir, tok = char_run
    tokens = data.split_tokens(config, tok, "train", workdir)
    assert tokens.size == TRAIN_CHARS and tokens.dtype == np.uint16
    text = next(sources.documents(config, "train"))
    it = data.make_train_iter(config, tok, 0, 1)
    for batch in _take(it, 3):
        x, y = batch["inputs"], batch["targets"]
        assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == np.int32
        assert np.array_equal(x[:, 1:], y[:, :-1])          # targets = inputs shifted by one
        for row_x, row_y in zip(x, y, strict=True):           # each row is a real window
            window = tok.decode(np.concatenate([row_x, row_y[-1:]]))
            assert len(window) == 65 and window in text


def test_same_seed_same_batches_different_seed_different(char_run):
    config, _, tok = char_run
    a = _take(data.make_train_iter(config, tok), 5)
    b = _take(data.make_train_iter(config, tok), 5)
    assert _same(a, b)
    with config.unlocked():
        config.data.seed = 1
    try:
        c = _take(data.make_train_iter(config, tok), 5)
    finally:
        with config.unlocked():
            config.data.seed = 0
    assert not np.array_equal(a[0]["inputs"], c[0]["inputs"])


@pytest.mark.parametrize("shuffle", [True, False])
def test_two_hosts_disjoint_and_cover(shuffle):
    n_tokens, seq_len, batch = 3000, 16, 8
    single = _toy_iter(n_tokens, seq_len, batch, shuffle=shuffle)
    hosts = [_toy_iter(n_tokens, seq_len, batch, host=i, hosts=2, shuffle=shuffle)
             for i in range(2)]
    W = single.windows.num_windows
    seen = []
    for _ in range(W // batch):
        g = next(single)
        h0, h1 = next(hosts[0]), next(hosts[1])
        assert h0["inputs"].shape == (batch // 2, seq_len)
        assert np.array_equal(np.concatenate([h0["inputs"], h1["inputs"]]), g["inputs"])
        assert not set(h0["inputs"][:, 0]) & set(h1["inputs"][:, 0])
        seen.extend(g["inputs"][:, 0].tolist())
    # one epoch visits every window exactly once
    assert len(seen) == len(set(seen)) == W // batch * batch
    first = seen[0] % seq_len
    assert all(s % seq_len == first for s in seen)          # one shift per epoch


def test_real_two_hosts_disjoint(char_run):
    config, _, tok = char_run
    full = next(data.make_train_iter(config, tok, 0, 1))["inputs"]
    parts = [next(data.make_train_iter(config, tok, i, 2))["inputs"] for i in range(2)]
    assert np.array_equal(np.concatenate(parts), full)
    with pytest.raises(UserError, match="not divisible by 3"):
        data.make_train_iter(config, tok, 0, 3)


@pytest.mark.parametrize("loader", ["numpy", "tf"])
def test_resume_mid_epoch_is_exact(loader):
    it = _toy_iter(loader=loader)
    W = it.windows.num_windows
    steps_per_epoch = W // 8
    _take(it, steps_per_epoch - 2)                          # stop 2 batches before an epoch end
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 6)                                 # crosses into the next epoch
    fresh = _toy_iter(loader=loader)
    fresh.set_state(state)
    assert _same(_take(fresh, 6), expected)
    assert len(json.dumps(state)) < 300
    it.set_state(state)                                     # rewinding a running iterator too
    assert _same(_take(it, 6), expected)


def test_tf_and_numpy_loaders_identical():
    a = _take(_toy_iter(loader="numpy", prefetch=0), 20)
    b = _take(_toy_iter(loader="tf"), 20)
    c = _take(_toy_iter(loader="numpy", prefetch=3), 20)
    assert _same(a, b) and _same(a, c)


def test_resume_real_pipeline(char_run):
    config, _, tok = char_run
    it = data.make_train_iter(config, tok)
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 3)
    again = data.make_train_iter(config, tok)
    again.set_state(state)
    assert _same(_take(again, 3), expected)


def test_eval_batches_fixed_and_sliced(char_run):
    config, _, tok = char_run
    a = data.make_eval_batches(config, tok)
    b = data.make_eval_batches(config, tok)
    assert len(a) == config.train.eval_batches and _same(a, b)
    valid = data.split_tokens(config, tok, "validation")
    T = config.data.seq_len
    assert np.array_equal(a[0]["inputs"][0], valid[:T])     # windows from the start
    assert np.array_equal(a[0]["inputs"][1], valid[T:2 * T])
    halves = [data.make_eval_batches(config, tok, i, 2)[1]["inputs"] for i in range(2)]
    assert np.array_equal(np.concatenate(halves), a[1]["inputs"])


def test_seq_len_longer_than_split(tmp_path):
    f = tmp_path / "tiny.txt"
    f.write_text("only a few characters here.\n" * 3)
    config = _files_config(tmp_path, f, **{"data.tokenizer.kind": "char", "data.seq_len": 512})
    tok = data.make_tokenizer(config, str(tmp_path / "run"))
    with pytest.raises(UserError, match="fewer than data.seq_len\\+1=513"):
        data.make_train_iter(config, tok)


def test_synthetic_source_needs_no_text():
    config = _config(**{"data.source": "synthetic"})
    tok = data.make_tokenizer(config)
    it = data.make_train_iter(config, tok, 1, 2)
    batch = next(it)
    assert batch["inputs"].shape == (4, 16) and batch["inputs"].max() < config.model.vocab_size
    state = it.get_state()
    expected = next(it)
    it2 = data.make_train_iter(config, tok, 1, 2)
    it2.set_state(state)
    assert _same([next(it2)], [expected])


# ----------------------------------------------------------------------------- shards & CLI

@pytest.fixture(scope="session")
def shards(char_run, tmp_path_factory):
    config, workdir, _ = char_run
    out = str(tmp_path_factory.mktemp("shards"))
    written, splits, _ = export_shards(config, out, workdir)  # the CLI path is tested below
    assert written == out and set(splits) == {"train", "validation"}
    return out


def test_export_shards_readable_without_tensorflow(shards, char_run):
    config, _, tok = char_run
    store = TokenStore(shards)
    assert sorted(store.splits()) == ["train", "validation"]
    assert np.array_equal(store.tokens("train"), data.split_tokens(config, tok, "train"))
    code = f"""
import sys, json
from gptjax import data
from gptjax.config.loader import load_module
get_config = load_module("configs/smoke.py").get_config
c = get_config("tiny")
c.data.source = "shards"; c.data.shards_dir = {shards!r}; c.data.seq_len = 64
c.train.batch_size = 8
tok = data.make_tokenizer(c)
it = data.make_train_iter(c, tok)
b = next(it)
ev = data.make_eval_batches(c, tok)
assert "tensorflow" not in sys.modules, "TensorFlow was imported"
print(json.dumps({{"vocab": tok.vocab_size, "first": b["inputs"][0].tolist(),
                   "eval": len(ev)}}))
"""
    env = dict(os.environ, PYTHONPATH=str(os.getcwd()))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["vocab"] == 65 and got["eval"] == config.train.eval_batches
    # Same loader state machine as the TFDS source: identical first batch.
    assert got["first"] == next(data.make_train_iter(config, tok))["inputs"][0].tolist()


def _gptjax(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "gptjax", *argv], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_cli_bench_reports_tokens_per_s(shards, repo_dir):
    out = _gptjax("data", "bench", "--config", "configs/smoke.py:tiny", "--json",
                  "--loader", "numpy", "--batches", "50", "--config.data.source=shards",
                  f"--config.data.shards_dir={shards}", "--config.data.seq_len=64", cwd=repo_dir)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["numpy"]["tokens_per_s"] > 0 and result["split_tokens"] == TRAIN_CHARS


def test_cli_bad_input_is_one_line(repo_dir, tmp_path):
    out = _gptjax("data", "info", "--config", "configs/smoke.py:tiny",
                  "--config.data.source=files", f"--config.data.files={tmp_path}/none*.txt",
                  cwd=repo_dir)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "matches no file" in out.stderr


def test_resume_with_another_process_count():
    it = _toy_iter()
    _take(it, 5)
    state = it.get_state()
    expected = next(it)["inputs"]
    halves = []
    for i in range(2):
        host = _toy_iter(host=i, hosts=2)
        host.set_state(state)
        halves.append(next(host)["inputs"])
    assert np.array_equal(np.concatenate(halves), expected)


def test_config_mistakes_are_user_errors(char_run, tmp_path):
    config, workdir, tok = char_run
    with config.unlocked():
        config.data.loader = "torch"
    try:
        with pytest.raises(UserError, match="data.loader='torch'"):
            data.make_train_iter(config, tok)
    finally:
        with config.unlocked():
            config.data.loader = "auto"
    bpe = _config(**{"data.data_dir": config.data.data_dir, "data.tokenizer.kind": "bpe"})
    with pytest.raises(UserError, match="holds a char tokenizer"):
        data.make_tokenizer(bpe, workdir)
    with pytest.raises(UserError, match="not a token store"):
        data.make_train_iter(_config(**{"data.source": "shards",
                                        "data.shards_dir": str(tmp_path)}), tok)


def test_window_order_independent_of_access_history():
    fresh = pipeline.Windows(5000, 16, 3, True, "toy")
    used = pipeline.Windows(5000, 16, 3, True, "toy")
    W = used.num_windows
    for e in (9, 4, 7, 1, 8):                               # visit epochs out of order first
        used.starts(e * W + 5, 20)
    for pos in (0, W - 3, 5 * W + 7, 2 * W):
        assert np.array_equal(used.starts(pos, 10), fresh.starts(pos, 10))
    assert len(used._cache) <= 3


def test_eval_split_smaller_than_a_batch_repeats_windows(tmp_path):
    f = tmp_path / "small.txt"
    f.write_text("".join(f"line {i} of a small corpus.\n" for i in range(100)))
    config = _files_config(tmp_path, f, **{"data.tokenizer.kind": "char", "data.seq_len": 64,
                                           "data.holdout_fraction": 0.1})
    tok = data.make_tokenizer(config, str(tmp_path / "run"))
    valid = data.split_tokens(config, tok, "validation")
    n = (valid.size - 1) // 64
    assert 0 < n < config.train.batch_size
    (batch,) = data.make_eval_batches(config, tok)
    assert batch["inputs"].shape == (8, 64)
    assert np.array_equal(batch["inputs"][n], batch["inputs"][0])


# ----------------------------------------------------------------------------- source registry

def test_registry_lists_the_builtin_sources():
    assert data.source_names()[:4] == ["tfds", "files", "shards", "synthetic"]
    provides = {name: data.get_source(name).provides for name in data.source_names()[:4]}
    assert provides == {"tfds": "documents", "files": "documents", "shards": "tokens",
                        "synthetic": "batches"}
    assert data.get_source("tfds").trains_tokenizer
    assert not data.get_source("shards").trains_tokenizer
    assert data.get_source("tfds").loader == "tf" and data.get_source("shards").loader == "numpy"
    config = _config()
    assert data.get_source("tfds").describe(config) == "tfds (tiny_shakespeare)"
    assert data.get_source("tfds").cache_name(_config(**{"data.tfds_name": "c4/en:3.1.0"})) \
        == "c4_en_3.1.0"
    with pytest.raises(UserError, match=r"data.source=shards needs data.shards_dir=DIR"):
        data.make_train_iter(_config(**{"data.source": "shards"}), None)
    with pytest.raises(ValueError, match="already registered"):
        data.register_source(data.Source(name="tfds", help="", batches=iter))
    with pytest.raises(ValueError, match="exactly one of"):
        data.register_source(data.Source(name="both", help="", batches=iter, store_dir=str))


def test_cli_unknown_source_is_one_line_and_sources_lists_them(repo_dir):
    out = _gptjax("data", "bench", "--config", "configs/smoke.py:tiny",
                  "--config.data.source=tfsd", cwd=repo_dir)
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "data.source='tfsd'" in line and "did you mean 'tfds'" in line
    assert "tfds, files, shards, synthetic" in line
    listing = _gptjax("data", "sources", "--json", cwd=repo_dir)
    assert listing.returncode == 0, listing.stderr
    sources_json = json.loads(listing.stdout)
    assert list(sources_json)[:4] == ["tfds", "files", "shards", "synthetic"]
    assert sources_json["shards"]["required"] == ["shards_dir"]


TOY_DOCS = {"train": [f"toy document {i}: the cat sat on mat number {i}.\n" for i in range(40)],
            "validation": [f"held out {i}: a dog lay on rug {i}.\n" for i in range(12)]}


@pytest.fixture
def toy_source():
    """A source that is nothing but a registry entry: documents from an in-memory dict."""
    def documents(config, split):
        if split not in TOY_DOCS:
            raise UserError(f"the toy source has no split {split!r}")
        return iter(TOY_DOCS[split])

    source = data.register_source(data.Source(name="toy", help="in-memory test documents",
                                              documents=documents))
    try:
        yield source
    finally:
        data.unregister_source("toy")


def test_registered_toy_source_trains_end_to_end(toy_source, tmp_path):
    workdir = str(tmp_path / "run")
    config = _config(**{"data.source": "toy", "data.tokenizer.kind": "char"})
    tok = data.make_tokenizer(config, workdir)
    text = "".join(TOY_DOCS["train"])
    assert set(tok.chars) == set(text + "".join(TOY_DOCS["validation"]))
    assert tok.eos_id == tok.vocab_size - 1               # several documents: an <eos> id
    assert data.make_tokenizer(config, workdir).fingerprint == tok.fingerprint   # reloaded
    it = data.make_train_iter(config, tok, 0, 1)
    batches = _take(it, 30)
    assert batches[0]["inputs"].shape == (8, 16)
    for row_x, row_y in zip(batches[0]["inputs"], batches[0]["targets"], strict=True):
        assert tok.decode(np.concatenate([row_x, row_y[-1:]])) in text  # <eos> decodes to ""
    stores = os.listdir(os.path.join(workdir, "data", "tokens"))
    assert len(stores) == 1 and stores[0].startswith("toy-")
    state = it.get_state()
    again = data.make_train_iter(config, tok, 0, 1)
    again.set_state(state)
    assert _same(_take(again, 2), _take(it, 2))
    assert len(data.make_eval_batches(config, tok)) == config.train.eval_batches
    with config.unlocked():
        config.optim.lr, config.train.steps, config.train.eval_every = 1e-2, 30, 0
        config.train.plot, config.train.log_every = False, 10
    result = train.train(config, str(tmp_path / "trained"))   # the one training loop
    losses = [r["loss"] for r in map(json.loads, open(tmp_path / "trained" / "metrics.jsonl"))
              if r["split"] == "train"]
    assert result["step"] == 30 and losses[-1] < losses[0] - 0.5, losses
    assert result["eval_loss"] < losses[0]


def test_hf_tokenizer_kind_is_independent_of_the_source(toy_source, tmp_path):
    tokenizers = pytest.importorskip("tokenizers", reason="pip install 'gptjax[interop]'")
    hf = tokenizers.ByteLevelBPETokenizer()
    hf.train_from_iterator(TOY_DOCS["train"], vocab_size=300, min_frequency=1,
                           special_tokens=["<|endoftext|>"])
    path = str(tmp_path / "tokenizer.json")
    hf.save(path)
    workdir = str(tmp_path / "run")
    config = _config(**{"data.source": "toy", "data.tokenizer.kind": "hf"})
    with pytest.raises(UserError, match="kind=hf needs data.tokenizer.path=tokenizer.json"):
        data.make_tokenizer(config, workdir)
    with config.unlocked():
        config.data.tokenizer.path = path
    tok = data.make_tokenizer(config, workdir)
    assert tok.kind == "hf" and tok.eos_id == 0 and tok.vocab_size == hf.get_vocab_size()
    assert os.path.isfile(os.path.join(workdir, "hf_tokenizer.json"))
    text = TOY_DOCS["validation"][0] + " é ü\n"
    assert tok.decode(tok.encode(text)) == text
    with config.unlocked():
        config.data.tokenizer.path = ""
    assert data.make_tokenizer(config, workdir).fingerprint == tok.fingerprint  # from the workdir
    batch = next(data.make_train_iter(config, tok))
    assert batch["inputs"].shape == (8, 16) and batch["inputs"].max() < tok.vocab_size
    assert (data.split_tokens(config, tok, "train") == tok.eos_id).sum() == len(TOY_DOCS["train"])
