"""Several streams on the llama.cpp engine at once: decoded in shared batches, yet each stream writes
what it writes alone; cancelling one leaves the others as they were; a request keeps its cache.

The comparison is bit for bit (actions, thoughts and log-probabilities): the engine keeps each
stream in its own KV stream and reads each prompt in calls of its own, so on this project's machines the
batched arithmetic is the same as alone (srl_sdk/engines/llama_batch.py). Where it is not (another
processor's kernels), the failure message says how many streams differed and where.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from srl_sdk.core.format import THINK_CLOSE, THINK_OPEN, step_messages
from srl_sdk.engines import SamplingParams
from srl_sdk.reasoning import Driver, ReasonConfig, TokenDelta
from srl_sdk.reasoning.driver import Finished

CONFIG = ReasonConfig(max_steps=2, max_thought_tokens=24, max_action_tokens=24)


def what_it_wrote(trace) -> list[tuple[str, str, float | None]]:
    return [(s.thought, s.action, s.confidence.mean_logprob if s.confidence else None) for s in trace.steps]


@pytest.fixture(scope="module")
def problems(gsm8k_rows) -> list[str]:
    return [row["question"] for row in gsm8k_rows[:4]]


@pytest.fixture(scope="module")
def alone(llama_engine, problems) -> list[list[tuple[str, str, float | None]]]:
    driver = Driver(llama_engine, CONFIG)
    return [what_it_wrote(driver.solve(problem)) for problem in problems]


def test_concurrent_streams_write_what_they_write_alone(llama_engine, problems, alone):
    driver = Driver(llama_engine, CONFIG)
    shared_before = llama_engine.perf()["shared_decode_tokens"]
    with ThreadPoolExecutor(max_workers=len(problems)) as pool:
        together = list(pool.map(lambda problem: what_it_wrote(driver.solve(problem)), problems))
    assert llama_engine.perf()["shared_decode_tokens"] > shared_before, "the streams were never decoded together"
    differing = [i for i, (a, b) in enumerate(zip(alone, together)) if a != b]
    assert not differing, (
        f"{len(differing)} of {len(problems)} streams wrote something else beside the others (problems {differing}): "
        f"alone {[alone[i] for i in differing]}, together {[together[i] for i in differing]}"
    )


@pytest.mark.parametrize("how", ["cancel event", "closed generator"])
def test_cancelling_one_stream_leaves_the_others_alone(llama_engine, problems, alone, how):
    driver = Driver(llama_engine, CONFIG)
    cancel = threading.Event()
    victim_finish: list[str] = []

    def victim() -> None:
        events = driver.events(problems[0], cancel=cancel)
        for event in events:
            if isinstance(event, TokenDelta) and event.step_index == 1:
                if how == "closed generator":
                    events.close()  # a client that went away
                    victim_finish.append("closed")
                    return
                cancel.set()
            if isinstance(event, Finished):
                victim_finish.append(event.trace.finish_reason)

    with ThreadPoolExecutor(max_workers=len(problems)) as pool:
        stopped = pool.submit(victim)
        others = list(pool.map(lambda problem: what_it_wrote(driver.solve(problem)), problems[1:]))
        stopped.result(timeout=120)
    assert victim_finish == (["cancelled"] if how == "cancel event" else ["closed"])
    assert others == alone[1:]
    # the engine is whole afterwards: the victim's problem, run again, writes what it wrote alone
    assert what_it_wrote(driver.solve(problems[0])) == alone[0]


def test_a_session_reads_only_what_its_next_prompt_adds(llama_engine, problems):
    prompt = llama_engine.render(step_messages(problems[0], [])) + THINK_OPEN
    params = SamplingParams(max_tokens=16, stop=[THINK_CLOSE])
    with llama_engine.session() as session:
        thought = "".join(event.text for event in session.stream(prompt, params))
        before = llama_engine.perf()["prompt_tokens"]
        action_prompt = prompt + thought + THINK_CLOSE + "\n"
        list(session.stream(action_prompt, SamplingParams(max_tokens=4)))
        read = llama_engine.perf()["prompt_tokens"] - before
    added = llama_engine.count_tokens(action_prompt) - llama_engine.count_tokens(prompt)
    assert 1 <= read <= added + 2, f"read {read} prompt tokens for {added} new ones"


def test_sessions_beyond_the_sequences_wait_their_turn_in_order():
    """One sequence, three sessions: the others wait, and get it in the order they asked."""
    from srl_sdk.engines.llama_cpp import LlamaCppEngine

    with LlamaCppEngine("smollm2", n_ctx=512, n_threads=1, n_parallel=1) as engine:
        prompt = engine.render([{"role": "user", "content": "Name three colours."}])
        params = SamplingParams(max_tokens=4)
        order: list[str] = []
        holder = engine.session()
        list(holder.stream(prompt, params))  # holds the only sequence until closed

        def later(name: str) -> None:
            with engine.session() as session:
                list(session.stream(prompt, params))
                order.append(name)

        threads = []
        for waiting, name in enumerate(("second", "third"), start=1):
            thread = threading.Thread(target=later, args=(name,))
            thread.start()
            threads.append(thread)
            for _ in range(200):  # until it is in the queue (at most 10 s)
                if engine.gauges()["sessions_waiting"] == waiting:
                    break
                threading.Event().wait(0.05)
        threads[0].join(0.5)
        assert order == [] and all(t.is_alive() for t in threads), "a session ran while the sequence was taken"
        holder.close()
        for thread in threads:
            thread.join(60)
        assert order == ["second", "third"]
        assert engine.gauges()["sessions_waiting"] == 0 and engine.gauges()["sequences_busy"] == 0


def test_a_session_waiting_for_a_sequence_can_be_cancelled():
    from srl_sdk.engines.llama_cpp import LlamaCppEngine

    with LlamaCppEngine("smollm2", n_ctx=512, n_threads=1, n_parallel=1) as engine:
        prompt = engine.render([{"role": "user", "content": "Name three colours."}])
        with engine.session() as holder:
            list(holder.stream(prompt, SamplingParams(max_tokens=2)))  # holds the only sequence
            cancel = threading.Event()
            ended: list = []

            def waiter() -> None:
                with engine.session() as session:
                    ended.extend(session.stream(prompt, SamplingParams(max_tokens=4), cancel))

            thread = threading.Thread(target=waiter)
            thread.start()
            thread.join(0.5)
            assert thread.is_alive() and not ended  # waiting for the sequence
            cancel.set()
            thread.join(10)
            assert not thread.is_alive()
            assert [e.finish_reason for e in ended] == ["cancelled"]
        assert engine.gauges()["sessions_waiting"] == 0


def test_a_prompt_longer_than_one_batch_is_read_in_pieces():
    """prefix_block=0 reads a prompt as one range; llama_decode takes at most n_batch tokens."""
    from srl_sdk.engines.llama_cpp import LlamaCppEngine

    with LlamaCppEngine("smollm2", n_ctx=1024, n_threads=1, n_parallel=1, n_batch=128, prefix_block=0) as engine:
        prompt = engine.render([{"role": "user", "content": "Repeat after me. " + "one two three four " * 60}])
        assert engine.count_tokens(prompt) > 128
        events = list(engine.stream(prompt, SamplingParams(max_tokens=3)))
        assert events[-1].finish_reason == "length" and len(events) == 4


def test_greedy_tokens_are_llama_cpp_pythons_own(llama_engine, problems):
    """The engine's own batching, session reuse and argmax give the tokens llama-cpp-python's
    `Llama.generate` gives on the same file: a thought, then its action after the thought is closed
    (the second call reuses the first call's cache on both sides)."""
    import llama_cpp

    raw = llama_cpp.Llama(model_path=llama_engine._llm.model_path, n_ctx=1024, n_threads=2, n_threads_batch=2,
                          flash_attn=llama_engine.flash_attn, verbose=False)

    def raw_tokens(prompt: str, n: int) -> list[int]:
        out = []
        for token in raw.generate(raw.tokenize(prompt.encode(), special=True), top_k=1, temp=0.0, repeat_penalty=1.0):
            out.append(token)
            if len(out) == n:
                return out
        return out

    differing = []
    try:
        for index, problem in enumerate(problems[:2]):
            prompt = llama_engine.render(step_messages(problem, [])) + THINK_OPEN
            with llama_engine.session() as session:
                thought = list(session.stream(prompt, SamplingParams(max_tokens=20)))
                then = prompt + "".join(e.text for e in thought) + "\n" + THINK_CLOSE + "\n"
                action = list(session.stream(then, SamplingParams(max_tokens=12)))
            ours = [[e.token_id for e in thought if e.token_id is not None],
                    [e.token_id for e in action if e.token_id is not None]]
            theirs = [raw_tokens(prompt, len(ours[0])), raw_tokens(then, len(ours[1]))]
            if ours != theirs:
                differing.append((index, ours, theirs))
    finally:
        raw.close()
    assert not differing, f"{len(differing)} of 2 problems differ from llama-cpp-python: {differing}"
