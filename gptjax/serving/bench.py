"""A load test of `gptjax serve` (`gptjax bench-serve`): the real server on 127.0.0.1, N
concurrent streaming clients for a fixed time, next to sequential generation.

For each client count, every client sends streaming completions one after another until the
time is up (httpx, OpenAI's wire format). Printed per level: completed and failed requests,
generated tokens/s over the whole level, p50 / p99 request latency, p50 time to first token,
and the ratio to `sequential`: the same requests one at a time through `gptjax sample`'s
generator (gptjax/inference/generate.py, batch 1, compiled once). After each level the engine
must hold no active slot (nothing leaked).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import jax
import numpy as np
import uvicorn

from gptjax.errors import UserError
from gptjax.inference import generate
from gptjax.serving import app as api
from gptjax.serving import server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """uvicorn in a thread over a loaded engine; `url` once it answers."""

    def __init__(self, svc: api.Service):
        self.port = _free_port()
        config = uvicorn.Config(api.build(svc), host="127.0.0.1", port=self.port,
                                log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline:
                raise UserError("the benchmark's server did not start")
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


async def _one(client: httpx.AsyncClient, url: str, body: dict) -> tuple[float, float, int]:
    """One streaming request -> (latency s, time to first token s, completion tokens)."""
    t0 = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    latency = time.perf_counter() - t0
    return latency, latency if first is None else first, tokens


async def _level(url: str, clients: int, seconds: float, body: dict) -> dict:
    results, failures = [], []
    end = time.perf_counter() + seconds

    async def client_loop(client):
        while time.perf_counter() < end:
            try:
                results.append(await _one(client, url, body))
            except (httpx.HTTPError, RuntimeError) as e:
                failures.append(str(e))
    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    wall = time.perf_counter() - t0
    lat = np.asarray([r[0] for r in results] or [np.nan])
    ttft = np.asarray([r[1] for r in results] or [np.nan])
    return {"clients": clients, "requests": len(results), "failed": len(failures),
            "tokens_per_s": sum(r[2] for r in results) / wall,
            "p50_s": float(np.percentile(lat, 50)), "p99_s": float(np.percentile(lat, 99)),
            "ttft_p50_s": float(np.percentile(ttft, 50)), "errors": failures[:3]}


def sequential(loaded: server.Loaded, prompt: list[int], max_tokens: int, seconds: float):
    """Tokens/s of one request at a time through the `gptjax sample` generator (batch 1)."""
    programs = loaded.engine.programs
    s = generate.Sampling(max_new_tokens=max_tokens, temperature=1.0, eos_id=-1)
    tokens, lengths, cache_len = generate.pad_prompts([prompt], max_tokens,
                                                      programs.model.config)
    fn = generate.make_generate(programs.model, s, cache_len)
    jax.block_until_ready(fn(programs.params, tokens, lengths, jax.random.key(0)))  # compile
    t0, made, n = time.perf_counter(), 0, 0
    while time.perf_counter() - t0 < seconds or n == 0:
        out, steps = fn(programs.params, tokens, lengths, jax.random.key(n + 1))
        made, n = made + int(steps), n + 1
    return made / (time.perf_counter() - t0), n


def run(workdir: str, clients=(1, 8, 32), seconds: float = 10.0, max_tokens: int = 32,
        prompt: str = "\n", draft: str | None = None, draft_tokens: int = 4,
        quantize: str = "none") -> list[dict]:
    """Runs every level and prints a table; returns its rows."""
    loaded = server.load(workdir, slots=max(clients), quantize=quantize, draft=draft,
                         draft_tokens=draft_tokens)
    ids = loaded.tokenizer.encode(prompt)
    svc = server.service(loaded, max_tokens=max_tokens)
    body = {"model": svc.name, "prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0,
            "stream": True, "stream_options": {"include_usage": True}}
    base, n = sequential(loaded, ids, max_tokens, seconds)
    print(f"sequential (the generator of `gptjax sample`, batch 1, compiled once): {n} "
          f"requests, {base:.1f} tokens/s")
    running, rows = Running(svc), []
    try:
        print(f"{'clients':>7} {'requests':>8} {'failed':>6} {'tokens/s':>9} {'x seq':>6} "
              f"{'p50 s':>7} {'p99 s':>7} {'TTFT p50':>8}")
        for c in clients:
            row = asyncio.run(_level(running.url, c, seconds, body))
            deadline = time.time() + 10
            while loaded.engine.active() and time.time() < deadline:
                time.sleep(0.05)
            row["leaked_slots"] = loaded.engine.active()
            rows.append(row)
            print(f"{c:>7} {row['requests']:>8} {row['failed']:>6} {row['tokens_per_s']:>9.1f} "
                  f"{row['tokens_per_s'] / base:>6.2f} {row['p50_s']:>7.3f} {row['p99_s']:>7.3f} "
                  f"{row['ttft_p50_s']:>8.3f}" + (f"  errors: {row['errors']}" if row['failed']
                                                  else ""), flush=True)
        engine = loaded.engine
        if engine.rounds:
            print(f"draft: {engine.made / engine.rounds:.2f} tokens per target forward and "
                  f"slot ({draft_tokens} proposed)")
        leaked = sum(r["leaked_slots"] for r in rows)
        print(f"leaked slots after the levels: {leaked}")
    finally:
        running.stop()
        loaded.engine.stop()
    return rows
