"""The llama.cpp engine on the real embedded model (SmolLM2-135M Q4_1)."""

import math
import shutil
import threading

import pytest

from srl_sdk.engines import SamplingParams, StopMatcher, load_engine
from srl_sdk.engines.llama_cpp import LlamaCppEngine
from srl_sdk.engines.models import smollm2_gguf_path
from srl_sdk.errors import ContextOverflowError, ModelError

MESSAGES = [{"role": "user", "content": "Count from 1 to 20, separated by spaces."}]


def collect(engine, prompt, **params):
    events = list(engine.stream(prompt, SamplingParams(**params)))
    return "".join(e.text for e in events), events


def test_render_uses_the_models_chat_template(llama_engine):
    prompt = llama_engine.render(MESSAGES)
    assert prompt.startswith("<|im_start|>")
    assert prompt.rstrip().endswith("<|im_start|>assistant")


def test_greedy_is_deterministic_with_logprobs(llama_engine):
    prompt = llama_engine.render(MESSAGES)
    text1, events = collect(llama_engine, prompt, max_tokens=16)
    text2, _ = collect(llama_engine, prompt, max_tokens=16)
    assert text1 == text2 and text1.strip()
    tokens = [e for e in events if e.finish_reason is None]
    assert len(tokens) == 16
    assert events[-1].finish_reason == "length"
    for e in tokens:
        assert e.logprob is not None and math.isfinite(e.logprob) and e.logprob <= 1e-6
    # greedy picks the argmax, so most tokens of a counting task are near-certain
    assert max(e.logprob for e in tokens) > -0.5


def test_stop_string_is_excluded(llama_engine):
    prompt = llama_engine.render(MESSAGES)
    full, _ = collect(llama_engine, prompt, max_tokens=24)
    assert " 5" in full
    cut, events = collect(llama_engine, prompt, max_tokens=24, stop=[" 5"])
    assert events[-1].finish_reason == "stop"
    assert cut == full[: full.index(" 5")]


def test_closing_the_stream_stops_and_releases_the_engine(llama_engine):
    prompt = llama_engine.render(MESSAGES)
    stream = llama_engine.stream(prompt, SamplingParams(max_tokens=200))
    first = [next(stream) for _ in range(3)]
    assert all(e.finish_reason is None for e in first)
    stream.close()
    # the lock was released: another call runs at once
    text, _ = collect(llama_engine, prompt, max_tokens=4)
    assert text


def test_cancel_event_stops_generation(llama_engine):
    prompt = llama_engine.render(MESSAGES)
    cancel = threading.Event()
    seen = 0
    for event in llama_engine.stream(prompt, SamplingParams(max_tokens=200), cancel):
        if event.finish_reason:
            assert event.finish_reason == "cancelled"
            break
        seen += 1
        if seen == 5:
            cancel.set()
    assert seen == 5


def test_prompt_longer_than_context_is_refused(llama_engine):
    huge = "word " * (llama_engine.context_length + 10)
    with pytest.raises(ContextOverflowError, match="context holds"):
        llama_engine.stream(huge, SamplingParams(max_tokens=4))


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        LlamaCppEngine(tmp_path / "nope.gguf")


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"\x00" * 4096)
    with pytest.raises(ModelError, match="not a GGUF file"):
        LlamaCppEngine(bad)


def test_truncated_gguf_file(tmp_path):
    src = smollm2_gguf_path()
    bad = tmp_path / "truncated.gguf"
    with src.open("rb") as handle:
        bad.write_bytes(handle.read(5_000_000))
    with pytest.raises(ModelError, match="truncated|could not load"):
        LlamaCppEngine(bad, n_ctx=256)


def test_load_engine_picks_llama_for_the_alias():
    engine = load_engine("smollm2", n_ctx=512, n_threads=1)
    try:
        assert engine.name == "llama.cpp"
        assert "SmolLM2" in engine.model_id or "smollm" in engine.model_id.lower()
    finally:
        engine.close()


@pytest.mark.parametrize(
    "pieces, stops, expected",
    [
        (["ab", "c</th", "ink>tail"], ["</think>"], ("abc", True)),
        (["hello ", "wor", "ld"], ["xyz"], ("hello world", False)),
        (["a<", "b"], ["<x"], ("a<b", False)),
    ],
)
def test_stop_matcher_never_leaks_a_partial_stop(pieces, stops, expected):
    matcher = StopMatcher(stops)
    out, hit = "", False
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out += text
        if hit:
            break
    if not hit:
        out += matcher.flush()
    assert (out, hit) == expected
