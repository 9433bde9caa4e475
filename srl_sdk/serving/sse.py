"""Server-Sent Events framing and the event ids that make a stream resumable.

Ids are `<trace_id>:<n>` where n is the index of the last step the client has received: a `step`
event carries its own index, a `token` event the index of the step before the one it belongs to
(resuming after it must resend that step), and `done` / `error` carry `<trace_id>:end`. So
`Last-Event-ID` alone tells the server which trace and which stored steps come next.
"""

from __future__ import annotations

import json
from typing import Any

END = "end"


def frame(event: str, data: Any, event_id: str | None = None) -> str:
    """One SSE message. json.dumps never emits raw newlines, so one `data:` line is enough."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    lines.append(f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}")
    return "\n".join(lines) + "\n\n"


def event_id(trace_id: str, event: dict[str, Any]) -> str:
    kind = event["type"]
    if kind == "step":
        return f"{trace_id}:{event['step']['index']}"
    if kind == "token":
        return f"{trace_id}:{int(event['step_index']) - 1}"
    return f"{trace_id}:{END}"


def parse_event_id(value: str) -> tuple[str, int | None]:
    """`<trace_id>:<n>` -> (trace_id, n); `<trace_id>:end` -> (trace_id, None). ValueError if malformed."""
    trace_id, sep, position = value.strip().rpartition(":")
    if not sep or not trace_id:
        raise ValueError(f"Last-Event-ID {value!r} is not of the form <trace_id>:<n>")
    if position == END:
        return trace_id, None
    n = int(position)
    if n < 0:
        raise ValueError(f"Last-Event-ID {value!r} has a negative position")
    return trace_id, n
