"""Training data: trajectories -> SRL / SFT / RLVR examples, the drop report, the split, recipes, run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from srl_sdk.core.format import COMPACT_SYSTEM_PROMPT, THINK_OPEN, step_messages
from srl_sdk.core.instances import StepRange
from srl_sdk.errors import ConfigError, InputError, TrainingError
from srl_sdk.training.data import (
    DataConfig,
    DropReport,
    default_gsm8k_path,
    load_trajectories,
    rlvr_examples,
    sft_examples,
    worked_thought,
    split_by_trajectory,
    srl_examples,
)
from srl_sdk.training.recipe import TrainRecipe, load_recipe
from srl_sdk.training.trainers import RUN_MARKER, latest_checkpoint, prepare_output_dir

REPO = Path(__file__).resolve().parents[1]


def render(messages):  # a readable stand-in for a chat template: data code only needs a callable
    return "\n".join(f"<{m['role']}>{m['content']}" for m in messages) + "\n<assistant>"


def write_jsonl(path: Path, lines: list[object]) -> Path:
    with path.open("wb") as handle:
        for line in lines:
            raw = line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()
            handle.write(raw + b"\n")
    return path


def test_bad_rows_are_counted_never_fatal(tmp_path: Path) -> None:
    good = {"problem": "What is 2+3?", "solution": "2 + 3 = 5\nSo the total is 5.\n#### 5"}
    path = write_jsonl(
        tmp_path / "experts.jsonl",
        [
            good,
            "{not json",
            b"\xff\xfe not utf-8",
            ["a", "list"],
            {"solution": "1\n2\n#### 2"},  # no problem
            {"problem": "Empty?", "solution": "#### 3"},  # no steps
            {"problem": "One step?", "solution": "4 + 4 = 8 #### 8"},
            {"problem": "No answer?", "solution": "a step\nanother step"},
            {"problem": "what is 2+3?  ", "solution": "2+3=5\nDone.\n#### 5"},  # duplicate problem
            {"problem": "Steps list", "steps": ["x = 1", "y = 2"], "answer": 3},
            {"problem": "No solution field"},
        ],
    )
    items, report = load_trajectories(DataConfig(source="jsonl", path=path))
    assert [i.problem for i in items] == ["What is 2+3?", "Steps list"]
    assert report.read == 11 and report.kept == 2
    assert report.counts == {
        "not_json": 1, "not_utf8": 1, "not_an_object": 1, "no_problem": 1, "empty_steps": 1,
        "one_step": 1, "no_answer": 1, "duplicate_problem": 1, "no_solution": 1,
    }
    assert "experts.jsonl:2" in report.examples["not_json"]
    assert "dropped 9" in report.summary()
    # the final step carries the answer marker the step protocol asks for
    assert items[0].steps == ["2 + 3 = 5", "So the total is 5. #### 5"]
    assert items[1].steps == ["x = 1", "y = 2 #### 3"] and items[1].answer == "3"


def test_a_file_with_nothing_usable_is_a_clear_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", ["nope", "{}"])
    with pytest.raises(InputError, match="no usable expert trajectories"):
        load_trajectories(DataConfig(source="jsonl", path=path))
    with pytest.raises(InputError, match="cannot read"):
        load_trajectories(DataConfig(source="jsonl", path=tmp_path / "missing.jsonl"))


def test_gsm8k_slice_becomes_srl_sft_rlvr_examples() -> None:
    assert default_gsm8k_path() == REPO.parent / "shared/data/gsm8k/train.jsonl"
    items, report = load_trajectories(DataConfig(source="gsm8k", limit=5))
    assert len(items) == 5 and report.kept == 5
    first = items[0]
    assert "<<" not in "".join(first.steps)  # calculator notes removed by default
    assert first.steps[-1].endswith("#### 72") and first.answer == "72"

    assert [r["step_index"] for r in srl_examples(items[:1], render)] == list(range(2, len(first.steps) + 1))  # paper: N-1
    srl = srl_examples(items[:1], render, StepRange(min_step=1))  # step 1 too, predicted from no steps
    assert [r["step_index"] for r in srl] == list(range(1, len(first.steps) + 1))
    for row in srl:  # prompt = the driver's step prompt + the <think> prefill, target = expert step k
        k = row["step_index"]
        assert row["prompt"] == render(step_messages(first.problem, first.steps[: k - 1])) + THINK_OPEN
        assert row["expert_step"] == first.steps[k - 1]

    whole = sft_examples(items[:1], render, "solution")
    assert len(whole) == 1 and whole[0]["completion"] == "\n".join(first.steps)
    per_step = sft_examples(items[:1], render, "step", thought="arithmetic")
    assert len(per_step) == len(first.steps)
    assert [row["prompt"] for row in per_step] == [row["prompt"] for row in srl]
    # the thought is the step's own arithmetic (GSM8K: "Natalia sold 48/2 = 24 clips in May.")
    assert per_step[0]["completion"] == "\n48/2 = 24\n</think>\n" + first.steps[0]
    assert per_step[-1]["completion"].startswith("\n48+24 = 72\n</think>\n")
    bare = sft_examples(items[:1], render, "step")  # the default: an empty thought
    assert bare[0]["completion"] == "\n</think>\n" + first.steps[0]
    drafted = sft_examples(items[:1], render, "step", thought="draft")  # think = a draft, then commit it
    assert drafted[0]["completion"] == f"\n{first.steps[0]}\n</think>\n{first.steps[0]}"
    assert worked_thought("She has 3 apples left.") == ""
    both = sft_examples(items[:2], render, "both", thought="draft")  # per problem: its step rows, then its solution
    n = len(first.steps)
    assert both[:n] == drafted and both[n] == whole[0]
    assert both[n + 1:] == sft_examples(items[1:2], render, "step", thought="draft") + sft_examples(items[1:2], render, "solution")

    rlvr = rlvr_examples(items, render)
    assert [r["answer"] for r in rlvr] == [i.answer for i in items]

    # data.prompt: compact puts the short system prompt in every kind of row, nothing else changes
    compact = {
        "srl": srl_examples(items[:1], render, StepRange(min_step=1), prompt="compact"),
        "sft": sft_examples(items[:1], render, "step", thought="draft", prompt="compact"),
        "rlvr": rlvr_examples(items[:1], render, prompt="compact"),
    }
    for kind, rows in compact.items():
        assert all(COMPACT_SYSTEM_PROMPT in r["prompt"] and "Example 1." not in r["prompt"] for r in rows), kind
    assert compact["srl"][1]["prompt"] == render(step_messages(first.problem, first.steps[:1], "compact")) + THINK_OPEN
    assert [r["completion"] for r in compact["sft"]] == [r["completion"] for r in drafted]
    assert [r["expert_step"] for r in compact["srl"]] == [r["expert_step"] for r in srl]


def test_rlvr_drops_non_numeric_answers_with_a_reason(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "e.jsonl",
        [
            {"problem": "p1", "solution": "a\nb\n#### 12"},
            {"problem": "p2", "solution": "a\nb", "answer": "x^2 + 1"},
        ],
    )
    items, report = load_trajectories(DataConfig(source="jsonl", path=path))
    rows = rlvr_examples(items, render, report)
    assert [r["answer"] for r in rows] == ["12"]
    assert report.counts["non_numeric_answer_for_rlvr"] == 1
    pytest.importorskip("math_verify")
    kept = DropReport()
    rows = rlvr_examples(items, render, kept, verifier="math")  # math-verify judges symbolic answers: keep them
    assert [r["answer"] for r in rows] == ["12", "x^2 + 1"] and kept.dropped == 0


def test_data_config_step_range_and_step_lines_validate() -> None:
    config = DataConfig.model_validate({"step_range": {"min_step": 1, "max_step": 4}, "step_lines": "all"})
    assert config.step_range == StepRange(min_step=1, max_step=4) and config.step_lines == "all"
    assert DataConfig().step_range == StepRange() and DataConfig().step_lines == "auto"
    for bad in ({"step_range": {"min_step": 0}}, {"step_range": {"min": 1}}, {"step_lines": "some"}):
        with pytest.raises(ValueError):
            DataConfig.model_validate(bad)


def test_split_is_by_trajectory_so_no_problem_leaks() -> None:
    config = DataConfig(source="gsm8k", limit=40, validation_size=8, seed=3)
    items, _ = load_trajectories(config)
    split = split_by_trajectory(items, config)
    assert len(split.validation) == 8 and len(split.train) == 32
    train_problems = {r["problem"] for r in srl_examples(split.train, render)}
    val_problems = {r["problem"] for r in srl_examples(split.validation, render)}
    assert train_problems and val_problems and not (train_problems & val_problems)
    val_steps = {r["expert_step"] for r in srl_examples(split.validation, render)}
    train_prompts = "".join(r["prompt"] for r in srl_examples(split.train, render))
    assert not any(step in train_prompts for step in val_steps if len(step) > 40)
    again = split_by_trajectory(items, config)  # seeded: the same split on resume
    assert [i.id for i in again.validation] == [i.id for i in split.validation]


def test_recipes_in_training_folder_validate() -> None:
    cpu = load_recipe(REPO / "training" / "cpu-smollm2-gsm8k.yaml")
    assert cpu.stages() == ["sft", "srl"] and cpu.model == "smollm2" and cpu.lora.r == 16
    assert len(cpu.lora.target_modules) == 7
    paper = load_recipe(REPO / "training" / "paper-qwen2.5-7b-s1k.yaml")
    assert paper.stages() == ["srl", "rlvr"] and paper.srl.num_generations == 8
    assert paper.srl.beta == 0.0 and paper.srl.learning_rate == 5e-7 and paper.use_vllm
    assert paper.data.step_lines == "all" and paper.rlvr.verifier == "math" and cpu.rlvr.verifier == "exact"


def test_unknown_recipe_field_names_its_location(tmp_path: Path) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\nsrl:\n  learnig_rate: 1.0e-5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"srl\.learnig_rate: unknown field"):
        load_recipe(bad)
    (tmp_path / "s.yaml").write_text("- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="YAML mapping"):
        load_recipe(tmp_path / "s.yaml")


def test_output_folder_with_another_run_is_refused(tmp_path: Path) -> None:
    recipe = TrainRecipe(name="t")
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="nothing to resume"):
        prepare_output_dir(out, recipe, resume=True, overwrite=False)
    prepare_output_dir(out, recipe, resume=False, overwrite=False)
    assert (out / RUN_MARKER).is_file() and (out / "recipe.yaml").is_file()
    (out / "srl").mkdir()
    with pytest.raises(TrainingError, match="--resume .* or --overwrite"):
        prepare_output_dir(out, recipe, resume=False, overwrite=False)
    prepare_output_dir(out, recipe, resume=True, overwrite=False)  # allowed, keeps the files
    assert (out / "srl").is_dir()
    prepare_output_dir(out, recipe, resume=False, overwrite=True)
    assert not (out / "srl").exists()
    stranger = tmp_path / "not-a-run"
    stranger.mkdir()
    (stranger / "precious.txt").write_text("keep me")
    with pytest.raises(TrainingError, match="holds no srl training run"):
        prepare_output_dir(stranger, recipe, resume=False, overwrite=True)
    assert (stranger / "precious.txt").is_file()


def test_latest_checkpoint_skips_one_cut_short(tmp_path: Path) -> None:
    for n in (1, 2, 3):
        (tmp_path / f"checkpoint-{n}").mkdir()
    (tmp_path / "checkpoint-1" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert (tmp_path / "incomplete-checkpoint-3").is_dir()


def test_stage_rewards_follow_the_recipe(tmp_path: Path, monkeypatch) -> None:
    """SRL scores the whole action on multi-line data, RLVR uses the stage's verifier; a missing
    math-verify stops `train` before it writes anything (not after a whole SRL stage)."""
    import sys

    from srl_sdk.errors import MissingDependencyError
    from srl_sdk.training.trainers import _reward, train

    steps = ["Set up the sum.\nThere are 3 + 4 = 7 apples.", "She eats 2.\nSo 7 - 2 = 5 are left. #### 5"]
    path = write_jsonl(tmp_path / "para.jsonl", [{"problem": "Apples?", "steps": steps, "answer": "5"}])
    recipe = TrainRecipe.model_validate({"method": "srl_rlvr", "data": {"source": "jsonl", "path": str(path), "validation_size": 0}})
    items, _ = load_trajectories(recipe.data)
    split = split_by_trajectory(items, recipe.data)
    reward = _reward("srl", recipe, split)  # step_lines auto: these expert steps have two lines
    assert reward([f"t</think>\n{steps[1]}"], [steps[1]]) == [1.0]
    assert _reward("rlvr", recipe, split)(["#### 5.0", "#### 6"], ["5", "5"]) == [1.0, 0.0]
    monkeypatch.setitem(sys.modules, "math_verify", None)  # as if srl-sdk[math] were not installed
    mathy = recipe.model_copy(update={"rlvr": recipe.rlvr.model_copy(update={"verifier": "math"})})
    with pytest.raises(MissingDependencyError, match=r"srl-sdk\[math\]"):
        _reward("rlvr", mathy, split)
    with pytest.raises(MissingDependencyError, match=r"srl-sdk\[math\]"):
        train(mathy, tmp_path / "run")
    assert not (tmp_path / "run").exists()
