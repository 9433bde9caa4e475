"""The step protocol: how the next-step prompt is written and how a model's reply is read.

Defined once here so that SRL training targets, the serving driver and the edge runtime agree on
every character. A reply is `<think>monologue</think>` followed by the step itself; the final step
ends with `#### <answer>` (GSM8K's marker; `\\boxed{}` is accepted too). Parsing never raises:
anything without the tags is kept as the action with `format_ok=False`, which the SRL reward
penalises and the server still shows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
FINAL_MARKER = "####"

SYSTEM_PROMPT = (
    "You solve math word problems one step at a time. You are shown the problem and the steps "
    "taken so far, and you reply with only the next step: a short private thought inside "
    "<think></think>, then the step itself on one line. The step that reaches the final answer "
    "ends with \"#### <answer>\".\n\n"
    "Example 1.\nProblem:\nTom has 3 apples, buys 4 more, then eats 2. How many apples does he have now?\n\n"
    "Steps so far:\n(none yet)\n\n"
    "Reply:\n<think>First I find how many apples Tom has after buying.</think>\n"
    "Tom has 3 + 4 = 7 apples after buying.\n\n"
    "Example 2.\nProblem:\nTom has 3 apples, buys 4 more, then eats 2. How many apples does he have now?\n\n"
    "Steps so far:\nStep 1: Tom has 3 + 4 = 7 apples after buying.\n\n"
    "Reply:\n<think>He eats 2 of the 7 apples, so I subtract 2.</think>\n"
    "He has 7 - 2 = 5 apples left. #### 5"
)
"""Few-shot on purpose: an untrained small model (the embedded SmolLM2) only follows the protocol
when it has seen it once; SRL training then uses this very prompt, so train and serve agree."""

COMPACT_SYSTEM_PROMPT = (
    "You solve math word problems one step at a time. Reply with only the next step: a short "
    "private thought inside <think></think>, then the step itself on one line. The step that "
    "reaches the final answer ends with \"#### <answer>\"."
)
"""The protocol without the worked examples (~50 tokens instead of ~330): for a model trained on
it, which no longer needs to see the protocol once. On a 2-core CPU the few-shot prompt is ~80 %
of every training and evaluation token on short problems, so a recipe that trains with this one
gets ~3x the optimizer steps for the same time; the model must then be served with it too
(`NamedModel.prompt`, `Engine.prompt_style`)."""

PromptStyle = Literal["few_shot", "compact"]
PROMPT_STYLES: tuple[PromptStyle, ...] = ("few_shot", "compact")

# Where a thought ends even if the model never writes </think>: a blank line or the start of an
# answer or step label means it has moved on from thinking.
THOUGHT_STOPS = [THINK_CLOSE, "\n\n", "\n####", "\nStep "]

STEP_INSTRUCTION = (
    "Write only the next step. First think privately inside <think> and </think>, then write the "
    "step itself on one line. If this step reaches the final answer, end it with "
    "\"#### <answer>\"."
)

FREE_INSTRUCTION = (
    "Solve the problem step by step, one step per line. End with a line \"#### <answer>\"."
)

# "Step 3:", "3." or "3)" — but not a leading decimal or time ("2.5 * 5", "8:00 PM")
_STEP_LABEL = re.compile(r"^\s*(?:\*\*)?(?:step\s*\d+\s*[:.)]|\d+[:.)](?=\s|$))\s*(?:\*\*)?\s*", re.IGNORECASE)


def render_steps(steps: Sequence[str]) -> str:
    if not steps:
        return "(none yet)"
    return "\n".join(f"Step {i}: {s.strip()}" for i, s in enumerate(steps, start=1))


def system_prompt(style: PromptStyle = "few_shot") -> str:
    if style == "few_shot":
        return SYSTEM_PROMPT
    if style == "compact":
        return COMPACT_SYSTEM_PROMPT
    raise ValueError(f"unknown prompt style {style!r}; use one of {', '.join(PROMPT_STYLES)}")


def step_user_message(problem: str, previous_steps: Sequence[str], style: PromptStyle = "few_shot") -> str:
    """The user turn for step k = len(previous_steps) + 1 (compact: no instruction repeating the system turn)."""
    text = f"Problem:\n{problem.strip()}\n\nSteps so far:\n{render_steps(previous_steps)}"
    return text if style == "compact" else f"{text}\n\n{STEP_INSTRUCTION}"


def step_messages(problem: str, previous_steps: Sequence[str], style: PromptStyle = "few_shot") -> list[dict[str, str]]:
    """Chat messages asking for the next step; the same text SRL training uses as its prompt."""
    return [
        {"role": "system", "content": system_prompt(style)},
        {"role": "user", "content": step_user_message(problem, previous_steps, style)},
    ]


def free_messages(problem: str, style: PromptStyle = "few_shot") -> list[dict[str, str]]:
    """Chat messages for free mode: one call writes the whole solution, a step per line."""
    return [
        {"role": "system", "content": system_prompt(style)},
        {"role": "user", "content": f"Problem:\n{problem.strip()}\n\n{FREE_INSTRUCTION}"},
    ]


def format_step_target(thought: str, action: str) -> str:
    """The completion a model should produce for one step (SFT targets use this)."""
    return f"{THINK_OPEN}{thought.strip()}{THINK_CLOSE}\n{action.strip()}"


def strip_step_label(text: str) -> str:
    """'Step 3: x = 2' and '3. x = 2' both become 'x = 2' (models echo the labels they were shown)."""
    return _STEP_LABEL.sub("", text, count=1).strip()


@dataclass(frozen=True)
class ParsedStep:
    thought: str
    action: str
    format_ok: bool


def parse_step_response(text: str, *, thought_prefilled: bool = False) -> ParsedStep:
    """Split a reply into (thought, action). Never raises.

    Well formed means: exactly one `</think>`, an optional single `<think>` before it (required
    unless the prompt already ended with `<think>`, `thought_prefilled`), no tag after it, and a
    non-empty action.
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    stripped = text.strip()
    close_count = stripped.count(THINK_CLOSE)
    if close_count == 0:
        if thought_prefilled and THINK_OPEN not in stripped:
            # the model never closed its thought: everything it wrote is monologue
            return ParsedStep(thought=stripped, action="", format_ok=False)
        action = stripped.replace(THINK_OPEN, "").strip()
        return ParsedStep(thought="", action=strip_step_label(action), format_ok=False)

    head, _, tail = stripped.partition(THINK_CLOSE)
    open_count = head.count(THINK_OPEN)
    if open_count:
        before, _, thought = head.partition(THINK_OPEN)
    else:
        before, thought = "", head
    action = strip_step_label(tail.replace(THINK_CLOSE, "").replace(THINK_OPEN, ""))
    format_ok = (
        close_count == 1
        and open_count <= 1
        and (open_count == 1 or thought_prefilled)
        and not before.strip()
        and THINK_OPEN not in tail
        and bool(action)
    )
    return ParsedStep(thought=thought.strip(), action=action, format_ok=format_ok)
