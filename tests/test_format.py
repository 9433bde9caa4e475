import pytest

from srl_sdk.core.format import parse_step_response, strip_step_label


def test_well_formed():
    p = parse_step_response("<think>half of 48</think>\n48/2 = 24")
    assert (p.thought, p.action, p.format_ok) == ("half of 48", "48/2 = 24", True)


def test_surrounding_whitespace():
    p = parse_step_response("  \n<think>\n t \n</think>\n\n  a  \n")
    assert (p.thought, p.action, p.format_ok) == ("t", "a", True)


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("48/2 = 24", "48/2 = 24"),  # no tags at all
        ("<think>unfinished 48/2 = 24", "unfinished 48/2 = 24"),  # never closed
        ("<think>t</think>", ""),  # empty action
        ("intro <think>t</think> a", "a"),  # text before <think>
        ("<think>t</think> a </think> b", "a  b"),  # two closings
        ("<think>t</think> a <think> b", "a  b"),  # a tag after the thought
        ("t</think>a", "a"),  # no <think> and not prefilled
    ],
)
def test_malformed_never_raises(text, action):
    p = parse_step_response(text)
    assert p.format_ok is False
    assert p.action == action


def test_prefilled_thought():
    p = parse_step_response("half of 48</think>48/2 = 24", thought_prefilled=True)
    assert (p.thought, p.action, p.format_ok) == ("half of 48", "48/2 = 24", True)
    # the model never closed its thought: all of it is monologue, nothing was committed
    p = parse_step_response("still thinking", thought_prefilled=True)
    assert (p.thought, p.action, p.format_ok) == ("still thinking", "", False)


@pytest.mark.parametrize(
    "text", ["Step 3: x = 2", "step 3. x = 2", "3. x = 2", "3) x = 2", "**Step 3:** x = 2", "  Step 3 : x = 2"]
)
def test_step_labels_stripped(text):
    assert strip_step_label(text) == "x = 2"
    assert parse_step_response(f"<think>t</think>{text}").action == "x = 2"


@pytest.mark.parametrize("value", [None, 42, 3.5, b"<think>t</think>a", ["x"]])
def test_non_str_input(value):
    p = parse_step_response(value)  # type: ignore[arg-type]
    assert p.format_ok is False
    assert isinstance(p.action, str) and isinstance(p.thought, str)


@pytest.mark.parametrize("text", ["2.5 * 5 = 12.5", "8:00 PM is late"])
def test_leading_numbers_are_not_labels(text):
    assert strip_step_label(text) == text
