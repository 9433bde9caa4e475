"""`scripts/gpu-check.sh --device cpu`: the GPU check's dry run, the same code with the smallest sizes.

It trains (a 1-step per-step SFT stage, then a 1-step SRL stage with LoRA and dynamic sampling),
serves the merged model with the transformers engine and solves one problem through the Reasoner,
printing one line per check and writing the JSON report that a GPU run fills with real figures
(docs/gpu.md). Also: the wheels the GPU machine lacks fit the 64 MB the device tool carries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_dry_run(tmp_path) -> None:
    report_file = tmp_path / "gpu-check.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "SRL_GPU_CARRY": str(tmp_path / "no-carry")}
    env.pop("OUT", None)
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu-check.sh"), "--device", "cpu", "--json", str(report_file),
         "--work", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert [line.split()[1] for line in lines if not line.startswith("[info]")] == ["train", "engine", "reasoner"]
    assert all(line.startswith("[ok]") for line in lines if not line.startswith("[info]")), output[-4000:]

    report = json.loads(report_file.read_text())
    assert report["environment"]["device"] == "cpu" and report["failed"] == []
    train = report["checks"]["train"]
    assert train["sft_steps"] == 1 and train["srl_steps"] == 1 and train["bf16"] is False
    assert train["srl_step_s"] > 0 and train["sft_step_s"] > 0 and train["peak_rss_gib"] > 0.1
    assert train["srl_rounds"] and all(r in (1.0, 2.0) for r in train["srl_rounds"])  # dynamic sampling ran
    assert Path(train["final"], "model.safetensors").is_file()
    engine = report["checks"]["engine"]
    assert engine["tokens"] >= 2 and engine["tokens_per_s"] > 0 and engine["dtype"] == "float32"
    reasoner = report["checks"]["reasoner"]
    assert reasoner["steps"] >= 1 and reasoner["completion_tokens"] > 0


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu-check.sh"), "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PYTHON": sys.executable, "SRL_GPU_CARRY": str(tmp_path / "no-carry")},
    )
    assert proc.returncode == 2 and "no CUDA device is visible" in proc.stdout


def test_gpu_check_refuses_a_model_with_a_missing_part(tmp_path) -> None:
    """A GGUF split over calls, one part missing: a clear message, not a half model."""
    carry = tmp_path / "carry"
    (carry / "part-2" / "model").mkdir(parents=True)
    (carry / "part-2" / "model" / "m.gguf.part-02").write_bytes(b"second half")
    (carry / "part-2" / "model" / "SHA256SUMS").write_text("0" * 64 + "  m.gguf\n")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu-check.sh"), "--device", "cpu"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PYTHON": sys.executable, "SRL_GPU_CARRY": str(carry), "SRL_HOME": str(tmp_path / "home")},
    )
    assert proc.returncode == 3 and "a part is missing (1 found)" in proc.stderr

