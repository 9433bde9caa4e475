"""The engine contract (tests/engine_contract.py) on each engine that runs in the test process:
llama.cpp, transformers and onnxruntime, each loaded once per session (conftest.py). vLLM runs
the same body in its own environment (tests/vllm_cpu/test_vllm_engine.py)."""

from __future__ import annotations

import pytest
from engine_contract import EngineContract

from srl_sdk.engines import load_engine


@pytest.fixture(scope="module")
def engine(any_engine):
    return any_engine


@pytest.fixture
def closed_engine(engine, request):
    """Another engine of the same kind, loaded and closed (the shared one stays open)."""
    if engine.name == "llama.cpp":
        fresh = load_engine("smollm2", "llama.cpp", n_ctx=512, n_threads=1)
    elif engine.name == "transformers":
        fresh = load_engine(str(request.getfixturevalue("smollm2_hf_dir")), "transformers", n_threads=1)
    else:
        from edge_builds import small_onnx

        fresh = load_engine(small_onnx(), "onnx", n_threads=1)
    fresh.close()
    return fresh


class TestEngineContract(EngineContract):
    pass
