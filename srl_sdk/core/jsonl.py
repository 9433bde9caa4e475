"""The one JSONL reader: every line of a file parsed, each bad line named by `file:line`.

Readers differ only in what a bad line means to them: user data drops and counts it (a report
says how many and where), a file that must be whole fails with `path:line`, and our own
append-only outputs skip the torn last line a crash can leave. So the reader never decides:
it yields every non-blank line with either its value or the reason it could not be read, and
`JsonLine.object()` is the strict form. A file that cannot be opened is an InputError.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from srl_sdk.errors import InputError

LineError = Literal["not_utf8", "not_json"]
_REASONS = {"not_utf8": "not UTF-8 text ({}); re-encode the file as UTF-8", "not_json": "not valid JSON ({})"}


@dataclass(frozen=True)
class JsonLine:
    """One non-blank line: its parsed `value`, or the `error` that kept it from being read."""

    path: Path
    lineno: int  # 1-based, counting blank lines too (what an editor shows)
    value: Any = None
    error: LineError | None = None
    detail: str = ""  # the decoder's words for `error`

    @property
    def where(self) -> str:
        """`name:line`, for drop reports."""
        return f"{self.path.name}:{self.lineno}"

    def object(self, expected: str = "a JSON object") -> dict[str, Any]:
        """The line's JSON object, else an InputError naming `path:line` and what was expected."""
        if self.error is not None:
            raise InputError(f"{self.path}:{self.lineno}: " + _REASONS[self.error].format(self.detail))
        if not isinstance(self.value, dict):
            raise InputError(f"{self.path}:{self.lineno}: expected {expected}")
        return self.value


def read_jsonl(path: str | os.PathLike[str], *, what: str = "", hint: str = "check the path") -> Iterator[JsonLine]:
    """Each non-blank line of `path`, parsed; never raises for a bad line (see `JsonLine.error`).

    Lines are decoded one by one, so one line of another encoding costs that line only. When the
    file cannot be opened, the InputError says `cannot read <what> from <path>: why; <hint>`.
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        source = f"{what} from {path}" if what else str(path)
        raise InputError(f"cannot read {source}: {exc.strerror or exc}; {hint}") from exc
    with handle:
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield JsonLine(path, lineno, error="not_utf8", detail=exc.reason)
                continue
            try:
                yield JsonLine(path, lineno, json.loads(text))
            except json.JSONDecodeError as exc:
                yield JsonLine(path, lineno, error="not_json", detail=exc.msg)


def field_named(row: dict[str, Any], explicit: str | None, defaults: Sequence[str]) -> tuple[str | None, Any]:
    """(name, value) of the field the user named, else of the first default name that is set."""
    if explicit is not None:
        return explicit, row.get(explicit)
    for name in defaults:
        if row.get(name) is not None:
            return name, row[name]
    return None, None


def row_field(row: dict[str, Any], explicit: str | None, defaults: Sequence[str]) -> Any:
    """The value of `field_named`: what most readers of user rows want."""
    return field_named(row, explicit, defaults)[1]
