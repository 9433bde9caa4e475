"""Shared fixtures: the real embedded model (llama.cpp) loaded once, and real GSM8K data.

Nothing here fakes a model: tests that need one get SmolLM2 through llama.cpp. A missing model or
data file fails the run loudly (these are installed by the README's test command).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
GSM8K_TRAIN = SHARED_DATA / "gsm8k" / "train.jsonl"

# The vLLM tests need their own environment; CI runs them as stage 2 (scripts/ci-vllm.sh sets
# SRL_VLLM_STAGE=1). In the main environment they are not collected at all.
if not os.environ.get("SRL_VLLM_STAGE"):
    collect_ignore = ["vllm_cpu"]


def pytest_sessionstart(session):
    """A llama.cpp built with AMX dies on this project's machines with a bare "Illegal instruction"
    at the first prompt (the VMs announce AMX but do not run it): say how to rebuild instead."""
    try:
        import llama_cpp
    except ImportError:
        return
    if "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode(errors="replace"):
        pytest.exit(
            "llama-cpp-python was compiled natively with Intel AMX, which crashes here; rebuild it portable: "
            "pip cache remove llama_cpp_python && CMAKE_ARGS=-DGGML_NATIVE=OFF "
            ".venv/bin/pip install --force-reinstall --no-deps llama-cpp-python (see README)",
            returncode=3,
        )


@pytest.fixture(autouse=True, scope="session")
def _isolated_srl_home(tmp_path_factory):
    """Never write to the user's ~/.srl from tests. The exceptions are the HF folder of the model and
    the default build of the embedded base: $SRL_HOME/cache/hf is <repo>/.cache/hf and
    $SRL_HOME/cache/builds is <repo>/.cache/builds, so every conversion of SmolLM2 in a session (the
    `smollm2_hf_dir` fixture's, and the SDK's own when a test names the alias) and the Q4_0 build the
    named models run on (srl_sdk/engines/builds.py) are made once per machine."""
    home = tmp_path_factory.mktemp("srl_home")
    (home / "cache").mkdir()
    for name in ("hf", "builds"):
        shared = REPO_ROOT / ".cache" / name
        shared.mkdir(parents=True, exist_ok=True)
        (home / "cache" / name).symlink_to(shared, target_is_directory=True)
    os.environ["SRL_HOME"] = str(home)
    yield


@pytest.fixture(scope="session")
def gsm8k_path() -> Path:
    assert GSM8K_TRAIN.is_file(), f"GSM8K data missing at {GSM8K_TRAIN}: CI needs ../shared beside the repo"
    return GSM8K_TRAIN


@pytest.fixture(scope="session")
def gsm8k_rows(gsm8k_path) -> list[dict]:
    rows = []
    with gsm8k_path.open(encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            if i >= 50:
                break
            rows.append(json.loads(line))
    return rows


@pytest.fixture(scope="session")
def llama_engine():
    """The embedded base in llama.cpp (its default build, srl_sdk/engines/builds.py), loaded once per test session."""
    from srl_sdk.engines.llama_cpp import LlamaCppEngine

    engine = LlamaCppEngine("smollm2", n_ctx=2048, n_threads=2)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def smollm2_hf_dir() -> Path:
    """The embedded SmolLM2 as an HF folder (fp32 safetensors): converted once, then cached."""
    from edge_builds import smollm2_hf_dir

    return smollm2_hf_dir()


@pytest.fixture(scope="session")
def transformers_engine(smollm2_hf_dir):
    """SmolLM2 in transformers, loaded once per test session."""
    from srl_sdk.engines import load_engine

    engine = load_engine(str(smollm2_hf_dir), "transformers", n_threads=1)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def onnx_engine():
    """SmolLM2's int4 onnxruntime-genai build (tests/edge_builds.py), loaded once per test session."""
    from edge_builds import small_onnx

    from srl_sdk.engines import load_engine

    engine = load_engine(small_onnx(), "onnx", n_threads=2, n_ctx=1024)
    yield engine
    engine.close()


#: the engines that run inside the test process, each by the name of its session fixture
IN_PROCESS_ENGINES = {"llama.cpp": "llama_engine", "transformers": "transformers_engine", "onnx": "onnx_engine"}


@pytest.fixture(scope="module", params=list(IN_PROCESS_ENGINES))
def any_engine(request):
    """Each in-process engine in turn (a test using it runs once per engine)."""
    return request.getfixturevalue(IN_PROCESS_ENGINES[request.param])


@pytest.fixture
def srl_server(tmp_path):
    """A factory: `server = srl_server(limits={"max_steps": 4})` starts a real `srl serve`
    (tests/servers.py) in its own folder; every server it started is stopped and checked at teardown."""
    from servers import serving

    stack = contextlib.ExitStack()
    started = itertools.count()

    def start(*, args: tuple[str, ...] = (), env: dict[str, str] | None = None, **overrides):
        folder = tmp_path / f"server-{next(started)}"
        return stack.enter_context(serving(folder, args=args, env=env, **overrides))

    with stack:
        yield start


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server (tests/postgres.py), started once per session on 127.0.0.1 and
    removed at the end. Skips where no PostgreSQL is installed, except in CI (CI=1), where that fails."""
    from postgres import PostgresServer, postgres_bin

    bin_dir = postgres_bin()
    if bin_dir is None:
        message = "PostgreSQL is not installed (apt-get install postgresql): the postgres store tests need it"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI a missing server must not turn the store tests into skips
        pytest.skip(message)
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.new_database()
