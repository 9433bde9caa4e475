"""The driver: turns an engine's token stream into typed, checked Steps.

Stepwise mode asks for one step per engine call, exactly as SRL trains the model: the prompt holds
the problem and the steps so far (expert, model or person-edited), and the reply is
`<think>…</think>` then the step. Each step is decoded in two phases over the same prompt text:
the thought (prefilled `<think>`, stopped at `</think>`), then the action (prefilled with the
thought and `</think>`, stopped at the end of the line). A problem's calls go through one engine
session (`Engine.session`): an engine that keeps state per request (llama.cpp) keeps the problem's
KV cache from call to call, so the action phase reads only `</think>\n` after the thought it has
just written, and the next step reads only the new step line and what follows it; the shared
system prompt is reused across requests in whole aligned blocks only (srl_sdk/engines/prefix.py).
A request's result therefore depends on the request alone, never on what ran before it or beside
it (where the processor's batched kernels round as its one-row kernels do, which
tests/test_llama_batching.py checks): traces are reproducible. (Engines without sessions get
each phase's whole prompt and reuse what they can.) For a model that does not close its thought,
the step is still split where it should be and honestly marked `format_ok=False`.

Free mode makes one call for the whole solution and cuts steps out of the text as it streams.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Union, cast

from pydantic import BaseModel, ConfigDict, Field

from srl_sdk.core.answers import extract_answer
from srl_sdk.core.checks import run_checks
from srl_sdk.core.format import (
    THINK_CLOSE,
    THINK_OPEN,
    THOUGHT_STOPS,
    free_messages,
    parse_step_response,
    step_messages,
    strip_step_label,
)
from srl_sdk.core.steps import Confidence, FinishReason, Step, Trace
from srl_sdk.core.types import Seed, Temperature, TopP
from srl_sdk.engines.base import Engine, EngineSession, SamplingParams, TokenEvent
from srl_sdk.errors import ContextOverflowError, InputError

MAX_PROBLEM_CHARS = 20_000


def _generator(events: Iterator[TokenEvent]) -> Generator[TokenEvent, None, None]:
    """Engine.stream's result as what it is: a generator, which the driver closes to stop decoding."""
    return cast(Generator[TokenEvent, None, None], events)


class ReasonConfig(BaseModel):
    """How a problem is decoded. Paired with `Driver` (config + the thing it configures)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["stepwise", "free"] = "stepwise"
    max_steps: int = Field(default=8, ge=1, le=64)
    max_thought_tokens: int = Field(default=64, ge=1, le=4096)
    max_action_tokens: int = Field(default=64, ge=1, le=4096)
    max_total_tokens: int = Field(default=2048, ge=1, le=65536)
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    top_k: int = Field(default=0, ge=0)
    seed: Seed | None = None
    checks: bool = True
    timeout_s: float | None = Field(default=None, gt=0)

    def sampling(self, max_tokens: int, stop: list[str]) -> SamplingParams:
        return SamplingParams(
            max_tokens=max(1, max_tokens),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=stop,
        )


@dataclass(frozen=True)
class TokenDelta:
    """A piece of text as it is generated (the opt-in `token` events of the server)."""

    step_index: int
    phase: Literal["thought", "action"]
    text: str
    logprob: float | None


@dataclass(frozen=True)
class Finished:
    """The last event of a run: the complete trace."""

    trace: Trace


DriverEvent = Union[TokenDelta, Step, Finished]


def validate_problem(problem: object) -> str:
    """Clear errors for input the model should never see."""
    if isinstance(problem, bytes):
        try:
            problem = problem.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"the problem is not valid UTF-8 (byte {exc.start}); re-encode it as UTF-8") from exc
    if not isinstance(problem, str):
        raise InputError(f"the problem must be text, not {type(problem).__name__}")
    if not problem.strip():
        raise InputError("the problem is empty; pass the question to solve")
    if len(problem) > MAX_PROBLEM_CHARS:
        raise InputError(f"the problem is {len(problem)} characters; the limit is {MAX_PROBLEM_CHARS}")
    if "\x00" in problem:
        raise InputError("the problem contains a NUL character; remove it")
    return problem.strip()


def given_steps_to_steps(given: Sequence[str | Step], checks: bool) -> list[Step]:
    """Caller-supplied steps (a person may have edited one) become `source='given'` Steps."""
    steps: list[Step] = []
    for i, item in enumerate(given, start=1):
        action = item.action if isinstance(item, Step) else item
        if not isinstance(action, str) or not action.strip():
            raise InputError(f"given step {i} is empty; remove it or write its text")
        if "\x00" in action or "\x00" in (item.thought if isinstance(item, Step) else ""):
            raise InputError(f"given step {i} contains a NUL character; remove it")  # as problems do
        action = strip_step_label(action)
        thought = item.thought if isinstance(item, Step) else ""
        answer = extract_answer(action)
        steps.append(
            Step(
                index=i,
                thought=thought,
                action=action,
                source="given",
                is_final=answer is not None,
                answer=answer,
                checks=run_checks(action) if checks else [],
            )
        )
    return steps


@dataclass
class _Phase:
    text: str = ""
    logprobs: list[float] = field(default_factory=list)
    finish: str | None = None
    matched_stop: str | None = None


def _confidence(logprobs: list[float]) -> Confidence | None:
    if not logprobs:
        return None
    return Confidence(mean_logprob=sum(logprobs) / len(logprobs), min_logprob=min(logprobs))


def _normalise(action: str) -> str:
    return " ".join(action.lower().split())


class Driver:
    """Runs one engine with one ReasonConfig. Thread-safe as far as the engine is."""

    def __init__(self, engine: Engine, config: ReasonConfig | None = None) -> None:
        self.engine = engine
        self.config = config or ReasonConfig()

    # -- public -------------------------------------------------------------------------------
    def events(
        self,
        problem: str,
        given_steps: Sequence[str | Step] = (),
        *,
        cancel: threading.Event | None = None,
        trace_id: str | None = None,
    ) -> Generator[DriverEvent, None, None]:
        """TokenDeltas and Steps as they happen, then one Finished with the whole trace (closing the
        generator stops the engine)."""
        problem = validate_problem(problem)
        cfg = self.config
        steps = given_steps_to_steps(given_steps, cfg.checks)
        trace = Trace(
            problem=problem,
            mode=cfg.mode,
            model=self.engine.model_id,
            engine=self.engine.name,
            request={"config": cfg.model_dump(), "given_steps": len(steps)},
        )
        if trace_id:
            trace.id = trace_id
        trace.steps.extend(steps)
        started = time.perf_counter()
        deadline = started + cfg.timeout_s if cfg.timeout_s else None
        runner = self._stepwise if cfg.mode == "stepwise" else self._free
        finish: FinishReason
        if steps and steps[-1].is_final:
            finish = "final_answer"
        else:
            with self.engine.session() as session:  # the engine may keep this problem's cache between calls
                finish = yield from runner(session, trace, cancel, deadline)
        trace.finish_reason = finish
        final = next((s for s in reversed(trace.steps) if s.is_final), None)
        trace.answer = final.answer if final else None
        trace.duration_s = time.perf_counter() - started
        trace.usage["completion_tokens"] = sum(s.tokens for s in trace.steps)
        yield Finished(trace)

    def steps(self, problem: str, given_steps: Sequence[str | Step] = (), **kwargs) -> Iterator[Step]:
        for event in self.events(problem, given_steps, **kwargs):
            if isinstance(event, Step):
                yield event

    def solve(self, problem: str, given_steps: Sequence[str | Step] = (), **kwargs) -> Trace:
        for event in self.events(problem, given_steps, **kwargs):
            if isinstance(event, Finished):
                return event.trace
        raise AssertionError("the driver ended without a trace")  # pragma: no cover

    # -- decoding -----------------------------------------------------------------------------
    def _run_phase(
        self,
        session: EngineSession,
        prompt: str,
        params: SamplingParams,
        phase: Literal["thought", "action"],
        step_index: int,
        cancel: threading.Event | None,
        deadline: float | None,
        out: _Phase,
        usage: dict[str, int],
        stop_at_newline: bool = False,
    ) -> Iterator[TokenDelta]:
        """Decode one phase into `out`; the prompt's tokens are added to `usage` (every phase
        re-sends its whole prompt, so prompt_tokens counts what the engine was given in total)."""
        usage["prompt_tokens"] = usage.get("prompt_tokens", 0) + self.engine.count_tokens(prompt)
        stream = _generator(session.stream(prompt, params, cancel))
        try:
            for event in stream:
                if event.finish_reason is not None:
                    self._append(out, event, stop_at_newline)
                    out.finish = out.finish or event.finish_reason
                    out.matched_stop = event.matched_stop
                    if event.text:
                        yield TokenDelta(step_index, phase, event.text, None)
                    return
                emitted = self._append(out, event, stop_at_newline)
                if emitted:
                    yield TokenDelta(step_index, phase, emitted, event.logprob)
                if out.finish == "newline":
                    return
                if cancel is not None and cancel.is_set():
                    out.finish = "cancelled"
                    return
                if deadline is not None and time.perf_counter() > deadline:
                    out.finish = "timeout"
                    return
        finally:
            stream.close()

    @staticmethod
    def _append(out: _Phase, event: TokenEvent, stop_at_newline: bool) -> str:
        """Add a token to the phase; for one-line actions, cut at the first newline after text."""
        if event.logprob is not None:
            out.logprobs.append(event.logprob)
        text = event.text
        if stop_at_newline and "\n" in text:
            cut = text.index("\n")
            if (out.text + text[:cut]).strip():
                out.text += text[:cut]
                out.finish = "newline"
                return text[:cut]
        out.text += text
        return text

    def _stepwise(self, session: EngineSession, trace: Trace, cancel: threading.Event | None, deadline: float | None):
        cfg = self.config
        engine = self.engine
        seen = {_normalise(s.action) for s in trace.steps}
        used_tokens = 0
        while True:
            if len([s for s in trace.steps if s.source == "model"]) >= cfg.max_steps:
                return "max_steps"
            index = len(trace.steps) + 1
            base = engine.render(step_messages(trace.problem, [s.action for s in trace.steps], engine.prompt_style))
            started = time.perf_counter()
            thought = _Phase()
            prompt = base + THINK_OPEN
            try:
                yield from self._run_phase(
                    session,
                    prompt,
                    cfg.sampling(min(cfg.max_thought_tokens, cfg.max_total_tokens - used_tokens), THOUGHT_STOPS),
                    "thought", index, cancel, deadline, thought, trace.usage,
                )
            except ContextOverflowError:
                if index == 1 or not trace.steps:
                    raise
                return "length"
            closed = thought.matched_stop == THINK_CLOSE
            action = _Phase()
            if thought.finish in ("cancelled", "timeout"):
                return thought.finish
            # Keep the model's own text when it closed its thought (re-tokenising an edited thought
            # can glue "<think></think>" into a token training never showed it); when it did not,
            # close it the way SFT targets do: "\n</think>\n".
            closing = THINK_CLOSE + "\n" if closed else "\n" + THINK_CLOSE + "\n"
            thought_text = thought.text if closed else thought.text.rstrip()
            action_prompt = prompt + thought_text + closing
            used_tokens += len(thought.logprobs)
            try:
                yield from self._run_phase(
                    session,
                    action_prompt,
                    cfg.sampling(min(cfg.max_action_tokens, max(1, cfg.max_total_tokens - used_tokens)), []),
                    "action", index, cancel, deadline, action, trace.usage,
                    stop_at_newline=True,
                )
            except ContextOverflowError:
                return "length"
            used_tokens += len(action.logprobs)
            reply = (thought_text + closing + action.text) if closed else (thought.text + action.text)
            parsed = parse_step_response(reply, thought_prefilled=True)
            # a model that re-opens a thought inside its step: keep the words, drop the tags
            action_text = strip_step_label(action.text.replace(THINK_OPEN, "").replace(THINK_CLOSE, "").strip())
            step = self._make_step(
                index,
                thought=thought.text.strip(),
                action=action_text,
                format_ok=closed and parsed.format_ok,
                logprobs=thought.logprobs + action.logprobs,
                latency=time.perf_counter() - started,
            )
            if action.finish in ("cancelled", "timeout"):
                if step.action:
                    trace.steps.append(step)
                    yield step
                return action.finish
            if not step.action:
                # the model ended its turn without a step: nothing more will come
                return "stop"
            trace.steps.append(step)
            yield step
            if step.is_final:
                return "final_answer"
            key = _normalise(step.action)
            if key in seen:
                return "repeated_step"
            seen.add(key)
            if used_tokens >= cfg.max_total_tokens:
                return "length"

    def _free(self, session: EngineSession, trace: Trace, cancel: threading.Event | None, deadline: float | None):
        cfg = self.config
        prompt = self.engine.render(free_messages(trace.problem, self.engine.prompt_style))
        trace.usage["prompt_tokens"] = trace.usage.get("prompt_tokens", 0) + self.engine.count_tokens(prompt)
        stream = _generator(session.stream(prompt, cfg.sampling(cfg.max_total_tokens, []), cancel))
        pending = ""  # text of the line being written
        logprobs: list[float] = []
        started = time.perf_counter()

        def line_to_step(text: str) -> Step | None:
            nonlocal logprobs, started
            probs, logprobs = logprobs, []
            begun, started = started, time.perf_counter()
            text = text.strip()
            if not text:
                return None
            parsed = parse_step_response(text)
            return self._make_step(
                len(trace.steps) + 1,
                thought=parsed.thought if THINK_CLOSE in text else "",
                action=parsed.action,
                format_ok=True,  # free mode asks for plain lines: every non-empty line is a step
                logprobs=probs,
                latency=time.perf_counter() - begun,
            )

        finish: FinishReason = "stop"
        try:
            for event in stream:
                if event.logprob is not None:
                    logprobs.append(event.logprob)
                if event.text:
                    yield TokenDelta(len(trace.steps) + 1, "action", event.text, event.logprob)
                *complete, pending = (pending + event.text).split("\n")
                for text in complete:
                    step = line_to_step(text)
                    if step is None:
                        continue
                    trace.steps.append(step)
                    yield step
                    if step.is_final:
                        return "final_answer"
                    if len(trace.steps) >= cfg.max_steps:
                        return "max_steps"
                if event.finish_reason is not None:
                    finish = "length" if event.finish_reason == "length" else (
                        "cancelled" if event.finish_reason == "cancelled" else "stop")
                    break
                if cancel is not None and cancel.is_set():
                    return "cancelled"
                if deadline is not None and time.perf_counter() > deadline:
                    return "timeout"
        finally:
            stream.close()
        step = line_to_step(pending)
        if step is not None:
            trace.steps.append(step)
            yield step
            if step.is_final:
                return "final_answer"
        return finish

    def _make_step(
        self,
        index: int,
        *,
        thought: str,
        action: str,
        format_ok: bool,
        logprobs: list[float],
        latency: float,
    ) -> Step:
        answer = extract_answer(action)
        return Step(
            index=index,
            thought=thought,
            action=action,
            format_ok=format_ok and bool(action),
            is_final=answer is not None,
            answer=answer,
            tokens=len(logprobs),
            confidence=_confidence(logprobs),
            latency_s=latency,
            checks=run_checks(action) if self.config.checks else [],
        )
