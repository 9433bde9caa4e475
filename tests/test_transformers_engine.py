"""TransformersEngine on the real SmolLM2 (the embedded GGUF converted once to an HF folder)."""

from __future__ import annotations

import math
import threading

import pytest

from srl_sdk.core.format import step_messages
from srl_sdk.engines import SamplingParams, guess_engine, load_engine
from srl_sdk.errors import ContextOverflowError, ModelError
from srl_sdk.training.models import gguf_to_hf_dir

PROBLEM = "Tom has 3 apples and buys 5 more. How many apples does he have?"


@pytest.fixture(scope="module")
def hf_dir():
    return gguf_to_hf_dir("smollm2")  # cached under $SRL_HOME/cache/hf after the first call


@pytest.fixture(scope="module")
def engine(hf_dir):
    eng = load_engine(str(hf_dir), "transformers", n_threads=1)
    yield eng
    eng.close()


def collect(events):
    events = list(events)
    assert events[-1].finish_reason is not None
    assert all(e.finish_reason is None for e in events[:-1])
    return "".join(e.text for e in events), events


def test_converted_folder_is_a_complete_hf_model(hf_dir) -> None:
    names = {p.name for p in hf_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert guess_engine(str(hf_dir)) == "transformers"
    assert gguf_to_hf_dir("smollm2") == hf_dir  # second call: the cache, no re-conversion


def test_greedy_matches_hf_generate_token_for_token(engine, hf_dir) -> None:
    import torch

    prompt = engine.render(step_messages(PROBLEM, [])) + "<think>"
    text, events = collect(engine.stream(prompt, SamplingParams(max_tokens=12, temperature=0.0)))
    ids = engine.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        out = engine.model.generate(**ids, max_new_tokens=12, do_sample=False)
    reference_ids = out[0, ids["input_ids"].shape[1]:].tolist()
    assert [e.token_id for e in events[:-1]] == reference_ids[: len(events) - 1]
    assert text == engine.tokenizer.decode(reference_ids, skip_special_tokens=True)
    assert events[-1].finish_reason in ("length", "stop")
    logprobs = [e.logprob for e in events[:-1]]
    assert all(lp is not None and lp <= 0.0 and math.isfinite(lp) for lp in logprobs)


def test_stop_strings_never_leak(engine) -> None:
    prompt = engine.render(step_messages(PROBLEM, [])) + "<think>"
    full, _ = collect(engine.stream(prompt, SamplingParams(max_tokens=12)))
    cut = full.strip().split()[2]  # a word in the middle of the greedy text
    text, events = collect(engine.stream(prompt, SamplingParams(max_tokens=12, stop=[cut])))
    assert cut not in text and events[-1].finish_reason == "stop"
    assert full.startswith(text)


def test_cancel_and_close_stop_decoding(engine) -> None:
    prompt = engine.render(step_messages(PROBLEM, []))
    cancel = threading.Event()
    seen = []
    for event in engine.stream(prompt, SamplingParams(max_tokens=50), cancel):
        seen.append(event)
        if len(seen) == 2:
            cancel.set()
    assert seen[-1].finish_reason == "cancelled" and len(seen) <= 4
    stream = engine.stream(prompt, SamplingParams(max_tokens=50))
    next(stream)
    stream.close()  # must not hang or raise
    assert engine._lock.acquire(timeout=1)  # the lock was released by the closed generator
    engine._lock.release()


def test_render_count_and_overflow(engine) -> None:
    messages = step_messages(PROBLEM, ["3 + 5 = 8"])
    text = engine.render(messages)
    assert text == engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    assert engine.count_tokens(text) == len(engine.tokenizer(text, add_special_tokens=False)["input_ids"])
    with pytest.raises(ContextOverflowError):
        list(engine.stream("word " * (engine.context_length + 10), SamplingParams(max_tokens=1)))


def test_missing_model_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_engine(str(tmp_path / "nope"), "transformers")


def test_driver_makes_a_typed_step_with_the_transformers_engine(engine) -> None:
    from srl_sdk.reasoning.driver import Driver, ReasonConfig

    driver = Driver(engine, ReasonConfig(max_steps=1, max_thought_tokens=16, max_action_tokens=16))
    trace = driver.solve(PROBLEM)
    assert trace.engine == "transformers" and len(trace.steps) == 1
    step = trace.steps[0]
    assert step.tokens > 0 and step.confidence is not None and step.confidence.mean_logprob <= 0
