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
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

EngineFinish = Literal["stop", "length", "cancelled"]


class SamplingParams(BaseModel):
    """Per-call sampling settings. temperature 0 means greedy decoding."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(default=256, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, description="0 disables top-k")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
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

    def __init__(self, model_id: str, context_length: int) -> None:
        self.model_id = model_id
        self.context_length = context_length

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
        iterator = self.stream(prompt, params, cancel)
        sentinel = object()
        try:
            while True:
                event = await asyncio.to_thread(next, iterator, sentinel)
                if event is sentinel:
                    return
                yield event  # type: ignore[misc]
        finally:
            cancel.set()
            await asyncio.to_thread(iterator.close)

    def info(self) -> dict[str, object]:
        return {"engine": self.name, "model": self.model_id, "context_length": self.context_length}

    def gauges(self) -> dict[str, int]:
        """Live load figures a server exports on /metrics (name -> value); none for one-at-a-time engines.

        A batching engine (vLLM) reports what its scheduler runs; the server reads this, not logs,
        so the figures do not depend on how logging is configured.
        """
        return {}

    def close(self) -> None:
        """Release the model. Safe to call twice."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TokenLoopEngine(Engine):
    """An engine that decodes token by token in Python (llama.cpp, transformers, onnxruntime).

    They share the checks before decoding: a closed engine, an empty prompt, and a prompt that
    leaves no room in the context (refused with ContextOverflowError; max_tokens is capped to the
    room left, so a long prompt ends with finish_reason "length" rather than an engine error).
    """

    closed: bool = False

    @abstractmethod
    def _encode(self, text: str) -> list[int]:
        """Prompt text -> token ids, exactly as the model will see them."""

    @abstractmethod
    def _decode(
        self, tokens: list[int], params: SamplingParams, budget: int, cancel: threading.Event | None
    ) -> Iterator[TokenEvent]:
        """The decode loop proper: at most `budget` new tokens."""

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def stream(
        self,
        prompt: str,
        params: SamplingParams,
        cancel: threading.Event | None = None,
    ) -> Iterator[TokenEvent]:
        from srl_sdk.errors import ContextOverflowError, EngineError

        if self.closed:
            raise EngineError("this engine was closed; create a new one")
        tokens = self._encode(prompt)
        if not tokens:
            raise EngineError("the prompt is empty after tokenization; render the messages first")
        room = self.context_length - len(tokens)
        if room < 1:
            raise ContextOverflowError(len(tokens), self.context_length)
        return self._decode(tokens, params, min(params.max_tokens, room), cancel)


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
