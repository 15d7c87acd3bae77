"""GPT-2's byte-level BPE (data.tokenizer.kind=gpt2): trained on Austen, loaded from GPT-2-style
vocab.json + merges.txt, chosen by configs/gpt2.py and gpt3.py; and the vocabulary rule of
`gptjax train` (model.vocab_size is never changed silently)."""

import json

import pytest

from gptjax.config.loader import get_config
from gptjax.data import gpt2_bpe, make_tokenizer
from gptjax.errors import UserError
from gptjax.training.recipes import check_vocab


@pytest.fixture(scope="module")
def austen(austen_path):
    return austen_path.read_text()[:400_000]


@pytest.fixture(scope="module")
def trained(austen):
    return gpt2_bpe.train([austen], 1000)


def test_trained_on_austen_round_trips(trained, austen):
    assert trained.vocab_size == 1000 and trained.kind == "gpt2"
    assert trained.eos_id is not None
    for text in (austen[:3000], "Émile — naïve café ☕\n\n  spaces", "<|endoftext|>"):
        assert trained.decode(trained.encode(text)) == text
    assert trained.encode("<|endoftext|>") == [trained.eos_id]
    assert len(trained.encode(austen[:3000])) < 3000 / 2.5  # merges, not bytes


def test_loads_vocab_and_merges(trained, austen, tmp_path):
    """GPT-2 ships vocab.json + merges.txt: a directory of them, or the two paths."""
    inner = json.loads(trained.data)
    (tmp_path / "vocab.json").write_text(json.dumps(inner["model"]["vocab"]))
    merges = [" ".join(m) if isinstance(m, list) else m for m in inner["model"]["merges"]]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    text = austen[5000:8000]
    for path in (str(tmp_path), f"{tmp_path}/vocab.json,{tmp_path}/merges.txt"):
        tok = gpt2_bpe.load(path)
        assert tok.encode(text) == trained.encode(text) and tok.vocab_size == 1000
    with pytest.raises(UserError, match="vocab.json"):
        gpt2_bpe.load(str(tmp_path / "missing"))


def test_kind_gpt2_trains_saves_and_reloads(austen_path, tmp_path):
    config = get_config("configs/smoke.py:tiny", [
        "--config.data.source=files", f"--config.data.files={austen_path}",
        "--config.data.tokenizer.kind=gpt2", "--config.data.tokenizer.vocab_size=600",
        "--config.data.max_documents=1"])
    tok = make_tokenizer(config, str(tmp_path))
    assert tok.vocab_size == 600 and (tmp_path / "hf_tokenizer.json").exists()
    again = make_tokenizer(config, str(tmp_path))
    assert again.encode("Mr. Darcy") == tok.encode("Mr. Darcy")


def test_paper_configs_use_gpt2_bpe():
    for spec in ("configs/gpt2.py:124m", "configs/gpt3.py:xl"):
        c = get_config(spec)
        assert c.data.tokenizer.kind == "gpt2" and c.model.vocab_size == 50257
        assert not c.model.vocab_from_tokenizer


def test_vocab_mismatch_is_one_error_unless_the_tokenizer_decides(trained):
    config = get_config("configs/gpt2.py:124m")
    with pytest.raises(UserError, match="vocab_size=50257 but the gpt2 tokenizer has 1000"):
        check_vocab(config, trained)
    config = get_config("configs/smoke.py", ["--config.model.vocab_from_tokenizer=true"])
    check_vocab(config, trained)
    assert config.model.vocab_size == 1000
