"""OnnxEngine on a real SmolLM2 int4 build (onnxruntime-genai): what only it does. The Engine
contract is tests/engine_contract.py, run on it by tests/test_engine_contract.py."""

from __future__ import annotations

import shutil

import pytest

from srl_sdk.engines import guess_engine, load_engine
from srl_sdk.errors import ModelError

MESSAGES = [{"role": "user", "content": "What is 12 + 30?"}]


@pytest.fixture(scope="module")
def onnx_dir():
    from edge_builds import small_onnx

    return small_onnx()


def test_load_engine_picks_onnx_for_a_build_folder(onnx_dir, onnx_engine):
    assert guess_engine(onnx_dir) == "onnx"
    assert guess_engine(onnx_dir / "model.onnx") == "onnx"
    assert onnx_engine.name == "onnx" and onnx_engine.context_length == 1024
    assert onnx_engine.info()["provider"] == "cpu"


def test_render_uses_the_builds_chat_template_like_llama_cpp(onnx_engine, llama_engine):
    prompt = onnx_engine.render(MESSAGES)
    assert prompt == llama_engine.render(MESSAGES)
    assert onnx_engine.count_tokens(prompt) == llama_engine.count_tokens(prompt)


def test_bad_builds_are_model_errors(onnx_dir, tmp_path):
    with pytest.raises(ModelError, match="genai_config.json"):
        load_engine(tmp_path, engine="onnx")
    truncated = tmp_path / "truncated"
    shutil.copytree(onnx_dir, truncated)
    data = truncated / "model.onnx.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    with pytest.raises(ModelError, match="truncated"):
        load_engine(truncated, n_threads=1)
