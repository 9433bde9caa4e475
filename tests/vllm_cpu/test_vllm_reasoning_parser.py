"""The `srl` reasoning parser inside vLLM's own OpenAI server, read by the official openai client.

vLLM loads srl_sdk/serving/vllm_reasoning_parser.py as a plugin (`--reasoning-parser-plugin FILE
--reasoning-parser srl`). SmolLM2 has no `<think>` token, so the split is text based; the test
shows the model two tagged answers first (greedy) so its own output really carries the tags.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from srl_sdk.serving.process import free_port

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "srl_sdk" / "serving" / "vllm_reasoning_parser.py"
MESSAGES = [  # two worked examples: greedy SmolLM2 then answers in the same tagged format
    {"role": "system", "content": "Answer in the format <think>reasoning</think> answer."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "<think>2 plus 3 is 5.</think> The answer is 5."},
    {"role": "user", "content": "What is 4 + 4?"},
    {"role": "assistant", "content": "<think>4 plus 4 is 8.</think> The answer is 8."},
    {"role": "user", "content": "What is 12 + 30?"},
]


@pytest.fixture(scope="module")
def vllm_server(smollm2_hf_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    command = [
        sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry",
        "--model", str(smollm2_hf_dir), "--served-model-name", "smollm2",
        "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--max-model-len", "2048", "--kv-cache-memory-bytes", str(2**29),
        "--reasoning-parser-plugin", str(PLUGIN), "--reasoning-parser", "srl",
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 420
        while True:
            assert process.poll() is None, f"vLLM's server exited while starting:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"vLLM's server not healthy in time:\n{log.read_text()[-4000:]}"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def client(url: str):
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key="unused", timeout=120, max_retries=0)


def test_reasoning_and_content_come_apart(vllm_server):
    reply = client(vllm_server).chat.completions.create(
        model="smollm2", messages=MESSAGES, temperature=0, max_tokens=40
    )
    message = reply.choices[0].message
    reasoning = getattr(message, "reasoning", None) or (message.model_extra or {}).get("reasoning")
    assert reasoning and "12" in reasoning and "think>" not in reasoning, message
    assert message.content and "answer" in message.content and "think>" not in message.content, message


def test_reasoning_and_content_come_apart_streaming(vllm_server):
    stream = client(vllm_server).chat.completions.create(
        model="smollm2", messages=MESSAGES, temperature=0, max_tokens=40, stream=True
    )
    reasoning, content = [], []
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        piece = getattr(delta, "reasoning", None) or (delta.model_extra or {}).get("reasoning")
        if piece:
            reasoning.append(piece)
        if delta.content:
            content.append(delta.content)
    reasoning_text, content_text = "".join(reasoning), "".join(content)
    assert len(reasoning) >= 2 and len(content) >= 2  # streamed piece by piece, not at the end
    assert "12" in reasoning_text and "think>" not in reasoning_text, (reasoning_text, content_text)
    assert "answer" in content_text and "think>" not in content_text, (reasoning_text, content_text)
