"""The SRL step reward: how closely a generated action matches the expert's step.

SRL (arXiv 2510.25992) rewards each step by sequence similarity to the expert step instead of
only the final answer, which gives a dense signal even when every rollout gets the answer wrong.
The reward must be exactly reproducible between training runs and evaluations, so it is pinned
to one difflib call with fixed argument order and settings.

How much of a model's action counts as its step (`StepLines`) is decided once per data set: GSM8K
writes one step per line, so only the action's first line is the step (what the serving driver
shows); s1K cut at paragraph breaks has multi-line steps, so the whole action is the step (a
first-line cut scores a verbatim copy of a 4-line expert step around 0.4, not 1).
"""

from __future__ import annotations

import difflib
from typing import Iterable, Literal

from .format import parse_step_response, strip_step_label

__all__ = ["StepLines", "step_similarity", "srl_step_reward", "step_lines_for"]

StepLines = Literal["first", "all"]
"""How much of an action is the step: "first" = its first line (one-line steps, e.g. GSM8K),
"all" = the whole action (multi-line steps, e.g. s1K paragraphs)."""


def step_similarity(predicted: str, expert: str) -> float:
    """`difflib.SequenceMatcher(None, predicted, expert, autojunk=False).ratio()` = 2M/T.

    M is the number of characters in matching blocks, T the total length of both strings;
    both are `.strip()`ed first. Both empty gives 1.0, exactly one empty gives 0.0.

    - Argument order is fixed: `predicted` is SequenceMatcher's `a`, `expert` its `b`. The
      matcher indexes `b` and greedily takes the longest matching block first, so swapping the
      arguments can change the matching blocks and the ratio.
    - autojunk is OFF: with it on, any character that appears in more than 1% of a `b` of 200 or
      more characters is treated as junk (spaces, 'e', digits...), which makes long steps look
      far less similar than they are.
    """
    a = predicted.strip() if isinstance(predicted, str) else ""
    b = expert.strip() if isinstance(expert, str) else ""
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def srl_step_reward(
    completion: str,
    expert_step: str,
    *,
    malformed_penalty: float = -1.0,
    thought_prefilled: bool = False,
) -> float:
    """The reward of one completion for one expert step.

    A completion that does not follow the `<think>...</think> action` format gets
    `malformed_penalty`; otherwise the reward is `step_similarity(action, expert action)`, where
    the step label ('Step 3:') is removed from the expert step as it is from the action. The
    thought is never compared: only the action is the model's committed step.
    """
    parsed = parse_step_response(completion, thought_prefilled=thought_prefilled)
    if not parsed.format_ok:
        return malformed_penalty
    return step_similarity(parsed.action, strip_step_label(expert_step or ""))


def step_lines_for(expert_steps: Iterable[str]) -> StepLines:
    """The StepLines of a data set: "all" when any expert step spans several lines, else "first".

    Decided from the expert data itself rather than from the split style: a step list read from
    JSONL or an "auto" split can hold multi-line steps whatever the style says, and a first-line
    cut is only harmless when no expert step has a second line to lose.
    """
    for step in expert_steps:
        if isinstance(step, str) and "\n" in step.strip():
            return "all"
    return "first"
