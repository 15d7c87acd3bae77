"""The HTTP API (FastAPI): /v1/completions, /v1/chat/completions, /v1/models, /health, and
vLLM's tokenizer routes /tokenizer_info, /tokenize, /detokenize.

Every request becomes one engine request per choice (`n`, and each prompt of a batched
completion); results come back from the engine thread through an asyncio queue. A streaming
client that disconnects, or a non-streaming one that goes away while waiting, cancels its
requests, which frees their slots. With an API key, every route but /health needs
`Authorization: Bearer KEY` (401 otherwise). Bodies over `max_body` bytes get 413; every 4xx is
in OpenAI's error shape (gptjax/serving/protocol.py), validation errors included (400, not
FastAPI's 422).

The tokenizer routes let a client tokenize exactly as the served model does, with no tokenizer
files: lm-evaluation-harness's `local-completions` finds them (its `tokenizer_backend=remote`)
and sends token ids. /tokenize maps the texts /tokenizer_info names (`eos_token`, and
`bos_token`: what a text without context is conditioned on, as in `gptjax.evaluation.scoring`)
to their ids, as a Hugging Face tokenizer parses its special tokens.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
import traceback

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException

from gptjax.data import hf_tokenizer
from gptjax.data.tokenizer import prefix_id
from gptjax.errors import UserError
from gptjax.serving import chat, protocol
from gptjax.serving.engine import Engine, Event, Settings, Token
from gptjax.serving.engine import Request as EngineRequest
from gptjax.serving.protocol import ApiError, error_response


class Service:
    """What the routes need: the engine, the tokenizer, the served model's name and limits."""

    def __init__(self, engine: Engine, tokenizer, name: str, template: str = "base",
                 api_key: str | None = None, max_tokens: int = 1024,
                 max_body: int = 1 << 20, max_waiting: int = 1024):
        self.engine, self.tokenizer, self.name, self.template = engine, tokenizer, name, template
        self.api_key, self.max_tokens, self.max_body = api_key, max_tokens, max_body
        self.max_waiting = max_waiting  # queued requests beyond the slots (429 beyond)
        self.created = int(time.time())
        eos = hf_tokenizer.eos_text(tokenizer)
        self.eos_token = eos
        self.bos_token = eos or tokenizer.decode([prefix_id(tokenizer)])
        self.specials = {} if eos is None else {eos: int(tokenizer.eos_id)}

    def encode(self, prompt) -> list[int]:
        if isinstance(prompt, list):  # token ids
            if any(not 0 <= t < self.tokenizer.vocab_size for t in prompt):
                raise ApiError(400, f"prompt: token ids must be in [0, "
                               f"{self.tokenizer.vocab_size})", param="prompt")
            return list(prompt)
        try:
            return list(self.tokenizer.encode(prompt))
        except (UserError, UnicodeError) as e:  # e.g. a lone surrogate escaped in the JSON
            raise ApiError(400, f"prompt: {e}", param="prompt") from None

    def settings(self, body, max_tokens: int | None, prompt: list[int], index: int,
                 stops=(), logprobs: bool = False) -> Settings:
        if max_tokens is None:
            max_tokens = max(1, min(self.max_tokens, self.engine.context - len(prompt)))
        if max_tokens > self.max_tokens:
            raise ApiError(400, f"max_tokens={max_tokens} exceeds this server's limit of "
                           f"{self.max_tokens}", param="max_tokens")
        try:
            self.engine.check(prompt, max_tokens)
        except UserError as e:
            raise ApiError(400, str(e), param="prompt" if not prompt else "max_tokens",
                           code="context_length_exceeded" if prompt else None) from None
        seed = secrets.randbits(32) if body.seed is None else body.seed + index
        return Settings(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                        top_k=body.top_k, seed=seed, stop=body.stops() + tuple(stops),
                        logprobs=logprobs)

    def prompt_tokens(self, prompt: list[int]) -> list[Token]:
        """The prompt's tokens with their log-probabilities (the first has none)."""
        decode = self.tokenizer.decode
        return [Token(t, decode([t]), lp, [(a, decode([a]), alp) for a, alp in top])
                for t, (lp, top) in zip(prompt, self.engine.programs.score(prompt), strict=True)]

    def check_model(self, model: str) -> None:
        if model != self.name:
            raise ApiError(404, f"The model {model!r} does not exist (this server serves "
                           f"{self.name!r})", param="model", code="model_not_found")


async def run_requests(service: Service, http: Request, jobs: list[tuple[list[int], Settings]],
                       watch: bool = False):
    """Submits the jobs; yields (job index, Event) as the engine produces them; cancels every
    unfinished job if the consumer stops early or the client went away (checked when no event
    came for a second, and with `watch` (a non-streaming response) once a second anyway)."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    requests = []
    for i, (prompt, settings) in enumerate(jobs):
        requests.append(service.engine.submit(EngineRequest(prompt, settings, _emitter(
            loop, events, i))))
    open_jobs, checked = len(jobs), time.monotonic()
    try:
        while open_jobs:
            try:
                i, ev = await asyncio.wait_for(events.get(), timeout=1.0)
            except TimeoutError:
                if await http.is_disconnected():
                    return
                continue
            if watch and time.monotonic() - checked > 1.0:
                checked = time.monotonic()
                if await http.is_disconnected():
                    return
            open_jobs -= ev.finish is not None
            yield i, ev
    finally:
        for r in requests:
            r.cancel()


def _emitter(loop, events: asyncio.Queue, i: int):
    return lambda ev: loop.call_soon_threadsafe(events.put_nowait, (i, ev))


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"


def build(service: Service) -> FastAPI:
    app = FastAPI(title="gptjax", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    _errors(app)

    async def authorized(request: Request):
        if service.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {service.api_key}".encode()):
            raise ApiError(401, "Incorrect or missing API key (send Authorization: Bearer KEY)",
                           type_="authentication_error", code="invalid_api_key")

    @app.get("/health")
    async def health():
        return {"status": "ok", "slots": len(service.engine.slots),
                "active": service.engine.active()}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models():
        return {"object": "list", "data": [{"id": service.name, "object": "model",
                                            "created": service.created, "owned_by": "gptjax"}]}

    @app.get("/tokenizer_info", dependencies=[Depends(authorized)])
    async def tokenizer_info():
        return {"tokenizer_class": f"gptjax:{service.tokenizer.kind}",
                "eos_token": service.eos_token, "bos_token": service.bos_token,
                "pad_token": None, "model_max_length": service.engine.context}

    @app.post("/tokenize", dependencies=[Depends(authorized)])
    async def tokenize(body: protocol.TokenizeRequest):
        special = service.specials.get(body.prompt)
        ids = [special] if special is not None else service.encode(body.prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": service.engine.context}

    @app.post("/detokenize", dependencies=[Depends(authorized)])
    async def detokenize(body: protocol.DetokenizeRequest):
        return {"prompt": service.tokenizer.decode(service.encode(body.tokens))}

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(body: protocol.CompletionRequest, request: Request):
        service.check_model(body.model)
        prompts = body.prompt
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            raise ApiError(400, "prompt: empty", param="prompt")
        if body.max_tokens == 0 and not body.echo:
            raise ApiError(400, "max_tokens: 0 only with echo (a prompt's log-probabilities)",
                           param="max_tokens")
        jobs, scored = [], []
        for p in prompts:
            ids = service.encode(p)
            if body.echo and body.logprobs is not None:
                scored += [await asyncio.to_thread(service.prompt_tokens, ids)] * body.n
            for _ in range(body.n):
                jobs.append((ids, service.settings(body, body.max_tokens, ids, len(jobs),
                                                   logprobs=body.logprobs is not None)))
        echo = [p if isinstance(p, str) else service.tokenizer.decode(p) for p in prompts]
        shape = _completion_choice(body, [echo[i // body.n] if body.echo else ""
                                          for i in range(len(jobs))], scored)
        if body.max_tokens == 0:
            choices = [shape[0](i, "", [], "length", True) for i in range(len(jobs))]
            return protocol.completion(protocol.new_id("cmpl"), service.name, choices,
                                       protocol.usage(sum(len(j[0]) for j in jobs), 0))
        return await _respond(service, request, body, jobs, "cmpl", shape)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(body: protocol.ChatRequest, request: Request):
        service.check_model(body.model)
        prompt, stops = chat.render([(m.role, m.text()) for m in body.messages],
                                    service.template)
        ids = service.encode(prompt)
        limit = body.max_completion_tokens or body.max_tokens
        jobs = [(ids, service.settings(body, limit, ids, j, stops, logprobs=body.logprobs))
                for j in range(body.n)]
        return await _respond(service, request, body, jobs, "chatcmpl", _chat_choice(body))

    return app


def _completion_choice(body, echoes, scored):
    top = body.logprobs or 0
    offsets = [0 if scored else len(e) for e in echoes]

    def choice(i: int, text: str, tokens, finish, first: bool):
        logprobs = None
        if body.logprobs is not None:
            tokens = (scored[i] + tokens) if first and scored else tokens
            logprobs = protocol.completion_logprobs(tokens, top, offsets[i])
            offsets[i] += sum(len(t.text) for t in tokens)
        return {"index": i, "text": (echoes[i] if first else "") + text, "logprobs": logprobs,
                "finish_reason": finish}
    return choice, protocol.completion


def _chat_choice(body):
    top = body.top_logprobs or 0

    def choice(i: int, text: str, tokens, finish, first: bool, stream: bool = False):
        logprobs = protocol.chat_logprobs(tokens, top) if body.logprobs else None
        message = {"role": "assistant", "content": text} if first or not stream else {
            "content": text}
        key = "delta" if stream else "message"
        if stream and finish is not None and not text:
            message = {}
        return {"index": i, key: message, "logprobs": logprobs, "finish_reason": finish}
    return choice, protocol.chat


async def _respond(service: Service, request: Request, body, jobs, prefix: str, shape):
    choice, wrap = shape
    if service.engine.pending() + len(jobs) > service.max_waiting:
        raise ApiError(429, f"the server has {service.engine.pending()} requests waiting; "
                       f"retry later", type_="rate_limit_error", code="server_busy")
    rid = protocol.new_id(prefix)
    if body.stream:
        usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(_stream(service, request, jobs, rid, choice, wrap, usage),
                                 media_type="text/event-stream")
    texts, tokens = [""] * len(jobs), [[] for _ in jobs]
    finishes, prompt_tokens, completion_tokens = [None] * len(jobs), 0, 0
    async for i, ev in run_requests(service, request, jobs, watch=True):
        _check(ev)
        texts[i] += ev.text
        tokens[i] += ev.tokens
        if ev.finish:
            finishes[i] = ev.finish
            prompt_tokens += ev.prompt_tokens
            completion_tokens += ev.completion_tokens
    choices = [choice(i, texts[i], tokens[i], finishes[i], True) for i in range(len(jobs))]
    return wrap(rid, service.name, choices, protocol.usage(prompt_tokens, completion_tokens))


async def _stream(service, request, jobs, rid, choice, wrap, include_usage: bool):
    first = [True] * len(jobs)
    chat_stream = {"stream": True} if wrap is protocol.chat else {}
    counts = [0, 0]
    async for i, ev in run_requests(service, request, jobs):
        counts[0] += ev.prompt_tokens
        counts[1] += ev.completion_tokens
        if ev.finish == "error":
            yield _sse({"error": {"message": ev.error, "type": "server_error", "param": None,
                                  "code": None}})
            return
        yield _sse(wrap(rid, service.name, [choice(i, ev.text, ev.tokens, ev.finish, first[i],
                                                   **chat_stream)], None, chunk=True))
        first[i] = False
    if include_usage:
        yield _sse(wrap(rid, service.name, [], protocol.usage(*counts), chunk=True))
    yield "data: [DONE]\n\n"


def _check(ev: Event) -> None:
    if ev.finish == "error":
        raise ApiError(500, f"generation failed: {ev.error}", type_="server_error")


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        message, param = protocol.validation_message(exc.errors())
        return error_response(400, message, param=param)

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception):  # a bug: still OpenAI's shape, and logged
        traceback.print_exception(exc)
        return error_response(500, f"internal error: {type(exc).__name__}", "server_error")

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail),
                              "invalid_request_error" if exc.status_code < 500 else "server_error")

    app.add_middleware(BodyLimit, limit=lambda: app.state.service.max_body)


class BodyLimit:
    """ASGI middleware: a request body over the limit gets 413 (by its Content-Length, or as it
    arrives when chunked) before any route reads it."""

    def __init__(self, app, limit):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit()
        length = dict(scope.get("headers", [])).get(b"content-length")
        too_big = error_response(413, f"request body over {limit} bytes", param=None)
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await too_big(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:  # FastAPI passes an HTTPException through its body parsing
                raise HTTPException(413, f"request body over {limit} bytes")
            return message
        await self.app(scope, limited, send)
