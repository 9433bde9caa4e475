"""Worker events -> OpenAI chat-completion chunks and responses (what LitServe's OpenAISpec drops).

Thoughts go out as `reasoning_content` and `reasoning` (vLLM renamed the field; clients read
either), actions as `content` with each step on its own line, per-token logprobs in the OpenAI
`logprobs.content` shape on reasoning chunks too, one chunk id for the whole stream, and a true
`finish_reason`: `stop` when the model finished, `length` when a step, token or time cap cut it.
"""

from __future__ import annotations

import time
from typing import Any

from srl_sdk.core.format import strip_step_label

LENGTH_REASONS = {"max_steps", "length", "timeout"}
LABEL_HOLD_CHARS = 16  # longer than any "**Step 12:**" label


def finish_reason(trace_finish: str | None) -> str:
    return "length" if trace_finish in LENGTH_REASONS else "stop"


def completion_id(trace_id: str) -> str:
    return f"chatcmpl-{trace_id}"


def token_logprob(text: str, logprob: float | None) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8")), "top_logprobs": []}


def usage(trace: dict[str, Any]) -> dict[str, int]:
    counts = trace.get("usage") or {}
    completion = int(counts.get("completion_tokens", 0))
    prompt = int(counts.get("prompt_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class ChunkWriter:
    """Builds the chunks of one streamed completion, keeping the step layout of the text."""

    def __init__(self, trace_id: str, model: str, mode: str, logprobs: bool) -> None:
        self.id = completion_id(trace_id)
        self.trace_id = trace_id
        self.model = model
        self.created = int(time.time())
        self.mode = mode
        self.logprobs = logprobs
        self._step_of_text: dict[str, int] = {"thought": 0, "action": 0}  # step the last text was in
        self._written: dict[str, bool] = {"thought": False, "action": False}
        self._held_step = 0
        self._held_text: str | None = None
        self._held_probs: list[dict[str, Any]] = []

    def chunk(self, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None, **extra: Any) -> dict:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        }
        body.update(extra)
        return body

    def first(self) -> dict:
        return self.chunk({"role": "assistant", "content": ""})

    def token(self, event: dict[str, Any]) -> dict | None:
        """A `token` event -> a reasoning or content delta; steps are separated by one newline.

        The first characters of each stepwise action are held back until a "Step 2:" label can be
        recognised and dropped, so the streamed lines equal the steps' stored actions.
        """
        phase = event["phase"]
        index = int(event["step_index"])
        probs = [token_logprob(event["text"], event.get("logprob"))]
        if self.mode == "stepwise" and phase == "action":
            if self._held_step != index:
                self._held_step, self._held_text, self._held_probs = index, "", []
            if self._held_text is not None:
                self._held_text += event["text"]
                self._held_probs += probs
                if len(self._held_text.strip()) < LABEL_HOLD_CHARS:
                    return None
                return self._release()
        return self._emit(phase, index, event["text"], probs)

    def step(self, event: dict[str, Any]) -> dict | None:
        """A `step` event: release whatever of its action is still held back."""
        if self.mode == "stepwise" and self._held_step == int(event["step"]["index"]):
            return self._release()
        return None

    def _release(self) -> dict | None:
        text, probs = self._held_text or "", self._held_probs
        self._held_text, self._held_probs = None, []
        return self._emit("action", self._held_step, strip_step_label(text.lstrip()), probs)

    def _emit(self, phase: str, index: int, text: str, probs: list[dict[str, Any]]) -> dict | None:
        if self.mode == "stepwise" and self._step_of_text[phase] != index:  # first text of this part
            text = text.lstrip()
            if not text:
                return None
            if self._written[phase]:
                text = "\n" + text
            self._step_of_text[phase] = index
        if not text:
            return None
        self._written[phase] = True
        delta = {"reasoning_content": text, "reasoning": text} if phase == "thought" else {"content": text}
        return self.chunk(delta, logprobs={"content": probs} if self.logprobs else None)

    def last(self, trace: dict[str, Any], include_usage: bool) -> dict:
        extra: dict[str, Any] = {"srl": {"trace_id": trace["id"], "finish_reason": trace.get("finish_reason"),
                                         "answer": trace.get("answer")}}
        if include_usage:
            extra["usage"] = usage(trace)
        return self.chunk({}, finish=finish_reason(trace.get("finish_reason")), **extra)


def completion(trace: dict[str, Any], model: str, tokens: list[dict[str, Any]], logprobs: bool) -> dict:
    """The non-streamed answer: content = the model's steps one per line, reasoning = their thoughts."""
    steps = [s for s in trace["steps"] if s.get("source") == "model"]
    content = "\n".join(s["action"] for s in steps)
    reasoning = "\n".join(s["thought"] for s in steps if s.get("thought"))
    message = {"role": "assistant", "content": content, "reasoning_content": reasoning, "reasoning": reasoning}
    probs = {"content": [token_logprob(t["text"], t.get("logprob")) for t in tokens]} if logprobs else None
    return {
        "id": completion_id(trace["id"]),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": probs,
                     "finish_reason": finish_reason(trace.get("finish_reason"))}],
        "usage": usage(trace),
        "srl": {"trace_id": trace["id"], "finish_reason": trace.get("finish_reason"), "answer": trace.get("answer"),
                "steps": trace["steps"]},
    }


def error_chunk(kind: str, message: str, status: int) -> dict:
    """The OpenAI client raises APIError when a streamed chunk holds an `error` key."""
    return {"error": {"type": kind, "message": message, "code": status}}
