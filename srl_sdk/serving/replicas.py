"""What changes when several servers share one trace store (PostgreSQL, `store.shared`).

A server alone with its store knows that an unfinished trace it is not running was left by a
killed server, and closes it as interrupted (at start-up, after a worker died, on a resume).
With replicas that is no longer true: the trace may be another replica's run, live right now.
What is still certain is the time bound: a run ends within its wall-clock cap (at most
`limits.max_timeout_s` from its arrival, plus one prompt evaluation), so an unfinished trace
older than that (plus a margin) is stranded whoever made it. So with a shared store:

- start-up and a dead worker close only the unfinished traces older than `stranded_before`;
- a resume of a younger unfinished trace that no run here holds follows it through the store
  (the worker saves the partial trace after every step): each new step once, then the end
  event; if it is still unfinished past the bound, it is closed as interrupted then.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from srl_sdk.errors import SRLError
from srl_sdk.serving import sse
from srl_sdk.serving.config import ServerConfig

MARGIN_S = 60.0  # beyond the caps: one slow prompt evaluation, clocks a little apart
POLL_S = 0.5


def run_bound(config: ServerConfig) -> timedelta:
    """The longest an unfinished trace can belong to a live run."""
    return timedelta(seconds=config.limits.max_timeout_s + config.limits.resume_grace_s + MARGIN_S)


def stranded_before(config: ServerConfig, store: Any) -> datetime | None:
    """The creation time before which unfinished traces are certainly stranded: None (all of
    them) for a store this server has to itself, now minus `run_bound` for a shared one."""
    if not getattr(store, "shared", False):
        return None
    return datetime.now(timezone.utc) - run_bound(config)


async def follow_stored(store: Any, trace: Any, reader: str | None, after: int, bound: timedelta,
                        end_frame: Callable[[Any], str], interrupted: str) -> AsyncIterator[str]:
    """SSE frames of a run another replica is making: the steps after `after` as the store gets
    them, then the end event (polls the store every POLL_S; closes the trace past `bound`)."""
    sent = after
    deadline = trace.created_at + bound
    while True:
        for step in trace.steps:
            if step.index > sent and step.source == "model":
                yield sse.frame("step", step.model_dump(mode="json"), f"{trace.id}:{step.index}")
                sent = step.index
        try:
            if trace.finish_reason is None and datetime.now(timezone.utc) > deadline:
                await asyncio.to_thread(store.close_unfinished, "interrupted", interrupted, [trace.id])
                trace = await asyncio.to_thread(store.get, trace.id, reader)
            if trace.finish_reason is not None:
                yield end_frame(trace)
                return
            await asyncio.sleep(POLL_S)
            trace = await asyncio.to_thread(store.get, trace.id, reader)
        except SRLError:  # the store went away (or the trace was pruned): the client reconnects
            return
