"""Golden tests of the training rewards (SRL step similarity, RLVR outcome), malformed replies included."""

from __future__ import annotations

import difflib
import json
import sys

import pytest

from srl_sdk.core.similarity import step_lines_for
from srl_sdk.errors import ConfigError, InputError, MissingDependencyError
from srl_sdk.training.data import DataConfig, load_trajectories, resolve_step_lines, srl_examples
from srl_sdk.training.rewards import (
    as_served,
    make_rlvr_outcome_reward,
    make_srl_step_reward,
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


# -- multi-line expert steps (s1K paragraphs) ---------------------------------------------------

# A paragraph step as `split_style: paragraphs` cuts it from an R1 solution: four lines.
PARAGRAPH = (
    "First I find the discriminant of x^2 - 5x + 6 = 0.\n"
    "Here a = 1, b = -5 and c = 6, so b^2 - 4ac = 25 - 24 = 1.\n"
    "The roots are x = (5 + 1)/2 = 3 and x = (5 - 1)/2 = 2.\n"
    "Both roots are positive integers."
)


def test_a_verbatim_multi_line_step_scores_one_when_the_whole_step_is_compared() -> None:
    copy = f"I solve the quadratic.</think>\n{PARAGRAPH}"
    first_line = PARAGRAPH.split("\n", 1)[0]
    cut = difflib.SequenceMatcher(None, first_line, PARAGRAPH, autojunk=False).ratio()
    assert cut < 0.5  # the first-line cut scores a perfect copy far below 1 ...
    assert srl_step_reward([copy], [PARAGRAPH]) == [pytest.approx(cut)]
    assert make_srl_step_reward("first")([copy], [PARAGRAPH]) == [pytest.approx(cut)]
    assert make_srl_step_reward("all")([copy], [PARAGRAPH]) == [1.0]  # ... comparing the whole step does not


def test_whole_step_reward_penalises_text_after_the_step_and_keeps_the_format_rules() -> None:
    reward = make_srl_step_reward("all")
    longer = f"t</think>\n{PARAGRAPH}\n\nNext I check the sum of the roots: 2 + 3 = 5."
    partial = f"t</think>\n{PARAGRAPH.splitlines()[0]}"
    scores = reward([longer, partial, "no think tag\n" + PARAGRAPH, f"t</think>\n{PARAGRAPH}\n<think>again"], [PARAGRAPH] * 4)
    assert 0.5 < scores[0] < 1.0 and 0.0 < scores[1] < 0.5
    assert scores[2:] == [-1.0, -1.0]  # malformed stays -1 (a tag after the action included)
    assert reward([f"t</think>\nStep 2: {PARAGRAPH}"], [f"Step 2: {PARAGRAPH}"]) == [1.0]  # labels removed as before


def test_gsm8k_one_line_steps_score_exactly_as_before() -> None:
    reward = make_srl_step_reward("first")
    completions = ["I halve 48.</think>\nShe sold 24 clips in May.\nan extra line the driver never shows", "<think>x</think>\nNatalia sold 24."]
    assert reward(completions, [EXPERT, EXPERT]) == srl_step_reward(completions, [EXPERT, EXPERT])
    assert reward.__name__ == make_srl_step_reward("all").__name__ == "srl_step_reward"  # one metrics key


def test_as_served_keeps_everything_for_whole_steps_and_refuses_unknown_settings() -> None:
    assert as_served("t</think>\n\nline one\nline two", "all") == "t</think>\n\nline one\nline two"
    with pytest.raises(ConfigError, match="'first' or 'all'"):
        make_srl_step_reward("lines")  # type: ignore[arg-type]


def test_step_lines_follow_the_expert_data(tmp_path, gsm8k_path) -> None:
    assert step_lines_for(["a = 1", "b = 2 #### 2"]) == "first"
    assert step_lines_for(["a = 1", "so\nb = 2"]) == "all"
    assert step_lines_for(["trailing newline only\n"]) == "first"
    gsm8k, _ = load_trajectories(DataConfig(source="gsm8k", path=gsm8k_path, limit=20))
    assert resolve_step_lines(DataConfig(), gsm8k) == "first"
    solution = f"Let me set up the equation.\n\n{PARAGRAPH}\n\nSo the larger root is \\boxed{{3}}."
    path = tmp_path / "paragraphs.jsonl"
    path.write_text(json.dumps({"problem": "Solve x^2 - 5x + 6 = 0; give the larger root.", "solution": solution}) + "\n")
    config = DataConfig(source="jsonl", path=path, split_style="paragraphs")
    items, _ = load_trajectories(config)
    assert items[0].steps[1] == PARAGRAPH
    assert resolve_step_lines(config, items) == "all"
    assert resolve_step_lines(config.model_copy(update={"step_lines": "first"}), items) == "first"  # explicit wins
    # every SRL example of the paragraph data: a verbatim copy of its expert step scores 1.0
    rows = srl_examples(items, lambda messages: "prompt")
    reward = make_srl_step_reward(resolve_step_lines(config, items))
    assert reward([f"ok</think>\n{r['expert_step']}" for r in rows], [r["expert_step"] for r in rows]) == [1.0] * len(rows)


# -- RLVR verifiers -----------------------------------------------------------------------------


def test_rlvr_math_verifier_grades_symbolic_answers() -> None:
    pytest.importorskip("math_verify")
    completions = ["so \\boxed{\\frac{\\sqrt{2}}{2}}", "#### x^2+2x+1", "#### 18 dollars", "#### x-1", "no answer"]
    answers = ["\\sqrt2/2", "(x+1)^2", "$18", "x+1", "3"]
    assert make_rlvr_outcome_reward(verifier="math")(completions, answers) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert make_rlvr_outcome_reward(verifier="exact")(completions, answers) == [0.0, 0.0, 0.0, 0.0, 0.0]
    # numeric GSM8K-style answers grade the same under both verifiers
    numeric = (["48/2 = 24\n24 + 48 = 72 #### 72", "The answer is 72.00", "#### 71"], ["72", "72", "72"])
    assert make_rlvr_outcome_reward(verifier="math")(*numeric) == rlvr_outcome_reward(*numeric) == [1.0, 1.0, 0.0]


def test_rlvr_math_verifier_without_math_verify_names_the_pip_command(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "math_verify", None)  # import math_verify now fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'srl-sdk\[math\]'"):
        make_rlvr_outcome_reward(verifier="math")
    assert make_rlvr_outcome_reward(verifier="exact")(["#### 3"], ["3"]) == [1.0]  # exact needs nothing
    with pytest.raises(ConfigError, match="unknown answer verifier"):
        make_rlvr_outcome_reward(verifier="sympy")  # type: ignore[arg-type]
