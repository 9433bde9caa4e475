"""`TrainRecipe`: one YAML file says everything about a training run.

A recipe names the model, the data, the method (sft | srl | rlvr | srl_rlvr) and the settings of
each stage. Unknown fields are refused with their location (a typo like `learnig_rate` must not
silently train with the default). Anything TRL can take but the recipe does not model goes in a
stage's `trl_args`, passed verbatim to GRPOConfig / SFTConfig.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from srl_sdk.core.answers import Verifier
from srl_sdk.errors import ConfigError
from srl_sdk.training.data import DataConfig, SftMode, SftThought

__all__ = ["LoraSettings", "DynamicSamplingSettings", "StageSettings", "TrainRecipe", "load_recipe"]

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraSettings(BaseModel):
    """PEFT LoRA (the default: r=16 on all 7 projections); enabled=false trains every weight."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_PROJECTIONS))


class DynamicSamplingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    epsilon: float = Field(default=1e-4, ge=0.0)
    max_rounds: int = Field(default=2, ge=0, le=16)


class StageSettings(BaseModel):
    """Settings of one stage (sft, srl or rlvr). GRPO-only fields are ignored by SFT and vice versa."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(default=1e-5, gt=0)
    max_steps: int = Field(default=-1, ge=-1, description="-1: run num_train_epochs")
    num_train_epochs: float = Field(default=1.0, gt=0)
    per_device_train_batch_size: int = Field(default=4, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    lr_scheduler_type: str = "constant"
    warmup_steps: float = Field(default=0, ge=0, description="steps, or a fraction of the run when < 1")
    logging_steps: int = Field(default=1, ge=1)
    save_steps: int = Field(default=50, ge=1)
    save_total_limit: int | None = Field(default=2, ge=1)
    eval_steps: int | None = Field(default=None, ge=1, description="validate every N steps (None: never)")
    per_device_eval_batch_size: int | None = Field(default=None, ge=1)
    select_best: bool = Field(default=False, description="keep the checkpoint best on validation")
    # GRPO (srl, rlvr)
    num_generations: int = Field(default=4, ge=2)
    max_completion_length: int = Field(default=64, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    beta: float = Field(default=0.0, ge=0.0)
    dynamic_sampling: DynamicSamplingSettings = Field(default_factory=DynamicSamplingSettings)
    malformed_outcome_reward: float = Field(default=0.0, description="rlvr: reward of a reply with no answer")
    verifier: Verifier = Field(
        default="exact",
        description="rlvr: how answers are compared; exact (numbers, GSM8K) or math (math-verify, symbolic answers; "
        "pip install 'srl-sdk[math]'), which also keeps non-numeric answers")
    # SFT
    sft_mode: SftMode = Field(default="solution", description="solution (the paper's SFT), step (the step protocol) or both")
    sft_thought: SftThought = Field(
        default="none", description="step mode: an empty thought, the step's own arithmetic, or a draft of the step")
    max_length: int | None = Field(default=1024, ge=16)
    trl_args: dict[str, Any] = Field(default_factory=dict, description="extra TRL config fields, verbatim")


class TrainRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "run"
    method: Literal["sft", "srl", "rlvr", "srl_rlvr", "sft_srl"] = Field(
        default="srl",
        description="srl_rlvr = the paper's best; sft_srl = a short per-step SFT to teach the format first "
        "(for small models that never close <think> on their own), then SRL",
    )
    model: str = Field(default="smollm2", description="alias, .gguf, HF folder or hub id")
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(default="auto", description="auto: bf16 on GPU, fp32 on CPU")
    gradient_checkpointing: bool | None = Field(default=None, description="None: on for GPU, off on CPU")
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    seed: int = 0
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads (default: up to 4)")
    report_to: list[str] | None = Field(default=None, description="None: tensorboard when installed")
    sft: StageSettings = Field(default_factory=lambda: StageSettings(learning_rate=2e-5))
    srl: StageSettings = Field(default_factory=StageSettings)
    rlvr: StageSettings = Field(default_factory=StageSettings)

    def stages(self) -> list[str]:
        return {"sft": ["sft"], "srl": ["srl"], "rlvr": ["rlvr"], "srl_rlvr": ["srl", "rlvr"], "sft_srl": ["sft", "srl"]}[self.method]

    def stage(self, name: str) -> StageSettings:
        return getattr(self, name)


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown field (check its spelling against TrainRecipe)")
        else:
            parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def load_recipe(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> TrainRecipe:
    """Read and validate a YAML recipe; every problem is reported with its field path."""
    import yaml

    path = Path(path).expanduser()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc.strerror or exc}; pass --recipe training/<name>.yaml") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a YAML mapping of fields (name, method, model, data, ...)")
    if overrides:
        raw = {**raw, **overrides}
    try:
        return TrainRecipe.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"recipe {path} is invalid: {_format_errors(exc)}") from exc
