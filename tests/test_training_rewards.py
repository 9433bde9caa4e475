"""Golden tests of the training rewards (SRL step similarity, RLVR outcome), malformed replies included."""

from __future__ import annotations

import difflib

import pytest

from srl_sdk.errors import InputError
from srl_sdk.training.rewards import (
    as_served,
    make_rlvr_outcome_reward,
    rlvr_outcome_reward,
    srl_step_reward,
)

EXPERT = "Natalia sold 48/2 = 24 clips in May."


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("I halve 48.</think>\nNatalia sold 48/2 = 24 clips in May.", 1.0),
        # only the line the driver would serve is scored; the rest is cut
        ("I halve 48.</think>\nShe sold 24 clips in May.\nan extra line the driver never shows", 0.7213114754098361),
        ("<think>x</think>\nNatalia sold 24.", 0.6153846153846154),
        # the step label models echo is removed before scoring
        ("ok</think>\nStep 1: Natalia sold 48/2 = 24 clips in May.", 1.0),
        # malformed: -1
        ("no tags at all: Natalia sold 48/2 = 24 clips in May.", -1.0),
        ("thinking forever without ever closing the thought", -1.0),
        ("a thought</think>\n   ", -1.0),  # empty action
        ("a</think>b</think>c", -1.0),  # two closing tags
        ("<think>a</think>\n<think>b</think>x", -1.0),
        ("", -1.0),
    ],
)
def test_srl_step_reward_golden(completion: str, expected: float) -> None:
    assert srl_step_reward([completion], [EXPERT]) == [pytest.approx(expected, abs=1e-12)]


def test_srl_step_reward_is_difflib_2m_over_t() -> None:
    action = "She sold 24 clips in May."
    ratio = difflib.SequenceMatcher(None, action, EXPERT, autojunk=False).ratio()
    assert srl_step_reward([f"t</think>\n{action}"], [EXPERT]) == [pytest.approx(ratio)]


def test_srl_step_reward_vectorised_and_conversational() -> None:
    completions = [
        [{"role": "assistant", "content": "t</think>\nNatalia sold 48/2 = 24 clips in May."}],
        "no format",
        [{"role": "assistant", "content": "t</think>\nx"}],
    ]
    scores = srl_step_reward(completions, [EXPERT, EXPERT, "x"], prompts=["p"] * 3, trainer_state=None)
    assert scores == [1.0, -1.0, 1.0]


def test_srl_step_reward_length_mismatch_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="one expert_step per completion"):
        srl_step_reward(["a", "b"], [EXPERT])


def test_as_served_cuts_after_the_first_action_line() -> None:
    assert as_served("t</think>\n\nline one\nline two") == "t</think>\n\nline one"
    assert as_served("no close tag\nsecond") == "no close tag\nsecond"


def test_rlvr_outcome_reward_golden() -> None:
    completions = [
        "48/2 = 24\n24 + 48 = 72 #### 72",
        "The answer is 72.00",
        "#### 71",
        "I do not know",
        [{"role": "assistant", "content": "\\boxed{1,000}"}],
        "",
    ]
    answers = ["72", "72", "72", "72", "1000", "5"]
    assert rlvr_outcome_reward(completions, answers) == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]


def test_rlvr_malformed_score_is_configurable() -> None:
    reward = make_rlvr_outcome_reward(malformed=-0.5)
    assert reward(["no answer here", "#### 3", "#### 4"], ["3", "3", "3"]) == [-0.5, 1.0, 0.0]
