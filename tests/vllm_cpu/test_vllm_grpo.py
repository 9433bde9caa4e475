"""GRPO with rollouts through colocated vLLM (TRL `use_vllm`), synced by vLLM's `reload_weights`.

The proof that vLLM samples from the UPDATED policy: after two large-learning-rate steps, the
log-probabilities vLLM assigns to a fixed text match the trained (LoRA-merged) policy within bf16
noise, and are far from the base model's. With TRL's own in-place sync this fails on the CPU build.
"""

from __future__ import annotations

import os


from srl_sdk.training.data import DataConfig, load_trajectories, split_by_trajectory

TEXT = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."


def variety_reward(completions, **_):
    """Distinct characters in the reply / 20: varies between samples, so every group has a gradient.

    The base model almost never closes `</think>` within a few tokens, so the SRL reward alone is
    -1 for the whole group (zero variance, no gradient); this second reward keeps the test about
    the weight sync, while the SRL reward is still computed and logged.
    """
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [len(set(t)) / 20.0 for t in texts]


def make_trainer(hf_dir, gsm8k_path, tmp_path):
    """The training engineer's SRLTrainer on SRL data, as build_trainer makes it, with use_vllm on."""
    import datasets
    import peft

    from srl_sdk.training.data import chat_prompt_renderer, srl_examples
    from srl_sdk.training.dynamic_sampling import SRLConfig, SRLTrainer
    from srl_sdk.engines.hf_folder import cap_torch_threads, load_causal_lm, load_tokenizer
    from srl_sdk.training.rewards import srl_step_reward

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of RAM for vLLM's KV cache (TRL passes none)
    cap_torch_threads(1)
    config = DataConfig(path=gsm8k_path, limit=6, validation_size=0)
    items, _ = load_trajectories(config)
    tokenizer = load_tokenizer(str(hf_dir))
    rows = srl_examples(split_by_trajectory(items, config).train, chat_prompt_renderer(tokenizer))
    args = SRLConfig(
        output_dir=str(tmp_path / "srl"), use_vllm=True, vllm_mode="colocate", vllm_max_model_length=1024,
        vllm_importance_sampling_correction=False, learning_rate=5e-3, max_steps=2,
        per_device_train_batch_size=4, num_generations=4, max_completion_length=16, temperature=1.0,
        bf16=False, logging_steps=1, save_strategy="no", report_to=[], seed=0,
        dynamic_sampling=True, dynamic_sampling_max_rounds=1,
    )
    lora = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    return SRLTrainer(model=load_causal_lm(str(hf_dir)), reward_funcs=[srl_step_reward, variety_reward], args=args,
                      train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora)


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


def test_grpo_step_with_vllm_rollouts_updates_the_sampler(smollm2_hf_dir, gsm8k_path, tmp_path):
    trainer = make_trainer(smollm2_hf_dir, gsm8k_path, tmp_path)
    generation = trainer.vllm_generation
    assert generation.sync_weights.__func__.__name__ == "reload_weights_sync"
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert lora_before

    trainer.train()

    changed = [n for n, p in trainer.model.named_parameters() if "lora_" in n and not p.detach().equal(lora_before[n])]
    assert changed, "no LoRA weight changed"
    logged = [row for row in trainer.state.log_history if "reward" in row]
    assert logged and all(row["reward"] == row["reward"] for row in logged)  # logged, not NaN
    assert all("rewards/srl_step_reward/mean" in row for row in logged)
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
