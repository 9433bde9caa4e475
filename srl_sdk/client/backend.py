"""The Backend protocol: what a Reasoner needs from the place its model runs.

Two implement it: LocalBackend (client/local.py: a driver over an in-process engine, traces in
its own store) and RemoteBackend (client/remote.py: `srl serve` over HTTP). The Reasoner calls
only these methods, so it never asks which one it holds; a third backend implements them too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Protocol

from srl_sdk.core.steps import Step, Trace
from srl_sdk.store.sqlite import TraceStore


class Backend(Protocol):
    # The store this process writes traces to; None when traces are kept elsewhere (the server's
    # own store, for a remote backend) or not at all (store=False).
    store: TraceStore | None

    def run(self, problem: str, steps: Sequence[str | Step], overrides: dict[str, Any]) -> Iterator[Step | Trace]:
        """Steps as they are made, then the whole Trace. Closing the iterator stops the run."""
        ...

    def arun(self, problem: str, steps: Sequence[str | Step], overrides: dict[str, Any]) -> AsyncIterator[Step | Trace]:
        """The async twin of `run`."""
        ...

    def get_trace(self, trace_id: str) -> Trace:
        """A finished trace by id (TraceNotFoundError / NotFoundError when there is none)."""
        ...

    async def aget_trace(self, trace_id: str) -> Trace:
        ...

    def close(self) -> None:
        """Free the engine or the HTTP connections; safe to call twice."""
        ...

    async def aclose(self) -> None:
        ...
