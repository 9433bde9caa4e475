"""Rewards in TRL's reward-function shape: `f(completions, **columns) -> list[float]`.

- `make_srl_step_reward(step_lines)`: the SRL reward of the paper. The completion is parsed with
  the step protocol (`<think>` is prefilled by the prompt, so the completion is
  `monologue</think>\\nstep`); a malformed reply scores -1, a well-formed one scores the difflib
  similarity 2M/T of its step to the expert step (dataset column `expert_step`). What counts as
  the step follows the data (`core.similarity.StepLines`): with one-line expert steps (GSM8K,
  "first") only the action's first line is scored, because the driver cuts an action at its first
  newline when serving and what is rewarded is what the user would see; with multi-line expert
  steps (s1K paragraphs, "all") the whole action is scored, since a first-line cut would cap a
  verbatim copy of a 4-line expert step around 0.4. `srl_step_reward` is the "first" reward.
- `make_rlvr_outcome_reward(malformed, verifier)`: 1 when the final answer in the completion
  agrees with the reference answer (column `answer`) under `core.answers.answers_match` —
  "exact" (`answers_equal`: exact numbers, else normalised text) or "math" (math-verify, for
  symbolic answers), else 0; a completion with no answer gets `malformed` (0 by default).

Both accept plain-text completions and conversational ones (`[{"role": "assistant",
"content": ...}]`), and ignore the extra keyword arguments TRL passes (prompts, trainer_state...).
They work as ordinary reward functions with the stock `GRPOTrainer` as well as with `SRLTrainer`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from srl_sdk.core.answers import Verifier, answers_match, check_verifier, extract_answer
from srl_sdk.core.format import THINK_CLOSE
from srl_sdk.core.similarity import StepLines
from srl_sdk.core.similarity import srl_step_reward as _core_step_reward
from srl_sdk.errors import ConfigError, InputError

__all__ = [
    "completion_text",
    "as_served",
    "score_step",
    "make_srl_step_reward",
    "srl_step_reward",
    "rlvr_outcome_reward",
    "make_rlvr_outcome_reward",
    "FORMAT_PENALTY",
]

RewardFunction = Callable[..., list[float]]

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


def as_served(completion: str, step_lines: StepLines = "first") -> str:
    """The completion cut where the step protocol ends the step.

    "first": at the first newline after action text, where the serving driver cuts an action;
    text after that line would never reach a user, so it must neither earn nor lose reward.
    "all": not cut; the whole action is the step (multi-line expert steps), so text the model
    adds after the expert's step lowers the similarity instead of being ignored.
    """
    if step_lines == "all":
        return completion
    if step_lines != "first":
        raise ConfigError(f"step_lines must be 'first' or 'all', got {step_lines!r}")
    head, sep, tail = completion.partition(THINK_CLOSE)
    if not sep:
        return completion
    stripped = tail.lstrip()
    cut = stripped.find("\n")
    kept = stripped if cut == -1 else stripped[:cut]
    return head + sep + tail[: len(tail) - len(stripped)] + kept


def score_step(completion: str, expert_step: str, step_lines: StepLines = "first") -> float:
    """SRL reward of one completion written after a `<think>`-prefilled prompt (core's reward)."""
    served = as_served(completion, step_lines)
    return float(_core_step_reward(served, expert_step, thought_prefilled=True, malformed_penalty=FORMAT_PENALTY))


def make_srl_step_reward(step_lines: StepLines = "first") -> RewardFunction:
    """The TRL SRL reward function for data whose steps are one line ("first") or several ("all").

    Every variant is named `srl_step_reward`, so TRL logs it as `rewards/srl_step_reward` either way.
    """
    as_served("", step_lines)  # refuse a bad setting now, not at the first rollout

    def srl_step_reward(completions: Sequence[Any], expert_step: Sequence[str], **_: Any) -> list[float]:
        """TRL reward function: one SRL step reward per completion (-1 for malformed replies)."""
        if len(completions) != len(expert_step):
            raise InputError(f"{len(completions)} completions but {len(expert_step)} expert steps; pass one expert_step per completion")
        return [score_step(completion_text(c), str(e), step_lines) for c, e in zip(completions, expert_step)]

    return srl_step_reward


srl_step_reward = make_srl_step_reward("first")


def make_rlvr_outcome_reward(malformed: float = 0.0, verifier: Verifier = "exact") -> RewardFunction:
    """An outcome reward whose score for a completion without any final answer is `malformed`.

    `verifier` says how an answer is compared with the reference ("exact" or "math", see
    `core.answers.answers_match`); "math" without math-verify installed fails here, before any
    training, with the pip command that installs it.
    """
    check_verifier(verifier)

    def rlvr_outcome_reward(completions: Sequence[Any], answer: Sequence[str], **_: Any) -> list[float]:
        if len(completions) != len(answer):
            raise InputError(f"{len(completions)} completions but {len(answer)} answers; pass one answer per completion")
        scores: list[float] = []
        for completion, reference in zip(completions, answer):
            found = extract_answer(completion_text(completion))
            if found is None:
                scores.append(float(malformed))
            else:
                scores.append(1.0 if answers_match(found, str(reference), verifier) else 0.0)
        return scores

    return rlvr_outcome_reward


rlvr_outcome_reward = make_rlvr_outcome_reward(0.0)
