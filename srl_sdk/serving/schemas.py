"""Request bodies of the HTTP API, validated in the API process before anything reaches a worker.

Unknown fields are refused (`extra="forbid"`) so a typo is a 422 that names it, not a setting
silently ignored. The server's `ServerLimits` are applied on top of the field bounds.
A validated request becomes a `job`: a plain dict (it is pickled to the inference worker).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from srl_sdk.core.types import Seed, Temperature, TopP
from srl_sdk.reasoning.driver import ReasonConfig, given_steps_to_steps, validate_problem
from srl_sdk.serving.config import ServerConfig


class ErrorReply(Exception):
    """An HTTP error answered with the JSON body {"error": {"type", "message"}}.

    Server-side only: raised inside a request, turned into a response by spec.py. The client's
    failures are srl_sdk.errors.APIError and its subclasses (a different tree, for callers)."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers or {}  # e.g. Retry-After on 429 / 503
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.kind, "message": self.message, "code": self.status}}


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_steps: int | None = Field(default=None, ge=1, le=64)
    max_thought_tokens: int | None = Field(default=None, ge=1, le=4096)
    max_action_tokens: int | None = Field(default=None, ge=1, le=4096)
    max_total_tokens: int | None = Field(default=None, ge=1, le=65536)
    timeout_s: float | None = Field(default=None, gt=0, le=86400)


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: int | None = Field(default=None, ge=0, le=100_000)
    seed: Seed | None = None


class ReasonRequest(BaseModel):
    """POST /v1/reason."""

    model_config = ConfigDict(extra="forbid")

    problem: str = Field(min_length=1)
    steps: list[str] = Field(default_factory=list, description="given steps to continue from")
    mode: Literal["stepwise", "free"] | None = None
    limits: Limits = Field(default_factory=Limits)
    sampling: Sampling = Field(default_factory=Sampling)
    checks: bool | None = None
    stream: bool = True
    tokens: bool = Field(default=False, description="also send `token` events")
    model: str | None = Field(default=None, description="optional; must name the served model")


class ContentPart(BaseModel):
    """One part of an OpenAI message's content list. Only text parts are read; `text` must be a
    string (a number or object there was a 500 before it was typed)."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "".join(part.text or "" for part in self.content if part.type == "text")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions: the OpenAI fields this server honours (others are refused)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: TopP | None = None
    top_k: int | None = Field(default=None, ge=0)
    seed: Seed | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=65536)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=65536)
    n: Literal[1] = 1
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=0, description="alternatives are not computed")
    user: str | None = None
    # SRL extensions (the OpenAI client sends them through `extra_body`)
    max_steps: int | None = Field(default=None, ge=1, le=64)
    mode: Literal["stepwise", "free"] | None = None


def _capped(config: ServerConfig, merged: dict[str, Any]) -> ReasonConfig:
    limits = config.limits
    checks = [
        ("max_steps", limits.max_steps),
        ("max_thought_tokens", limits.max_step_tokens),
        ("max_action_tokens", limits.max_step_tokens),
        ("max_total_tokens", limits.max_total_tokens),
        ("timeout_s", limits.max_timeout_s),
    ]
    for field, cap in checks:
        value = merged.get(field)
        if value is not None and value > cap:
            raise ErrorReply(422, "invalid_request", f"{field}={value} is above this server's limit of {cap}; lower it")
    if merged.get("timeout_s") is None:
        merged["timeout_s"] = limits.default_timeout_s
    return ReasonConfig.model_validate(merged)


def reason_job(config: ServerConfig, body: ReasonRequest, endpoint: str, trace_id: str) -> dict[str, Any]:
    """A validated /v1/reason body -> the job a worker runs."""
    _check_model(config, body.model)
    overrides = {
        "mode": body.mode,
        "checks": body.checks,
        **body.limits.model_dump(exclude_none=True),
        **body.sampling.model_dump(exclude_none=True),
    }
    return _job(config, body.problem, body.steps, overrides, endpoint, trace_id, body.tokens,
                request=body.model_dump(mode="json"))


def chat_job(config: ServerConfig, body: ChatCompletionRequest, endpoint: str, trace_id: str) -> dict[str, Any]:
    """An OpenAI chat body -> the same job: the last user message is the problem."""
    _check_model(config, body.model)
    users = [m for m in body.messages if m.role == "user"]
    if not users:
        raise ErrorReply(422, "invalid_request", "messages hold no user message; send the problem as a user message")
    problem = users[-1].text()
    overrides: dict[str, Any] = {
        "mode": body.mode,
        "max_steps": body.max_steps,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "seed": body.seed,
        "max_total_tokens": body.max_completion_tokens or body.max_tokens,
    }
    request = body.model_dump(mode="json", exclude={"messages"})
    request["problem"] = problem
    return _job(config, problem, [], overrides, endpoint, trace_id, tokens=True, request=request)


def _check_model(config: ServerConfig, model: str | None) -> None:
    if model is not None and model != config.model_name:
        raise ErrorReply(404, "model_not_found",
                       f"model {model!r} is not served here; this server serves {config.model_name!r} (GET /v1/models)")


def _job(config: ServerConfig, problem: str, steps: list[str], overrides: dict[str, Any], endpoint: str,
         trace_id: str, tokens: bool, request: dict[str, Any]) -> dict[str, Any]:
    from srl_sdk.errors import InputError

    if len(steps) > config.limits.max_given_steps:
        raise ErrorReply(422, "invalid_request",
                       f"{len(steps)} given steps; this server accepts at most {config.limits.max_given_steps}")
    merged = {**config.reason.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        reason = _capped(config, merged)
        problem = validate_problem(problem)
        given_steps_to_steps(steps, checks=False)
    except InputError as exc:
        raise ErrorReply(422, "invalid_request", str(exc)) from exc
    except ValueError as exc:  # pydantic ValidationError
        raise ErrorReply(422, "invalid_request", f"invalid settings: {exc}") from exc
    return {
        "trace_id": trace_id,
        "problem": problem,
        "steps": steps,
        "config": reason.model_dump(),
        "tokens": tokens,
        "request": {"endpoint": endpoint, "body": request},
    }
