"""The llama.cpp engine on the real embedded model (SmolLM2-135M Q4_1): what only it does.

What every engine promises (greedy decoding and logprobs, seeds, stop strings, cancel and close,
context overflow, a closed engine, the driver's steps) is tests/engine_contract.py, run on
llama.cpp by tests/test_engine_contract.py.
"""

import pytest

from srl_sdk.engines import StopMatcher, load_engine
from srl_sdk.engines.llama_cpp import LlamaCppEngine
from srl_sdk.engines.models import smollm2_gguf_path
from srl_sdk.errors import ModelError


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
