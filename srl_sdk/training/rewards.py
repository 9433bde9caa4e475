"""Rewards in TRL's reward-function shape: `f(completions, **columns) -> list[float]`.

- `srl_step_reward`: the SRL reward of the paper. The completion is parsed with the step protocol
  (`<think>` is prefilled by the prompt, so the completion is `monologue</think>\\nstep`); a
  malformed reply scores -1, a well-formed one scores the difflib similarity 2M/T of its step to
  the expert step (dataset column `expert_step`). Only the first line of the action is scored,
  because the driver cuts an action at its first newline when serving: what is rewarded is what
  the user would see.
- `rlvr_outcome_reward`: 1 when the final answer in the completion equals the reference answer
  (column `answer`, compared exactly by `core.answers.answers_equal`), else 0; a completion with
  no answer gets `malformed` (0 by default).

Both accept plain-text completions and conversational ones (`[{"role": "assistant",
"content": ...}]`), and ignore the extra keyword arguments TRL passes (prompts, trainer_state...).
They work as ordinary reward functions with the stock `GRPOTrainer` as well as with `SRLTrainer`.
"""

from __future__ import annotations

from typing import Any, Sequence

from srl_sdk.core.answers import answers_equal, extract_answer
from srl_sdk.core.format import THINK_CLOSE
from srl_sdk.core.similarity import srl_step_reward as _core_step_reward
from srl_sdk.errors import InputError

__all__ = [
    "completion_text",
    "as_served",
    "score_step",
    "srl_step_reward",
    "rlvr_outcome_reward",
    "make_rlvr_outcome_reward",
    "FORMAT_PENALTY",
]

FORMAT_PENALTY = -1.0


def completion_text(completion: Any) -> str:
    """A TRL completion (string, or a list of chat messages) -> its text."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if isinstance(completion, (list, tuple)):
        return "".join(
            str(m.get("content") or "") for m in completion if isinstance(m, dict) and m.get("role", "assistant") == "assistant"
        )
    return "" if completion is None else str(completion)


def as_served(completion: str) -> str:
    """The completion cut where the serving driver cuts a step: the first newline after action text.

    Text after that line would never reach a user (the driver stops the action there), so it
    must neither earn nor lose reward.
    """
    head, sep, tail = completion.partition(THINK_CLOSE)
    if not sep:
        return completion
    stripped = tail.lstrip()
    cut = stripped.find("\n")
    kept = stripped if cut == -1 else stripped[:cut]
    return head + sep + tail[: len(tail) - len(stripped)] + kept


def score_step(completion: str, expert_step: str) -> float:
    """SRL reward of one completion written after a `<think>`-prefilled prompt (core's reward)."""
    return float(_core_step_reward(as_served(completion), expert_step, thought_prefilled=True, malformed_penalty=FORMAT_PENALTY))


def srl_step_reward(completions: Sequence[Any], expert_step: Sequence[str], **_: Any) -> list[float]:
    """TRL reward function: one SRL step reward per completion (-1 for malformed replies)."""
    if len(completions) != len(expert_step):
        raise InputError(f"{len(completions)} completions but {len(expert_step)} expert steps; pass one expert_step per completion")
    return [score_step(completion_text(c), str(e)) for c, e in zip(completions, expert_step)]


srl_step_reward.__name__ = "srl_step_reward"


def make_rlvr_outcome_reward(malformed: float = 0.0):
    """An outcome reward whose score for a completion without any final answer is `malformed`."""

    def rlvr_outcome_reward(completions: Sequence[Any], answer: Sequence[str], **_: Any) -> list[float]:
        if len(completions) != len(answer):
            raise InputError(f"{len(completions)} completions but {len(answer)} answers; pass one answer per completion")
        scores: list[float] = []
        for completion, reference in zip(completions, answer):
            found = extract_answer(completion_text(completion))
            if found is None:
                scores.append(float(malformed))
            else:
                scores.append(1.0 if answers_equal(found, str(reference)) else 0.0)
        return scores

    return rlvr_outcome_reward


rlvr_outcome_reward = make_rlvr_outcome_reward(0.0)
