"""GRPO with rollouts through colocated vLLM (TRL `use_vllm`), synced by vLLM's `reload_weights`.

The proof that vLLM samples from the UPDATED policy: after two large-learning-rate steps, the
log-probabilities vLLM assigns to a fixed text match the trained (LoRA-merged) policy within bf16
noise, and are far from the base model's. With TRL's own in-place sync this fails on the CPU build.
"""

from __future__ import annotations

import os

import pytest

from srl_sdk.training.data import DataConfig, load_trajectories, split_by_trajectory
from srl_sdk.training.recipe import DynamicSamplingSettings, StageSettings, TrainRecipe
from srl_sdk.training.trainers import build_trainer

TEXT = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."


def make_trainer(hf_dir, gsm8k_path, tmp_path, method: str):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of RAM for vLLM's KV cache (TRL passes none)
    stage = StageSettings(
        learning_rate=5e-3, max_steps=2, per_device_train_batch_size=4, num_generations=4,
        max_completion_length=16, save_steps=1000, temperature=1.0,
        dynamic_sampling=DynamicSamplingSettings(enabled=True, max_rounds=1),
        trl_args={"vllm_max_model_length": 1024, "vllm_importance_sampling_correction": False},
    )
    recipe = TrainRecipe(
        method=method, model=str(hf_dir), use_vllm=True, vllm_mode="colocate", torch_threads=1, report_to=[],
        data=DataConfig(path=gsm8k_path, limit=6, validation_size=0), **{method: stage},
    )
    items, report = load_trajectories(recipe.data)
    split = split_by_trajectory(items, recipe.data)
    return build_trainer(method, recipe, str(hf_dir), split, tmp_path / method, report)


def token_logprobs_vllm(llm, ids: list[int]) -> list[float]:
    from vllm import SamplingParams

    out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
    return [entry[token].logprob for entry, token in zip(out[0].prompt_logprobs[1:], ids[1:])]


def token_logprobs_hf(model, ids: list[int]) -> list[float]:
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    picked = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:]).unsqueeze(1))
    return picked.squeeze(1).tolist()


def mean_gap(a: list[float], b: list[float]) -> float:
    return sum(abs(x - y) for x, y in zip(a, b)) / len(a)


@pytest.mark.parametrize("method", ["srl"])
def test_grpo_step_with_vllm_rollouts_updates_the_sampler(smollm2_hf_dir, gsm8k_path, tmp_path, method):
    trainer = make_trainer(smollm2_hf_dir, gsm8k_path, tmp_path, method)
    generation = trainer.vllm_generation
    assert generation.sync_weights.__func__.__name__ == "reload_weights_sync"
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert lora_before

    trainer.train()

    changed = [n for n, p in trainer.model.named_parameters() if "lora_" in n and not p.detach().equal(lora_before[n])]
    assert changed, "no LoRA weight changed"
    logged = [row for row in trainer.state.log_history if "reward" in row]
    assert logged and all(row["reward"] == row["reward"] for row in logged)  # logged, not NaN
    assert generation.syncs >= 2  # before the rollouts of step 0 and of step 1

    generation.sync_weights()  # what TRL does before the next step's rollouts
    ids = trainer.processing_class(TEXT)["input_ids"]
    from_vllm = token_logprobs_vllm(generation.llm, ids)
    trainer.model.eval()
    policy = token_logprobs_hf(trainer.model, ids)
    with trainer.model.disable_adapter():
        base = token_logprobs_hf(trainer.model, ids)
    policy_moved = mean_gap(policy, base)
    assert policy_moved > 0.1, f"the step barely moved the policy ({policy_moved:.4f}); the proof needs a visible change"
    assert mean_gap(from_vllm, policy) < policy_moved / 4, (mean_gap(from_vllm, policy), policy_moved)
    assert mean_gap(from_vllm, base) > policy_moved / 2
