"""Reasoner / AsyncReasoner in-process on the real model, with traces persisted to SQLite."""

import asyncio

import pytest

from srl_sdk import AsyncReasoner, Reasoner, Step, Trace, TraceStore
from srl_sdk.errors import InputError, TraceNotFoundError

SETTINGS = dict(max_steps=2, max_thought_tokens=32, max_action_tokens=32)


@pytest.fixture()
def store(tmp_path):
    return TraceStore(tmp_path / "traces.db")


def test_solve_saves_the_trace(llama_engine, store, gsm8k_rows):
    with Reasoner(engine=llama_engine, store=store) as reasoner:
        trace = reasoner.solve(gsm8k_rows[1]["question"], **SETTINGS)
        assert isinstance(trace, Trace) and trace.steps
        assert store.get(trace.id) == trace
        assert reasoner.get_trace(trace.id) == trace


def test_stream_yields_steps_then_exposes_the_trace(llama_engine, store):
    reasoner = Reasoner(engine=llama_engine, store=store)
    stream = reasoner.stream("Tom has 3 apples and buys 4 more. How many apples does he have?", **SETTINGS)
    steps = list(stream)
    assert steps and all(isinstance(s, Step) for s in steps)
    assert stream.trace is not None and stream.trace.steps == steps
    assert store.count() == 1


def test_continue_from_keeps_given_steps(llama_engine, store):
    reasoner = Reasoner(engine=llama_engine, store=store)
    trace = reasoner.continue_from("Tom has 3 apples and buys 4 more. How many?", ["3 + 4 = 7"], **SETTINGS)
    assert trace.steps[0].source == "given" and trace.steps[0].action == "3 + 4 = 7"
    assert trace.steps[0].checks and trace.steps[0].checks[0].passed is True


def test_bad_settings_and_input_lose_nothing(llama_engine, store):
    reasoner = Reasoner(engine=llama_engine, store=store)
    kept = reasoner.solve("What is 1+1?", **SETTINGS)
    with pytest.raises(InputError, match="invalid reasoning settings"):
        reasoner.solve("What is 1+1?", max_steps=-3)
    with pytest.raises(InputError, match="invalid reasoning settings"):
        reasoner.solve("What is 1+1?", no_such_setting=1)
    with pytest.raises(InputError):
        reasoner.solve("   ")
    with pytest.raises(TraceNotFoundError):
        reasoner.get_trace("does-not-exist")
    assert store.count() == 1 and store.get(kept.id) == kept


def test_store_false_keeps_nothing(llama_engine):
    reasoner = Reasoner(engine=llama_engine, store=False)
    assert reasoner.store is None
    assert reasoner.solve("What is 1+1?", max_steps=1, max_thought_tokens=16, max_action_tokens=16).steps


def test_async_reasoner_matches_sync(llama_engine, store):
    problem = "A box holds 6 eggs. How many eggs are in 2 boxes?"
    sync_trace = Reasoner(engine=llama_engine, store=False).solve(problem, **SETTINGS)

    async def run():
        async with AsyncReasoner(engine=llama_engine, store=store) as reasoner:
            steps = []
            stream = reasoner.stream(problem, **SETTINGS)
            async for step in stream:
                steps.append(step)
            return steps, stream.trace

    steps, trace = asyncio.run(run())
    assert [s.action for s in steps] == [s.action for s in sync_trace.steps]  # greedy: same steps
    assert trace is not None and store.get(trace.id).steps == steps


def test_trace_json_roundtrip_from_real_run(llama_engine):
    trace = Reasoner(engine=llama_engine, store=False).solve("What is 2*4?", max_steps=1, max_thought_tokens=16, max_action_tokens=16)
    assert Trace.from_json(trace.to_json()) == trace
