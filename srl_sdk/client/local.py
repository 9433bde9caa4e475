"""The local backend of Reasoner: a driver over an in-process engine, traces saved to the store."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from pydantic import ValidationError

from srl_sdk.core.steps import Step, Trace
from srl_sdk.engines import Engine, load_engine
from srl_sdk.reasoning.driver import Driver, Finished, ReasonConfig
from srl_sdk.errors import InputError
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
        iterator = self.run(problem, steps, overrides, cancel)
        done = object()
        try:
            while True:
                item = await asyncio.to_thread(next, iterator, done)
                if item is done:
                    return
                yield item  # type: ignore[misc]
        finally:
            cancel.set()
            await asyncio.to_thread(iterator.close)

    def close(self) -> None:
        if self._owns_engine:
            self.engine.close()
