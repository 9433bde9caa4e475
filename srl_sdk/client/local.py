"""The local backend of Reasoner: a driver over an in-process engine, traces saved to its store.

It implements client/backend.py's Backend protocol; traces are read back from the same store.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import aclosing
from typing import Any

from pydantic import ValidationError

from srl_sdk.core.steps import Step, Trace
from srl_sdk.engines import Engine, load_engine
from srl_sdk.engines.base import iterate_in_thread
from srl_sdk.errors import InputError, StoreError
from srl_sdk.reasoning.driver import Driver, Finished, ReasonConfig
from srl_sdk.store.sqlite import TraceStore


def merge_config(base: ReasonConfig, overrides: dict[str, Any]) -> ReasonConfig:
    """A copy of `base` with per-call settings, validated (a typo'd field is an error)."""
    if not overrides:
        return base
    try:
        return ReasonConfig.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        raise InputError(f"invalid reasoning settings: {exc}") from exc


class LocalBackend:
    """Runs the driver here; `store` is where traces are saved and read back (None: store=False)."""

    def __init__(
        self,
        model: str,
        *,
        engine: Engine | str | None = None,
        config: ReasonConfig | None = None,
        store: TraceStore | None = None,
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(engine, Engine):
            self.engine = engine
            self._owns_engine = False
        else:
            self.engine = load_engine(model, engine, **(engine_options or {}))
            self._owns_engine = True
        self.config = config or ReasonConfig()
        self.store = store

    def run(
        self,
        problem: str,
        steps: Sequence[str | Step],
        overrides: dict[str, Any],
        cancel: threading.Event | None = None,
    ) -> Iterator[Step | Trace]:
        driver = Driver(self.engine, merge_config(self.config, overrides))
        for event in driver.events(problem, steps, cancel=cancel):
            if isinstance(event, Step):
                yield event
            elif isinstance(event, Finished):
                if self.store is not None:
                    self.store.save(event.trace)
                yield event.trace

    async def arun(
        self,
        problem: str,
        steps: Sequence[str | Step],
        overrides: dict[str, Any],
    ) -> AsyncIterator[Step | Trace]:
        cancel = threading.Event()
        # aclosing: when this stream is closed, the bridge stops the driver at once, not at garbage collection
        async with aclosing(iterate_in_thread(self.run(problem, steps, overrides, cancel), cancel)) as items:
            async for item in items:
                yield item

    def get_trace(self, trace_id: str) -> Trace:
        if self.store is None:
            raise StoreError("this Reasoner has no trace store (store=False)")
        return self.store.get(trace_id)

    async def aget_trace(self, trace_id: str) -> Trace:
        return await asyncio.to_thread(self.get_trace, trace_id)

    def close(self) -> None:
        if self._owns_engine:
            self.engine.close()

    async def aclose(self) -> None:
        self.close()
