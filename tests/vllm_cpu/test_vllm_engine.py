"""VLLMEngine on the real vLLM CPU build: the Engine contract (tests/engine_contract.py) and what
only vLLM does: aborting requests inside its scheduler, batching concurrent streams, its errors."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time

import pytest
from engine_contract import EngineContract

from srl_sdk.engines import SamplingParams, load_engine
from srl_sdk.errors import ConfigError, MissingDependencyError, ModelError


@pytest.fixture(scope="module")
def engine(smollm2_hf_dir, engine_kwargs):
    engine = load_engine(smollm2_hf_dir, "vllm", **engine_kwargs)
    yield engine
    engine.close()


def vllm_children() -> list:
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.name().startswith("VLLM") and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def test_closing_the_stream_aborts_the_request(engine):
    prompt = engine.render([{"role": "user", "content": "Count from 1 to 500."}])
    stream = engine.stream(prompt, SamplingParams(max_tokens=400, temperature=1.0, seed=1))
    got = [next(stream) for _ in range(3)]
    assert engine.running_requests() == 1
    stream.close()
    deadline = time.monotonic() + 10
    while engine.running_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.running_requests() == 0 and len(got) == 3


def test_concurrent_async_streams_are_batched(engine):
    prompt = engine.render([{"role": "user", "content": "Write a short poem about the sea."}])

    async def one(seed: int, started: list) -> int:
        n = 0
        async for event in engine.astream(prompt, SamplingParams(max_tokens=32, temperature=1.0, seed=seed)):
            if n == 0:
                started.append(engine.running_requests())
            n += event.token_id is not None
        return n

    async def run():
        started: list[int] = []
        counts = await asyncio.gather(*(one(s, started) for s in range(4)))
        return counts, started

    counts, running_seen = asyncio.run(run())
    assert counts == [32, 32, 32, 32]
    assert max(running_seen) >= 2, f"vLLM never held several requests at once: {running_seen}"
    assert engine.running_requests() == 0


def test_async_stream_closed_early_aborts(engine):
    prompt = engine.render([{"role": "user", "content": "Count from 1 to 500."}])

    async def run():
        stream = engine.astream(prompt, SamplingParams(max_tokens=400))
        async for _ in stream:
            break
        await stream.aclose()
        await asyncio.sleep(0.3)
        return engine.running_requests()

    assert asyncio.run(run()) == 0


def test_model_folder_without_weights_or_config(tmp_path, smollm2_hf_dir):
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    shutil.copy(smollm2_hf_dir / "tokenizer.json", no_config)
    with pytest.raises(ModelError, match="config.json"):
        load_engine(no_config, "vllm")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(smollm2_hf_dir / "config.json", no_weights)
    with pytest.raises(ModelError, match="safetensors"):
        load_engine(no_weights, "vllm")


def test_kv_cache_too_small_fails_at_start(smollm2_hf_dir):
    before = len(vllm_children())
    with pytest.raises(ConfigError, match="KV-cache budget"):
        load_engine(smollm2_hf_dir, "vllm", max_model_len=2048, kv_cache_gib=0.01)
    assert len(vllm_children()) == before  # refused before any engine process started


def test_missing_vllm_names_the_env_command(smollm2_hf_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(MissingDependencyError, match="scripts/vllm-env.sh"):
        load_engine(smollm2_hf_dir, "vllm")


@pytest.fixture
def closed_engine(engine):
    """The module's engine, closed: no vLLM process may be left (one vLLM at a time on this machine)."""
    assert vllm_children(), "the engine runs no vLLM process to begin with"
    engine.close()
    assert not vllm_children()
    return engine


class TestVLLMEngineContract(EngineContract):
    """Last in this module: the contract's last test closes the module's engine."""
