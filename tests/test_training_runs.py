"""Tiny REAL training runs on SmolLM2 (LoRA, CPU): SFT, then SRL from the SFT model with a kill-free
resume (1 step, then --resume continues to step 2 from checkpoint-1, not from scratch).

The SFT run uses the per-step protocol (`sft_mode: step`), which teaches the model to close its
thought and write a step; the SRL run starts from it, so its rollouts are well-formed often enough
for the step-similarity reward to vary inside a group (a base SmolLM2 with 12 tokens never closes
`<think>` and every reward would be -1).
"""

from __future__ import annotations

import json

import pytest
import torch

from srl_sdk.training.recipe import TrainRecipe
from srl_sdk.training.reports import METRICS_FILE, read_metrics
from srl_sdk.training.trainers import RUN_MARKER, train


def lora_b_nonzero(adapter_dir) -> bool:
    from safetensors.torch import load_file

    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b, "the adapter has no LoRA B matrices"
    return any(torch.count_nonzero(t) > 0 for t in lora_b)  # B starts at zero: nonzero = trained


BASE = {
    "model": "smollm2",
    "device": "cpu",
    "torch_threads": 1,
    "data": {"source": "gsm8k", "limit": 4, "validation_size": 1},
}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    recipe = TrainRecipe.model_validate(
        {**BASE, "name": "tiny-sft", "method": "sft",
         "sft": {"sft_mode": "step", "max_steps": 4, "learning_rate": 2e-3, "per_device_train_batch_size": 4,
                 "save_steps": 4, "max_length": 384}}
    )
    return train(recipe, out), out


def test_sft_tiny_run_trains_lora_and_logs(sft_run) -> None:
    result, out = sft_run
    stage = result.stages[0]
    assert stage.stage == "sft" and stage.global_step == 4
    assert lora_b_nonzero(stage.adapter)
    assert (stage.final_model / "config.json").is_file() and (stage.final_model / "model.safetensors").is_file()
    rows = read_metrics(out / "sft" / METRICS_FILE)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 4 and all(isinstance(x, float) for x in losses)
    assert (out / RUN_MARKER).is_file() and (out / "training_curves.png").stat().st_size > 1000
    held = json.loads((out / "data.json").read_text())
    assert len(held["validation_ids"]) == 1 and not set(held["validation_ids"]) & set(held["train_ids"])


def test_srl_run_killed_after_a_checkpoint_resumes_from_it(sft_run, tmp_path) -> None:
    """`srl train` is SIGKILLed once checkpoint-1 is complete; `--resume` then finishes step 2."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    sft_result, _ = sft_run
    out = tmp_path / "srl-run"
    settings = {"max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 4, "max_completion_length": 12,
                "learning_rate": 1e-3, "save_steps": 1, "dynamic_sampling": {"max_rounds": 1}}
    recipe = {**BASE, "name": "tiny-srl", "method": "srl", "model": str(sft_result.final_model), "srl": settings}
    recipe_file = tmp_path / "tiny-srl.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe), encoding="utf-8")

    log = (tmp_path / "first-run.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "srl_sdk.cli", "train", "--recipe", str(recipe_file), "--output", str(out)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    checkpoint = out / "srl" / "checkpoint-1" / "trainer_state.json"
    deadline = time.monotonic() + 900
    try:
        while not checkpoint.is_file():
            assert proc.poll() is None, (tmp_path / "first-run.log").read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no checkpoint-1 within 15 minutes"
            time.sleep(0.5)
        time.sleep(1.0)  # let the checkpoint's last files land, then kill without warning
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        log.close()
    assert not (out / "srl" / "final").exists()

    result = train(TrainRecipe.model_validate(recipe), out, resume=True)
    stage = result.stages[0]
    assert stage.global_step == 2 and stage.resumed_from is not None and stage.resumed_from.name == "checkpoint-1"

    rows = [r for r in read_metrics(out / "srl" / METRICS_FILE) if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2]  # step 1 kept from the killed run, not redone
    assert rows[0]["session"] != rows[1]["session"]
    assert all("loss" in r and "dynamic_sampling/kept_ratio" in r for r in rows)
    assert lora_b_nonzero(stage.adapter)
    assert (stage.final_model / "config.json").is_file()
