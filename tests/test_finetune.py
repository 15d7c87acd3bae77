"""Fine-tuning on prompt/response JSONL: response-only loss weights, and `gptjax finetune` from a
pretrained smoke checkpoint lowers the loss on a small task built from tiny_shakespeare."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.config.loader import get_config
from gptjax.data.tokenizer import CharTokenizer
from gptjax.errors import UserError
from gptjax.training import finetune
from gptjax.training.loss import cross_entropy
from gptjax.workdir import load_params, open_run, read_config


@pytest.fixture(scope="module")
def shakespeare_lines(shakespeare_manual_dir):
    text = (shakespeare_manual_dir / "input.txt").read_text()
    return text, [ln for ln in text.splitlines() if ln.strip()]


def test_only_response_targets_carry_loss(shakespeare_lines):
    text, _ = shakespeare_lines
    tok = CharTokenizer(sorted(set(text)) , eos=True)
    prompt, response = "ROMEO:\n", "Ay."
    inputs, targets, weights = finetune.encode_example(tok, prompt, response, 16, add_eos=True)
    p, r = tok.encode(prompt), tok.encode(response) + [tok.eos_id]
    assert inputs[:len(p) + len(r) - 1].tolist() == (p + r)[:-1]
    assert targets[:len(p) + len(r) - 1].tolist() == (p + r)[1:]
    # Target t predicts token t + 1: weight 1 exactly where that token is part of the response.
    assert weights.tolist() == [0.0] * (len(p) - 1) + [1.0] * len(r) + [0.0] * (
        16 - len(p) - len(r) + 1)
    assert tok.decode(targets[weights > 0][:-1]) == response

    # The loss ignores prompt and padding targets entirely, and sees every response target.
    logits = jax.random.normal(jax.random.key(0), (1, 16, tok.vocab_size))
    def loss(t):
        total, weight = cross_entropy(logits, jnp.asarray(t)[None], weights[None])
        return float(total / weight)
    other = targets.copy()
    other[weights == 0] = (other[weights == 0] + 5) % tok.vocab_size
    assert loss(other) == loss(targets)
    changed = targets.copy()
    changed[np.flatnonzero(weights)[0]] += 1
    assert loss(changed) != loss(targets)

    # Too long: the prompt loses its start, the response keeps its head.
    i2, t2, w2 = finetune.encode_example(tok, "x" * 30 + "END", "abcdefghij", 8, add_eos=False)
    assert tok.decode(i2[:1]) == "D" and tok.decode(t2[w2 > 0]) == "abcdefgh" and w2.sum() == 8
    i3, t3, w3 = finetune.encode_example(tok, "x" * 30 + "END", "abc", 8, add_eos=False)
    assert tok.decode(i3) == "xxxxxEND"[-6:] + "ab" and tok.decode(t3[w3 > 0]) == "abc"


def test_bad_jsonl_is_a_user_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "no response"}\n')
    with pytest.raises(UserError, match="bad.jsonl:2"):
        finetune.read_jsonl(str(path), "prompt", "response")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, shakespeare_manual_dir):
    from gptjax.training import train
    workdir = tmp_path_factory.mktemp("ft") / "pre"
    config = get_config("configs/smoke.py:tiny", [
        "--config.data.source=files",
        f"--config.data.files={shakespeare_manual_dir / 'input.txt'}",
        "--config.model.d_model=32", "--config.model.d_ff=128", "--config.model.head_dim=16",
        "--config.model.max_seq_len=48", "--config.data.seq_len=48", "--config.train.steps=20",
        "--config.optim.lr=3e-3", "--config.train.eval_every=0", "--config.train.plot=false",
        "--config.train.async_checkpoint=false"])
    train.train(config, str(workdir))
    return workdir


def test_finetune_cli_lowers_the_task_loss(pretrained, shakespeare_lines, tmp_path):
    """Task: given a line of Shakespeare, continue with the next line."""
    _, lines = shakespeare_lines
    path = tmp_path / "task.jsonl"
    with open(path, "w") as f:
        for a, b in zip(lines[:48], lines[1:49], strict=True):
            f.write(json.dumps({"prompt": a + "\n", "response": b + "\n"}) + "\n")
    out = tmp_path / "ft"
    r = subprocess.run(
        [sys.executable, "-m", "gptjax", "finetune", "--config", "configs/finetune.py:smoke",
         "--workdir", str(out), f"--config.finetune.init_from={pretrained}",
         f"--config.finetune.train_file={path}", f"--config.finetune.eval_file={path}",
         "--config.data.seq_len=48", "--config.train.batch_size=8", "--config.train.steps=60",
         "--config.train.log_every=20", "--config.train.eval_every=0", "--config.optim.lr=3e-3",
         "--config.optim.warmup_steps=5"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [x["loss"] for x in records if x["split"] == "eval"]
    assert [x["step"] for x in records if x["split"] == "eval"] == [0, 60]
    assert evals[-1] < evals[0] - 0.2, evals
    assert "held-out response loss" in r.stdout

    # The result is an ordinary workdir: it loads for inference with its tokenizer.
    from gptjax.storage import checkpoint
    config, params, tok, _ = open_run(str(out))
    assert config.finetune.train_file == str(path) and tok.vocab_size == config.model.vocab_size
    assert int(checkpoint.Checkpointer(str(out), read_only=True).latest_step()) == 60


def test_finetune_killed_mid_save_resumes_bit_identical(pretrained, shakespeare_lines, tmp_path):
    """Fine-tuning runs through the training loop: a kill -9 right after the save of step 8
    started leaves step 4 as the newest complete checkpoint; rerunning the same command resumes
    there (params, Adam state, position in the examples) and ends equal to an unbroken run."""
    from fault_helpers import subprocess_env

    from gptjax.storage import checkpoint
    _, lines = shakespeare_lines
    path = tmp_path / "task.jsonl"
    with open(path, "w") as f:
        for a, b in zip(lines[:40], lines[1:41], strict=True):
            f.write(json.dumps({"prompt": a + "\n", "response": b + "\n"}) + "\n")

    def run(workdir, fault=None):
        cmd = [sys.executable, "tests/faults.py", "finetune",
               "--config", "configs/finetune.py:smoke", "--workdir", str(workdir),
               f"--config.finetune.init_from={pretrained}", f"--config.finetune.train_file={path}",
               "--config.data.seq_len=48", "--config.train.batch_size=8",
               "--config.train.steps=12", "--config.train.ckpt_every=4",
               "--config.train.log_every=4", "--config.train.eval_every=-1",
               "--config.train.plot=false", "--config.optim.warmup_steps=2"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env=subprocess_env(fault))

    ref, broken = tmp_path / "ref", tmp_path / "broken"
    assert run(ref).returncode == 0
    killed = run(broken, fault="kill_after_save:8")
    assert killed.returncode == -9, killed.stderr
    assert checkpoint.Checkpointer(str(broken), read_only=True).latest_step() == 4
    resumed = run(broken)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 4" in resumed.stdout
    config = read_config(str(ref))
    a, _ = load_params(str(ref), config)
    b, step = load_params(str(broken), config)
    assert step == 12
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
