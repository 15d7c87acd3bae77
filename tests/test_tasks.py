"""In-context tasks (gptjax/evaluation/incontext.py): task files, k-shot prompts, the metrics of
the three formats, the shipped tasks' build script, and `gptjax evaluate-tasks` end to end
(gptjax/commands/use/evaluate_tasks.py)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from eval_helpers import tiny_workdir

from gptjax.commands.use.evaluate_tasks import expand_workdir
from gptjax.errors import UserError
from gptjax.evaluation import incontext as tasks


def write_task(directory, fmt, eval_rows, fewshot_rows, **spec):
    os.makedirs(directory, exist_ok=True)
    for name, rows in (("eval", eval_rows), ("fewshot", fewshot_rows)):
        with open(os.path.join(directory, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(directory, "task.json"), "w") as f:
        json.dump({"format": fmt, "eval": "eval.jsonl", "fewshot": "fewshot.jsonl", **spec}, f)
    return str(directory)


def local_tasks(root, text):
    """A cloze, a choice and a completion task made from lines of tiny_shakespeare."""
    lines = [ln for ln in text[:20000].splitlines() if len(ln.split()) >= 3]
    cloze = [{"context": ln.rsplit(" ", 1)[0], "target": " " + ln.rsplit(" ", 1)[1]}
             for ln in lines[:60]]
    choice = [{"context": a, "choices": ["\n" + b, "\n" + c, "\n" + d], "answer": i % 3}
              for i, (a, b, c, d) in enumerate(
                  zip(lines, lines[1:], lines[7:], lines[13:60], strict=False))]
    for row in choice:  # the true next line at index `answer`
        true = row["choices"].pop(0)
        row["choices"].insert(row["answer"], true)
    completion = [{"context": a + "\n", "target": b[:6]} for a, b in zip(lines, lines[1:60],
                                                                      strict=False)]
    return [write_task(os.path.join(root, "cloze"), "cloze", cloze[20:], cloze[:20]),
            write_task(os.path.join(root, "choice"), "choice", choice[10:], choice[:10]),
            write_task(os.path.join(root, "completion"), "completion", completion[10:],
                       completion[:10], until=["\n"], max_tokens=6)]


class StubScorer:
    """Known log-likelihoods and generations, to check the metrics' arithmetic."""

    def loglikelihood(self, pairs):
        return [(-3.0 if "long" in cont else -2.0, cont == " yes")
                for _, cont in pairs]

    def generate_until(self, requests):
        return [" Ay \n" if "?" in context else "No" for context, _, _ in requests]


def test_metrics_of_each_format(tmp_path):
    cloze = tasks.load_task(write_task(tmp_path / "a", "cloze", [
        {"context": "q", "target": " yes"}, {"context": "q", "target": " no"}], [
        {"context": "x", "target": " y"}]))
    m = tasks.run_task(cloze, StubScorer(), shots=0)
    assert m["acc"] == 0.5 and m["perplexity"] == pytest.approx(math.exp(2.0))
    # Raw log-likelihood prefers the short wrong choice; per character, the long right one.
    choice = tasks.load_task(write_task(tmp_path / "b", "choice", [
        {"context": "q", "choices": [" bad", " a long right one"], "answer": 1}], [
        {"context": "x", "choices": [" y", " z"], "answer": 0}]))
    m = tasks.run_task(choice, StubScorer(), shots=0)
    assert (m["acc"], m["acc_norm"], m["chance"]) == (0.0, 1.0, 0.5)
    completion = tasks.load_task(write_task(tmp_path / "c", "completion", [
        {"context": "Well?", "target": "Ay"}, {"context": "Well.", "target": "Ay"}], [
        {"context": "x", "target": "y"}]))
    assert tasks.run_task(completion, StubScorer(), shots=0)["exact_match"] == 0.5


def test_k_shot_prompts_are_seeded_per_example(tmp_path):
    rows = [{"context": f"c{i}:", "target": f" t{i}"} for i in range(30)]
    task = tasks.load_task(write_task(tmp_path, "cloze", rows[:5], rows[5:], separator="\n"))
    assert tasks.prompt(task, 2, 0) == "c2:"
    three = tasks.prompt(task, 2, 3)
    shots, query = three.split("\n")[:3], three.split("\n")[3]
    assert query == "c2:" and len(set(shots)) == 3
    assert all(s.split(":")[0] in {f"c{i}" for i in range(5, 30)} for s in shots)
    assert all(s == s.split(":")[0] + ": t" + s.split(":")[0][1:] for s in shots)
    assert tasks.prompt(task, 2, 3) == three and tasks.prompt(task, 3, 3) != three
    with pytest.raises(UserError, match="26 shots but its fewshot split has 25"):
        tasks.prompt(task, 0, 26)


def test_bad_task_files_are_user_errors(tmp_path):
    good = [{"context": "a", "choices": [" b", " c"], "answer": 0}]
    with pytest.raises(UserError, match="no such task"):
        tasks.load_task(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="format='mc'"):
        tasks.load_task(write_task(tmp_path / "f", "mc", good, good))
    with pytest.raises(UserError, match="unknown keys \\['shots'\\]"):
        tasks.load_task(write_task(tmp_path / "k", "choice", good, good, shots=3))
    bad = good + [{"context": "a", "choices": [" b", " c"], "answer": 2}]
    with pytest.raises(UserError, match="eval.jsonl:2: answer=2 must index choices"):
        tasks.load_task(write_task(tmp_path / "a", "choice", bad, good))
    with pytest.raises(UserError, match="fewshot.jsonl:1: a cloze example needs context, "
                                        "target; missing target"):
        tasks.load_task(write_task(tmp_path / "c", "cloze", [{"context": "a", "target": "b"}],
                                   [{"context": "a"}]))


SHORT = ("shakespeare_wordend", "shakespeare_wordorder", "shakespeare_spelling",
         "austen_wordend")
LONG = ("shakespeare_lastword", "shakespeare_nextline", "austen_nextsent")


def test_build_script_reproduces_the_shipped_tasks(tmp_path, repo_dir, shared_dir):
    r = subprocess.run([sys.executable, str(repo_dir / "tasks" / "build.py"), "--data",
                        str(shared_dir / "data"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    charset = set((shared_dir / "data/tiny_shakespeare/input.txt").read_text())
    for name in SHORT + LONG:
        for file in ("task.json", "eval.jsonl", "fewshot.jsonl"):
            built = (tmp_path / name / file).read_bytes()
            assert built == (repo_dir / "tasks" / name / file).read_bytes(), (name, file)
        task = tasks.load_task(str(tmp_path / name))
        assert len(task.eval_rows) >= 200 and len(task.fewshot_rows) >= 50
        for row in task.eval_rows + task.fewshot_rows:
            texts = [row["context"], *row.get("choices", [row.get("target")])]
            assert all(set(t) <= charset for t in texts), (name, row)
            if name in SHORT:  # a 5-shot prompt (6 examples, 5 newlines) fits 128 characters
                assert len(row["context"] + tasks.answer(task, row)) <= 21, (name, row)
            if name in SHORT and task.format == "choice":
                check_distractors(name, row)


def check_distractors(name, row):
    """Distractors are the true words in another order / with one adjacent-letter swap."""
    true, choices = row["choices"][row["answer"]], row["choices"]
    assert len(set(choices)) == 4 and all(len(c) == len(true) for c in choices), row
    for wrong in (c for c in choices if c != true):
        if name.endswith("wordorder"):
            assert sorted(wrong.split()) == sorted(true.split()), row
        else:
            diff = [i for i, (a, b) in enumerate(zip(true, wrong, strict=True)) if a != b]
            assert len(diff) == 2 and diff[1] == diff[0] + 1, row
            assert true[diff[0]] == wrong[diff[1]] and true[diff[1]] == wrong[diff[0]], row


def test_spelling_needs_letter_pairs_and_word_order_more(repo_dir, shared_dir):
    """A character bigram model of tiny_shakespeare's training split (the first 90%) picks the
    true spelling in most examples, but is at chance on word order: permuting words changes
    few letter pairs, so that task asks a model for more than letter statistics."""
    text = (shared_dir / "data/tiny_shakespeare/input.txt").read_text()
    index = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = np.array([index[c] for c in text[:int(0.9 * len(text))]])
    counts = np.ones((len(index), len(index)))
    np.add.at(counts, (ids[:-1], ids[1:]), 1)
    logp = np.log(counts / counts.sum(1, keepdims=True))

    def accuracy(name):
        task = tasks.load_task(str(repo_dir / "tasks" / name))
        hits = []
        for row in task.eval_rows:
            pairs = [row["context"][-1] + c for c in row["choices"]]
            scores = [sum(logp[index[a], index[b]] for a, b in zip(p, p[1:], strict=False))
                      for p in pairs]
            hits.append(int(np.argmax(scores)) == row["answer"])
        return np.mean(hits)

    assert accuracy("shakespeare_spelling") > 0.6
    assert abs(accuracy("shakespeare_wordorder") - 0.25) < 0.06


def test_shipped_tasks_are_found_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tasks.load_task("shakespeare_wordend").name == "shakespeare_wordend"


def test_a_sweep_workdir_stands_for_its_finished_runs(tmp_path):
    sweep = tmp_path / "sweep"
    for name, done in (("b_1e12", True), ("a_1e12", True), ("c_1e12", False)):
        (sweep / "runs" / name).mkdir(parents=True)
        (sweep / "runs" / name / "config.json").write_text("{}")
        if done:
            (sweep / "runs" / name / "result.json").write_text("{}")
    assert expand_workdir(str(sweep)) == [str(sweep)]  # not a sweep: as given
    (sweep / "sweep_config.json").write_text("{}")
    assert expand_workdir(str(sweep)) == [str(sweep / "runs" / n) for n in ("a_1e12",
                                                                               "b_1e12")]
    assert expand_workdir(str(sweep / "runs" / "c_1e12")) == [str(sweep / "runs/c_1e12")]
    for name in ("a_1e12", "b_1e12"):
        (sweep / "runs" / name / "result.json").unlink()
    with pytest.raises(UserError, match="a sweep without finished runs"):
        expand_workdir(str(sweep))


def test_evaluate_tasks_cli(tmp_path, shakespeare_manual_dir, repo_dir):
    text_file = str(shakespeare_manual_dir / "input.txt")
    workdir = tiny_workdir(str(tmp_path / "run"), text_file)
    refs = local_tasks(str(tmp_path / "tasks"), open(text_file).read())
    refs.append(str(repo_dir / "tasks" / "shakespeare_wordorder"))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "gptjax", "evaluate-tasks", *args],
                              capture_output=True, text=True, timeout=600, env=env)

    r = cli("--workdir", workdir, "--tasks", ",".join(refs), "--shots", "0,2", "--limit", "8",
            "--json", "--show-prompt", "--plot", str(tmp_path / "acc.png"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [(x["task"], x["shots"], x["n"]) for x in out["results"]] == [
        (name, k, 8) for name in ("cloze", "choice", "completion", "shakespeare_wordorder")
        for k in (0, 2)]
    for x in out["results"]:
        assert {"acc", "perplexity", "acc_norm", "exact_match"} & set(x)
        assert x["non_embedding_params"] > 0
    assert out["throughput"][0]["requests"] == 2 * (8 + 8 * 3 + 8 + 8 * 4)
    assert "2-shot prompt of example 0" in r.stderr and (tmp_path / "acc.png").stat().st_size
    bad = cli("--workdir", workdir, "--tasks", refs[0], "--shots", "0,x")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--shots" in bad.stderr
