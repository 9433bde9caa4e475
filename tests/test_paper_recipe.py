"""The paper recipe pins the GRPO objective instead of inheriting TRL's defaults (TRL 1.16's
loss_type is "dapo"; the SRL paper trains with GRPO). No training: the configs are built exactly as
`trainers._grpo_config` builds them for a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from srl_sdk.training.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "training" / "paper-qwen2.5-7b-s1k.yaml"

# The values the recipe pins in both GRPO stages (srl, rlvr), and where each comes from.
PINNED = {
    "loss_type": "grpo",  # the paper's GRPO objective (TRL's default is "dapo")
    "scale_rewards": "group",  # GRPO advantage: (r - group mean) / group std
    "epsilon": 0.2,  # paper silent; TRL default
    "epsilon_high": 0.2,  # GRPO's symmetric clip (TRL's None means "= epsilon")
    "delta": None,  # paper silent; TRL default
    "importance_sampling_level": "token",  # GRPO's per-token ratio
    "num_iterations": 1,  # paper silent; TRL default
    "mask_truncated_completions": False,  # paper silent; TRL default
    "top_entropy_quantile": 1.0,  # paper silent; TRL default
    "max_grad_norm": 1.0,  # paper silent; TRL default
    "vllm_importance_sampling_correction": True,  # paper silent; TRL default
}


def test_paper_recipe_pins_the_grpo_objective_in_both_stages() -> None:
    recipe = load_recipe(PAPER)
    assert recipe.stages() == ["srl", "rlvr"]
    for name in recipe.stages():
        trl_args = recipe.stage(name).trl_args
        assert {key: trl_args[key] for key in PINNED} == PINNED, name
    assert recipe.srl.trl_args["log_completions"] is True and recipe.rlvr.trl_args["log_completions"] is False
    assert recipe.data.step_lines == "all" and recipe.data.step_range.min_step == 2
    assert recipe.rlvr.verifier == "math"


def test_every_pinned_value_says_where_it_comes_from() -> None:
    lines = PAPER.read_text(encoding="utf-8").splitlines()
    block = lines[next(i for i, line in enumerate(lines) if "trl_args: &grpo_objective" in line) + 1:]
    for key in PINNED:
        line = next(line for line in block if line.startswith(f"    {key}:"))
        comment = line.partition("#")[2]
        assert "paper" in comment and ("TRL default" in comment or "paper:" in comment), line


@pytest.mark.parametrize("name", ["srl", "rlvr"])
def test_paper_recipe_builds_a_grpo_config_with_exactly_those_values(tmp_path: Path, name: str) -> None:
    pytest.importorskip("trl")
    from srl_sdk.training.dynamic_sampling import SRLConfig
    from srl_sdk.training.trainers import _grpo_config

    recipe = load_recipe(PAPER)
    import torch

    if torch.cuda.is_available():
        device = "cuda"
    else:  # transformers refuses bf16 without a GPU; the pinned GRPO values do not depend on precision
        device, recipe = "cpu", recipe.model_copy(update={"precision": "fp32"})
    config = _grpo_config(recipe, name, recipe.stage(name), tmp_path / name, device, has_eval=True)
    assert isinstance(config, SRLConfig)
    assert {key: getattr(config, key) for key in PINNED} == PINNED
    # and the recipe's own paper settings reach TRL unchanged
    assert (config.num_generations, config.beta, config.temperature, config.learning_rate) == (8, 0.0, 1.0, 5e-7)
    assert config.dynamic_sampling and config.dynamic_sampling_epsilon == 1e-4 and config.use_vllm
