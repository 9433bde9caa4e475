"""Dynamic sampling inside TRL's GRPO loop: `SRLConfig` + `SRLTrainer`.

GRPO learns from differences between the completions of one prompt. When every completion of a
group gets (almost) the same reward, the group's advantages are all zero: it costs a full
generation and a backward pass and teaches nothing, while shrinking the effective batch. The SRL
paper (following DAPO) drops such groups and refills the batch. TRL 1.16 has no such option (it
only logs `frac_reward_zero_std`), so this subclass overrides the generate-and-score seam:

1. generate and score a generation batch as usual (`GRPOTrainer._generate_and_score_completions`);
   the rewards are captured in `_calculate_rewards` (they are not in the returned dict);
2. groups whose population std of rewards is <= `dynamic_sampling_epsilon` are set aside;
3. fresh prompts are drawn from the training set and generated until the batch is full again,
   at most `dynamic_sampling_max_rounds` extra rounds (each costs a full generation);
4. the result has exactly the generation-batch row count TRL expects (its `_prepare_inputs`
   splits and buffers it); if the rounds run out, set-aside rows fill the gap — their advantage
   is exactly zero, so they add no gradient.

Metrics (logged with TRL's own, so they reach metrics.jsonl / TensorBoard):
`dynamic_sampling/kept_ratio` (groups kept in the first round), `dynamic_sampling/rounds`,
`dynamic_sampling/signal_fraction` (rows of the final batch that carry a learning signal).

Multi-process: the std is taken on rewards gathered from every process (TRL gathers them), fresh
prompts are drawn with the same seed on every process and sliced like TRL's sampler, and every
process runs the same number of rounds (the stop test is gathered), so collectives stay in step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from srl_sdk.errors import ConfigError, TrainingError, require

require("trl", "train")
require("torch", "train")

import torch  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

__all__ = ["SRLConfig", "SRLTrainer", "group_keep_mask"]

_PROMPT_SIDE = ("prompt_ids", "prompt_mask")


@dataclass
class SRLConfig(GRPOConfig):
    """GRPOConfig plus dynamic sampling (the SRL paper's filter on zero-variance groups)."""

    dynamic_sampling: bool = field(
        default=True, metadata={"help": "Drop groups whose reward std <= epsilon and refill the batch."}
    )
    dynamic_sampling_epsilon: float = field(
        default=1e-4, metadata={"help": "Groups with population reward std at or below this are dropped."}
    )
    dynamic_sampling_max_rounds: int = field(
        default=2, metadata={"help": "Extra generation rounds allowed per batch to refill dropped groups."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.dynamic_sampling_epsilon < 0:
            raise ConfigError("dynamic_sampling_epsilon must be >= 0 (e.g. 1e-4)")
        if self.dynamic_sampling_max_rounds < 0:
            raise ConfigError("dynamic_sampling_max_rounds must be >= 0 (0 = filter without refilling)")


def group_keep_mask(rewards: "torch.Tensor", num_generations: int, epsilon: float) -> "torch.Tensor":
    """Per-row bool: does the row's group (contiguous `num_generations` rows) have std > epsilon?

    Population std (unbiased=False), as the paper defines the filter. A group with a NaN reward
    (unscorable completion) is judged on its scored rows only.
    """
    grouped = rewards.reshape(-1, num_generations).to(torch.float64)
    valid = ~torch.isnan(grouped)
    count = valid.sum(dim=1).clamp(min=1)
    filled = torch.where(valid, grouped, torch.zeros_like(grouped))
    mean = filled.sum(dim=1, keepdim=True) / count.unsqueeze(1)
    var = (torch.where(valid, (grouped - mean) ** 2, torch.zeros_like(grouped))).sum(dim=1) / count
    keep = (var.sqrt() > epsilon) & (valid.sum(dim=1) >= 2)
    return keep.repeat_interleave(num_generations)


def _pad_to(tensor: "torch.Tensor", width: int, value: float, left: bool) -> "torch.Tensor":
    missing = width - tensor.size(1)
    if missing <= 0:
        return tensor
    filler = torch.full((tensor.size(0), missing), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([filler, tensor] if left else [tensor, filler], dim=1)


class SRLTrainer(GRPOTrainer):
    """GRPOTrainer with dynamic sampling (see the module docstring). Use with `SRLConfig`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if getattr(self.args, "use_vllm", False):  # TRL's in-place colocate copy cannot reach vLLM CPU's repacked weights
            from srl_sdk.training.vllm_sync import use_reload_weights_sync

            use_reload_weights_sync(self)
        self._captured_rewards_per_func: torch.Tensor | None = None
        self.last_dropped_rows: dict[str, Any] | None = None
        self.dynamic_sampling_rounds: list[int] = []  # rounds of every training batch (equal on every rank)
        if getattr(self.args, "dynamic_sampling", False):
            if not hasattr(self.train_dataset, "__getitem__") or not hasattr(self.train_dataset, "__len__"):
                raise ConfigError("dynamic sampling draws fresh prompts by index: pass a map-style (not iterable) dataset")

    # -- the captured rewards ---------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._captured_rewards_per_func = rewards_per_func.detach()
        return rewards_per_func

    def _captured_rewards(self) -> "torch.Tensor":
        if self._captured_rewards_per_func is None:
            raise TrainingError("dynamic sampling found no rewards for the batch; this TRL version may have moved the seam")
        weights = self.reward_weights.to(self._captured_rewards_per_func.device)
        per_func = self._captured_rewards_per_func
        rewards = (per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(per_func).all(dim=1)] = torch.nan
        return rewards

    # -- fresh prompts ----------------------------------------------------------------------
    def _draw_fresh_inputs(self, local_rows: int, round_index: int) -> list[dict[str, Any]]:
        """New groups, drawn identically on every process and sliced like TRL's RepeatSampler."""
        g = self.num_generations
        n_proc = self.accelerator.num_processes
        n_prompts = (local_rows * n_proc) // g
        rng = random.Random(hash((self.args.seed, self.state.global_step, round_index)) & 0xFFFFFFFF)
        indices = [rng.randrange(len(self.train_dataset)) for _ in range(n_prompts)]
        rows = [dict(self.train_dataset[i]) for i in indices for _ in range(g)]
        start = self.accelerator.process_index * local_rows
        return rows[start : start + local_rows]

    # -- the seam ---------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        if not self.model.training or not getattr(self.args, "dynamic_sampling", False):
            return super()._generate_and_score_completions(inputs)
        local_rows = len(inputs)
        g = self.num_generations
        eps = float(self.args.dynamic_sampling_epsilon)
        kept_parts: list[dict[str, Any]] = []
        spare_parts: list[dict[str, Any]] = []
        n_kept = 0
        first_ratio = 1.0
        rounds = 0
        batch = inputs
        for round_index in range(self.args.dynamic_sampling_max_rounds + 1):
            rounds = round_index + 1
            self._captured_rewards_per_func = None
            output = super()._generate_and_score_completions(batch)
            keep_all = group_keep_mask(self._captured_rewards(), g, eps)
            if round_index == 0:
                first_ratio = keep_all.float().mean().item()
            start = self.accelerator.process_index * local_rows
            keep = keep_all[start : start + local_rows].to(output["advantages"].device)
            kept_parts.append(self._select_rows(output, keep, local_rows))
            spare_parts.append(self._select_rows(output, ~keep, local_rows))
            n_kept += int(keep.sum().item())
            fewest = self.accelerator.gather(torch.tensor([n_kept], device=keep.device)).min().item()
            if fewest >= local_rows or round_index == self.args.dynamic_sampling_max_rounds:
                break
            batch = self._draw_fresh_inputs(local_rows, round_index + 1)
        merged = self._concat_rows(kept_parts + spare_parts, local_rows)
        n_spare = sum(int(p["advantages"].size(0)) for p in spare_parts)
        # the rows set aside, for inspection (tests, debugging); never trained on unless padding
        self.last_dropped_rows = self._concat_rows(spare_parts, n_spare, gather_items=False) if n_spare else None
        self.dynamic_sampling_rounds.append(rounds)
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/kept_ratio"].append(first_ratio)
        metrics["dynamic_sampling/rounds"].append(float(rounds))
        signal = torch.tensor([min(n_kept, local_rows) / local_rows], device=keep.device)
        metrics["dynamic_sampling/signal_fraction"].append(self.accelerator.gather(signal).mean().item())
        return merged

    @staticmethod
    def _select_rows(output: dict[str, Any], mask: "torch.Tensor", rows: int) -> dict[str, Any]:
        picked: dict[str, Any] = {}
        for key, value in output.items():
            if key == "num_items_in_batch":
                continue
            if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.size(0) != rows:
                raise TrainingError(
                    f"dynamic sampling supports text-only GRPO; the batch field {key!r} cannot be filtered by row. "
                    "Set dynamic_sampling: false for this model"
                )
            picked[key] = value[mask.to(value.device)]
        return picked

    def _concat_rows(self, parts: list[dict[str, Any]], rows: int, gather_items: bool = True) -> dict[str, Any]:
        pad_id = self._tokenizer.pad_token_id
        keys = list(parts[0])
        out: dict[str, Any] = {}
        for key in keys:
            pieces = [p[key] for p in parts if p[key].size(0) > 0]
            if pieces[0].dim() == 2:
                width = max(t.size(1) for t in pieces)
                value = pad_id if key in ("prompt_ids", "completion_ids") else 0
                pieces = [_pad_to(t, width, value, left=key in _PROMPT_SIDE) for t in pieces]
            out[key] = torch.cat(pieces, dim=0)[:rows]
        mask = out["completion_mask"]
        if "tool_mask" in out:
            mask = mask * out["tool_mask"]
        # the loss is normalised by the tokens of the whole (multi-process) batch, as TRL does
        out["num_items_in_batch"] = self.accelerator.gather(mask.sum()).sum() if gather_items else mask.sum()
        return out
