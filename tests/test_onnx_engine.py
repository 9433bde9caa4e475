"""OnnxEngine on a real SmolLM2 int4 build (onnxruntime-genai), checked against the Engine contract."""

from __future__ import annotations

import shutil
import threading

import pytest

from srl_sdk.engines import guess_engine, load_engine
from srl_sdk.engines.base import SamplingParams
from srl_sdk.errors import ContextOverflowError, EngineError, ModelError
from srl_sdk.reasoning.driver import Driver, ReasonConfig

MESSAGES = [{"role": "user", "content": "What is 12 + 30?"}]


@pytest.fixture(scope="module")
def onnx_dir():
    from edge_builds import small_onnx

    return small_onnx()


@pytest.fixture(scope="module")
def engine(onnx_dir):
    eng = load_engine(onnx_dir, n_threads=2, n_ctx=1024)
    yield eng
    eng.close()


def text_of(events):
    return "".join(e.text for e in events)


def test_load_engine_picks_onnx_for_a_build_folder(onnx_dir, engine):
    assert guess_engine(onnx_dir) == "onnx"
    assert guess_engine(onnx_dir / "model.onnx") == "onnx"
    assert engine.name == "onnx" and engine.context_length == 1024
    assert engine.info()["provider"] == "cpu"


def test_render_uses_the_builds_chat_template_like_llama_cpp(engine, llama_engine):
    prompt = engine.render(MESSAGES)
    assert prompt == llama_engine.render(MESSAGES)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert engine.count_tokens(prompt) == llama_engine.count_tokens(prompt)


def test_greedy_is_deterministic_and_logprobs_are_real(engine):
    prompt = engine.render(MESSAGES)
    first = list(engine.stream(prompt, SamplingParams(max_tokens=12)))
    second = list(engine.stream(prompt, SamplingParams(max_tokens=12)))
    assert text_of(first) == text_of(second) and text_of(first).strip()
    assert first[-1].finish_reason == "length"
    probs = [e.logprob for e in first if e.finish_reason is None]
    assert len(probs) == 12 and all(p <= 0.0 for p in probs)
    assert any(p < -1e-3 for p in probs)  # not all certain: they come from real logits


def test_seeded_sampling_repeats_and_differs_by_seed(engine):
    prompt = engine.render([{"role": "user", "content": "Write a word."}])
    def run(seed):
        return text_of(engine.stream(prompt, SamplingParams(max_tokens=16, temperature=1.5, seed=seed)))
    a, b = run(1), run(1)
    assert a == b
    assert len({run(s) for s in (2, 3, 4, 5)} | {a}) > 1


def test_stop_strings_are_cut_out(engine):
    prompt = engine.render(MESSAGES)
    full = text_of(engine.stream(prompt, SamplingParams(max_tokens=12)))
    stop = full.strip()[2:5]
    events = list(engine.stream(prompt, SamplingParams(max_tokens=12, stop=[stop])))
    assert stop not in text_of(events)
    assert events[-1].finish_reason == "stop"
    assert full.startswith(text_of(events))


def test_cancel_and_close_stop_decoding(engine):
    prompt = engine.render(MESSAGES)
    cancel = threading.Event()
    events = []
    for event in engine.stream(prompt, SamplingParams(max_tokens=200), cancel):
        events.append(event)
        if len(events) == 3:
            cancel.set()
    assert events[-1].finish_reason == "cancelled" and len(events) <= 5
    stream = engine.stream(prompt, SamplingParams(max_tokens=200))
    next(stream)
    stream.close()  # releases the lock: the next call must not hang
    assert text_of(engine.stream(prompt, SamplingParams(max_tokens=2)))


def test_context_overflow_is_a_clear_error(engine):
    with pytest.raises(ContextOverflowError, match="1024"):
        engine.stream("word " * 2000, SamplingParams(max_tokens=4))


def test_driver_makes_steps_from_the_onnx_build(engine):
    trace = Driver(engine, ReasonConfig(max_steps=2, max_thought_tokens=32, max_action_tokens=32)).solve(
        "Tom has 3 apples and buys 4 more. How many apples does he have?")
    assert trace.steps and trace.engine == "onnx"
    assert all(s.tokens > 0 and s.confidence is not None for s in trace.steps)


def test_bad_builds_are_model_errors(onnx_dir, tmp_path):
    with pytest.raises(ModelError, match="genai_config.json"):
        load_engine(tmp_path, engine="onnx")
    truncated = tmp_path / "truncated"
    shutil.copytree(onnx_dir, truncated)
    data = truncated / "model.onnx.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    with pytest.raises(ModelError, match="truncated"):
        load_engine(truncated, n_threads=1)


def test_closed_engine_refuses_work(onnx_dir):
    eng = load_engine(onnx_dir, n_threads=1)
    eng.close()
    eng.close()
    with pytest.raises(EngineError, match="closed"):
        eng.stream("hi", SamplingParams(max_tokens=2))
