"""lm-evaluation-harness integration (gptjax/evaluation/harness.py, the optional `gptjax[eval]`
extra): `python -m gptjax.evaluation.harness` runs local harness tasks end to end with the
numbers of `gptjax evaluate-tasks`, and on a GPT-2 imported from transformers the harness's
log-likelihoods equal those of transformers' own model (`--model hf`) within 1e-4."""

import json
import os
import subprocess
import sys
import tempfile
import types

import numpy as np
import pytest
from eval_helpers import tiny_workdir
from test_interop import _random_hf_model
from test_tasks import local_tasks

from gptjax.evaluation import incontext as tasks
from gptjax.inference import hf_gpt2 as interop

# Offline: the harness reads the local JSONL through the `json` dataset loader only.
HF_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
          "HF_DATASETS_CACHE": os.path.join(tempfile.gettempdir(), "gptjax-test-hf-datasets")}
os.environ.update(HF_ENV)
lm_eval = pytest.importorskip("lm_eval", reason="install the optional extra: "
                                                "pip install 'gptjax[eval]'")


@pytest.mark.slow  # a training plus two harness runs (~1 min)
def test_harness_cli_equals_evaluate_tasks(tmp_path, shakespeare_manual_dir, repo_dir):
    text_file = str(shakespeare_manual_dir / "input.txt")
    workdir = tiny_workdir(str(tmp_path / "run"), text_file)
    refs = local_tasks(str(tmp_path / "tasks"), open(text_file).read())
    refs.append(str(repo_dir / "tasks" / "shakespeare_wordend"))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **HF_ENV}
    ours = subprocess.run(
        [sys.executable, "-m", "gptjax", "evaluate-tasks", "--workdir", workdir, "--tasks",
         ",".join(refs), "--limit", "12", "--json"],
        capture_output=True, text=True, timeout=600, env=env)
    assert ours.returncode == 0, ours.stderr
    task_list = [tasks.load_task(r) for r in refs]
    tasks.write_harness_yaml(task_list, str(tmp_path / "yaml"))
    r = subprocess.run(
        [sys.executable, "-m", "gptjax.evaluation.harness", "--model", "gptjax", "--model_args",
         f"workdir={workdir}", "--tasks", ",".join(t.name for t in task_list),
         "--include_path", str(tmp_path / "yaml"), "--limit", "12", "--batch_size", "16",
         "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    [results_file] = [os.path.join(d, f) for d, _, files in os.walk(tmp_path / "out")
                      for f in files if f.startswith("results")]
    with open(results_file) as f:
        harness = json.load(f)["results"]
    for row in json.loads(ours.stdout)["results"]:
        theirs = harness[row["task"]]
        for metric in ("acc", "acc_norm", "perplexity", "exact_match"):
            if metric in row:
                assert theirs[f"{metric},none"] == pytest.approx(row[metric], rel=1e-5), (
                    row["task"], metric)


def test_generate_until_honours_top_k_and_top_p(tmp_path, shakespeare_manual_dir):
    """Hot sampling (temperature 5 over 65 characters) filtered to the single most likely
    token by top_k=1 or a tiny top_p is greedy decoding; without the filter it is not."""
    from gptjax.evaluation.harness import GPTJaxLM
    lm = GPTJaxLM(tiny_workdir(str(tmp_path / "run"), str(shakespeare_manual_dir /
                                                           "input.txt")), batch_size=4)
    context = "ROMEO:\nWhat light"

    def request(**kwargs):
        return types.SimpleNamespace(args=(context, {"until": [], "max_gen_toks": 20,
                                                     **kwargs}))
    hot = {"do_sample": True, "temperature": 5.0}
    greedy, top_k, top_p, unfiltered = lm.generate_until([
        request(), request(**hot, top_k=1), request(**hot, top_p=1e-4), request(**hot)])
    assert len(greedy) == 20 and top_k == greedy and top_p == greedy
    assert unfiltered != greedy


# ----------------------------------------------------------------------------- parity


def _bpe_tokenizer(text, transformers):
    """A byte-level BPE (GPT-2's kind) of 300 tokens, trained here; <|endoftext|> is EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def _rolling_task(root, text):
    """Documents longer than the 64-token window: several rolling windows each."""
    os.makedirs(root, exist_ok=True)
    data = os.path.join(root, "docs.jsonl")
    with open(data, "w") as f:
        for i in range(6):
            f.write(json.dumps({"text": text[i * 700:i * 700 + 150 + 90 * i]}) + "\n")
    config = {"task": "rolling", "dataset_path": "json", "output_type": "loglikelihood_rolling",
              "dataset_kwargs": {"data_files": {"test": data}}, "test_split": "test",
              "doc_to_text": "", "doc_to_target": "{{text}}",
              "metric_list": [{"metric": "word_perplexity"}]}
    with open(os.path.join(root, "rolling.yaml"), "w") as f:
        json.dump(config, f)


def _loglikelihoods(result) -> dict:
    """{task: [every log-likelihood of every request]} from simple_evaluate's samples."""
    out = {}
    for task, samples in result["samples"].items():
        values = []
        for s in sorted(samples, key=lambda s: s["doc_id"]):
            for resp in s["resps"]:
                value = resp[0]
                values.append(value[0] if isinstance(value, (list, tuple)) else value)
        out[task] = np.asarray(values, np.float64)
    return out


def test_loglikelihoods_match_transformers_gpt2(tmp_path, shakespeare_manual_dir, repo_dir):
    torch = pytest.importorskip("torch", reason="pip install 'gptjax[interop-test]'")
    transformers = pytest.importorskip("transformers", reason="pip install "
                                                              "'gptjax[interop-test]'")
    pytest.importorskip("accelerate", reason="pip install 'gptjax[eval-test]'")
    from lm_eval.tasks import TaskManager

    import gptjax.evaluation.harness  # noqa: F401  registers --model gptjax
    text = (shakespeare_manual_dir / "input.txt").read_text()[:30000]
    hf_dir = tmp_path / "hf"
    tokenizer = _bpe_tokenizer(text, transformers)
    eos = tokenizer.eos_token_id
    model = _random_hf_model(torch, transformers, vocab_size=len(tokenizer), n_positions=64,
                             n_layer=2, bos_token_id=eos, eos_token_id=eos)
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    # configs/gpt2.py pads the vocabulary to a multiple of 128: padded columns are masked.
    interop.import_to_workdir(str(hf_dir), str(tmp_path / "run"),
                              str(repo_dir / "configs" / "gpt2.py"))
    refs = local_tasks(str(tmp_path / "tasks"), text)[:2]  # cloze and choice
    task_list = [tasks.load_task(r) for r in refs]
    tasks.write_harness_yaml(task_list, str(tmp_path / "yaml"))
    _rolling_task(str(tmp_path / "yaml"), text)
    manager = TaskManager(include_path=str(tmp_path / "yaml"))
    names = [t.name for t in task_list] + ["rolling"]
    common = dict(tasks=names, task_manager=manager, log_samples=True, bootstrap_iters=0,
                  limit=16, batch_size=8)
    hf = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={hf_dir},dtype=float32",
                                 device="cpu", **common)
    ours = lm_eval.simple_evaluate(model="gptjax", model_args=f"workdir={tmp_path / 'run'}",
                                   **common)
    want, got = _loglikelihoods(hf), _loglikelihoods(ours)
    for name in names:
        assert len(got[name]) == len(want[name]) > 0
        # A log-likelihood sums hundreds (choices) to thousands (rolling windows) of nats:
        # float32 resolves such sums to ~1e-7 relative per step and the two stacks add in
        # different orders; a choice of -250 nats was seen 8.4e-7 relative (1.8e-4) apart
        # under load, so the bound is 1e-6 relative besides 1e-4 absolute.
        rtol = 1e-6
        np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=rtol, err_msg=name)
    assert {k: v for k, v in ours["results"]["choice"].items() if "acc" in k} == {
        k: v for k, v in hf["results"]["choice"].items() if "acc" in k}
