"""The continuous-batching engine: a background thread that owns the model and its slots.

    submit(request) -> the request waits in a queue
    loop: admit waiting requests into free slots (one prefill each), then one decode step of all
          slots; every slot's new token goes to its request, which ends on EOS, a stop string,
          max_tokens, the end of the context, or when its client went away (`cancel`)

Requests join and leave between decode steps; the decode program never changes shape
(gptjax/serving/batching.py). Prefill bound: while any slot is decoding, at most one request is
admitted per decode step, so a joining prompt delays the running ones by one prefill of its
bucket (at most the context length); with every slot free, all waiting requests are admitted at
once. Results are pushed through the request's `emit` callback (from the engine thread; the
HTTP side hands them to its event loop).
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import traceback

import numpy as np

from gptjax.errors import UserError
from gptjax.inference import rows as rows_
from gptjax.serving import batching


@dataclasses.dataclass(frozen=True)
class Settings:
    """One request's generation settings."""
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: tuple[str, ...] = ()
    logprobs: bool = False


@dataclasses.dataclass
class Token:
    id: int
    text: str
    logprob: float | None  # None: a prompt's first token
    top: list[tuple[int, str, float]]  # (id, text, logprob), most likely first


@dataclasses.dataclass
class Event:
    """A piece of a request's output: new text (and its tokens); `finish` on the last one."""
    text: str = ""
    tokens: list[Token] = dataclasses.field(default_factory=list)
    finish: str | None = None  # "stop" | "length" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""


class Request:
    def __init__(self, prompt: list[int], settings: Settings, emit):
        self.prompt, self.settings, self.emit = list(prompt), settings, emit
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already emitted
        self.cancelled = False
        self.pending_tokens: list[Token] = []

    def cancel(self) -> None:
        """The client went away: the engine frees the slot before its next decode step."""
        self.cancelled = True


class Engine:
    """Owns `batching.Programs` and the thread that drives them."""

    def __init__(self, programs: batching.Programs, tokenizer, eos_id: int | None):
        self.programs, self.tokenizer = programs, tokenizer
        self.eos_id = -1 if eos_id is None else int(eos_id)
        n = programs.slots
        self.slots: list[Request | None] = [None] * n
        self.tokens, self.positions = np.zeros(n, np.int32), np.zeros(n, np.int32)
        self.rows = rows_.host_rows(n)
        self.waiting: collections.deque[Request] = collections.deque()
        self.inbox: queue.Queue[Request | None] = queue.Queue()
        self.steps = self.rounds = self.made = 0  # decode steps; speculative rows, tokens
        self._thread = threading.Thread(target=self._loop, name="gptjax-engine", daemon=True)
        self._stopping = False

    @property
    def context(self) -> int:
        return self.programs.context

    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self.inbox.put(None)
        self._thread.join(timeout=30)

    def check(self, prompt: list[int], max_tokens: int) -> None:
        """A UserError unless the prompt and max_tokens fit the served context."""
        if not prompt:
            raise UserError("the prompt is empty (it encodes to no tokens)")
        if len(prompt) + max_tokens > self.context:
            raise UserError(f"this model's context is {self.context} tokens; the prompt has "
                            f"{len(prompt)} and max_tokens is {max_tokens}: lower max_tokens or "
                            f"shorten the prompt")

    def submit(self, request: Request) -> Request:
        self.check(request.prompt, request.settings.max_tokens)
        self.inbox.put(request)
        return request

    def pending(self) -> int:
        """Requests submitted and not yet in a slot (read from any thread)."""
        return len(self.waiting) + self.inbox.qsize()

    def active(self) -> int:
        return sum(r is not None for r in self.slots)

    # ------------------------------------------------------------------------- the thread

    def _loop(self) -> None:
        while not self._stopping:
            self._take(block=self.active() == 0 and not self.waiting)
            try:
                self._admit()
                if self.active():
                    self._step()
            except Exception as e:  # a bug must not leave clients waiting forever
                traceback.print_exc()
                for i, r in enumerate(self.slots):
                    if r is not None:
                        r.emit(Event(finish="error", error=f"{type(e).__name__}: {e}"))
                        self.slots[i] = None

    def _take(self, block: bool) -> None:
        try:
            item = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
            while True:
                if item is not None:
                    self.waiting.append(item)
                item = self.inbox.get_nowait()
        except queue.Empty:
            return

    def _admit(self) -> None:
        limit = 1 if self.active() else len(self.slots)
        while self.waiting and limit > 0 and None in self.slots:
            r = self.waiting.popleft()
            if r.cancelled:
                continue
            slot = self.slots.index(None)
            s = r.settings
            one = rows_.Rows(np.float32([s.temperature]), np.int32([s.top_k]),
                                np.float32([s.top_p]), np.uint32([s.seed % 2**32]),
                                np.int32([0]))
            drawn = self.programs.prefill(slot, r.prompt, one)
            for field, value in zip(self.rows, one, strict=True):
                field[slot] = value[0]
            self.slots[slot] = r
            self.positions[slot] = len(r.prompt)
            self._deliver(slot, jax_row(drawn, 0))
            limit -= 1

    def _step(self) -> None:
        for i, r in enumerate(self.slots):
            if r is not None and r.cancelled:
                self.slots[i] = None
        if not self.active():
            return
        self.steps += 1
        busy = np.asarray([r is not None for r in self.slots])
        if self.programs.draft is None:
            drawn = self.programs.decode(self.tokens, self.positions, self.rows,
                                         int(np.flatnonzero(busy)[-1]) + 1)
            self.positions = np.where(busy, self.positions + 1, 0).astype(np.int32)
            for i in np.flatnonzero(busy):
                self._deliver(i, jax_row(drawn, i))
            return
        drawn, n = self.programs.speculate(self.tokens, self.positions, self.rows)
        self.positions = np.where(busy, self.positions, 0).astype(np.int32)
        for i in np.flatnonzero(busy):
            self.rounds, self.made = self.rounds + 1, self.made + int(n[i])
            for j in range(int(n[i])):  # the round's new tokens, until the request ends
                self.positions[i] += 1
                self._deliver(i, jax_row(drawn, i, j))
                if self.slots[i] is None:
                    break

    def _deliver(self, slot: int, drawn) -> None:
        """A slot's new token: to its request; ends the request when it is done."""
        r = self.slots[slot]
        token, logprob, top_ids, top_lps = drawn
        self.tokens[slot] = token
        self.rows.count[slot] += 1
        finish = None
        if token == self.eos_id:
            finish = "stop"
        else:
            r.ids.append(token)
            if r.settings.logprobs:
                decode = self.tokenizer.decode
                r.pending_tokens.append(Token(token, decode([token]), logprob, [
                    (int(t), decode([int(t)]), float(lp))
                    for t, lp in zip(top_ids, top_lps, strict=True)]))
        text = self.tokenizer.decode(r.ids)
        cut = _first_stop(text, r.settings.stop, r.sent)
        if cut is not None:
            text, finish = text[:cut], "stop"
        elif finish is None and (len(r.ids) >= r.settings.max_tokens
                                 or self.positions[slot] >= self.context):
            finish = "length"
        safe = len(text) if finish else _safe_length(text, r.settings.stop)
        event = Event(text=text[r.sent:max(safe, r.sent)], tokens=r.pending_tokens)
        r.sent, r.pending_tokens = max(safe, r.sent), []
        if finish:
            event.finish, event.prompt_tokens = finish, len(r.prompt)
            event.completion_tokens = len(r.ids)
            self.slots[slot] = None
        if event.text or event.tokens or event.finish:
            r.emit(event)


def jax_row(drawn: batching.Drawn, i: int, j: int | None = None):
    at = (i,) if j is None else (i, j)
    return (int(drawn.token[at]), float(drawn.logprob[at]), drawn.top_ids[at].tolist(),
            drawn.top_logprobs[at].tolist())


def _first_stop(text: str, stops, start: int) -> int | None:
    """Where the earliest stop string begins in `text` (searching from before `start`)."""
    found = [text.find(s, max(0, start - len(s) + 1)) for s in stops if s]
    found = [i for i in found if i >= 0]
    return min(found) if found else None


def _safe_length(text: str, stops) -> int:
    """How much of `text` can be sent now: not a trailing partial character (decoders show
    U+FFFD) nor a tail that may still become a stop string."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, end), 0, -1):
            if text[end - n:end] == s[:n]:
                hold = max(hold, n)
                break
    return end - hold
