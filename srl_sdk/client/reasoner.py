"""Reasoner and AsyncReasoner: one API whether the model runs in this process or on a server.

`Reasoner("smollm2")` or `Reasoner.local("model.gguf")` runs the model here; `Reasoner(
"http://host:8000", api_key=...)` talks to `srl serve`. Both return the same `Step` and `Trace`
objects, so code written against a laptop model runs unchanged against a GPU server.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from srl_sdk.client.backend import Backend
from srl_sdk.core.steps import Step, Trace
from srl_sdk.engines.models import DEFAULT_MODEL
from srl_sdk.reasoning.driver import ReasonConfig
from srl_sdk.store.sqlite import TraceStore

if TYPE_CHECKING:  # pragma: no cover
    from srl_sdk.core.compare import Comparison

StoreArg = TraceStore | str | os.PathLike[str] | bool | None


def _is_url(model: str) -> bool:
    return model.startswith(("http://", "https://"))


def _open_store(store: StoreArg) -> TraceStore | None:
    if store is False:
        return None
    if store is None or store is True:
        return TraceStore()
    if not isinstance(store, (str, os.PathLike)):  # an open store (SQLite or PostgreSQL)
        return store
    from srl_sdk.store.factory import open_store

    return open_store(store)  # a file path, or a postgresql:// URL


def _make_backend(model: str, engine: Any, config: ReasonConfig | None, store: StoreArg, api_key: str | None,
                  timeout: float | None, engine_options: dict[str, Any] | None) -> Backend:
    if _is_url(model):
        from srl_sdk.client.remote import RemoteBackend

        return RemoteBackend(model, api_key=api_key, timeout=timeout, config=config)
    from srl_sdk.client.local import LocalBackend

    return LocalBackend(model, engine=engine, config=config, store=_open_store(store), engine_options=engine_options)


class StepStream:
    """Iterate to get Steps as they are made; `.trace` holds the whole Trace once it ends."""

    def __init__(self, source: Iterator[Step | Trace]) -> None:
        self._source = source
        self.trace: Trace | None = None

    def __iter__(self) -> Iterator[Step]:
        for item in self._source:
            if isinstance(item, Trace):
                self.trace = item
            else:
                yield item

    def close(self) -> None:
        """Stop generating (the engine or the server stops too)."""
        self._source.close()  # type: ignore[attr-defined]

    def __enter__(self) -> "StepStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStepStream:
    def __init__(self, source: AsyncIterator[Step | Trace]) -> None:
        self._source = source
        self.trace: Trace | None = None

    async def __aiter__(self) -> AsyncIterator[Step]:
        async for item in self._source:
            if isinstance(item, Trace):
                self.trace = item
            else:
                yield item

    async def aclose(self) -> None:
        await self._source.aclose()  # type: ignore[attr-defined]

    async def __aenter__(self) -> "AsyncStepStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _ReasonerBase:
    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        engine: Any = None,
        config: ReasonConfig | None = None,
        store: StoreArg = None,
        api_key: str | None = None,
        timeout: float | None = None,
        **engine_options: Any,
    ) -> None:
        self.model = str(model)
        self.is_remote = _is_url(self.model)
        self._backend = _make_backend(self.model, engine, config, store, api_key, timeout, engine_options)

    @property
    def store(self) -> TraceStore | None:
        """The store this process saves traces to (None for a remote model or store=False)."""
        return self._backend.store

    @classmethod
    def local(cls, model: str | os.PathLike[str] = DEFAULT_MODEL, **kwargs: Any):
        """A model file in this process: .gguf (llama.cpp), .onnx / onnx folder, or an HF folder."""
        return cls(model, **kwargs)

    @classmethod
    def remote(cls, url: str, *, api_key: str | None = None, **kwargs: Any):
        if not _is_url(url):
            from srl_sdk.errors import ConfigError

            raise ConfigError(f"{url!r} is not an http(s) URL; pass e.g. http://127.0.0.1:8000")
        return cls(url, api_key=api_key, **kwargs)


class Reasoner(_ReasonerBase):
    """Solve problems step by step and get every step as a typed object."""

    def stream(self, problem: str, *, steps: Sequence[str | Step] = (), **settings: Any) -> StepStream:
        """Steps as they are produced. `settings` are ReasonConfig fields (max_steps, mode, …)."""
        return StepStream(self._backend.run(problem, list(steps), settings))

    def solve(self, problem: str, *, steps: Sequence[str | Step] = (), **settings: Any) -> Trace:
        stream = self.stream(problem, steps=steps, **settings)
        for _ in stream:
            pass
        assert stream.trace is not None
        return stream.trace

    def continue_from(self, problem: str, steps: Sequence[str | Step], **settings: Any) -> Trace:
        """Take these steps as given (a person may have edited one) and let the model go on."""
        return self.solve(problem, steps=steps, **settings)

    def get_trace(self, trace_id: str) -> Trace:
        """A stored trace: from this process's store, or the server's for a remote model."""
        return self._backend.get_trace(trace_id)

    def compare(self, trace: Trace | str, expert_steps: Sequence[str] | str, *, expert_answer: str | None = None,
                step_lines: str | None = None) -> "Comparison":
        """The trace (or its id) beside the expert's steps (a list, or a solution's text cut like
        training data): per step the SRL reward's similarity, and whether the answer is right.
        Computed here by `core.compare.compare_trace`, the function the server's
        POST /v1/traces/{id}/compare and the trace viewer use."""
        from srl_sdk.core.compare import compare_trace, expert_from_text

        if isinstance(trace, str):
            trace = self.get_trace(trace)
        if isinstance(expert_steps, str):
            expert_steps, found = expert_from_text(expert_steps)
            expert_answer = expert_answer if expert_answer is not None else found
        return compare_trace(trace, list(expert_steps), expert_answer=expert_answer, step_lines=step_lines)  # type: ignore[arg-type]

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> "Reasoner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncReasoner(_ReasonerBase):
    """The async twin of Reasoner (same arguments, awaitable methods)."""

    def stream(self, problem: str, *, steps: Sequence[str | Step] = (), **settings: Any) -> AsyncStepStream:
        return AsyncStepStream(self._backend.arun(problem, list(steps), settings))

    async def solve(self, problem: str, *, steps: Sequence[str | Step] = (), **settings: Any) -> Trace:
        stream = self.stream(problem, steps=steps, **settings)
        async for _ in stream:
            pass
        assert stream.trace is not None
        return stream.trace

    async def continue_from(self, problem: str, steps: Sequence[str | Step], **settings: Any) -> Trace:
        return await self.solve(problem, steps=steps, **settings)

    async def get_trace(self, trace_id: str) -> Trace:
        return await self._backend.aget_trace(trace_id)

    async def aclose(self) -> None:
        await self._backend.aclose()

    async def __aenter__(self) -> "AsyncReasoner":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
