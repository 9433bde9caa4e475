"""The SRL step reward: how closely a generated action matches the expert's step.

SRL (arXiv 2510.25992) rewards each step by sequence similarity to the expert step instead of
only the final answer, which gives a dense signal even when every rollout gets the answer wrong.
The reward must be exactly reproducible between training runs and evaluations, so it is pinned
to one difflib call with fixed argument order and settings.
"""

from __future__ import annotations

import difflib

from .format import parse_step_response, strip_step_label

__all__ = ["step_similarity", "srl_step_reward"]


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
