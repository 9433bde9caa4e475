"""The trajectory row every data source writes, append-only JSONL, and TRL's stepwise format.

One row per problem, the generic shape `srl_sdk.training.data` (source: jsonl), `srl data split`
and `srl eval --data` read unchanged:

    {"id", "problem", "steps": [...], "answer": <gold answer>, "solution": <the text cut into
     steps>, "metadata": {"source": "teacher" | "human", ...settings}}

`steps` wins over `solution` in every reader, so the cut made here is the cut trained on; the
answer is the short gold answer, not a whole solution, so the readers never have to re-extract it.
Rows are appended and flushed one at a time: a generation run that dies keeps every row it
verified, and a rerun resumes from the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from ..core.answers import extract_answer
from ..core.jsonl import read_jsonl
from ..errors import InputError

__all__ = [
    "trajectory_row", "JsonlAppender", "read_jsonl_rows", "stepwise_row", "export_trl_stepwise", "problem_key",
    "gold_answer",
]


def problem_key(problem: str) -> str:
    """The identity of a problem for resume and de-duplication: lowercased, whitespace collapsed."""
    return " ".join(problem.lower().split())


def gold_answer(value: Any) -> str | None:
    """The gold answer in an input field: a number, a marked answer (`####`, `\\boxed{}`), or a short value.

    GSM8K's `answer` is a whole solution ending in `#### 72` and MATH's `solution` ends in
    `\\boxed{}`; a plain one-line value of at most 100 characters is taken as the answer itself.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    return extract_answer(text) or (text if "\n" not in text and len(text) <= 100 else None)


def trajectory_row(
    *,
    id: str,
    problem: str,
    steps: list[str],
    answer: str,
    solution: str,
    metadata: dict[str, Any],
    reasoning: str | None = None,
) -> dict[str, Any]:
    """One trajectory as written to JSONL (`reasoning`, a teacher's private thoughts, only when present)."""
    row: dict[str, Any] = {"id": id, "problem": problem, "steps": steps, "answer": answer, "solution": solution}
    if reasoning:
        row["reasoning"] = reasoning
    row["metadata"] = metadata
    return row


class JsonlAppender:
    """Append JSON lines to a file, flushing each one (a crash loses at most the line being written).

    A file whose last line was cut off by an earlier crash gets a newline first, so the new row
    does not glue onto the broken one (readers skip the broken line; see read_jsonl_rows).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            needs_newline = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
            self._handle = path.open("a", encoding="utf-8", newline="\n")
            if needs_newline:
                self._handle.write("\n")
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}; check --out") from exc

    def write(self, row: dict[str, Any]) -> None:
        self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a file this package wrote; lines that do not parse are skipped.

    Only for our own append-only outputs, where the one bad line a crash can leave is the last one;
    user input goes through readers that count every bad line instead.
    """
    if not path.is_file():
        return
    for line in read_jsonl(path):
        if isinstance(line.value, dict):
            yield line.value


def stepwise_row(row: dict[str, Any]) -> dict[str, Any]:
    """A trajectory row in TRL's stepwise-supervision format: prompt, completions, labels.

    Every step of a kept trajectory is labelled correct: its final answer matched the gold answer
    and no arithmetic check failed (TRL's PRM examples label each step True / False).
    """
    steps = [str(step) for step in row["steps"]]
    return {"prompt": row["problem"], "completions": steps, "labels": [True] * len(steps)}


def export_trl_stepwise(source: Path, target: Path) -> int:
    """Write `target` (JSONL, TRL stepwise supervision) from the trajectory rows of `source`; returns rows."""
    count = 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", encoding="utf-8", newline="\n") as out:
            for row in read_jsonl_rows(source):
                if isinstance(row.get("problem"), str) and isinstance(row.get("steps"), list) and row["steps"]:
                    out.write(json.dumps(stepwise_row(row), ensure_ascii=False) + "\n")
                    count += 1
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return count
