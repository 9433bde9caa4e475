import json
import time
from pathlib import Path

import pytest

from srl_sdk.core.answers import parse_number
from srl_sdk.core.splitting import (
    ExpertSolution,
    load_gsm8k,
    parse_expert_solution,
    split_solution,
    strip_calculator_notes,
)
from srl_sdk.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[1]
# the shared data folder sits beside the repository (CI clones the repo with ../shared next to it)
GSM8K_TRAIN = REPO_ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"

NATALIA = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)


def test_gsm8k_lines_keep_calculator_notes():
    assert split_solution(NATALIA) == [
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.",
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.",
    ]
    assert split_solution(NATALIA, "lines") == split_solution(NATALIA)


def test_calculator_notes_can_be_stripped():
    assert strip_calculator_notes("48/2 = <<48/2=24>>24") == "48/2 = 24"
    assert split_solution(NATALIA, keep_calculator_notes=False)[0] == "Natalia sold 48/2 = 24 clips in May."


def test_numbered_steps_with_multiline_bodies_and_labels_removed():
    text = (
        "Step 1: Find the May sales.\n"
        "48 / 2 = 24\n"
        "Step 2. Add them up.\n"
        "**Step 3:** 48 + 24 = 72\n"
        "#### 72"
    )
    assert split_solution(text) == [
        "Find the May sales.\n48 / 2 = 24",
        "Add them up.",
        "48 + 24 = 72",
    ]
    assert split_solution(text, "numbered") == split_solution(text)


def test_bare_numbered_outline_and_preamble():
    text = "We reason in order.\n1. a\n   more a\n2) b\n3. c\n#### 5"
    assert split_solution(text) == ["We reason in order.", "a\nmore a", "b", "c"]


def test_numbers_that_are_not_labels():
    # decimals and clock times at a line start are not step labels
    text = "2.5 * 5 = 12.5 hours\n8:00 PM is 20:00\n#### 12.5"
    assert split_solution(text) == ["2.5 * 5 = 12.5 hours", "8:00 PM is 20:00"]


def test_out_of_sequence_number_stays_in_body():
    assert split_solution("1. a\n2. b\n5. not a step") == ["a", "b\n5. not a step"]


def test_paragraphs():
    text = "para one\nstill one\n\n   \npara two\n#### 3"
    assert split_solution(text, "paragraphs") == ["para one\nstill one", "para two"]


def test_regex_separator_and_groups_do_not_leak():
    assert split_solution("A; B;; C", "regex", r";") == ["A", "B", "C"]
    assert split_solution("A; B;; C", "regex", r"(;)") == ["A", "B", "C"]
    assert split_solution("x THEN y THEN z\n#### 1", "regex", r"\s*THEN\s*") == ["x", "y", "z"]


def test_regex_style_errors():
    with pytest.raises(InputError):
        split_solution("a b", "regex")
    with pytest.raises(InputError, match="not a valid regular expression"):
        split_solution("a b", "regex", "(")


def test_auto_single_line_is_one_step():
    assert split_solution("Just one line. With two sentences.") == ["Just one line. With two sentences."]


@pytest.mark.parametrize("text", ["", "   ", "\n \n\t", "#### 5", "\n#### 5\n"])
def test_empty_gives_no_steps(text):
    assert split_solution(text) == []


def test_answer_line_is_never_a_step():
    assert split_solution("a\nb #### 4") == ["a", "b"]
    assert split_solution("a\r\nb\r\n#### 4\r\n") == ["a", "b"]


def test_bad_style_and_type():
    with pytest.raises(InputError):
        split_solution("a", "words")  # type: ignore[arg-type]  ("sentences" is a style now)
    with pytest.raises(InputError):
        split_solution(None)  # type: ignore[arg-type]


def test_parse_expert_solution():
    sol = parse_expert_solution("  How many?  ", NATALIA, id="n1")
    assert isinstance(sol, ExpertSolution)
    assert sol.problem == "How many?"
    assert len(sol.steps) == 2
    assert sol.answer == "72"
    assert sol.id == "n1"
    assert parse_expert_solution("q", NATALIA, answer="73").answer == "73"
    assert parse_expert_solution("q", "just text").answer is None
    with pytest.raises(InputError):
        parse_expert_solution("  ", NATALIA)


def _write(tmp_path, lines):
    path = tmp_path / "mini.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_gsm8k_small_file(tmp_path):
    row = json.dumps({"question": "Q?", "answer": NATALIA})
    path = _write(tmp_path, [row, "", row, row])
    sols = list(load_gsm8k(path))
    assert [s.id for s in sols] == ["mini-1", "mini-3", "mini-4"]
    assert all(s.answer == "72" and len(s.steps) == 2 for s in sols)
    assert len(list(load_gsm8k(path, limit=2))) == 2
    assert list(load_gsm8k(path, limit=0)) == []


@pytest.mark.parametrize("bad", ['{"question": "Q"', '["not", "an", "object"]', '{"question": "Q"}', '{"question": 1, "answer": "#### 1"}'])
def test_load_gsm8k_malformed_line_names_file_and_line(tmp_path, bad):
    good = json.dumps({"question": "Q?", "answer": NATALIA})
    path = _write(tmp_path, [good, bad])
    with pytest.raises(InputError) as info:
        list(load_gsm8k(path))
    assert f"{path}:2" in str(info.value)


def test_load_gsm8k_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        list(load_gsm8k(tmp_path / "nope.jsonl"))


def test_load_gsm8k_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"question": "caf\xe9", "answer": "#### 1"}\n'.encode("latin-1"))
    with pytest.raises(InputError, match="UTF-8"):
        list(load_gsm8k(path))


def test_gsm8k_train_full_file():
    """Every GSM8K train solution: one step per non-empty line before '####', answer numeric."""
    assert GSM8K_TRAIN.is_file(), (
        f"GSM8K train file missing at {GSM8K_TRAIN}; the shared data folder must sit beside the "
        "repository (../shared/data/gsm8k/train.jsonl)"
    )
    started = time.perf_counter()
    rows = [json.loads(line) for line in GSM8K_TRAIN.read_text(encoding="utf-8").splitlines() if line.strip()]
    solutions = list(load_gsm8k(GSM8K_TRAIN))
    assert len(rows) == len(solutions) == 7473
    for row, sol in zip(rows, solutions):
        before = row["answer"].rpartition("####")[0]
        n_lines = sum(1 for line in before.splitlines() if line.strip())
        assert len(sol.steps) == n_lines, sol.id
        assert len(split_solution(row["answer"])) == n_lines, sol.id  # "auto" agrees
        assert all("####" not in step for step in sol.steps), sol.id
        assert sol.answer is not None, sol.id
        assert parse_number(sol.answer) is not None, (sol.id, sol.answer)
    assert time.perf_counter() - started < 20
