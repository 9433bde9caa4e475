"""Compare a trace with the expert (issue 16): the similarity is exactly the SRL training reward's.

`core.compare.compare_trace` is what the server's POST /v1/traces/{id}/compare, the trace viewer,
`Reasoner.compare` and `srl traces compare` use; these tests hold it to the reward function TRL
trains with (`training.rewards.score_step`), on GSM8K's own expert steps, and run the client and
the command on a trace the real model made. The browser side is tests/test_ui_browser.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from srl_sdk.core.compare import compare_trace, expert_from_text, pair_similarity, read_expert_file
from srl_sdk.core.format import THINK_CLOSE, format_step_target
from srl_sdk.core.similarity import srl_step_reward, step_lines_for
from srl_sdk.core.splitting import split_solution
from srl_sdk.core.steps import Step, Trace
from srl_sdk.errors import InputError
from srl_sdk.training.rewards import score_step

TOLERANCE = 1e-9


def trace_of(actions: list[str], answer: str | None = None) -> Trace:
    steps = [Step(index=i, thought="thinking", action=a) for i, a in enumerate(actions, start=1)]
    return Trace(problem="p", steps=steps, answer=answer, finish_reason="final_answer" if answer else "max_steps")


def variants(step: str) -> list[str]:
    """Model-like actions around an expert step: verbatim, labelled, cut, altered, with a 2nd line."""
    return [step, f"Step 2: {step}", step[: len(step) // 2], step.replace("=", " equals "), f"{step}\nand more text",
            "something else entirely"]


def test_similarity_is_the_training_reward_on_gsm8k(gsm8k_rows):
    checked = 0
    for row in gsm8k_rows[:20]:
        expert = split_solution(row["answer"], "auto")
        lines = step_lines_for(expert)
        for step in expert:
            actions = variants(step)
            result = compare_trace(trace_of(actions), [step] * len(actions))
            assert result.step_lines == lines
            for action, compared in zip(actions, result.rows):
                reward = score_step(f"a thought{THINK_CLOSE}\n{action}", step, lines)  # what TRL is paid
                assert abs(compared.similarity - reward) <= TOLERANCE, (action, step)
                assert abs(compared.similarity - pair_similarity(action, step, lines)) <= TOLERANCE
                checked += 1
    assert checked >= 100


def test_multi_line_expert_steps_score_the_whole_action():
    expert = ["First we add.\n3 + 4 = 7", "Then 7 - 2 = 5.\n#### 5"]
    actions = ["First we add.\n3 + 4 = 7", "Then 7 - 2 = 5."]
    result = compare_trace(trace_of(actions), expert)
    assert result.step_lines == "all"
    assert result.rows[0].similarity == 1.0
    for action, step, row in zip(actions, expert, result.rows):
        reward = srl_step_reward(format_step_target("t", action), step)  # core's reward, unpenalised form
        assert abs(row.similarity - reward) <= TOLERANCE
    first_line_only = compare_trace(trace_of(actions), expert, step_lines="first")
    assert first_line_only.rows[0].similarity < 1.0  # what a first-line cut would have scored


def test_rows_pair_by_position_and_leave_missing_sides_empty():
    result = compare_trace(trace_of(["a = 1", "b = 2", "c = 3 #### 3"]), ["a = 1", "b = 2"])
    assert [r.index for r in result.rows] == [1, 2, 3]
    assert [r.similarity for r in result.rows] == [1.0, 1.0, None]
    assert result.rows[2].expert_step is None and result.mean_similarity == 1.0
    shorter = compare_trace(trace_of(["a = 1"]), ["a = 1", "b = 2", "#### 2"])
    assert shorter.rows[1].model_step is None and shorter.rows[1].similarity is None
    assert shorter.mean_similarity == 1.0


def test_answer_verdict_from_the_last_expert_step_or_given():
    right = compare_trace(trace_of(["7 - 2 = 5 #### 5"], answer="5"), ["He has 7 - 2 = 5 apples. #### 5"])
    assert right.expert_answer == "5" and right.answer_correct is True
    wrong = compare_trace(trace_of(["7 - 2 = 6 #### 6"], answer="6"), ["7 - 2 = 5"], expert_answer="5.0")
    assert wrong.answer_correct is False
    unknown = compare_trace(trace_of(["7 - 2 = 5"]), ["7 - 2 = 5"])
    assert unknown.answer_correct is None and unknown.expert_answer is None


def test_bad_expert_input_is_a_clear_error(tmp_path):
    trace = trace_of(["x"])
    for steps, words in (([], "no expert steps"), (["ok", "  "], "expert step 2 is empty"),
                         (["s"] * 257, "at most 256")):
        with pytest.raises(InputError, match=words):
            compare_trace(trace, steps)
    with pytest.raises(InputError, match="step_lines"):
        compare_trace(trace, ["x"], step_lines="some")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="empty"):
        expert_from_text("  \n ")
    bad = tmp_path / "bad.json"
    bad.write_text('{"steps": [1, 2]}')
    with pytest.raises(InputError, match="list of step strings"):
        read_expert_file(bad)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_expert_file(bad)
    with pytest.raises(InputError, match="cannot read"):
        read_expert_file(tmp_path / "missing.txt")


def test_expert_files_text_and_json(tmp_path):
    text = tmp_path / "expert.txt"
    text.write_text("Step 1: 3 + 4 = 7\nStep 2: 7 - 2 = 5\n#### 5\n")
    assert read_expert_file(text) == (["3 + 4 = 7", "7 - 2 = 5"], "5")
    listed = tmp_path / "expert.json"
    listed.write_text(json.dumps(["3 + 4 = 7", "7 - 2 = 5 #### 5"]))
    assert read_expert_file(listed) == (["3 + 4 = 7", "7 - 2 = 5 #### 5"], "5")
    listed.write_text(json.dumps({"steps": ["3 + 4 = 7"], "answer": 7}))
    assert read_expert_file(listed) == (["3 + 4 = 7"], "7")


@pytest.fixture(scope="module")
def solved(llama_engine, tmp_path_factory):
    """A trace the real model made (one short step), kept in a store for the client and the command."""
    from srl_sdk.client import Reasoner

    store = tmp_path_factory.mktemp("compare") / "traces.db"
    with Reasoner("smollm2", engine=llama_engine, store=store) as reasoner:
        trace = reasoner.solve("Tom has 3 apples and buys 4 more. How many apples does he have?", max_steps=1,
                               max_thought_tokens=8, max_action_tokens=16, temperature=0.0)
    return store, trace


EXPERT = "Tom has 3 + 4 = 7 apples.\n#### 7\n"


def test_reasoner_compare_on_a_real_trace(solved, llama_engine):
    from srl_sdk.client import Reasoner

    store, trace = solved
    with Reasoner("smollm2", engine=llama_engine, store=store) as reasoner:
        by_id = reasoner.compare(trace.id, EXPERT)
        by_list = reasoner.compare(trace, ["Tom has 3 + 4 = 7 apples."], expert_answer="7")
    assert by_id == by_list == compare_trace(trace, ["Tom has 3 + 4 = 7 apples."], expert_answer="7")
    assert by_id.rows[0].similarity == pair_similarity(trace.steps[0].action, "Tom has 3 + 4 = 7 apples.")
    assert by_id.answer_correct == (None if trace.answer is None else trace.answer.strip() == "7")


def srl(*args, home):
    env = {**os.environ, "SRL_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "srl_sdk.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_traces_compare_command(solved, tmp_path):
    store, trace = solved
    expert = tmp_path / "expert.txt"
    expert.write_text(EXPERT)
    out = srl("traces", "compare", trace.id, "--expert", str(expert), "--store", str(store), "--json", home=tmp_path)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert printed == compare_trace(trace, ["Tom has 3 + 4 = 7 apples."], expert_answer="7").model_dump(mode="json")
    table = srl("traces", "compare", trace.id, "--expert", str(expert), "--store", str(store), home=tmp_path)
    assert table.returncode == 0 and "mean similarity" in table.stdout and "expert: Tom has 3 + 4 = 7" in table.stdout
    missing = srl("traces", "compare", "no-such-id", "--expert", str(expert), "--store", str(store), home=tmp_path)
    assert missing.returncode == 1 and "no-such-id" in missing.stderr and "Traceback" not in missing.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    refused = srl("traces", "compare", trace.id, "--expert", str(empty), "--store", str(store), home=tmp_path)
    assert refused.returncode == 1 and "expert solution is empty" in refused.stderr
