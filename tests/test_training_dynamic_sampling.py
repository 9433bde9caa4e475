"""Dynamic sampling inside TRL's GRPO loop, on the real SmolLM2: zero-variance groups are set aside
and give no gradient, the batch is refilled with fresh prompts, and the kept ratio is logged."""

from __future__ import annotations

import math

import pytest
import torch

from srl_sdk.training.dynamic_sampling import SRLConfig, SRLTrainer, group_keep_mask
from srl_sdk.engines.hf_folder import load_causal_lm, load_tokenizer
from srl_sdk.training.reports import METRICS_FILE, MetricsJsonlCallback, read_metrics


def test_group_keep_mask_uses_population_std_per_group() -> None:
    rewards = torch.tensor([0.5, 0.5, 0.0, 1.0, 0.2, 0.2 + 1e-6, -1.0, float("nan")])
    keep = group_keep_mask(rewards, 2, 1e-4)
    assert keep.tolist() == [False, False, True, True, False, False, False, False]
    # population std of (0, 1) is 0.5: kept below that threshold, dropped at it
    assert group_keep_mask(torch.tensor([0.0, 1.0]), 2, 0.49).tolist() == [True, True]
    assert group_keep_mask(torch.tensor([0.0, 1.0]), 2, 0.5).tolist() == [False, False]


class RecordingTrainer(SRLTrainer):
    """Keeps each training batch SRLTrainer hands to TRL (instrumentation only)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.model.training:
            self.batches.append((len(inputs), out))
        return out


def flat_or_varied(completions, kind, **_):
    """'flat' prompts always score 0.5 (zero variance); 'varied' groups score 0 and 1."""
    return [0.5 if k == "flat" else float(i % 2) for i, k in enumerate(kind)]


def test_filtered_groups_give_no_gradient_and_the_batch_is_refilled(smollm2_hf_dir, tmp_path) -> None:
    from datasets import Dataset
    from peft import LoraConfig

    hf_dir = smollm2_hf_dir
    torch.set_num_threads(1)
    tokenizer = load_tokenizer(hf_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Say a number."}], add_generation_prompt=True, tokenize=False)
    dataset = Dataset.from_list([{"prompt": prompt, "kind": "flat"}, {"prompt": prompt + " ", "kind": "varied"}])
    args = SRLConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_completion_length=4,
        max_steps=1, learning_rate=1e-2, bf16=False, use_cpu=True, report_to=[], logging_steps=1,
        save_strategy="no", seed=1, dynamic_sampling_max_rounds=4, disable_tqdm=True,
    )
    trainer = RecordingTrainer(
        model=load_causal_lm(hf_dir), reward_funcs=[flat_or_varied], args=args, train_dataset=dataset,
        processing_class=tokenizer, peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
        callbacks=[MetricsJsonlCallback(tmp_path, "srl")],
    )
    trainer.train()

    # the batch TRL trained on is full (4 rows) and every row comes from a group with a signal
    (n_inputs, batch), = trainer.batches
    assert n_inputs == 4 and batch["completion_ids"].shape[0] == 4 and batch["advantages"].shape == (4,)
    assert torch.all(batch["advantages"].abs() > 0.5)
    assert int(batch["num_items_in_batch"]) == int(batch["completion_mask"].sum())

    # the kept ratio (one of two groups in the first round) and the refill rounds were logged
    rows = read_metrics(tmp_path / METRICS_FILE)
    logged = [r for r in rows if "dynamic_sampling/kept_ratio" in r]
    assert logged and logged[0]["dynamic_sampling/kept_ratio"] == pytest.approx(0.5)
    assert logged[0]["dynamic_sampling/rounds"] >= 2 and logged[0]["dynamic_sampling/signal_fraction"] == 1.0

    # the set-aside rows have zero advantage, and a loss on them gives exactly zero gradient
    dropped = trainer.last_dropped_rows
    assert dropped is not None and dropped["advantages"].numel() >= 2
    assert torch.all(dropped["advantages"] == 0)
    model = trainer.model
    model.zero_grad()
    loss = trainer.compute_loss(model, dropped)
    loss.backward()
    lora = [p for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora and all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in lora)

    # while the kept rows did train the adapter (lora_B starts at zero)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(torch.count_nonzero(p.detach()) > 0 for p in lora_b)
    assert all(math.isfinite(float(p.detach().abs().sum())) for p in lora_b)
