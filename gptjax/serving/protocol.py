"""OpenAI's request and response shapes (pydantic request models, dict responses) and its error
shape, `{"error": {"message", "type", "param", "code"}}`, for every 4xx.

Fields beside OpenAI's: `top_k` (0 = off; the `openai` client sends it through `extra_body`).
Fields OpenAI has and gptjax ignores (penalties, `user`, `logit_bias`, ...) are accepted and
have no effect; unknown fields are ignored too.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

MAX_N = 16
MAX_STOPS = 4


class ApiError(Exception):
    """Becomes an HTTP error in OpenAI's shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type_, param, code)

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code)


def error_response(status: int, message: str, type_: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}}, status_code=status)


def validation_message(errors) -> tuple[str, str | None]:
    """pydantic / FastAPI validation errors -> (one message, the parameter it is about)."""
    parts, param = [], None
    for e in errors[:3]:
        if e.get("type") == "json_invalid":
            return f"the body is not valid JSON ({e.get('ctx', {}).get('error', 'invalid')})", None
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        where = ".".join(loc)
        param = param or (loc[0] if loc else None)
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", "invalid"))
    return "; ".join(parts) or "invalid request", param


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: dict | None = None  # {"include_usage": true}: a last chunk with usage
    seed: int | None = None
    stop: str | list[str] | None = None

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOPS:
            raise ApiError(400, f"stop: at most {MAX_STOPS} stop sequences", param="stop")
        return tuple(s for s in stops if s)


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)  # 0: only with echo (a prompt's log-probs)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] = ""

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=5)


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize body (lm-evaluation-harness's `tokenizer_backend=remote` sends it)."""
    model_config = ConfigDict(extra="ignore")
    prompt: str
    add_special_tokens: bool = False  # gptjax's tokenizers add none either way


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tokens: list[int]


# ----------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def completion_logprobs(tokens, top: int, offset: int) -> dict:
    """The legacy completions `logprobs` object for engine Tokens."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in tokens:
        out["tokens"].append(t.text)
        out["token_logprobs"].append(t.logprob)
        out["top_logprobs"].append(None if t.logprob is None else
                                   {text: lp for _, text, lp in t.top[:top]})
        out["text_offset"].append(offset)
        offset += len(t.text)
    return out


def chat_logprobs(tokens, top: int) -> dict:
    """The chat completions `logprobs` object for engine Tokens."""
    def entry(text, lp):
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}
    return {"content": [{**entry(t.text, t.logprob),
                         "top_logprobs": [entry(text, lp) for _, text, lp in t.top[:top]]}
                        for t in tokens]}


def completion(rid: str, model: str, choices: list[dict], use: dict | None,
               chunk: bool = False) -> dict:
    body = {"id": rid, "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices}
    if use is not None or not chunk:
        body["usage"] = use
    return body


def chat(rid: str, model: str, choices: list[dict], use: dict | None,
         chunk: bool = False) -> dict:
    body = {"id": rid, "object": "chat.completion.chunk" if chunk else "chat.completion",
            "created": int(time.time()), "model": model, "choices": choices}
    if use is not None or not chunk:
        body["usage"] = use
    return body
