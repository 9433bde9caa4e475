"""`vllm serve --reasoning-parser srl --reasoning-parser-plugin <this file>`: SRL thought vs step.

A thin adapter over reasoning_split.ThinkSplitter (text based: SmolLM2 has no `<think>` token,
so vLLM's token-pair parsers cannot be used). vLLM loads this file as a plugin, so vLLM is
imported at module import; without vLLM the import fails with the pip command to run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from srl_sdk.core.format import THINK_CLOSE
from srl_sdk.errors import require
from srl_sdk.serving.reasoning_split import ThinkSplitter, split_reasoning

_reasoning = require("vllm.reasoning", "gpu", package="vllm")
ReasoningParser = _reasoning.ReasoningParser
ReasoningParserManager = _reasoning.ReasoningParserManager
try:  # vLLM moved DeltaMessage between releases
    from vllm.entrypoints.generate.base.protocol import DeltaMessage  # vLLM 0.32
except ImportError:  # pragma: no cover - other vLLM releases
    try:
        from vllm.entrypoints.openai.engine.protocol import DeltaMessage
    except ImportError:
        from vllm.entrypoints.openai.protocol import DeltaMessage


# the base class is found at run time (require() above), so mypy cannot check it
@ReasoningParserManager.register_module("srl")
class SRLReasoningParser(ReasoningParser):  # type: ignore[misc,valid-type]
    """Everything before `</think>` is reasoning (a prefilled `<think>` is allowed), the rest content."""

    def __init__(self, tokenizer: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(tokenizer, *args, **kwargs)
        self._splitter = ThinkSplitter()

    def _text(self, ids: Sequence[int]) -> str:
        return self.model_tokenizer.decode(list(ids))

    def is_reasoning_end(self, input_ids: Sequence[int]) -> bool:
        """Only the current turn counts: vLLM also asks this about the whole PROMPT, whose earlier
        assistant turns (few-shot examples, history) may hold a `</think>` of their own."""
        text = self.model_tokenizer.decode(list(input_ids), skip_special_tokens=False)
        cut = max((text.rfind(tok) + len(tok) for tok in getattr(self.model_tokenizer, "all_special_tokens", [])
                   if tok and tok in text), default=0)
        return THINK_CLOSE in text[cut:]

    def extract_content_ids(self, input_ids: list[int]) -> list[int]:
        for end in range(1, len(input_ids) + 1):
            if THINK_CLOSE in self._text(input_ids[:end]):
                return list(input_ids[end:])
        return []

    def extract_reasoning(self, model_output: str, request: Any) -> tuple[str | None, str | None]:
        return split_reasoning(model_output)

    extract_reasoning_content = extract_reasoning  # the name before vLLM 0.11

    def extract_reasoning_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_token_ids: Sequence[int],
        current_token_ids: Sequence[int],
        delta_token_ids: Sequence[int],
    ) -> Any:
        if not previous_text:
            self._splitter = ThinkSplitter()
        reasoning, content = self._splitter.feed(delta_text)
        if not reasoning and not content:
            return None
        return _delta(reasoning or None, content or None)


def _delta(reasoning: str | None, content: str | None) -> Any:
    if "reasoning" in getattr(DeltaMessage, "model_fields", {"reasoning": None}):
        return DeltaMessage(reasoning=reasoning, content=content)
    return DeltaMessage(reasoning_content=reasoning, content=content)  # pragma: no cover - older vLLM
