"""The one interface every inference backend implements.

The reasoning driver only needs three things from a model: render chat messages to the exact
prompt text, stream sampled tokens with their log-probabilities, and stop when asked. Keeping the
interface that small is what lets llama.cpp, transformers, vLLM and onnxruntime sit behind the
same driver, server and client.

Cancellation is closing the iterator: an engine must stop decoding promptly when its generator is
closed (the driver closes it once a step is complete; the server closes it when a client leaves).
A `threading.Event` can be passed as well for callers that cannot reach the generator.
"""

from __future__ import annotations

import asyncio
import os
import math
import re
import threading
from abc import ABC, abstractmethod
from contextlib import aclosing
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from srl_sdk.core.format import PromptStyle
from srl_sdk.core.types import Seed, Temperature, TopP

EngineFinish = Literal["stop", "length", "cancelled"]
T = TypeVar("T")


class SamplingParams(BaseModel):
    """Per-call sampling settings. temperature 0 means greedy decoding."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(default=256, ge=1, le=32768)
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    top_k: int = Field(default=0, ge=0, description="0 disables top-k")
    seed: Seed | None = None
    stop: list[str] = Field(default_factory=list, max_length=16)


@dataclass(frozen=True)
class TokenEvent:
    """One sampled token. The last event of a stream has `finish_reason` set and may be empty."""

    text: str
    token_id: int | None = None
    logprob: float | None = None
    finish_reason: EngineFinish | None = None
    matched_stop: str | None = None  # on the last event: which stop string ended the stream


class Engine(ABC):
    """A loaded model that streams tokens. Implementations import their heavy library lazily."""

    name: str = "engine"

    def __init__(self, model_id: str, context_length: int, source: str | os.PathLike[str] | None = None) -> None:
        """`source`: what was loaded (a named model, a folder), when `model_id` is only its short name."""
        from srl_sdk.engines.models import prompt_style_of

        self.model_id = model_id
        self.context_length = context_length
        # the step protocol's system prompt this model was trained with (core.format); a caller
        # that knows better (srl eval --prompt) may set it
        self.prompt_style: PromptStyle = prompt_style_of(source if source is not None else model_id)

    @abstractmethod
    def render(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """Chat messages -> the exact prompt text the model sees (its own chat template)."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes as a prompt, so callers can refuse prompts that cannot fit."""

    @abstractmethod
    def stream(
        self,
        prompt: str,
        params: SamplingParams,
        cancel: threading.Event | None = None,
    ) -> Iterator[TokenEvent]:
        """Yield sampled tokens of `prompt`'s continuation, then one event with finish_reason.

        Stop strings are excluded from the yielded text. Must stop promptly when the generator is
        closed or `cancel` is set.
        """

    async def astream(
        self,
        prompt: str,
        params: SamplingParams,
        cancel: threading.Event | None = None,
    ) -> AsyncIterator[TokenEvent]:
        """Async twin of `stream`. Default: run the sync generator in a worker thread.

        Engines with a native async API (vLLM) override this.
        """
        cancel = cancel or threading.Event()
        # aclosing: closing this stream stops the engine at once, not at garbage collection
        async with aclosing(iterate_in_thread(self.stream(prompt, params, cancel), cancel)) as events:
            async for event in events:
                yield event

    def session(self) -> "EngineSession":
        """A run of calls that belong to one request (the driver's steps and phases of one problem).

        An engine that keeps state per request overrides this: the llama.cpp engine keeps the
        request's KV cache between calls, so each call evaluates only the text its prompt adds.
        The default forwards every call to `stream`."""
        return EngineSession(self)

    def info(self) -> dict[str, object]:
        return {"engine": self.name, "model": self.model_id, "context_length": self.context_length}

    def gauges(self) -> dict[str, int]:
        """Live load figures a server exports on /metrics (name -> value); none for one-at-a-time engines.

        A batching engine (vLLM) reports what its scheduler runs; the server reads this, not logs,
        so the figures do not depend on how logging is configured.
        """
        return {}

    def alive(self) -> bool:
        """False once the engine can no longer generate (a crashed engine process). An in-process
        engine is alive as long as its process is; a server's worker exits when this turns False."""
        return True

    def close(self) -> None:  # noqa: B027  (not abstract: an engine with nothing to free keeps it)
        """Release the model. Safe to call twice."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EngineSession:
    """Calls of one request on one engine; close it (or use `with`) when the request is over.

    `stream` is `Engine.stream`'s contract. Each call still sends its whole prompt: what a session
    adds is that the engine may keep what it computed for the previous calls of the same request.
    Not thread-safe: one request, one caller at a time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def stream(self, prompt: str, params: SamplingParams, cancel: threading.Event | None = None) -> Iterator[TokenEvent]:
        return self.engine.stream(prompt, params, cancel)

    def close(self) -> None:  # noqa: B027  (nothing to release by default)
        """End the request. Safe to call twice."""

    def __enter__(self) -> "EngineSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Prompt(str):
    """Rendered prompt text that knows which characters came from a message's content and must
    be read as text.

    A chat template wraps contents in control tokens (`<|im_start|>user ... <|im_end|>`). If a
    user's text holds such a token's characters and the whole prompt is tokenized with special
    tokens parsed, the user can close their turn and write the assistant's or system's. So
    `render` marks the contents that hold control-token text (`text_spans`, character ranges) and
    engines tokenize those without parsing special tokens, the template's own tokens stay special.
    A prompt without such content has no spans and is tokenized exactly as before.

    `+` keeps the spans (the driver appends the model's own text to a rendered prompt); any other
    string operation gives a plain str, tokenized with special tokens parsed.
    """

    text_spans: tuple[tuple[int, int], ...]

    def __new__(cls, text: str, text_spans: Sequence[tuple[int, int]] = ()) -> "Prompt":
        prompt = super().__new__(cls, text)
        prompt.text_spans = tuple(text_spans)
        return prompt

    def __add__(self, other: str) -> "Prompt":
        return Prompt(str.__add__(self, other), self.text_spans)

    def __reduce__(self):
        return Prompt, (str(self), self.text_spans)


_MARK = "\ufdd0{}\ufdd1"  # Unicode noncharacters: never in a template, never rendered by one
_MARK_SPLIT = re.compile("\ufdd0(\\d+)\ufdd1")


def protect_contents(
    render_text: Callable[[list[dict[str, str]]], str],
    messages: Sequence[dict[str, str]],
    has_special: Callable[[str], bool],
) -> str:
    """Render `messages`; if a content holds control-token text, return a Prompt whose spans cover
    those contents (found by rendering again with numbered marks in place of the contents).

    A template that rewrites contents (beyond trimming them) hides where they went: such a prompt
    is refused rather than tokenized with the user's control tokens live."""
    from srl_sdk.errors import InputError

    messages = [dict(m) for m in messages]
    text = render_text(messages)
    contents = [c if isinstance(c := m.get("content"), str) else "" for m in messages]
    risky = {i for i, content in enumerate(contents) if content and has_special(content)}
    if not risky:
        return text
    marked = render_text([{**m, "content": _MARK.format(i)} for i, m in enumerate(messages)])
    pieces = _MARK_SPLIT.split(marked)  # template text, content index, template text, ...
    for shape in (lambda c: c, str.strip):  # some templates trim contents
        out, spans, at = [], [], 0
        for k, piece in enumerate(pieces):
            if k % 2:
                index = int(piece)
                piece = shape(contents[index])
                if index in risky:
                    spans.append((at, at + len(piece)))
            out.append(piece)
            at += len(piece)
        if "".join(out) == text:
            return Prompt(text, spans)
    raise InputError("the text holds the model's control tokens (such as <|im_start|>) and this model's chat "
                     "template changes message text, so they cannot be kept as plain text; remove them")


def encode_protected(text: str, tokenize: Callable[[str, bool, bool], list[int]]) -> list[int]:
    """Token ids of a (possibly `Prompt`) text: `tokenize(piece, special, first)` with special-token
    parsing off inside the prompt's text spans, on elsewhere; one call when there are no spans."""
    spans = getattr(text, "text_spans", ())
    if not spans:
        return tokenize(str(text), True, True)
    ids: list[int] = []
    at = 0
    for start, end in spans:
        if start > at:
            ids += tokenize(text[at:start], True, at == 0)
        ids += tokenize(text[start:end], False, start == 0)
        at = end
    if at < len(text):
        ids += tokenize(text[at:], True, False)
    return ids


class TokenLoopEngine(Engine):
    """An engine that decodes token by token in Python (llama.cpp, transformers, onnxruntime).

    They share the checks before decoding: a closed engine, an empty prompt, and a prompt that
    leaves no room in the context (refused with ContextOverflowError; max_tokens is capped to the
    room left, so a long prompt ends with finish_reason "length" rather than an engine error).
    They share how user text is kept from becoming control tokens (`Prompt`): each implements
    `_render_text` (its chat template) and `_tokenize` (with special-token parsing on or off).
    """

    closed: bool = False

    @abstractmethod
    def _render_text(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """Chat messages -> prompt text through the model's own chat template."""

    @abstractmethod
    def _tokenize(self, text: str, special: bool, first: bool) -> list[int]:
        """Text -> token ids. `special`: parse control-token text (`<|im_start|>`) into those
        tokens; `first`: the text starts the prompt (add BOS where the model wants one)."""

    def render(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        return protect_contents(lambda ms: self._render_text(ms, add_generation_prompt), messages,
                                self._has_special)

    def _has_special(self, text: str) -> bool:
        """Whether `text` holds characters the tokenizer would read as a control token."""
        return self._tokenize(text, True, False) != self._tokenize(text, False, False)

    def _encode(self, text: str) -> list[int]:
        """Prompt text -> token ids, exactly as the model will see them."""
        return encode_protected(text, self._tokenize)

    @abstractmethod
    def _decode(
        self, tokens: list[int], params: SamplingParams, budget: int, cancel: threading.Event | None
    ) -> Iterator[TokenEvent]:
        """The decode loop proper: at most `budget` new tokens."""

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def _checked(self, prompt: str, params: SamplingParams) -> tuple[list[int], int]:
        """The prompt's tokens and the token budget, after the checks every call gets."""
        from srl_sdk.errors import ContextOverflowError, EngineError

        if self.closed:
            raise EngineError("this engine was closed; create a new one")
        tokens = self._encode(prompt)
        if not tokens:
            raise EngineError("the prompt is empty after tokenization; render the messages first")
        room = self.context_length - len(tokens)
        if room < 1:
            raise ContextOverflowError(len(tokens), self.context_length)
        return tokens, min(params.max_tokens, room)

    def stream(
        self,
        prompt: str,
        params: SamplingParams,
        cancel: threading.Event | None = None,
    ) -> Iterator[TokenEvent]:
        tokens, budget = self._checked(prompt, params)
        return self._decode(tokens, params, budget, cancel)


async def iterate_in_thread(iterator: Iterator[T], cancel: threading.Event) -> AsyncGenerator[T, None]:
    """The one sync -> async bridge: a thread of its own runs a blocking generator and hands each
    item to the event loop as it comes.

    The thread does not wait for the consumer between items (a per-item round trip through a
    thread pool cost about as much as a token of the 135M model). However the async side ends
    (exhausted, an error, or its consumer closing it), `cancel` is set, so a generator blocked in
    native code stops at its next check; the thread then closes the generator and the async side
    waits for that. Used by Engine.astream, the Reasoner's local backend and the server's worker.
    """
    loop = asyncio.get_running_loop()
    items: asyncio.Queue = asyncio.Queue()
    done = loop.create_future()
    finished = object()

    def deliver(item: object, error: BaseException | None = None) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, (item, error))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            cancel.set()

    def pump() -> None:
        error: BaseException | None = None
        try:
            for item in iterator:  # the generator itself stops soon after `cancel` is set
                deliver(item)
        except BaseException as exc:  # noqa: BLE001 (re-raised on the async side)
            error = exc
        finally:
            try:
                iterator.close()  # type: ignore[attr-defined]
            except BaseException as exc:  # noqa: BLE001
                error = error or exc
            deliver(finished, error)
            try:
                loop.call_soon_threadsafe(_settle, done)
            except RuntimeError:
                pass

    threading.Thread(target=pump, name="srl-iterate", daemon=True).start()
    try:
        while True:
            item, error = await items.get()
            if item is finished:
                if error is not None:
                    raise error
                return
            yield item  # type: ignore[misc]
    finally:
        cancel.set()
        await done


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class StopMatcher:
    """Holds back text that could be the start of a stop string, so none of it leaks out.

    Engines that decode token by token (llama.cpp, transformers, onnxruntime) share this; vLLM
    applies stop strings itself.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.matched: str | None = None

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit now, whether a stop string was hit)."""
        self.pending += text
        hits = [(self.pending.find(stop), stop) for stop in self.stops if stop in self.pending]
        if hits:
            at, self.matched = min(hits)
            out, self.pending = self.pending[:at], ""
            return out, True
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out) :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def log_softmax_at(logits, token_id: int) -> float:
    """log p(token_id) from a row of raw logits (numpy array), computed stably."""
    import numpy as np

    row = np.asarray(logits, dtype=np.float64)
    peak = float(row.max())
    lse = peak + math.log(float(np.exp(row - peak).sum()))
    return float(row[token_id]) - lse
