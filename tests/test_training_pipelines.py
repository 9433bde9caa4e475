"""Tiny REAL RLVR and SRL→RLVR runs, and an SRL overfit check, on SmolLM2-135M (LoRA, CPU, 1 thread).

The data are rule-based word problems (`srl_sdk.core.generate`, 2 steps each): exact expert steps
and short problem texts (the step protocol's few-shot system prompt is most of each ~350-token
prompt), so a GRPO step with 4 rollouts costs ~15-35 s on a shared 2-core machine and ~6 GB of RAM
(8 rollouts at once peaked near 14 GB). Splits used: 8 train problems (the warm-ups, the
pipeline) and 4 test problems (the overfit check; no warm-up sees them).

What the untrained model does (measured, and why the runs start where they do):
- RLVR from the base SmolLM2: 0 of 16 sampled free-mode solutions were right (it seldom writes
  `#### answer`, never with the right number), and a 2-step RLVR run (4 problems, groups of 4,
  one refill round) scored 0 on all 16 rollouts: every advantage is zero, dynamic sampling logs
  `kept_ratio` 0 and `signal_fraction` 0, `grad_norm` is 0 and the LoRA B matrices stay exactly
  zero. A per-step SFT model (and the SRL model after it) answers a free-mode prompt with one line
  ending in `#### N`, still never the right N. So the RLVR test starts from a short whole-solution
  SFT (`sft_mode: solution`, the paper's SFT baseline) on its 4 problems: at temperature 1 it gets
  a third to a half of its answers right, so a group holds both 0s and 1s.
- SRL from the base model: it never closes `<think>` within a few tokens (every reward -1), so the
  SRL runs start from a short per-step SFT (`sft_mode: step`), as the `sft_srl` method does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from srl_sdk.core.format import THINK_OPEN, step_messages
from srl_sdk.core.generate import GenerateConfig, write_dataset
from srl_sdk.core.instances import StepRange
from srl_sdk.training.data import DataConfig, chat_prompt_renderer, load_trajectories, srl_examples
from srl_sdk.engines.hf_folder import load_causal_lm, load_tokenizer
from srl_sdk.engines.models import PROMPT_STYLE_FILE
from srl_sdk.training.recipe import TrainRecipe
from srl_sdk.training.reports import METRICS_FILE, read_metrics
from srl_sdk.training.rewards import score_step
from srl_sdk.training.trainers import RUN_MARKER, train

pytestmark = pytest.mark.slow

BASE = {"model": "smollm2", "device": "cpu", "torch_threads": 1, "report_to": []}
GRPO_LORA = {"dropout": 0.0}  # as the CPU recipe: over a few GRPO steps LoRA dropout only adds noise
COMPLETION_TOKENS = 24  # "\n</think>\n" + a one-line step of these problems (~20 tokens)


def lora_b_nonzero(adapter_dir: Path) -> bool:
    from safetensors.torch import load_file

    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b, "the adapter has no LoRA B matrices"
    return any(torch.count_nonzero(t) > 0 for t in lora_b)  # B starts at zero: nonzero = a gradient flowed


def step_rows(stage_dir: Path) -> list[dict]:
    """The per-step training log rows of a GRPO stage (not the end-of-training summary row)."""
    return [r for r in read_metrics(stage_dir / METRICS_FILE) if "reward" in r]


def data(path: Path, **extra) -> dict:
    return {"source": "jsonl", "path": str(path), "validation_size": 0, **extra}


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("problems")
    write_dataset(GenerateConfig(train=8, validation=2, test=4, test_hard=0, min_steps=2, max_steps=2, seed=0), out)
    return out


@pytest.fixture(scope="module")
def step_sft(problems, tmp_path_factory) -> Path:
    """A per-step SFT warm-up on the 8 train problems (16 step examples, one epoch): the SRL start."""
    out = tmp_path_factory.mktemp("step-sft") / "run"
    recipe = TrainRecipe.model_validate(
        {**BASE, "name": "step-sft", "method": "sft", "data": data(problems / "train.jsonl"),
         "sft": {"sft_mode": "step", "max_steps": 4, "learning_rate": 2e-3, "per_device_train_batch_size": 4,
                 "save_steps": 100, "max_length": 512}}
    )
    return train(recipe, out).final_model


def test_rlvr_stage_trains_a_few_steps(problems, tmp_path) -> None:
    """RLVR (`method: rlvr`) for 2 GRPO steps from a whole-solution SFT model (see the module
    docstring for why not from the base model): the outcome reward is logged every step, some group
    holds both a right and a wrong answer, and that signal reaches the LoRA weights.

    Measured: mean outcome reward 0.75 and 0.5 (groups of 4), both groups kept; ~90 s in all.
    """
    rlvr_data = data(problems / "train.jsonl", limit=4)
    sft = TrainRecipe.model_validate(
        {**BASE, "name": "solution-sft", "method": "sft", "data": rlvr_data,
         "sft": {"sft_mode": "solution", "max_steps": 3, "learning_rate": 2e-3, "per_device_train_batch_size": 4,
                 "save_steps": 100, "max_length": 512}}
    )
    sft_model = train(sft, tmp_path / "sft").final_model

    out = tmp_path / "rlvr"
    recipe = TrainRecipe.model_validate(
        {**BASE, "name": "tiny-rlvr", "method": "rlvr", "model": str(sft_model), "data": rlvr_data, "lora": GRPO_LORA,
         "rlvr": {"max_steps": 2, "learning_rate": 1e-3, "per_device_train_batch_size": 4, "num_generations": 4,
                  "max_completion_length": 48, "temperature": 1.0, "save_steps": 100,
                  "dynamic_sampling": {"max_rounds": 1}}}
    )
    result = train(recipe, out)
    stage = result.stages[0]
    assert [s.stage for s in result.stages] == ["rlvr"] and stage.global_step == 2

    rows = step_rows(out / "rlvr")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:  # TRL 1.16 logs each reward function as rewards/<name>/mean and /std
        assert 0.0 <= row["rewards/rlvr_outcome_reward/mean"] <= 1.0
        assert "rewards/rlvr_outcome_reward/std" in row and "dynamic_sampling/kept_ratio" in row
    # the verifier recognised right answers, and at least one group mixed right and wrong ones
    assert any(r["rewards/rlvr_outcome_reward/mean"] > 0 for r in rows), rows
    assert any(r["dynamic_sampling/kept_ratio"] > 0 for r in rows), rows
    assert any(r["grad_norm"] > 0 for r in rows), rows
    assert stage.adapter is not None and lora_b_nonzero(stage.adapter)
    assert (stage.final_model / "config.json").is_file() and (stage.final_model / "model.safetensors").is_file()


def test_srl_then_rlvr_pipeline(problems, step_sft, tmp_path) -> None:
    """`method: srl_rlvr` from the per-step SFT model, one GRPO step per stage: the SRL stage, then
    the RLVR stage from the SRL stage's merged `final/` (the RLVR adapter names that folder as its
    base, which is what `srl export` merges an adapter onto), and the last model loads and writes a step."""
    out = tmp_path / "pipeline"
    recipe = TrainRecipe.model_validate(
        {**BASE, "name": "tiny-srl-rlvr", "method": "srl_rlvr", "model": str(step_sft),
         "data": data(problems / "train.jsonl"), "lora": GRPO_LORA,
         "srl": {"max_steps": 1, "learning_rate": 1e-3, "per_device_train_batch_size": 4, "num_generations": 4,
                 "max_completion_length": COMPLETION_TOKENS, "temperature": 0.7, "save_steps": 100,
                 "dynamic_sampling": {"max_rounds": 1}},
         "rlvr": {"max_steps": 1, "learning_rate": 1e-3, "per_device_train_batch_size": 4, "num_generations": 4,
                  "max_completion_length": 32, "save_steps": 100, "dynamic_sampling": {"max_rounds": 0}}}
    )
    result = train(recipe, out)
    assert [s.stage for s in result.stages] == ["srl", "rlvr"]
    srl, rlvr = result.stages
    assert srl.global_step == 1 and rlvr.global_step == 1
    assert json.loads((out / RUN_MARKER).read_text())["method"] == "srl_rlvr"

    srl_rows, rlvr_rows = step_rows(out / "srl"), step_rows(out / "rlvr")
    assert [r["step"] for r in srl_rows] == [1] and "rewards/srl_step_reward/mean" in srl_rows[0]
    assert [r["step"] for r in rlvr_rows] == [1] and "rewards/rlvr_outcome_reward/mean" in rlvr_rows[0]
    assert lora_b_nonzero(srl.adapter)  # the per-step SFT model's rollouts differ in similarity
    # One group, no refill rounds: dynamic sampling keeps it exactly when its rewards differ, and a
    # dropped group trains nothing. (Measured: the SRL model never answers a free-mode prompt right,
    # so every reward is 0 and this RLVR step is the no-signal case, logged as kept_ratio 0.)
    row = rlvr_rows[0]
    no_signal = row["dynamic_sampling/kept_ratio"] == 0
    assert no_signal == (row["reward_std"] <= 1e-4), row
    if no_signal:
        assert row["dynamic_sampling/signal_fraction"] == 0 and row["grad_norm"] == 0, row

    # the RLVR stage trained on top of the SRL stage's merged model, not on the recipe's model
    adapter_config = json.loads((rlvr.adapter / "adapter_config.json").read_text())
    assert Path(adapter_config["base_model_name_or_path"]).resolve() == srl.final_model.resolve()
    srl_base = json.loads((srl.adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(srl_base).resolve() == step_sft.resolve()
    assert result.final_model == out / "rlvr" / "final"

    from srl_sdk.engines.base import SamplingParams
    from srl_sdk.engines.transformers import TransformersEngine

    item = load_trajectories(DataConfig(**data(problems / "test.jsonl")))[0][0]
    # every saved model names the prompt style it was trained with, and an engine loading it sends that
    assert (result.final_model / PROMPT_STYLE_FILE).read_text(encoding="utf-8") == "few_shot\n"
    with TransformersEngine(str(result.final_model), n_threads=1) as engine:
        assert engine.prompt_style == "few_shot"
        prompt = engine.render(step_messages(item.problem, [])) + THINK_OPEN
        text = "".join(event.text for event in engine.stream(prompt, SamplingParams(max_tokens=16)))
    assert text.strip()


def greedy_step_scores(model_dir: Path, rows: list[dict]) -> list[float]:
    """The SRL reward (`score_step`: -1 malformed, else the step similarity) of the model's greedy
    completion of each training prompt, at the training completion length."""
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir).eval()
    scores = []
    for row in rows:
        ids = tokenizer(row["prompt"], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=COMPLETION_TOKENS, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        completion = tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
        scores.append(score_step(completion, row["expert_step"]))
    return scores


def well_formed_mean(scores: list[float]) -> float:
    formed = [s for s in scores if s >= 0]
    return sum(formed) / len(formed) if formed else 0.0


OVERFIT_MARGIN = 0.04


def test_srl_overfit_raises_step_similarity(problems, step_sft, tmp_path) -> None:
    """SRL on 4 instances (step 1 of the 4 test problems, unseen by the warm-up), 8 GRPO steps of
    one group of 4 at a LoRA learning rate of 1e-3, temperature 0.7, raises the mean greedy step
    similarity of well-formed steps on them by at least OVERFIT_MARGIN.

    Measured with this exact setup (greedy, 24 tokens; all 4 steps well-formed before and after):
    recipe seed 0: 0.671 -> 0.793 (+0.122); seed 1: 0.671 -> 0.751 (+0.080); seed 2: 0.671 ->
    0.794 (+0.123). The margin, 0.04, is half the smallest gain. The warm-up model appends
    `#### N` to these first steps and often names the wrong person; SRL learns to drop the marker
    and fixes some names and operations. Runs are deterministic on one machine (seed 0 gave the
    same numbers twice). After 6 steps the gains were +0.093 / +0.042 (seeds 0 / 1); at 1.5e-3
    (and 2e-3 in a trial with 2 groups a step) greedy steps turned malformed within 2-4 steps; at
    temperature 1.0 the gain was +0.034: hence 8 steps at 1e-3 and 0.7.
    Checked by hand: with the SRL reward replaced by a constant 0, dynamic sampling drops every
    group, grad_norm is 0 at every step, the merged model equals the warm-up model and the gain
    is exactly 0.000, so this test fails (now already at its LoRA B check).
    """
    srl_data = data(problems / "test.jsonl", step_range={"min_step": 1, "max_step": 1})
    items, _ = load_trajectories(DataConfig(**srl_data))
    rows = srl_examples(items, chat_prompt_renderer(load_tokenizer(step_sft)), StepRange(min_step=1, max_step=1))
    assert len(rows) == 4
    before = greedy_step_scores(step_sft, rows)

    out = tmp_path / "overfit"
    recipe = TrainRecipe.model_validate(
        {**BASE, "name": "srl-overfit", "method": "srl", "model": str(step_sft), "data": srl_data, "lora": GRPO_LORA,
         "srl": {"max_steps": 8, "learning_rate": 1e-3, "per_device_train_batch_size": 4, "num_generations": 4,
                 "max_completion_length": COMPLETION_TOKENS, "temperature": 0.7, "save_steps": 100,
                 "dynamic_sampling": {"max_rounds": 1}}}
    )
    result = train(recipe, out)
    assert lora_b_nonzero(result.stages[0].adapter), "no gradient reached the adapter"
    after = greedy_step_scores(result.final_model, rows)

    report = f"before {[round(s, 3) for s in before]}, after {[round(s, 3) for s in after]}"
    print(f"SRL overfit: {report}")
    formed_before = sum(s >= 0 for s in before)
    formed_after = sum(s >= 0 for s in after)
    assert formed_before >= 3, f"the warm-up should write well-formed steps: {report}"
    assert formed_after >= formed_before - 1, f"SRL broke the step format: {report}"
    gain = well_formed_mean(after) - well_formed_mean(before)
    assert gain >= OVERFIT_MARGIN, f"well-formed step similarity rose by {gain:.3f} < {OVERFIT_MARGIN}: {report}"
