import json

import pytest

from srl_sdk.core.format import step_messages
from srl_sdk.core.instances import (
    DEFAULT_MIN_STEP,
    SplitReport,
    SRLInstance,
    StepRange,
    instances_to_jsonl,
    make_srl_instances,
    problem_id,
    split_file,
    write_jsonl,
)
from srl_sdk.core.splitting import ExpertSolution
from srl_sdk.errors import InputError

SOL = ExpertSolution(problem="P?", steps=["s1", "s2", "s3", "s4"], answer="72", id="gsm-1")
NATALIA = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)


def test_default_gives_n_minus_1_instances():
    insts = make_srl_instances(SOL)
    assert [i.step_index for i in insts] == [2, 3, 4]
    first = insts[0]
    assert first.previous_steps == ["s1"]
    assert first.target_step == "s2"
    assert (first.n_steps, first.is_final, first.answer) == (4, False, "72")
    assert first.id == "gsm-1#2" and first.source_id == "gsm-1"
    last = insts[-1]
    assert last.previous_steps == ["s1", "s2", "s3"]
    assert last.target_step == "s4 #### 72"
    assert last.is_final


def test_step_range_and_options():
    assert [i.step_index for i in make_srl_instances(SOL, min_step=1)] == [1, 2, 3, 4]
    assert make_srl_instances(SOL, min_step=1)[0].previous_steps == []
    assert [i.step_index for i in make_srl_instances(SOL, max_step=3)] == [2, 3]
    assert [i.step_index for i in make_srl_instances(SOL, max_step=99)] == [2, 3, 4]
    assert make_srl_instances(SOL, min_step=5) == []
    assert make_srl_instances(SOL, final_with_answer=False)[-1].target_step == "s4"
    no_answer = SOL.model_copy(update={"answer": None})
    assert make_srl_instances(no_answer)[-1].target_step == "s4"
    marked = SOL.model_copy(update={"steps": ["s1", "so 72 #### 72"]})
    assert make_srl_instances(marked)[-1].target_step == "so 72 #### 72"  # no second marker
    with pytest.raises(InputError):
        make_srl_instances(SOL, min_step=0)
    with pytest.raises(InputError):
        make_srl_instances(SOL, max_step=0)


def test_edge_sizes():
    one = ExpertSolution(problem="P", steps=["only"], answer="1")
    assert make_srl_instances(one) == []
    only = make_srl_instances(one, min_step=1)
    assert len(only) == 1 and only[0].target_step == "only #### 1" and only[0].is_final
    assert make_srl_instances(ExpertSolution(problem="P", steps=[], answer=None)) == []


def test_source_id_defaults_to_problem_hash():
    sol = SOL.model_copy(update={"id": None})
    inst = make_srl_instances(sol)[0]
    assert inst.source_id == problem_id("P?") == problem_id("  P? ")
    assert len(inst.source_id) == 12


def test_prompt_messages_match_the_step_protocol():
    inst = make_srl_instances(SOL)[1]
    assert inst.prompt_messages() == step_messages("P?", ["s1", "s2"])
    assert "Step 2: s2" in inst.prompt_messages()[-1]["content"]


def test_instance_roundtrip_jsonl(tmp_path):
    insts = make_srl_instances(SOL)
    lines = list(instances_to_jsonl(insts))
    assert all(line.endswith("\n") for line in lines)
    assert [SRLInstance.model_validate_json(line) for line in lines] == insts
    path = tmp_path / "out" / "inst.jsonl"
    assert write_jsonl(path, insts) == 3
    assert [SRLInstance.model_validate_json(line) for line in path.read_text().splitlines()] == insts


def _file(tmp_path, rows):
    path = tmp_path / "data.jsonl"
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8"
    )
    return path


def test_split_file_gsm8k_and_generic_rows_with_report(tmp_path):
    rows = [
        {"question": "Q1", "answer": NATALIA},  # 1: gsm8k, 2 steps
        '{"question": "broken',  # 2: malformed JSON
        {"problem": "Q2", "steps": ["a", "b", "c"], "answer": 5},  # 3: generic steps list
        {"problem": "Q3", "solution": "Step 1: x\nStep 2: y\n#### 9"},  # 4: answer from text
        {"problem": "Q4", "solution": "only one step #### 1"},  # 5: one step
        {"problem": "Q5", "solution": "a\nb"},  # 6: no answer
        {"problem": "Q6", "solution": "   "},  # 7: empty solution
        {"question": "  q1 ", "answer": NATALIA},  # 8: duplicate of line 1
        {"solution": "a\nb\n#### 1"},  # 9: no problem
        "",  # blank line: ignored
        "[1, 2]",  # 11: not an object
    ]
    records_iter, report = split_file(_file(tmp_path, rows), output="instances")
    assert isinstance(report, SplitReport) and report.read == 0  # filled while iterating
    records = list(records_iter)
    assert [r["id"] for r in records] == ["data-1#2", "data-3#2", "data-3#3", "data-4#2"]
    assert records[0]["target_step"].endswith(" #### 72")
    assert records[2]["target_step"] == "c #### 5"
    assert records[3]["previous_steps"] == ["x"] and records[3]["target_step"] == "y #### 9"
    assert report.read == 10
    assert (report.kept, report.written) == (3, 4)
    assert dict(report.dropped) == {
        "malformed_json": 2,
        "one_step": 1,
        "no_answer": 1,
        "empty_solution": 1,
        "duplicate_problem": 1,
        "missing_problem": 1,
    }
    assert report.bad_lines == [2, 9, 11]
    assert report.n_dropped == 7
    assert "read 10" in report.summary() and "malformed lines: 2, 9, 11" in report.summary()


def test_split_file_steps_output(tmp_path):
    rows = [
        {"question": "Q1", "answer": NATALIA, "id": "custom"},
        {"problem": "Q4", "solution": "only one step #### 1"},
    ]
    records_iter, report = split_file(_file(tmp_path, rows))  # output="steps" is the default
    records = list(records_iter)
    assert records[0] == {
        "problem": "Q1",
        "steps": [
            "Natalia sold 48/2 = <<48/2=24>>24 clips in May.",
            "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.",
        ],
        "answer": "72",
        "id": "custom",
    }
    assert records[1]["steps"] == ["only one step"]  # one step is fine for step output
    assert (report.kept, report.n_dropped) == (2, 0)


def _records(path, **kwargs):
    records, _ = split_file(path, output="instances", **kwargs)
    return list(records)


def test_split_file_options(tmp_path):
    rows = [{"problem": "Q", "solution": "a\nb"}, {"problem": "Q", "solution": "c\nd"}]
    path = _file(tmp_path, rows)
    assert len(_records(path, require_answer=False)) == 1  # second is a duplicate
    assert len(_records(path, require_answer=False, dedupe=False)) == 2
    assert _records(path, require_answer=False, min_step=1)[0]["step_index"] == 1
    assert len(_records(path, require_answer=False, dedupe=False, limit=1)) == 1
    regex_rows = _file(tmp_path, [{"problem": "Q", "solution": "a | b | c #### 3"}])
    assert [r["target_step"] for r in _records(regex_rows, style="regex", pattern=r"\|")] == ["b", "c #### 3"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"output": "tokens"},
        {"style": "words"},
        {"style": "regex"},
        {"style": "regex", "pattern": "("},
        {"min_step": 0},
        {"max_step": 0},
        {"limit": 0},
    ],
)
def test_split_file_bad_arguments_raise_at_call(tmp_path, kwargs):
    with pytest.raises(InputError):
        split_file(_file(tmp_path, [{"problem": "Q", "solution": "a\nb #### 1"}]), **kwargs)


def test_split_file_errors(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        split_file(tmp_path / "missing.jsonl")
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes('{"problem": "caf\xe9"}\n'.encode("latin-1"))
    records, _ = split_file(bad)
    with pytest.raises(InputError, match="UTF-8"):
        list(records)


# -- one k range for `srl data split` and training ----------------------------------------------


def test_step_range_is_the_one_definition_of_k():
    assert StepRange() == StepRange(min_step=DEFAULT_MIN_STEP, max_step=None) and DEFAULT_MIN_STEP == 2
    assert list(StepRange().targets(4)) == [2, 3, 4]  # the paper: N-1 instances
    assert list(StepRange(min_step=1).targets(4)) == [1, 2, 3, 4]
    assert list(StepRange(min_step=2, max_step=3).targets(4)) == [2, 3]
    assert list(StepRange(min_step=5).targets(4)) == []
    assert [i.step_index for i in make_srl_instances(SOL, min_step=2, max_step=3)] == list(StepRange.of(2, 3).targets(4))
    for bad in ({"min_step": 0}, {"max_step": 0}):
        with pytest.raises(InputError):
            StepRange.of(**bad)
    with pytest.raises(ValueError):  # pydantic's refusal, for recipes
        StepRange(min_step=0)


@pytest.mark.parametrize(("min_step", "max_step"), [(2, None), (1, None), (2, 3), (3, 5)])
def test_data_split_and_training_make_the_same_problem_k_pairs(tmp_path, gsm8k_path, min_step, max_step):
    from srl_sdk.training.data import DataConfig, load_trajectories, srl_examples

    sample = tmp_path / "gsm8k.jsonl"
    with gsm8k_path.open(encoding="utf-8") as src:
        sample.write_text("".join(next(src) for _ in range(30)), encoding="utf-8")
    records, _ = split_file(sample, output="instances", min_step=min_step, max_step=max_step)
    from_split = {(r["problem"], r["step_index"]) for r in records}
    step_range = StepRange(min_step=min_step, max_step=max_step)
    items, _ = load_trajectories(DataConfig(source="gsm8k", path=sample, step_range=step_range))
    from_training = {(r["problem"], r["step_index"]) for r in srl_examples(items, lambda messages: "", step_range)}
    assert from_split and from_split == from_training
    default_training = {(r["problem"], r["step_index"]) for r in srl_examples(items, lambda messages: "")}
    default_split = {(r["problem"], r["step_index"]) for r in split_file(sample, output="instances")[0]}
    assert default_training == default_split  # the same default range too


def test_data_split_cli_min_and_max_step(tmp_path):
    from typer.testing import CliRunner

    from srl_sdk.cli import app

    path = _file(tmp_path, [{"problem": "Q", "solution": "a\nb\nc\nd #### 4"}])
    runner = CliRunner()

    def ks(*flags: str) -> list[int]:
        result = runner.invoke(app, ["data", "split", str(path), "--output", "instances", *flags])
        assert result.exit_code == 0, result.output
        return [json.loads(line)["step_index"] for line in result.stdout.splitlines() if line.startswith("{")]

    assert ks() == [2, 3, 4]
    assert ks("--min-step", "1") == [1, 2, 3, 4]
    assert ks("--min-step", "2", "--max-step", "3") == [2, 3]
    assert runner.invoke(app, ["data", "split", str(path), "--min-step", "0"]).exit_code != 0
