"""vLLM tests: run only in the vLLM environment (`bash scripts/ci-vllm.sh`), never in the main suite.

They use the real vLLM CPU build on the real embedded SmolLM2 (converted once from its GGUF into a
safetensors folder, cached outside the repo so CI's fresh clones reuse it). vLLM missing here is a
broken environment, not a reason to skip: the run fails loudly with the command that fixes it.
Every engine runs with enforce_eager (starts in seconds instead of minutes of compiling) and one
engine at a time, because these machines are small and shared.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from srl_sdk.engines.vllm import VLLM_ENV_COMMAND

if importlib.util.find_spec("vllm") is None:
    raise pytest.UsageError(
        f"vllm is not importable from {os.sys.executable}; the vLLM tests run in the vLLM environment: "
        f"`{VLLM_ENV_COMMAND}` makes it, `bash scripts/ci-vllm.sh` makes it and runs them"
    )

MODEL_CACHE = Path(os.environ.get("SRL_VLLM_MODEL_CACHE", Path.home() / ".cache" / "srl-sdk" / "models")).expanduser()
# small and fixed so that every engine and server here fits the machine and starts fast
ENGINE_KWARGS = {"max_model_len": 2048, "kv_cache_gib": 0.5, "enforce_eager": True}


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.vllm)


@pytest.fixture(scope="session")
def engine_kwargs() -> dict:
    return dict(ENGINE_KWARGS)


@pytest.fixture(scope="session")
def smollm2_hf_dir() -> Path:
    """The SDK's own GGUF -> HF conversion of the embedded SmolLM2 (cached across runs)."""
    from srl_sdk.engines.models import smollm2_gguf_path
    from srl_sdk.engines.hf_folder import _gguf_cache_name, gguf_to_hf_dir

    gguf = smollm2_gguf_path()
    return gguf_to_hf_dir(gguf, out_dir=MODEL_CACHE / _gguf_cache_name(gguf))
