"""`serve(workdir, ...)`: load a run, start the engine thread, answer HTTP with uvicorn.

The served context C (every slot's KV-cache row) defaults to the model's max_seq_len; a
learned-position model cannot go past it. KV-cache memory: 2 x layers x slots x C x heads x
head_dim x the compute dtype's bytes, allocated once at start-up.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys

import uvicorn

from gptjax.errors import UserError
from gptjax.inference.sample import load_model
from gptjax.serving import app as api
from gptjax.serving import batching, chat
from gptjax.serving.engine import Engine


@dataclasses.dataclass
class Loaded:
    engine: Engine
    tokenizer: object
    config: object
    name: str


def load(workdir: str, slots: int = 8, context: int | None = None, quantize: str = "none",
         step: int | None = None, warm_up: bool = True, draft: str | None = None,
         draft_tokens: int = 4) -> Loaded:
    """-> the engine (started) of a trained, fine-tuned, imported or quantized workdir; `draft`:
    a workdir (same tokenizer) for speculative decoding with `draft_tokens` proposals."""
    if slots < 1:
        raise UserError(f"--slots {slots} must be >= 1")
    if draft and draft_tokens < 1:
        raise UserError(f"--draft-tokens {draft_tokens} must be >= 1")
    config, model, params, tokenizer = load_model(workdir, quantize, step)
    dmodel = dparams = None
    if draft:
        _, dmodel, dparams, _ = load_model(draft, quantize)
    extra = draft_tokens if draft else 0  # a round writes k positions past the last token
    learned = [m.config.max_seq_len for m in (model, dmodel)
               if m is not None and m.config.position == "learned"]
    context = context or min(learned or [model.config.max_seq_len]) - extra
    if context < 2:
        raise UserError(f"--context {context} must be >= 2")
    if learned and context + extra > min(learned):
        raise UserError(f"--context {context} (+ {extra} draft tokens) exceeds max_seq_len="
                        f"{min(learned)} (learned positions)")
    programs = batching.Programs(model, params, slots, context, dmodel, dparams, draft_tokens)
    if warm_up:
        programs.warm_up()
    eos = tokenizer.eos_id if config.sample.get("stop_at_eos", True) else None
    engine = Engine(programs, tokenizer, eos).start()
    name = os.path.basename(os.path.normpath(workdir))
    return Loaded(engine, tokenizer, config, name)


def service(loaded: Loaded, api_key: str | None = None, template: str = "auto",
            max_tokens: int = 1024, max_body: int = 1 << 20, name: str | None = None):
    return api.Service(loaded.engine, loaded.tokenizer, name or loaded.name,
                       chat.choose(template, loaded.config), api_key=api_key,
                       max_tokens=max_tokens, max_body=max_body)


def _check_address(host: str, port: int) -> None:
    """A UserError unless (host, port) can be listened on now (a port in use, a bad host)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except (OSError, OverflowError) as e:
        raise UserError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}"
                        ) from None


def serve(workdir: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          slots: int = 8, context: int | None = None, quantize: str = "none",
          template: str = "auto", max_tokens: int = 1024, max_body: int = 1 << 20,
          name: str | None = None, draft: str | None = None, draft_tokens: int = 4) -> None:
    """Serves until interrupted."""
    _check_address(host, port)  # before minutes of loading and compiling
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        print(f"gptjax serve: warning: listening on {host} without --api-key: anyone who can "
              f"reach this machine can use the model", file=sys.stderr)
    loaded = load(workdir, slots, context, quantize, draft=draft, draft_tokens=draft_tokens)
    svc = service(loaded, api_key, template, max_tokens, max_body, name)
    print(f"gptjax serve: model {svc.name!r} at http://{host}:{port}/v1 ({slots} slots of "
          f"{loaded.engine.context} tokens, chat template {svc.template}"
          f"{', API key required' if api_key else ''})", file=sys.stderr, flush=True)
    try:
        uvicorn.run(api.build(svc), host=host, port=port, log_level="warning")
    finally:
        loaded.engine.stop()
