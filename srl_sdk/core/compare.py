"""A trace beside the expert's solution: per step, how close the model came, by the SRL reward.

The trace viewer (`/ui/`), `POST /v1/traces/{id}/compare`, `Reasoner.compare` and `srl traces
compare` all call `compare_trace`, and its similarity is the one the SRL step reward uses
(`core.similarity.step_similarity` of the step as served against the expert step without its
label), so what an auditor reads is what training would have paid for that step.

Steps are paired by position: the trace's step k (model-made or given) against expert step k, as
SRL scores step k after expert steps 1..k-1. A step with no partner gets no similarity.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError
from .answers import answers_match, extract_answer
from .format import strip_step_label
from .similarity import StepLines, step_lines_for, step_similarity
from .splitting import split_solution
from .steps import Trace

__all__ = ["CompareRow", "Comparison", "compare_trace", "served_step", "pair_similarity", "expert_from_text",
           "read_expert_file", "MAX_EXPERT_STEPS"]

MAX_EXPERT_STEPS = 256


class CompareRow(BaseModel):
    """One position: the trace's step, the expert's, and the SRL similarity of the two."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=1)
    model_step: str | None = Field(description="the trace's action at this position (None: the trace has fewer steps)")
    source: Literal["model", "given"] | None = None
    expert_step: str | None = Field(description="the expert's step (None: the expert has fewer steps)")
    similarity: float | None = Field(description="SRL step similarity in [0, 1]; None when one side is missing")


class Comparison(BaseModel):
    """A whole trace against the expert: rows, their mean, and whether the answer is right."""

    model_config = ConfigDict(extra="forbid")

    trace_id: str
    step_lines: StepLines
    rows: list[CompareRow]
    mean_similarity: float | None = Field(description="mean over the rows that have both steps")
    answer: str | None
    expert_answer: str | None
    answer_correct: bool | None = Field(description="None when the trace or the expert has no answer")
    verifier: Literal["exact", "math"] = "exact"


def served_step(action: str, step_lines: StepLines) -> str:
    """The part of an action the SRL reward scores: the first line for one-line expert data
    ("first", where the serving driver cuts and training.rewards.as_served cuts), else all of it;
    without its step label, as the reward's parser removes it."""
    text = action.strip()
    if step_lines == "first":
        text = text.split("\n", 1)[0]
    return strip_step_label(text)


def pair_similarity(action: str, expert_step: str, step_lines: StepLines = "first") -> float:
    """The SRL step similarity of one model action against one expert step (training's reward
    for a well-formed completion with this action; tests/test_compare.py checks the two agree)."""
    return step_similarity(served_step(action, step_lines), strip_step_label(expert_step or ""))


def compare_trace(
    trace: Trace,
    expert_steps: Sequence[str],
    *,
    expert_answer: str | None = None,
    step_lines: StepLines | None = None,
    verifier: Literal["exact", "math"] = "exact",
) -> Comparison:
    """Pair the trace's steps with `expert_steps` by position and score each pair.

    `step_lines` defaults to what training decides for this expert data (`step_lines_for`).
    `expert_answer` defaults to the answer written in the last expert step (`#### x`)."""
    steps = [s for s in expert_steps]
    for i, step in enumerate(steps, start=1):
        if not isinstance(step, str) or not step.strip():
            raise InputError(f"expert step {i} is empty; remove it or write its text")
    if not steps:
        raise InputError("no expert steps: give the expert's solution, one step per line")
    if len(steps) > MAX_EXPERT_STEPS:
        raise InputError(f"{len(steps)} expert steps; at most {MAX_EXPERT_STEPS} are compared")
    lines = step_lines if step_lines is not None else step_lines_for(steps)
    if lines not in ("first", "all"):
        raise InputError(f"step_lines must be 'first' or 'all', got {lines!r}")
    rows: list[CompareRow] = []
    for position in range(max(len(trace.steps), len(steps))):
        model = trace.steps[position] if position < len(trace.steps) else None
        expert = steps[position] if position < len(steps) else None
        similarity = None
        if model is not None and expert is not None:
            similarity = pair_similarity(model.action, expert, lines)
        rows.append(CompareRow(index=position + 1, model_step=model.action if model else None,
                               source=model.source if model else None, expert_step=expert, similarity=similarity))
    scored = [r.similarity for r in rows if r.similarity is not None]
    if expert_answer is None:
        expert_answer = extract_answer(steps[-1])
    correct = None
    if trace.answer is not None and expert_answer is not None:
        correct = answers_match(trace.answer, expert_answer, verifier)
    return Comparison(
        trace_id=trace.id, step_lines=lines, rows=rows,
        mean_similarity=sum(scored) / len(scored) if scored else None,
        answer=trace.answer, expert_answer=expert_answer, answer_correct=correct, verifier=verifier,
    )


def expert_from_text(text: str) -> tuple[list[str], str | None]:
    """A pasted expert solution -> (steps, answer), cut the way training data is cut
    (`split_solution`, style "auto": numbered labels, else one step per line; the `####` line is
    the answer, not a step)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("the expert solution is empty; paste the expert's steps, one per line")
    return split_solution(text, "auto"), extract_answer(text)


def read_expert_file(path: str | Path) -> tuple[list[str], str | None]:
    """Expert steps from a file: JSON (a list of steps, or {"steps": [...], "answer": ...}) or text
    (cut like a pasted solution)."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the expert file {path}: {exc}") from exc
    if path.suffix.lower() != ".json":
        return expert_from_text(raw)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); give a list of steps or {{\"steps\": [...]}}") from exc
    answer = None
    if isinstance(data, dict):
        answer = data.get("answer")
        data = data.get("steps")
    if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
        raise InputError(f"{path} must hold a list of step strings, or an object with a \"steps\" list")
    if answer is not None and not isinstance(answer, str):
        answer = str(answer)
    return data, answer if answer is not None else (extract_answer(data[-1]) if data else None)
