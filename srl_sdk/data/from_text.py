"""Human-written solutions -> trajectory rows (`srl data from-text`), with a preview of the cut.

Textbook and MATH-style solutions are prose: several steps per line, display math across lines,
the answer in `\\boxed{}`. `srl data split`'s line-based "auto" gives most of them one step (and
a one-step trajectory teaches SRL nothing), so this command cuts with `detect_style` ("auto":
numbered labels, else sentences when there is LaTeX math or a single line, else lines) or with an
explicit style, and shows the cut before anything is written: a wrong cut is visible in the first
few solutions, not after a training run.

Input: a JSONL file of `{"problem" | "question", "solution" | "answer", "answer"?}` rows, or any
other text file holding ONE solution (then the problem comes from `problem=`). The answer is
taken from `\\boxed{}` or `####` in the solution, else from a separate short answer field.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field

from ..core.answers import extract_answer
from ..core.jsonl import field_named, read_jsonl, row_field
from ..core.splitting import SplitStyle, check_split_options, detect_style, split_solution
from ..errors import InputError
from .rows import gold_answer, problem_key, trajectory_row

__all__ = ["GENERATOR", "FromTextConfig", "FromTextReport", "convert_file"]

GENERATOR = "from-text-1"
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


class FromTextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    style: SplitStyle = "auto"
    pattern: str | None = Field(default=None, description="separator regex for style 'regex'")
    problem: str | None = Field(default=None, description="the problem, when the file is one plain-text solution")
    problem_field: str | None = Field(default=None, description="default: problem, else question")
    solution_field: str | None = Field(default=None, description="default: solution, else answer")
    answer_field: str | None = Field(default=None, description="default: the answer marked in the solution")
    min_steps: int = Field(default=2, ge=1, description="shorter solutions are dropped (too_few_steps)")
    limit: int | None = Field(default=None, ge=1, description="convert at most this many solutions")


class FromTextReport(BaseModel):
    """What was read, kept and dropped (by reason), and how the kept solutions were cut."""

    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = Field(default_factory=dict)
    styles: dict[str, int] = Field(default_factory=dict, description="the style each kept solution was cut with")
    steps: dict[str, int] = Field(default_factory=dict, description="kept solutions by step count")

    def summary(self) -> str:
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        styles = ", ".join(f"{k} {v}" for k, v in sorted(self.styles.items())) or "-"
        steps = " ".join(f"{k}:{v}" for k, v in self.steps.items()) or "-"
        return f"read {self.read}, kept {self.kept} (styles: {styles}; steps {steps}), dropped: {dropped}"


def _records(path: Path, config: FromTextConfig) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, row or None when unreadable) of the input; a text file is one row."""
    try:
        if path.suffix.lower() not in JSONL_SUFFIXES:
            if not config.problem or not config.problem.strip():
                raise InputError(f"{path} is one plain-text solution: give its problem with --problem TEXT "
                                 "(or pass a JSONL file of problem/solution rows)")
            yield 1, {"problem": config.problem, "solution": path.read_text(encoding="utf-8")}
            return
        for line in read_jsonl(path):
            if line.error == "not_utf8":
                line.object()  # raises: the file is re-encoded, not half read
            yield line.lineno, line.value if isinstance(line.value, dict) else None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc.reason}); re-encode it as UTF-8") from exc
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def convert_file(path: str | Path, config: FromTextConfig | None = None) -> tuple[list[dict[str, Any]], FromTextReport]:
    """Trajectory rows (source "human") for every usable solution in `path`, and the report."""
    config = config or FromTextConfig()
    check_split_options(config.style, config.pattern)
    path = Path(path)
    report = FromTextReport()
    dropped: Counter[str] = Counter()
    styles: Counter[str] = Counter()
    steps_hist: Counter[int] = Counter()
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for lineno, row in _records(path, config):
        if config.limit is not None and report.kept >= config.limit:
            break
        report.read += 1
        if row is None:
            dropped["not_json"] += 1
            continue
        problem = row_field(row, config.problem_field, ("problem", "question"))
        if not isinstance(problem, str) or not problem.strip():
            dropped["no_problem"] += 1
            continue
        solution_name, solution = field_named(row, config.solution_field, ("solution", "answer"))
        if not isinstance(solution, str) or not solution.strip():
            dropped["no_solution"] += 1
            continue
        if config.answer_field is not None:
            answer = gold_answer(row.get(config.answer_field))
        else:
            answer = extract_answer(solution)
            if answer is None and solution_name != "answer":
                answer = gold_answer(row.get("answer"))
        if answer is None:
            dropped["no_answer"] += 1
            continue
        style: SplitStyle = detect_style(solution) if config.style == "auto" else config.style
        steps = split_solution(solution, style, config.pattern)
        if len(steps) < config.min_steps:
            dropped["too_few_steps"] += 1
            continue
        key = problem_key(problem)
        if key in seen:
            dropped["duplicate_problem"] += 1
            continue
        seen.add(key)
        metadata = {"source": "human", "generator": GENERATOR, "split_style": style, "style_requested": config.style,
                    "file": path.name, "line": lineno}
        rows.append(trajectory_row(id=str(row.get("id") or f"{path.stem}-{lineno}"), problem=problem.strip(),
                                   steps=steps, answer=answer, solution=solution.strip(), metadata=metadata))
        report.kept += 1
        styles[style] += 1
        steps_hist[len(steps)] += 1
    report.dropped = dict(dropped)
    report.styles = dict(styles)
    report.steps = {str(k): steps_hist[k] for k in sorted(steps_hist)}
    return rows, report
