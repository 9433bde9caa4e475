"""What every engine promises, as one body of tests run against each engine (the way TRL runs one
test body over many tiny models).

Not a test module (no test_ prefix): `EngineContract` is collected through its subclasses, which
provide two fixtures: `engine` (a loaded engine, shared by the tests) and `closed_engine` (one that
was closed). tests/test_engine_contract.py runs it on llama.cpp, transformers and onnxruntime;
tests/vllm_cpu/test_vllm_engine.py on vLLM. What only one engine does stays in that engine's file.
All engines run the same model (SmolLM2-135M), so the same prompts suit every one of them.
"""

from __future__ import annotations

import math
import threading
import time

import pytest

from srl_sdk.engines import SamplingParams
from srl_sdk.errors import ContextOverflowError, EngineError
from srl_sdk.reasoning.driver import Driver, ReasonConfig

COUNTING = [{"role": "user", "content": "Count from 1 to 20, separated by spaces."}]
OPEN = [{"role": "user", "content": "Write a word."}]
PROBLEM = "Tom has 3 apples and buys 5 more. How many apples does he have?"
# how many more tokens may come after the cancel event is set before the stream ends: llama.cpp
# checks it before each token; vLLM's tokens arrive from another process, a few already on their way
CANCEL_SLACK = {"llama.cpp": 0, "transformers": 1, "onnx": 1, "vllm": 6}


def collect(engine, prompt: str, cancel: threading.Event | None = None, **params) -> tuple[str, list]:
    """Stream to the end: the text and the events (only the last one has a finish reason)."""
    events = list(engine.stream(prompt, SamplingParams(**params), cancel))
    assert events[-1].finish_reason is not None
    assert all(e.finish_reason is None for e in events[:-1])
    return "".join(e.text for e in events), events


def released(engine) -> bool:
    """The engine holds nothing of a stream that ended and runs another request at once."""
    lock = getattr(engine, "_lock", None)  # the in-process engines: fail fast instead of hanging
    if lock is not None:
        if not lock.acquire(timeout=1):
            return False
        lock.release()
    if hasattr(engine, "running_requests"):  # vLLM: the request has left its scheduler
        deadline = time.monotonic() + 10
        while engine.running_requests() and time.monotonic() < deadline:
            time.sleep(0.05)
        if engine.running_requests():
            return False
    text, events = collect(engine, engine.render(COUNTING), max_tokens=2)
    return bool(text) and events[-1].finish_reason == "length"


class EngineContract:
    def test_render_uses_the_models_chat_template(self, engine):
        prompt = engine.render(COUNTING)
        assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
        assert COUNTING[0]["content"] in prompt
        assert 0 < engine.count_tokens(prompt) < len(prompt)

    def test_greedy_is_deterministic_with_real_logprobs(self, engine):
        prompt = engine.render(COUNTING)
        text, events = collect(engine, prompt, max_tokens=16)
        again, _ = collect(engine, prompt, max_tokens=16)
        assert text == again and text.strip()
        assert events[-1].finish_reason == "length"
        tokens = events[:-1]
        assert len(tokens) == 16 and all(isinstance(e.token_id, int) for e in tokens)
        logprobs = [e.logprob for e in tokens]
        assert all(lp is not None and math.isfinite(lp) and lp <= 1e-6 for lp in logprobs)
        # greedy picks the argmax, so most tokens of a counting task are near-certain; not all of
        # them are certain, though: the numbers come from real logits
        assert max(logprobs) > -0.5 and min(logprobs) < -1e-3

    def test_seeded_sampling_repeats_and_differs_by_seed(self, engine):
        prompt = engine.render(OPEN)

        def sample(seed: int) -> str:
            return collect(engine, prompt, max_tokens=16, temperature=1.5, seed=seed)[0]

        first = sample(1)
        assert sample(1) == first
        assert len({sample(seed) for seed in (2, 3, 4, 5)} | {first}) > 1

    def test_a_session_streams_as_the_engine_does(self, engine):
        """A session's calls keep `stream`'s contract; its first call is an ordinary call."""
        prompt = engine.render(COUNTING)
        alone = list(engine.stream(prompt, SamplingParams(max_tokens=8)))
        with engine.session() as session:
            first = list(session.stream(prompt, SamplingParams(max_tokens=8)))
            longer = prompt + "".join(e.text for e in first)
            more = list(session.stream(longer, SamplingParams(max_tokens=4)))
        assert [(e.text, e.token_id, e.finish_reason) for e in first] == [(e.text, e.token_id, e.finish_reason) for e in alone]
        assert all(a.logprob == b.logprob or math.isclose(a.logprob, b.logprob, abs_tol=1e-3)  # type: ignore[arg-type]
                   for a, b in zip(first[:-1], alone[:-1]))
        assert more[-1].finish_reason == "length" and len(more) == 5

    def test_a_stop_string_ends_the_stream_and_is_left_out(self, engine):
        prompt = engine.render(COUNTING)
        full, _ = collect(engine, prompt, max_tokens=24)
        stop = full[len(full) // 3:][:3]  # three characters from the middle, likely across tokens
        assert stop.strip() and full.index(stop) > 0, full
        cut, events = collect(engine, prompt, max_tokens=24, stop=[stop])
        assert events[-1].finish_reason == "stop"
        assert cut == full[: full.index(stop)]  # everything before the stop, none of it

    def test_cancel_and_close_stop_decoding_and_free_the_engine(self, engine):
        prompt = engine.render(COUNTING)
        cancel = threading.Event()
        events = []
        for event in engine.stream(prompt, SamplingParams(max_tokens=200), cancel):
            events.append(event)
            if len(events) == 3:
                cancel.set()
        assert events[-1].finish_reason == "cancelled"
        assert len(events) <= 3 + 1 + CANCEL_SLACK[engine.name], f"{len(events)} events after a cancel at 3"
        assert released(engine)
        stream = engine.stream(prompt, SamplingParams(max_tokens=200))
        first = [next(stream) for _ in range(3)]
        assert all(e.finish_reason is None for e in first)
        stream.close()  # must not hang or raise
        assert released(engine)

    def test_a_prompt_longer_than_the_context_is_refused_at_once(self, engine):
        huge = "word " * (engine.context_length + 10)
        with pytest.raises(ContextOverflowError, match=f"context holds {engine.context_length}"):
            engine.stream(huge, SamplingParams(max_tokens=4))  # before any token is generated

    def test_the_driver_makes_a_typed_step(self, engine):
        trace = Driver(engine, ReasonConfig(max_steps=1, max_thought_tokens=16, max_action_tokens=16)).solve(PROBLEM)
        assert trace.engine == engine.name and len(trace.steps) == 1
        step = trace.steps[0]
        assert step.source == "model"
        assert step.tokens > 0 and step.confidence is not None and step.confidence.mean_logprob <= 0

    def test_a_closed_engine_refuses_work(self, closed_engine):
        """Last in the body: vLLM's module closes its one engine here."""
        closed_engine.close()  # closing twice is fine
        with pytest.raises(EngineError, match="closed"):
            closed_engine.stream("hello", SamplingParams(max_tokens=2))
