"""Split `<think>thought</think> step` text into reasoning and content, streaming-safe.

This is the vLLM-free core of the `srl` reasoning parser (vllm_reasoning_parser.py). SmolLM2 and
most small models have no `<think>` token, so the split is done on text, and a tag can arrive cut
across deltas (`</thi` + `nk>`): text that could still become a tag is held back until it cannot.

Where the thought starts:
- `starts_in_thought=None` (auto, the vLLM convention for reasoning models): output that begins
  with `<think>` is thought until `</think>`; output that does not is *also* thought until
  `</think>`, because an SRL prompt may prefill `<think>` so the output starts inside it. Output
  with no `</think>` at all is all reasoning.
- `starts_in_thought=True`: the prompt prefilled `<think>`.
- `starts_in_thought=False`: untagged output is content (a model that ignored the format).
"""

from __future__ import annotations

from srl_sdk.core.format import THINK_CLOSE, THINK_OPEN


def _held_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class ThinkSplitter:
    """Feed deltas, get (reasoning, content) pieces; `finish()` flushes what was held back."""

    def __init__(self, starts_in_thought: bool | None = None) -> None:
        self.auto = starts_in_thought is None
        self.state = "thought" if starts_in_thought else "start"
        self.buffer = ""
        self.content_started = False

    def feed(self, delta: str) -> tuple[str, str]:
        self.buffer += delta
        reasoning, content = "", ""
        if self.state == "start":
            stripped = self.buffer.lstrip()
            if stripped.startswith(THINK_OPEN):
                self.state, self.buffer = "thought", stripped[len(THINK_OPEN):]
            elif THINK_OPEN.startswith(stripped):
                return "", ""  # empty or a partial "<thi": undecided
            else:
                self.state = "thought" if self.auto else "content"
        if self.state == "thought":
            at = self.buffer.find(THINK_CLOSE)
            if at == -1:
                hold = _held_suffix(self.buffer, THINK_CLOSE)
                reasoning = self.buffer[: len(self.buffer) - hold]
                self.buffer = self.buffer[len(reasoning):]
                return reasoning, ""
            reasoning, self.buffer = self.buffer[:at], self.buffer[at + len(THINK_CLOSE):]
            self.state = "content"
        if self.state == "content":
            content, self.buffer = self.buffer, ""
            if not self.content_started:
                content = content.lstrip()
                self.content_started = bool(content)
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        rest, self.buffer = self.buffer, ""
        if self.state == "thought" or (self.state == "start" and self.auto):
            return rest, ""
        return "", rest.lstrip() if not self.content_started else rest

    @property
    def reasoning_ended(self) -> bool:
        return self.state == "content"


def split_reasoning(text: str, starts_in_thought: bool | None = None) -> tuple[str | None, str | None]:
    """Whole output -> (reasoning or None, content or None), as vLLM's extract_reasoning returns."""
    splitter = ThinkSplitter(starts_in_thought)
    r1, c1 = splitter.feed(text)
    r2, c2 = splitter.finish()
    reasoning, content = (r1 + r2).strip(), (c1 + c2).strip()
    return (reasoning or None), (content or None)
