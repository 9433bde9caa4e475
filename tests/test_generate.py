"""Rule-based expert trajectories (`srl data generate`): exact, deterministic, disjoint splits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from srl_sdk.cli import app
from srl_sdk.core.answers import extract_answer
from srl_sdk.core.checks import check_arithmetic
from srl_sdk.core.generate import (
    SPLITS,
    GenerateConfig,
    generate_splits,
    make_config,
    parse_ops,
    write_dataset,
)
from srl_sdk.errors import ConfigError
from srl_sdk.training.data import DataConfig, load_trajectories

SMALL = dict(train=60, validation=20, test=20, test_hard=20)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    write_dataset(make_config(**SMALL, seed=7), out)
    return out


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def skeleton_text(question: str) -> str:
    """The question without names: a crude check that templates did not hide a duplicate."""
    return re.sub(r"\b[A-Z][a-z]+\b", "N", question)


def test_same_seed_same_bytes_and_other_seed_differs(dataset, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    write_dataset(make_config(**SMALL, seed=7), again)
    write_dataset(make_config(**SMALL, seed=8), other)
    for name in [f"{s}.jsonl" for s in SPLITS] + ["report.json"]:
        assert (dataset / name).read_bytes() == (again / name).read_bytes(), name
    for split in SPLITS:
        assert (dataset / f"{split}.jsonl").read_bytes() != (other / f"{split}.jsonl").read_bytes()


def test_splits_have_the_requested_sizes_and_are_disjoint(dataset):
    questions: dict[str, set[str]] = {}
    for split in SPLITS:
        items = rows(dataset / f"{split}.jsonl")
        assert len(items) == SMALL[split]
        assert len({r["id"] for r in items}) == len(items)
        questions[split] = {" ".join(r["question"].lower().split()) for r in items}
        assert len(questions[split]) == len(items)
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            assert not questions[a] & questions[b], (a, b)


def test_arithmetic_skeletons_are_disjoint_across_splits():
    splits = generate_splits(make_config(**SMALL, seed=3))
    owner: dict[tuple, str] = {}
    for split, problems in splits.items():
        for problem in problems:
            assert problem.skeleton not in owner, (split, owner.get(problem.skeleton))
            owner[problem.skeleton] = split


def test_eval_splits_do_not_depend_on_the_train_size():
    small = generate_splits(make_config(**{**SMALL, "train": 10}, seed=1))
    large = generate_splits(make_config(**{**SMALL, "train": 80}, seed=1))
    for split in ("validation", "test", "test_hard"):
        assert [p.question for p in small[split]] == [p.question for p in large[split]]


def test_hard_split_is_longer_than_any_training_problem(dataset):
    longest_train = max(r["metadata"]["n_steps"] for s in ("train", "validation", "test") for r in rows(dataset / f"{s}.jsonl"))
    hard = rows(dataset / "test_hard.jsonl")
    assert longest_train == 4
    assert min(r["metadata"]["n_steps"] for r in hard) > longest_train
    assert {r["metadata"]["n_steps"] for r in hard} == {5, 6, 7}


def test_every_step_verifies_and_the_answer_is_the_last_result(dataset):
    for split in SPLITS:
        for row in rows(dataset / f"{split}.jsonl"):
            lines = row["answer"].split("\n")
            assert lines[:-1] == row["steps"] and lines[-1] == f"#### {extract_answer(row['answer'])}"
            assert len(row["steps"]) == row["metadata"]["n_steps"] == len(row["metadata"]["ops"])
            results = []
            for step in row["steps"]:
                claims = check_arithmetic(step)
                assert len(claims) == 1 and claims[0].passed, step
                number = int(step.split(" = ")[1].split()[0])
                assert 2 <= number <= 200
                results.append(number)
            assert extract_answer(row["answer"]) == str(results[-1])
            # one operation per step, and each step starts from an earlier result (a chain)
            known = [int(re.search(r"\d+", row["question"]).group())] + results
            for k, step in enumerate(row["steps"]):
                operands = [int(x) for x in re.findall(r"\d+", step.split(" = ")[0])]
                assert len(operands) == 2 and operands[0] in known[: k + 1], step


def test_load_trajectories_reads_every_row(dataset):
    for split in SPLITS:
        path = dataset / f"{split}.jsonl"
        for source in ("jsonl", "gsm8k"):
            items, report = load_trajectories(DataConfig(source=source, path=path))
            assert report.dropped == 0 and report.kept == SMALL[split], report.summary()
            assert all(item.steps[-1].endswith(f"#### {item.answer}") for item in items)
        original = rows(path)
        assert [i.problem for i in items] == [r["question"] for r in original]


def test_report_counts_match_the_files(dataset):
    report = json.loads((dataset / "report.json").read_text(encoding="utf-8"))
    assert report["config"]["seed"] == 7 and report["generator"].startswith("rules-")
    for split in SPLITS:
        info = report["splits"][split]
        items = rows(dataset / f"{split}.jsonl")
        assert info["count"] == len(items)
        assert sum(info["steps"].values()) == len(items)
        assert sum(info["ops"].values()) == sum(len(r["steps"]) for r in items)
        assert info["distractor_sentences"] == sum(r["metadata"]["distractors"] for r in items)
        assert info["answer_max"] == max(int(extract_answer(r["answer"])) for r in items)


def test_options_shape_the_problems():
    splits = generate_splits(make_config(train=30, validation=0, test=0, test_hard=0, ops=["+", "*"], distractors=0, seed=2))
    problems = splits["train"]
    assert all(set(p.ops) <= {"+", "*"} and p.distractors == 0 for p in problems)
    noisy = generate_splits(make_config(train=30, validation=0, test=0, test_hard=0, distractors=2, distractor_probability=1.0))
    assert all(p.distractors == 2 for p in noisy["train"])
    assert parse_ops("+, x ,÷") == ["+", "*", "/"]


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(min_steps=5, max_steps=3), "min_steps (5) is larger than max_steps (3)"),
        (dict(max_steps=5, hard_min_steps=5), "must be larger than max_steps"),
        (dict(ops=["/"], max_operand=10, hard_min_steps=5), "division only cannot make"),
        (dict(min_steps=1), "min_steps"),
        (dict(ops=["%"]), "ops"),
        (dict(distractor_probability=2.0), "distractor_probability"),
    ],
)
def test_bad_configs_are_clear_config_errors(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_config(**values)


def test_exhausted_number_space_is_a_config_error():
    config = make_config(train=500, validation=0, test=0, test_hard=0, ops=["+"], max_operand=3, max_steps=2)
    with pytest.raises(ConfigError, match="cannot make 500 different 2-step problems"):
        generate_splits(config)
    with pytest.raises(ConfigError, match="unknown operation"):
        parse_ops("+,^")


def test_default_config_is_valid_and_small():
    config = GenerateConfig()
    assert config.min_steps <= config.max_steps < config.hard_min_steps <= config.hard_max_steps
    assert config.max_operand <= 30 and config.max_factor <= 5


def test_cli_writes_the_files_and_the_report(tmp_path):
    runner = CliRunner()
    out = tmp_path / "data"
    args = ["data", "generate", "--out", str(out), "--train", "12", "--validation", "4", "--test", "4", "--hard", "4", "--seed", "5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "test_hard" in result.output and "wrote" in result.output
    for split, n in (("train", 12), ("validation", 4), ("test", 4), ("test_hard", 4)):
        assert len(rows(out / f"{split}.jsonl")) == n
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["splits"]["train"]["count"] == 12


@pytest.mark.parametrize(
    "args, message",
    [
        (["--min-steps", "4", "--max-steps", "2"], "min_steps (4) is larger than max_steps (2)"),
        (["--ops", "+,^"], "unknown operation '^'"),
        (["--source", "teacher"], "unknown --source 'teacher'"),
        (["--train", "-3"], "train"),
    ],
)
def test_cli_bad_input_is_one_readable_line(tmp_path, args, message):
    result = CliRunner().invoke(app, ["data", "generate", "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "error:" in text and message in text and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()
