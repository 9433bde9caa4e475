"""The typed objects every part of the SDK exchanges: a Step and the Trace that holds them.

Training, serving, the edge runtime and the clients all speak these, so a step produced by a
llama.cpp engine on a laptop and one streamed from a vLLM server are the same object.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FinishReason = Literal[
    "final_answer",  # a step carried the final-answer marker
    "max_steps",  # the step budget ran out
    "repeated_step",  # the model repeated an earlier step (it is looping)
    "length",  # the token budget ran out inside a step
    "stop",  # free mode: the model ended its text without an answer marker
    "cancelled",  # the caller or the client went away
    "timeout",  # the wall-clock budget ran out
    "error",  # the engine failed
    "interrupted",  # the server stopped mid-run (its worker died, or it was killed); never resumed
]


class CheckResult(BaseModel):
    """One verification of a claim inside a step, e.g. that `48/2 = 24` really holds."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="which check produced this, e.g. 'arithmetic'")
    claim: str = Field(description="the text that was checked")
    passed: bool | None = Field(description="True / False, or None when it could not be decided")
    detail: str = ""


class Confidence(BaseModel):
    """How sure the model was of the tokens it sampled for this step (natural-log probabilities)."""

    model_config = ConfigDict(extra="forbid")

    mean_logprob: float
    min_logprob: float


class Step(BaseModel):
    """One reasoning step: a private thought, then the public action the model commits to."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=1, description="1-based position in the trace")
    thought: str = ""
    action: str
    format_ok: bool = True
    is_final: bool = False
    answer: str | None = None
    source: Literal["model", "given"] = "model"
    tokens: int = Field(default=0, ge=0)
    confidence: Confidence | None = None
    latency_s: float | None = None
    checks: list[CheckResult] = Field(default_factory=list)

    @property
    def checks_passed(self) -> bool | None:
        """False if any check failed, True if all decided checks passed, None if none decided."""
        decided = [c.passed for c in self.checks if c.passed is not None]
        if not decided:
            return None
        return all(decided)


def new_trace_id() -> str:
    return uuid.uuid4().hex


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Trace(BaseModel):
    """A whole solution attempt: the problem, every step, the answer and how it ended."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=new_trace_id)
    problem: str
    steps: list[Step] = Field(default_factory=list)
    answer: str | None = None
    finish_reason: FinishReason | None = None
    mode: Literal["stepwise", "free"] = "stepwise"
    model: str = ""
    engine: str = ""
    created_at: datetime = Field(default_factory=utc_now)
    duration_s: float | None = None
    usage: dict[str, int] = Field(default_factory=dict)
    request: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)

    def to_json(self, **kwargs: Any) -> str:
        return self.model_dump_json(**kwargs)

    @classmethod
    def from_json(cls, data: str | bytes) -> "Trace":
        return cls.model_validate_json(data)
