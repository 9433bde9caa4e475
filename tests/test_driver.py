"""The step driver on the real model: stepwise and free decoding, continuing from given steps."""

import pytest

from srl_sdk import Step
from srl_sdk.core.format import THINK_OPEN, step_messages
from srl_sdk.errors import ContextOverflowError, InputError
from srl_sdk.reasoning import Driver, Finished, ReasonConfig, TokenDelta


@pytest.fixture(scope="module")
def problem(gsm8k_rows):
    return gsm8k_rows[0]["question"]


def test_stepwise_streams_typed_steps(llama_engine, problem):
    driver = Driver(llama_engine, ReasonConfig(max_steps=3, max_thought_tokens=48, max_action_tokens=48))
    events = list(driver.events(problem))
    steps = [e for e in events if isinstance(e, Step)]
    deltas = [e for e in events if isinstance(e, TokenDelta)]
    assert isinstance(events[-1], Finished)
    trace = events[-1].trace
    assert len(steps) >= 2
    assert trace.steps == steps
    assert [s.index for s in steps] == list(range(1, len(steps) + 1))
    for step in steps:
        assert step.source == "model"
        assert step.thought, "every model step carries its thought"
        assert step.action and "\n" not in step.action
        assert step.confidence is not None
        assert step.confidence.min_logprob <= step.confidence.mean_logprob <= 0
        assert step.tokens > 0 and step.latency_s > 0
        assert isinstance(step.checks, list)
    assert {d.phase for d in deltas} == {"thought", "action"}
    assert trace.finish_reason in {"final_answer", "max_steps", "repeated_step", "length", "stop"}
    assert trace.model and trace.engine == "llama.cpp"
    assert trace.usage["completion_tokens"] == sum(s.tokens for s in steps)
    # each step sends two prompts (thought, then action), each at least as long as the first one
    first_prompt = llama_engine.render(step_messages(problem, [])) + THINK_OPEN
    assert trace.usage["prompt_tokens"] >= 2 * len(steps) * llama_engine.count_tokens(first_prompt)


def test_max_steps_is_respected(llama_engine, problem):
    trace = Driver(llama_engine, ReasonConfig(max_steps=1, max_thought_tokens=24, max_action_tokens=24)).solve(problem)
    assert len(trace.steps) == 1
    assert trace.finish_reason in {"max_steps", "final_answer"}


def test_continue_from_edited_steps(llama_engine, gsm8k_rows):
    row = gsm8k_rows[0]
    expert_lines = [line for line in row["answer"].split("####")[0].splitlines() if line.strip()]
    given = [expert_lines[0], "Step 2: 48 + 24 = 99"]  # a person edited step 2 (wrongly)
    driver = Driver(llama_engine, ReasonConfig(max_steps=1, max_thought_tokens=24, max_action_tokens=32))
    trace = driver.solve(row["question"], given)
    assert [s.source for s in trace.steps[:2]] == ["given", "given"]
    assert trace.steps[1].action == "48 + 24 = 99"  # label stripped
    failed = [c for c in trace.steps[1].checks if c.passed is False]
    assert failed, "the wrong arithmetic in the edited step is flagged"
    assert len(trace.steps) == 3 and trace.steps[2].source == "model"


def test_given_final_step_ends_at_once(llama_engine):
    trace = Driver(llama_engine).solve("What is 2+3?", ["2 + 3 = 5", "#### 5"])
    assert trace.finish_reason == "final_answer"
    assert trace.answer == "5"
    assert all(s.source == "given" for s in trace.steps)


def test_free_mode_cuts_steps_from_one_call(llama_engine, problem):
    driver = Driver(llama_engine, ReasonConfig(mode="free", max_steps=3, max_total_tokens=120))
    trace = driver.solve(problem)
    assert trace.mode == "free"
    assert 1 <= len(trace.steps) <= 3
    for step in trace.steps:
        assert step.action.strip() and "\n" not in step.action


@pytest.mark.parametrize("bad", ["", "   \n\t", b"\xff\xfe bad bytes", None, 42])
def test_bad_problems_are_refused(llama_engine, bad):
    with pytest.raises(InputError):
        Driver(llama_engine).solve(bad)  # type: ignore[arg-type]


def test_problem_longer_than_the_context(llama_engine):
    problem = "How many apples? " * 600
    with pytest.raises(ContextOverflowError):
        Driver(llama_engine).solve(problem)


def test_empty_given_step_is_refused(llama_engine):
    with pytest.raises(InputError, match="given step 2 is empty"):
        Driver(llama_engine).solve("What is 2+3?", ["2+3=5", "  "])
