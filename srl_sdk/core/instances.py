"""SRL training instances: one expert solution becomes one example per step to predict.

SRL (arXiv 2510.25992) trains on "given the problem and expert steps 1..k-1, produce step k".
Building those instances, and the JSONL files behind `srl data split`, in one place keeps the
prompts identical to what serving later sends (`core.format.step_messages`). Which target steps k
become instances is one `StepRange`, shared by `srl data split --output instances` and training
(`training.data.DataConfig.step_range`), so the two never disagree on the set of (problem, k).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError
from .format import FINAL_MARKER, step_messages
from .jsonl import read_jsonl
from .splitting import ExpertSolution, SplitStyle, check_split_options, parse_expert_solution

__all__ = [
    "DEFAULT_MIN_STEP",
    "StepRange",
    "SRLInstance",
    "make_srl_instances",
    "SplitReport",
    "split_file",
    "instances_to_jsonl",
    "write_jsonl",
    "problem_id",
]


class SRLInstance(BaseModel):
    """Predict `target_step` (step `step_index` of `n_steps`) from the problem and earlier steps."""

    model_config = ConfigDict(extra="forbid")

    id: str
    problem: str
    previous_steps: list[str]
    target_step: str
    step_index: int = Field(ge=1, description="1-based position of the target step")
    n_steps: int = Field(ge=1)
    answer: str | None
    is_final: bool
    source_id: str

    def prompt_messages(self) -> list[dict[str, str]]:
        """The chat prompt for this instance, the same one serving uses for the next step."""
        return step_messages(self.problem, self.previous_steps)


def problem_id(problem: str) -> str:
    """A stable id for a problem without one: a short hash of its whitespace-normalised text."""
    return hashlib.sha1(" ".join(problem.split()).encode("utf-8")).hexdigest()[:12]


DEFAULT_MIN_STEP = 2
"""The paper's range starts at k = 2: an N-step solution gives N-1 instances, each with at least
one expert step as context."""


class StepRange(BaseModel):
    """The target steps k = min_step..max_step (1-based, capped at a solution's N) that become SRL
    instances; the one definition used by `srl data split` and by training."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_step: int = Field(default=DEFAULT_MIN_STEP, ge=1, description="first target step (1 = also predict step 1 from no steps)")
    max_step: int | None = Field(default=None, ge=1, description="last target step (None: the solution's last)")

    @classmethod
    def of(cls, min_step: int = DEFAULT_MIN_STEP, max_step: int | None = None) -> "StepRange":
        """A StepRange from plain arguments; bad values are an InputError (CLI and function callers)."""
        if not isinstance(min_step, int) or min_step < 1:
            raise InputError(f"min_step must be at least 1 (step numbers are 1-based), got {min_step}")
        if max_step is not None and (not isinstance(max_step, int) or max_step < 1):
            raise InputError(f"max_step must be at least 1 or None, got {max_step}")
        return cls(min_step=min_step, max_step=max_step)

    def targets(self, n_steps: int) -> range:
        """The k of an n_steps-step solution, in order (empty when min_step > n_steps)."""
        last = n_steps if self.max_step is None else min(self.max_step, n_steps)
        return range(self.min_step, last + 1)


def make_srl_instances(
    solution: ExpertSolution,
    *,
    min_step: int = DEFAULT_MIN_STEP,
    max_step: int | None = None,
    final_with_answer: bool = True,
) -> list[SRLInstance]:
    """The instances for target steps k in `StepRange(min_step, max_step)` (1-based, capped at N).

    With the defaults an N-step solution gives N-1 instances (k = 2..N, as in the paper: the
    context is the problem plus expert steps 1..k-1); min_step=1 gives N. When
    `final_with_answer` is set, the last step's target ends with ` #### <answer>` (if the answer
    is known and the step does not carry the marker already), so the model learns to finish.
    """
    step_range = StepRange.of(min_step, max_step)
    steps = solution.steps
    n = len(steps)
    source_id = solution.id or problem_id(solution.problem)
    instances: list[SRLInstance] = []
    for k in step_range.targets(n):
        target = steps[k - 1]
        is_final = k == n
        if is_final and final_with_answer and solution.answer is not None and FINAL_MARKER not in target:
            target = f"{target} {FINAL_MARKER} {solution.answer}"
        instances.append(
            SRLInstance(
                id=f"{source_id}#{k}",
                problem=solution.problem,
                previous_steps=list(steps[: k - 1]),
                target_step=target,
                step_index=k,
                n_steps=n,
                answer=solution.answer,
                is_final=is_final,
                source_id=source_id,
            )
        )
    return instances


# ---- files -----------------------------------------------------------------------------------

DropReason = Literal[
    "malformed_json",  # the line is not a JSON object
    "missing_problem",  # no 'problem' / 'question' text
    "empty_solution",  # no steps after splitting
    "one_step",  # one step only: nothing to predict from context (instances output)
    "no_answer",  # no final answer found (when answers are required)
    "duplicate_problem",  # the same problem text appeared earlier in the file
]


@dataclass
class SplitReport:
    """What `split_file` did with each input row (complete once its records are consumed)."""

    read: int = 0  # non-blank lines read
    kept: int = 0  # rows that produced output
    written: int = 0  # records yielded (instances can be several per row)
    dropped: Counter[str] = field(default_factory=Counter)
    bad_lines: list[int] = field(default_factory=list)  # line numbers of malformed rows

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        parts = [f"read {self.read}", f"kept {self.kept}", f"wrote {self.written}"]
        if self.dropped:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items()))
            parts.append(f"dropped {self.n_dropped} ({reasons})")
        if self.bad_lines:
            shown = ", ".join(map(str, self.bad_lines[:10]))
            more = f" and {len(self.bad_lines) - 10} more" if len(self.bad_lines) > 10 else ""
            parts.append(f"malformed lines: {shown}{more}")
        return "; ".join(parts)


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _row_to_solution(
    row: dict[str, Any], default_id: str, style: SplitStyle, pattern: str | None
) -> ExpertSolution | None:
    """An ExpertSolution from a GSM8K or generic row; None when the row has no problem text."""
    problem = _text(row.get("problem"))
    if problem is None:
        problem = _text(row.get("question"))
    if problem is None or not problem.strip():
        return None
    row_id = _text(row.get("id")) or default_id
    is_gsm8k = "problem" not in row and "solution" not in row and "steps" not in row
    if is_gsm8k:
        return parse_expert_solution(
            problem, _text(row.get("answer")) or "", style=style, pattern=pattern, id=row_id
        )
    answer = _text(row.get("answer"))
    steps = row.get("steps")
    if isinstance(steps, list):
        clean = [s.strip() for s in (_text(x) for x in steps) if s is not None and s.strip()]
        return ExpertSolution(problem=problem.strip(), steps=clean, answer=answer, id=row_id)
    solution = _text(row.get("solution"))
    if solution is None:
        solution = steps if isinstance(steps, str) else ""
    return parse_expert_solution(
        problem, solution, style=style, pattern=pattern, answer=answer, id=row_id
    )


def split_file(
    path: str | Path,
    *,
    output: Literal["steps", "instances"] = "steps",
    style: SplitStyle = "auto",
    pattern: str | None = None,
    min_step: int = DEFAULT_MIN_STEP,
    max_step: int | None = None,
    final_with_answer: bool = True,
    require_answer: bool = True,
    dedupe: bool = True,
    limit: int | None = None,
) -> tuple[Iterator[dict[str, Any]], SplitReport]:
    """Records for `srl data split FILE` and the report that counts what happened to each row.

    Returns `(records, report)`: `records` yields one dict per solution (output="steps", an
    ExpertSolution) or per target step (output="instances", an SRLInstance); `report` fills in
    as `records` is consumed, so read it afterwards. Rows may be GSM8K (`{"question",
    "answer"}`) or generic (`{"problem", "solution" | "steps", "answer"?, "id"?}`). Bad rows are
    dropped and counted instead of stopping the run: malformed JSON (with its line number),
    missing problem, empty solution, one step only (instances), no answer (unless
    require_answer=False), duplicate problem (unless dedupe=False). `limit` stops after that many
    solutions were kept. Ids default to '<file stem>-<line number>'.

    Bad arguments and a missing file raise InputError at once; a file that is not UTF-8 raises
    InputError while iterating.
    """
    path = Path(path)
    if output not in ("steps", "instances"):
        raise InputError(f"output must be 'steps' or 'instances', got {output!r}")
    check_split_options(style, pattern)
    StepRange.of(min_step, max_step)
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    if not path.is_file():
        raise InputError(f"cannot read {path}: no such file")
    report = SplitReport()
    options = dict(min_step=min_step, max_step=max_step, final_with_answer=final_with_answer)
    return _split_records(path, output, style, pattern, options, require_answer, dedupe, limit, report), report


def _split_records(
    path: Path,
    output: str,
    style: SplitStyle,
    pattern: str | None,
    options: dict[str, Any],
    require_answer: bool,
    dedupe: bool,
    limit: int | None,
    report: SplitReport,
) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    for line in read_jsonl(path):
        if limit is not None and report.kept >= limit:
            return
        report.read += 1
        if line.error == "not_utf8":
            line.object()  # raises: a file of another encoding is re-encoded, not half read
        if line.error is not None or not isinstance(line.value, dict):
            report.dropped["malformed_json"] += 1
            report.bad_lines.append(line.lineno)
            continue
        solution = _row_to_solution(line.value, f"{path.stem}-{line.lineno}", style, pattern)
        if solution is None:
            report.dropped["missing_problem"] += 1
            report.bad_lines.append(line.lineno)
            continue
        reason = _drop_reason(solution, require_answer, seen if dedupe else None)
        if reason is not None:
            report.dropped[reason] += 1
            continue
        if output == "steps":
            records = [solution.model_dump()]
        else:
            records = [inst.model_dump() for inst in make_srl_instances(solution, **options)]
            if not records:
                report.dropped["one_step"] += 1
                continue
        report.kept += 1
        report.written += len(records)
        yield from records


def _drop_reason(solution: ExpertSolution, require_answer: bool, seen: set[str] | None) -> str | None:
    if not solution.steps:
        return "empty_solution"
    if require_answer and not solution.answer:
        return "no_answer"
    if seen is not None:
        key = " ".join(solution.problem.split()).casefold()
        if key in seen:
            return "duplicate_problem"
        seen.add(key)
    return None


def instances_to_jsonl(instances: Iterable[SRLInstance | BaseModel | dict[str, Any]]) -> Iterator[str]:
    """One JSON line (with its newline) per instance or record."""
    for item in instances:
        data = item.model_dump() if isinstance(item, BaseModel) else item
        yield json.dumps(data, ensure_ascii=False) + "\n"


def write_jsonl(path: str | Path, records: Iterable[SRLInstance | BaseModel | dict[str, Any]]) -> int:
    """Write records as JSONL (parent folders created); returns the number of lines written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        count = 0
        with path.open("w", encoding="utf-8") as out:
            for line in instances_to_jsonl(records):
                out.write(line)
                count += 1
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return count
