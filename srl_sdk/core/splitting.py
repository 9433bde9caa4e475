"""Expert solutions cut into steps: the raw material of SRL training data.

SRL (arXiv 2510.25992) turns one expert solution of N steps into N-1 next-step examples, so how a
solution is cut decides what the model learns to produce per call. GSM8K writes one step per
line and ends with `#### answer`; other sources number their steps or separate paragraphs.
`split_solution` handles those layouts in one place, and the `####` answer line is never a step.
Human-written math prose (MATH, textbooks) is cut by sentence with `style="sentences"`
(`core.sentences`, which never cuts inside LaTeX math); `detect_style` picks a style for text of
unknown layout (what `srl data from-text --style auto` and teacher replies use).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict

from ..errors import InputError
from .answers import extract_answer
from .jsonl import read_jsonl
from .format import FINAL_MARKER
from .sentences import has_math, split_sentences

__all__ = [
    "ExpertSolution",
    "SplitStyle",
    "split_solution",
    "strip_calculator_notes",
    "parse_expert_solution",
    "load_gsm8k",
    "check_split_options",
    "detect_style",
]

SplitStyle = Literal["auto", "lines", "numbered", "paragraphs", "regex", "sentences"]
_STYLES = ("auto", "lines", "numbered", "paragraphs", "regex", "sentences")


class ExpertSolution(BaseModel):
    """A problem with its reference solution already cut into steps."""

    model_config = ConfigDict(extra="forbid")

    problem: str
    steps: list[str]
    answer: str | None
    id: str | None = None


_CALCULATOR_NOTE = re.compile(r"<<[^<>\n]*>>")

# "Step 3:", "**Step 3.**", "## Step 3" at a line start (the punctuation is optional only when the
# line ends there).
_STEP_LABEL = re.compile(
    r"^[ \t]*(?:\*\*|#{1,6}[ \t]*)?step[ \t]*(?P<n>\d+)[ \t]*(?:[:.)\-–—]|(?=[ \t]*$))[ \t]*(?:\*\*)?[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)
# "3." / "3)" / "3:" at a line start followed by a space: "2.5 * 5" and "8:00" are not labels.
_NUMBER_LABEL = re.compile(
    r"^[ \t]*(?:\*\*)?(?P<n>\d{1,3})[.):](?:\*\*)?(?:[ \t]+|$)", re.MULTILINE
)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def strip_calculator_notes(text: str) -> str:
    """Remove GSM8K calculator annotations: '48/2 = <<48/2=24>>24' -> '48/2 = 24'."""
    return _CALCULATOR_NOTE.sub("", text)


def _before_answer(text: str) -> str:
    """The solution without its `#### answer` tail (the answer line is never a step)."""
    if FINAL_MARKER in text:
        return text.rpartition(FINAL_MARKER)[0]
    return text


def _non_empty_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _sequential_labels(text: str) -> list[re.Match[str]]:
    """Numbered labels that count up by one (Step labels win over bare numbers).

    Requiring 1, 2, 3... keeps a line that merely starts with a number ('3) ...' inside a list
    under step 1, or a stray '12.') from being taken for a new step.
    """
    for pattern in (_STEP_LABEL, _NUMBER_LABEL):
        labels: list[re.Match[str]] = []
        for m in pattern.finditer(text):
            n = int(m.group("n"))
            if not labels or n == int(labels[-1].group("n")) + 1:
                labels.append(m)
        if len(labels) >= 2:
            return labels
    return []


def _split_numbered(text: str, labels: list[re.Match[str]]) -> list[str]:
    steps: list[str] = []
    preamble = "\n".join(_non_empty_lines(text[: labels[0].start()] if labels else text))
    if preamble:
        steps.append(preamble)
    for i, m in enumerate(labels):
        end = labels[i + 1].start() if i + 1 < len(labels) else len(text)
        body = "\n".join(_non_empty_lines(text[m.end() : end]))
        if body:
            steps.append(body)
    return steps


def _split_paragraphs(text: str) -> list[str]:
    return [
        "\n".join(_non_empty_lines(part)) for part in _BLANK_LINE.split(text) if part.strip()
    ]


def _compile_pattern(pattern: str | None) -> re.Pattern[str]:
    if not pattern:
        raise InputError("style='regex' needs a pattern, e.g. pattern=r'\\n(?=Step)'")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InputError(f"the split pattern {pattern!r} is not a valid regular expression: {exc}") from exc


def check_split_options(style: str, pattern: str | None = None) -> None:
    """Raise InputError unless `style` (and, for "regex", `pattern`) can be used to split."""
    if style not in _STYLES:
        raise InputError(f"unknown split style {style!r}; use one of {', '.join(_STYLES)}")
    if style == "regex":
        _compile_pattern(pattern)


def _split_regex(text: str, pattern: str | None) -> list[str]:
    compiled = _compile_pattern(pattern)
    # slice between matches instead of re.split so capture groups never leak into the steps
    pieces: list[str] = []
    pos = 0
    for m in compiled.finditer(text):
        if m.end() == m.start():
            continue  # an empty match separates nothing
        pieces.append(text[pos : m.start()])
        pos = m.end()
    pieces.append(text[pos:])
    return [p.strip() for p in pieces if p.strip()]


def split_solution(
    text: str,
    style: SplitStyle = "auto",
    pattern: str | None = None,
    *,
    keep_calculator_notes: bool = True,
) -> list[str]:
    """Cut a worked solution into steps (the `####` answer line is never a step).

    - "lines": one step per non-empty line (GSM8K).
    - "numbered": "Step 1: ...", "2. ...", "3) ..." labels; multi-line bodies stay with their
      step and the label is removed; text before the first label is a step of its own.
    - "paragraphs": blocks separated by blank lines.
    - "regex": `pattern` is the separator (matches are removed, empty pieces dropped).
    - "sentences": one step per sentence, never cut inside LaTeX math (`core.sentences`).
    - "auto": numbered when at least two sequential labels start lines, else lines when there
      are at least two non-empty lines, else the whole text as one step.

    GSM8K calculator notes (`<<48/2=24>>`) are kept unless keep_calculator_notes=False.
    Empty or whitespace-only text gives [].
    """
    if not isinstance(text, str):
        raise InputError(f"a solution must be a string, got {type(text).__name__}")
    check_split_options(style, pattern)
    body = _before_answer(text.replace("\r\n", "\n").replace("\r", "\n"))
    if not keep_calculator_notes:
        body = strip_calculator_notes(body)
    if not body.strip():
        return []
    if style == "lines":
        return _non_empty_lines(body)
    if style == "numbered":
        labels = _sequential_labels(body)
        if not labels:  # a single label, or none: still remove a leading "Step 1:"
            labels = [m for m in (_STEP_LABEL.match(body) or _NUMBER_LABEL.match(body),) if m]
        return _split_numbered(body, labels)
    if style == "paragraphs":
        return _split_paragraphs(body)
    if style == "regex":
        return _split_regex(body, pattern)
    if style == "sentences":
        return split_sentences(body)
    labels = _sequential_labels(body)
    if labels:
        return _split_numbered(body, labels)
    lines = _non_empty_lines(body)
    if len(lines) >= 2:
        return lines
    return ["\n".join(lines)] if lines else []


def detect_style(text: str) -> SplitStyle:
    """The style for a solution of unknown layout: "numbered", "lines" or "sentences".

    Numbered when at least two sequential step labels start lines; else sentences when the text
    holds LaTeX math (a display block spans lines, and a line break next to `\\[ ... \\]` is
    usually mid-sentence) or is one line; else lines. `split_solution`'s own "auto" stays
    line-based so GSM8K-style data (and training runs on it) cut exactly as before.
    """
    body = _before_answer(text.replace("\r\n", "\n").replace("\r", "\n")) if isinstance(text, str) else ""
    if _sequential_labels(body):
        return "numbered"
    if has_math(body) or len(_non_empty_lines(body)) < 2:
        return "sentences"
    return "lines"


def parse_expert_solution(
    problem: str,
    solution: str,
    *,
    style: SplitStyle = "auto",
    pattern: str | None = None,
    answer: str | None = None,
    id: str | None = None,
    keep_calculator_notes: bool = True,
) -> ExpertSolution:
    """An ExpertSolution from raw text; the answer is `answer` if given, else extracted."""
    if not isinstance(problem, str) or not problem.strip():
        raise InputError("the problem is empty; give the question text the solution answers")
    if not isinstance(solution, str):
        raise InputError(f"a solution must be a string, got {type(solution).__name__}")
    steps = split_solution(solution, style, pattern, keep_calculator_notes=keep_calculator_notes)
    if answer is None:
        answer = extract_answer(solution)
    return ExpertSolution(problem=problem.strip(), steps=steps, answer=answer, id=id)


def load_gsm8k(
    path: str | Path,
    limit: int | None = None,
    *,
    style: SplitStyle = "lines",
    keep_calculator_notes: bool = True,
) -> Iterator[ExpertSolution]:
    """ExpertSolutions from a GSM8K JSONL file (`{"question", "answer"}` per line).

    Ids are '<file stem>-<line number>'. A malformed line raises InputError naming the file and
    the line, since a half-read benchmark gives silently wrong numbers.
    """
    path = Path(path)
    if limit is not None and limit <= 0:
        return
    count = 0
    expected = "an object with string fields 'question' and 'answer' (GSM8K format)"
    for line in read_jsonl(path, what="GSM8K rows", hint="pass a GSM8K JSONL file"):
        row = line.object(expected)
        if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
            raise InputError(f"{path}:{line.lineno}: expected {expected}")
        try:
            yield parse_expert_solution(
                row["question"],
                row["answer"],
                style=style,
                id=f"{path.stem}-{line.lineno}",
                keep_calculator_notes=keep_calculator_notes,
            )
        except InputError as exc:
            raise InputError(f"{path}:{line.lineno}: {exc}") from exc
        count += 1
        if limit is not None and count >= limit:
            return
