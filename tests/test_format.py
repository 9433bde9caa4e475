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


def test_prompt_styles_share_the_protocol_and_differ_in_the_examples():
    """compact = the protocol without the worked examples: what a model trained with it is served."""
    from srl_sdk.core.format import COMPACT_SYSTEM_PROMPT, SYSTEM_PROMPT, free_messages, step_messages

    few, compact = step_messages("P?", ["a = 1"]), step_messages("P?", ["a = 1"], "compact")
    assert few[0]["content"] == SYSTEM_PROMPT and compact[0]["content"] == COMPACT_SYSTEM_PROMPT
    assert "Example 1." in SYSTEM_PROMPT and "Example" not in COMPACT_SYSTEM_PROMPT
    assert "<think></think>" in COMPACT_SYSTEM_PROMPT and "#### <answer>" in COMPACT_SYSTEM_PROMPT
    assert compact[1]["content"] == "Problem:\nP?\n\nSteps so far:\nStep 1: a = 1"
    assert few[1]["content"].startswith(compact[1]["content"] + "\n\n")  # few-shot adds the instruction
    assert len(COMPACT_SYSTEM_PROMPT) * 3 < len(SYSTEM_PROMPT)
    assert free_messages("P?", "compact")[0]["content"] == COMPACT_SYSTEM_PROMPT
    with pytest.raises(ValueError, match="few_shot, compact"):
        step_messages("P?", [], "terse")  # type: ignore[arg-type]


def test_models_name_the_prompt_style_they_were_trained_with(tmp_path):
    """A named model says its style; a folder `srl train` saved says it in PROMPT_STYLE_FILE."""
    from srl_sdk.engines.models import NAMED_MODELS, PROMPT_STYLE_FILE, prompt_style_of

    assert prompt_style_of("smollm2") == "few_shot" and prompt_style_of(tmp_path / "missing") == "few_shot"
    for name, model in NAMED_MODELS.items():
        assert prompt_style_of(name) == model.prompt
    assert prompt_style_of(tmp_path) == "few_shot"  # a folder without the file: an outside model
    (tmp_path / PROMPT_STYLE_FILE).write_text("compact\n", encoding="utf-8")
    assert prompt_style_of(tmp_path) == "compact" and prompt_style_of(str(tmp_path)) == "compact"
    (tmp_path / PROMPT_STYLE_FILE).write_text("terse\n", encoding="utf-8")
    assert prompt_style_of(tmp_path) == "few_shot"  # an unknown style is never sent
