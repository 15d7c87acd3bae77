"""`gptjax serve` (gptjax/serving/): the official `openai` client against a server on 127.0.0.1,
bad input answered in OpenAI's error shape while the server keeps serving, and the
continuous-batching engine's pieces (per-row sampling, stop strings, slots joining and leaving).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from doc_commands import commands

from gptjax import cli
from gptjax.config.loader import get_config
from gptjax.data.tokenizer import CharTokenizer
from gptjax.inference import generate
from gptjax.inference import quantization as quant
from gptjax.inference.rows import Rows, filtered_logits
from gptjax.inference.sample import sample
from gptjax.model.gpt import GPT, GPTConfig
from gptjax.workdir import open_run, write_params

httpx = pytest.importorskip("httpx", reason="the serve extra: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the serve-test extra: pip install -e "
                                              "'.[serve-test]'")
from fastapi.testclient import TestClient  # noqa: E402  (the serve extra)

from gptjax.serving import app as api  # noqa: E402
from gptjax.serving import engine  # noqa: E402  (needs the serve extra)
from gptjax.serving import server as serving  # noqa: E402

KEY = "test-key"


def tiny_workdir(path, shakespeare_manual_dir, seed=0, extra=()):
    """A workdir as training leaves it, holding random params of a char-level model."""
    text = (shakespeare_manual_dir / "input.txt").read_text()
    tok = CharTokenizer.train([[text]], eos=False)
    config = get_config("configs/smoke.py:tiny", [
        "--config.data.source=files", f"--config.model.vocab_size={tok.vocab_size}",
        "--config.model.max_seq_len=64", *extra])
    model = GPT(GPTConfig.from_config(config.model))
    params = nn.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"])
    write_params(str(path), config, params)
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shakespeare_manual_dir):
    return tiny_workdir(tmp_path_factory.mktemp("serve") / "tiny", shakespeare_manual_dir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(argv, env=None, timeout=180):
    """`python -m gptjax serve ARGV` on a free port -> (process, base URL) once /health answers."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gptjax", "serve", *map(str, argv),
                             "--port", str(port)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("server did not start")


def readme_serve_command() -> list[str]:
    """README's `gptjax serve` line (after `gptjax serve`), as a new user would run it."""
    found = [c for c in commands() if c.doc == "README.md" and c.argv[:2] == ["gptjax", "serve"]]
    assert len(found) == 1, found
    return found[0].argv[2:]


@pytest.fixture(scope="module")
def server(workdir):
    """README's serve command on the tiny workdir (+ smaller limits, and a key from the
    environment variable)."""
    argv = [str(workdir) if a == "runs/quickstart" else a for a in readme_serve_command()]
    assert str(workdir) in argv
    proc, url = start_server([*argv, "--slots", "4", "--max-body", "20000"],
                             env={"GPTJAX_API_KEY": KEY})
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


# ----------------------------------------------------------------------------- real clients


def test_openai_client_models_completions_chat(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    r = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=8, temperature=0,
                                  logprobs=2)
    choice = r.choices[0]
    assert len(choice.text) == 8 and choice.finish_reason == "length"
    assert r.usage.prompt_tokens == 6 and r.usage.completion_tokens == 8
    assert "".join(choice.logprobs.tokens) == choice.text
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    assert all(lp <= max(top.values()) + 1e-6 for lp, top in
               zip(choice.logprobs.token_logprobs, choice.logprobs.top_logprobs, strict=True))
    # n, several prompts, a stop string; seeded sampling repeats itself
    r = client.completions.create(model="tiny", prompt=["To be", "or not"], n=2, max_tokens=6,
                                  temperature=1.0, seed=7, extra_body={"top_k": 5})
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    again = client.completions.create(model="tiny", prompt=["To be", "or not"], n=2,
                                      max_tokens=6, temperature=1.0, seed=7,
                                      extra_body={"top_k": 5})
    assert [c.text for c in r.choices] == [c.text for c in again.choices]
    text = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=8,
                                     temperature=0).choices[0].text
    stop = text[3:5]
    cut = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=8, temperature=0,
                                    stop=[stop])
    assert cut.choices[0].text == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    chat = client.chat.completions.create(model="tiny", max_tokens=5, temperature=0, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who art thou?"}])
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.prompt_tokens == len("System: Be brief.\nUser: Who art thou?\nAssistant:")


def test_echo_logprobs_are_the_prompts_log_likelihood(client, workdir):
    """What lm-evaluation-harness's OpenAI-compatible model asks for (echo, logprobs): the
    prompt's log-probabilities, equal to a full forward of the model."""
    prompt = "To be, or not to be"
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=0, echo=True,
                                  logprobs=1, temperature=0)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == prompt and "".join(lp.tokens) == prompt
    assert lp.token_logprobs[0] is None and lp.text_offset[:3] == [0, 1, 2]
    config, params, tok, _ = open_run(str(workdir))
    model = GPT(GPTConfig.from_config(config.model))
    ids = tok.encode(prompt)
    logits = model.apply({"params": params}, jnp.asarray([ids]))[0, :, :tok.vocab_size]
    want = jax.nn.log_softmax(logits, axis=-1)[np.arange(len(ids) - 1), ids[1:]]
    np.testing.assert_allclose(lp.token_logprobs[1:], np.asarray(want), atol=1e-4)
    more = client.completions.create(model="tiny", prompt=prompt, max_tokens=3, echo=True,
                                     logprobs=1, temperature=0)
    assert len(more.choices[0].logprobs.tokens) == len(ids) + 3
    assert more.choices[0].text.startswith(prompt) and len(more.choices[0].text) == len(ids) + 3


def test_tokenizer_routes_tokenize_as_the_served_model(server, workdir):
    """vLLM's /tokenizer_info, /tokenize, /detokenize (lm-evaluation-harness's remote
    tokenizer): the workdir's ids and text; bad input is a 400 in OpenAI's shape."""
    auth = {"Authorization": f"Bearer {KEY}"}
    _, _, tok, _ = open_run(str(workdir))
    info = httpx.get(f"{server}/tokenizer_info", headers=auth, timeout=30).json()
    assert info["eos_token"] is None and info["bos_token"] == "\n"  # char model, one document
    assert info["model_max_length"] == 64
    text = "To be, or not to be"
    r = httpx.post(f"{server}/tokenize", json={"prompt": text, "add_special_tokens": False},
                   headers=auth, timeout=30).json()
    assert r["tokens"] == tok.encode(text) and r["count"] == len(text)
    back = httpx.post(f"{server}/detokenize", json={"tokens": r["tokens"]}, headers=auth,
                      timeout=30).json()
    assert back == {"prompt": text}
    for path, body in (("tokenize", {"prompt": "\u4e2d"}), ("detokenize", {"tokens": [10**6]}),
                       ("tokenize", {"prompt": 3})):
        r = httpx.post(f"{server}/{path}", json=body, headers=auth, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["message"], (path, body)
    assert httpx.post(f"{server}/tokenize", json={"prompt": "a"}, timeout=30).status_code == 401


def test_lm_eval_local_completions_equals_the_in_process_adapter(tmp_path,
                                                                 shakespeare_manual_dir):
    """lm-evaluation-harness's OpenAI-compatible `local-completions`, pointed at the server
    (its remote tokenizer: no tokenizer files), gives `--model gptjax`'s log-likelihoods."""
    lm_eval = pytest.importorskip("lm_eval", reason="pip install -e '.[eval]'")
    pytest.importorskip("tenacity", reason="lm-eval's API models: pip install -e '.[eval-test]'")
    from eval_helpers import tiny_workdir
    from lm_eval.tasks import TaskManager
    from test_harness import _loglikelihoods  # (importing it also sets HF_*_OFFLINE)
    from test_tasks import local_tasks

    import gptjax.evaluation.harness  # noqa: F401  registers --model gptjax
    from gptjax.evaluation import incontext as tasks
    text_file = shakespeare_manual_dir / "input.txt"
    run = tiny_workdir(str(tmp_path / "run"), str(text_file), window=128)
    task_list = [tasks.load_task(r) for r in local_tasks(str(tmp_path / "tasks"),
                                                         text_file.read_text())[:2]]
    tasks.write_harness_yaml(task_list, str(tmp_path / "yaml"))
    names = [t.name for t in task_list]  # cloze and multiple choice
    common = dict(tasks=names, task_manager=TaskManager(include_path=str(tmp_path / "yaml")),
                  log_samples=True, bootstrap_iters=0, limit=6, batch_size=4)
    proc, url = start_server(["--workdir", run, "--slots", "1"])
    try:
        served = lm_eval.simple_evaluate(
            model="local-completions", model_args=f"base_url={url}/v1/completions,model=run,"
            f"max_length=128,max_retries=1", **common)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ours = lm_eval.simple_evaluate(model="gptjax", model_args=f"workdir={run}", **common)
    want, got = _loglikelihoods(ours), _loglikelihoods(served)
    for name in names:
        assert len(got[name]) == len(want[name]) > 0
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-4)


def test_streaming_equals_non_streaming(client):
    full = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=12,
                                     temperature=0).choices[0].text
    chunks = list(client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=12,
                                            temperature=0, stream=True))
    assert len(chunks) > 2 and "".join(c.choices[0].text for c in chunks) == full
    assert chunks[-1].choices[0].finish_reason == "length"
    messages = [{"role": "user", "content": "ROMEO:"}]
    whole = client.chat.completions.create(model="tiny", max_tokens=10, temperature=0,
                                           messages=messages).choices[0].message.content
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", max_tokens=10, temperature=0, messages=messages, stream=True)]
    assert "".join(parts) == whole


def test_greedy_equals_gptjax_sample(client, workdir):
    prompt = "First Citizen:"
    expected = sample(str(workdir), [prompt], max_new_tokens=20, num_samples=1,
                      temperature=0.0)[0]
    got = client.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0)
    assert prompt + got.choices[0].text == expected


def test_errors_in_openai_shape_and_the_server_keeps_serving(server, client):
    bad_key = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="hi", max_tokens=100_000)

    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = f"{server}/v1/completions"
    ok = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    cases = {
        "malformed JSON": (b'{"model": "tiny", "prompt": ', 400),
        "invalid UTF-8": (b'{"model": "tiny", "prompt": "\xff\xfe"}', 400),
        "wrong type": (json.dumps({**ok, "max_tokens": "many"}).encode(), 400),
        "list of dicts": (json.dumps({**ok, "prompt": [{"a": 1}]}).encode(), 400),
        "no prompt": (json.dumps({"model": "tiny"}).encode(), 400),
        "empty prompt": (json.dumps({**ok, "prompt": ""}).encode(), 400),
        "over-long prompt": (json.dumps({**ok, "prompt": "a" * 70}).encode(), 400),
        "negative max_tokens": (json.dumps({**ok, "max_tokens": -1}).encode(), 400),
        "huge max_tokens": (json.dumps({**ok, "max_tokens": 10**12}).encode(), 400),
        "bad temperature": (json.dumps({**ok, "temperature": -1}).encode(), 400),
        "unknown character": (json.dumps({**ok, "prompt": "\u4e2d"}).encode(), 400),
        "lone surrogate": (b'{"model": "tiny", "prompt": "\\ud800", "max_tokens": 2}', 400),
        "chat, lone surrogate": (b'{"model": "tiny", "messages": [{"role": "user", '
                                 b'"content": "\\ud800"}]}', 400, "chat/completions"),
        "chat, no messages": (json.dumps({"model": "tiny", "messages": []}).encode(), 400,
                              "chat/completions"),
        "chat, bad role": (json.dumps({"model": "tiny", "messages": [
            {"role": "robot", "content": "hi"}]}).encode(), 400, "chat/completions"),
        "bad token id": (json.dumps({**ok, "prompt": [10**6]}).encode(), 400),
        "body too large": (json.dumps({**ok, "prompt": "a" * 30000}).encode(), 413),
        "unknown model": (json.dumps({**ok, "model": "x"}).encode(), 404),
    }
    for name, (body, status, *path) in cases.items():
        r = httpx.post(f"{server}/v1/{path[0]}" if path else url, content=body, headers=auth,
                       timeout=30)
        assert r.status_code == status, (name, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], name
    for method, path, status in (("GET", "/v1/nothing", 404), ("GET", "/v1/completions", 405),
                                 ("GET", "/v1/models", 401)):
        headers = auth if status != 401 else {}
        r = httpx.request(method, f"{server}{path}", headers=headers, timeout=30)
        assert r.status_code == status and set(r.json()["error"]) >= {"message", "type"}
    assert httpx.post(url, json=ok, headers=auth, timeout=30).status_code == 200


def test_client_vanishing_mid_stream_frees_its_slot(server, client):
    body = {"model": "tiny", "prompt": "ROMEO:", "max_tokens": 50, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    for _ in range(3):
        with httpx.stream("POST", f"{server}/v1/completions", json=body, headers=headers,
                          timeout=30) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # one event, then hang up
    deadline = time.time() + 30
    while httpx.get(f"{server}/health").json()["active"] and time.time() < deadline:
        time.sleep(0.2)
    assert httpx.get(f"{server}/health").json()["active"] == 0
    assert client.completions.create(model="tiny", prompt="hi", max_tokens=3).choices[0].text


def test_a_port_in_use_is_one_line(workdir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--workdir", str(workdir), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["serve", "--workdir", str(workdir), "--port", "99999"]) == 2


def test_serve_without_the_extra_is_one_line(workdir):
    code = ("import sys; sys.modules['fastapi'] = None; from gptjax import cli; "
            f"sys.exit(cli.main(['serve', '--workdir', {str(workdir)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "serve extra" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- the engine


def test_per_row_settings_filter_as_gptjax_sample():
    logits = jax.random.normal(jax.random.key(1), (4, 40)) * 3
    settings = [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.6), (0.5, 8, 0.8)]
    rows = Rows(np.float32([s[0] for s in settings]), np.int32([s[1] for s in settings]),
                         np.float32([s[2] for s in settings]), np.zeros(4, np.uint32),
                         np.zeros(4, np.int32))
    kept = np.isfinite(np.asarray(filtered_logits(logits, 37, rows)))
    for i, (t, k, p) in enumerate(settings):
        s = generate.Sampling(temperature=t, top_k=k, top_p=p)
        draws = {int(generate.sample_logits(jax.random.key(n), logits[i:i + 1], 37, s)[0])
                 for n in range(300)}
        assert draws <= set(np.flatnonzero(kept[i])), i
        assert kept[i, 37:].sum() == 0
    assert kept[1].sum() == 5 and kept[0].sum() == 37


def test_stop_strings_are_held_back_until_decided():
    assert engine._first_stop("abc\nUser: x", ("\nUser:",), 0) == 3
    assert engine._first_stop("abcd", ("cd", "b"), 0) == 1
    assert engine._first_stop("abcd", ("cd",), 3) == 2  # begun in the text already sent
    assert engine._safe_length("hello\nUs", ("\nUser:",)) == 5
    assert engine._safe_length("hello", ("\nUser:",)) == 5
    assert engine._safe_length("ab\ufffd", ()) == 2


def _complete(loaded, jobs):
    """[(prompt text, Settings)] through the engine -> [[Event]] per job, once all finished."""
    done, lock, finished = {}, threading.Lock(), threading.Event()

    def emit(i):
        def on(ev):
            with lock:
                done.setdefault(i, []).append(ev)
                if sum(1 for evs in done.values() if evs[-1].finish) == len(jobs):
                    finished.set()
        return on
    for i, (prompt, s) in enumerate(jobs):
        loaded.engine.submit(engine.Request(loaded.tokenizer.encode(prompt), s, emit(i)))
    assert finished.wait(120)
    return [done[i] for i in range(len(jobs))]


def test_slots_join_and_leave_without_recompiling(workdir):
    loaded = serving.load(str(workdir), slots=3, warm_up=False)
    try:
        # more requests than slots, with different settings and lengths
        jobs = [("ROMEO:" * (1 + i % 3), engine.Settings(
            max_tokens=3 + i, temperature=0.1 * i, top_k=i, top_p=1 - i / 20, seed=i))
            for i in range(8)]
        for i, evs in enumerate(_complete(loaded, jobs)):
            assert evs[-1].finish == "length" and evs[-1].completion_tokens == 3 + i
            assert len("".join(ev.text for ev in evs)) == 3 + i
        programs = loaded.engine.programs
        assert programs.widths == [1, 2, 3]
        assert programs._decode._cache_size() <= len(programs.widths)  # no recompile per setting
        assert loaded.engine.active() == 0
    finally:
        loaded.engine.stop()


def test_quantized_serving_dequantizes_per_layer_with_the_same_tokens(workdir):
    """`serve --quantize int8`: the engine runs `prepare`'s per-layer model, whose greedy text is
    the one dequantizing the whole tree in the step gives."""
    loaded = serving.load(str(workdir), slots=1, quantize="int8", warm_up=False)
    try:
        assert loaded.engine.programs.model.layer_params is not None
        prompt = "ROMEO:"
        (evs,) = _complete(loaded, [(prompt, engine.Settings(max_tokens=12, temperature=0))])
        config, params, tok, _ = open_run(str(workdir))
        c = GPTConfig.from_config(config.model)
        whole = quant.quantize(generate.cast_params(params, c.dtype), "int8")
        want = generate.generate_ids(GPT(c), whole, [tok.encode(prompt)],
                                     generate.Sampling(max_new_tokens=12, temperature=0.0))[0]
        assert "".join(ev.text for ev in evs) == tok.decode(want)
    finally:
        loaded.engine.stop()


def test_a_full_queue_is_a_429_in_openai_shape(workdir):
    loaded = serving.load(str(workdir), slots=1, warm_up=False)
    try:
        svc = serving.service(loaded, max_tokens=64)
        svc.max_waiting = 0
        with TestClient(api.build(svc)) as http:
            r = http.post("/v1/completions", json={"model": "tiny", "prompt": "hi"})
            assert r.status_code == 429 and r.json()["error"]["code"] == "server_busy"
            svc.max_waiting = 4
            r = http.post("/v1/completions", json={"model": "tiny", "prompt": "hi",
                                                   "max_tokens": 2, "stream": True})
            assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    finally:
        loaded.engine.stop()


@pytest.mark.slow
def test_a_draft_serves_the_targets_greedy_text(workdir, tmp_path, shakespeare_manual_dir):
    draft = tiny_workdir(tmp_path / "draft", shakespeare_manual_dir, seed=1,
                         extra=["--config.model.num_layers=1"])
    jobs = [(p, engine.Settings(max_tokens=n, temperature=0.0))
            for p, n in (("ROMEO:", 20), ("To be, or not", 9), ("O", 30))]
    texts = {}
    for name, kw in (("plain", {}), ("draft", dict(draft=str(draft), draft_tokens=3)),
                     ("self", dict(draft=str(workdir), draft_tokens=3))):
        loaded = serving.load(str(workdir), slots=2, warm_up=False, context=40, **kw)
        try:
            texts[name] = ["".join(ev.text for ev in evs) for evs in _complete(loaded, jobs)]
            if name == "self":  # the model as its own draft: every proposal accepted
                assert loaded.engine.made / loaded.engine.rounds > 3
        finally:
            loaded.engine.stop()
    assert texts["draft"] == texts["plain"] == texts["self"]
    assert [len(t) for t in texts["plain"]] == [20, 9, 30]
