import difflib

import pytest

from srl_sdk.core.similarity import srl_step_reward, step_similarity

GSM_EXPERT = "Natalia sold 48/2 = <<48/2=24>>24 clips in May."
GSM_MODEL = "Natalia sold 48/2 = 24 clips in May."


def test_golden_values():
    # hand-checked: matching blocks 'bcd' -> 2*3/8
    assert step_similarity("abcd", "bcde") == 0.75
    assert step_similarity("abcd", "abcd") == 1.0
    assert step_similarity("abc", "xyz") == 0.0
    # blocks 'Natalia sold 48/2 = ' (20) + '24 clips in May.' (16): 2*36/(36+47)
    assert step_similarity(GSM_MODEL, GSM_EXPERT) == 72 / 83
    # the same formula as SequenceMatcher, called exactly this way
    assert step_similarity(GSM_MODEL, GSM_EXPERT) == difflib.SequenceMatcher(
        None, GSM_MODEL, GSM_EXPERT, autojunk=False
    ).ratio()


def test_inputs_are_stripped():
    assert step_similarity("  abcd\n", "\tbcde ") == 0.75


def test_empty_inputs():
    assert step_similarity("", "") == 1.0
    assert step_similarity("   ", "\n") == 1.0
    assert step_similarity("", "x") == 0.0
    assert step_similarity("x", "  ") == 0.0


def test_argument_order_matters_and_is_fixed():
    # difflib's documented example: the ratio depends on which string is indexed (b)
    assert step_similarity("tide", "diet") == 0.25
    assert step_similarity("diet", "tide") == 0.5
    assert step_similarity("tide", "diet") == difflib.SequenceMatcher(None, "tide", "diet", autojunk=False).ratio()


def test_autojunk_is_off_on_long_steps():
    expert = "The total cost is " + " ".join(["12 + 30 = 42 dollars"] * 15)
    predicted = expert.replace("dollars", "euros")
    assert len(expert) >= 200
    with_junk = difflib.SequenceMatcher(None, predicted, expert).ratio()
    ours = step_similarity(predicted, expert)
    assert ours == pytest.approx(0.8107255520504731)
    assert with_junk == pytest.approx(0.09779179810725552)  # what autojunk=True would have given
    assert ours == difflib.SequenceMatcher(None, predicted, expert, autojunk=False).ratio()


def test_reward_well_formed_uses_action_only():
    completion = "<think>half of 48 is 24, long private reasoning</think>\nNatalia sold 48/2 = 24 clips in May."
    assert srl_step_reward(completion, GSM_EXPERT) == 72 / 83


def test_reward_strips_expert_step_label():
    assert srl_step_reward("<think>t</think>abcd", "Step 2: bcde") == 0.75
    assert srl_step_reward("<think>t</think>Step 2: abcd", "bcde") == 0.75


@pytest.mark.parametrize(
    "completion",
    ["abcd", "<think>abcd", "<think>t</think>", "</think>x</think>y", "<think>a</think>b<think>c", None, ""],
)
def test_reward_malformed_gets_penalty(completion):
    assert srl_step_reward(completion, "bcde") == -1.0
    assert srl_step_reward(completion, "bcde", malformed_penalty=0.0) == 0.0


def test_reward_with_prefilled_thought():
    assert srl_step_reward("thinking...</think>abcd", "bcde", thought_prefilled=True) == 0.75
    assert srl_step_reward("thinking...</think>abcd", "bcde") == -1.0
