"""Human-written solutions (`srl data from-text`): the math-aware `sentences` style, auto, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from srl_sdk.cli import app
from srl_sdk.core.sentences import has_math, math_spans, split_sentences
from srl_sdk.core.splitting import detect_style, split_solution
from srl_sdk.data.from_text import FromTextConfig, convert_file
from srl_sdk.errors import InputError
from srl_sdk.training.data import DataConfig, load_trajectories

# MATH-style solutions: prose, display math across lines, the answer boxed
MATH_SOLUTIONS = [
    (
        "What is $\\frac{1}{2} + \\frac{1}{3}$?",
        "We put both fractions over the common denominator $6$. Then\n\\begin{align*}\n"
        "\\frac{1}{2} + \\frac{1}{3} &= \\frac{3}{6} + \\frac{2}{6}. \\\\\n&= \\frac{5}{6}.\n\\end{align*}\n"
        "So the sum is $\\boxed{\\frac{5}{6}}$.",
        ["We put both fractions over the common denominator $6$.",
         "Then\n\\begin{align*}\n\\frac{1}{2} + \\frac{1}{3} &= \\frac{3}{6} + \\frac{2}{6}. \\\\\n&= \\frac{5}{6}.\n\\end{align*}",
         "So the sum is $\\boxed{\\frac{5}{6}}$."],
    ),
    (
        "A pen costs \\$2.50. How much do 4 pens cost?",
        "Each pen costs \\$2.50, e.g. the price on the tag. Four pens cost \\[4 \\times 2.50 = 10.\\] "
        "The total is \\$$\\boxed{10}$.",
        ["Each pen costs \\$2.50, e.g. the price on the tag.", "Four pens cost \\[4 \\times 2.50 = 10.\\]",
         "The total is \\$$\\boxed{10}$."],
    ),
    (
        "Solve $x^2 = 9$ for $x > 0$.",
        "Taking square roots gives $x = \\pm 3$. Since $x > 0$, we keep $x = 3$. The answer is $\\boxed{3}$.",
        ["Taking square roots gives $x = \\pm 3$.", "Since $x > 0$, we keep $x = 3$.", "The answer is $\\boxed{3}$."],
    ),
    (
        "What is $3.5 \\cdot 2$?",
        "Note that $3.5 = 7/2$. Hence\n$$3.5 \\cdot 2 = 7.$$\nThe product is therefore $\\boxed{7}$.",
        ["Note that $3.5 = 7/2$.", "Hence\n$$3.5 \\cdot 2 = 7.$$", "The product is therefore $\\boxed{7}$."],
    ),
]


# -- the sentences style ---------------------------------------------------------------------


@pytest.mark.parametrize("problem, solution, expected", MATH_SOLUTIONS)
def test_math_solutions_cut_by_sentence_never_inside_math(problem, solution, expected):
    assert split_solution(solution, "sentences") == expected
    assert detect_style(solution) == "sentences"
    # the line-based auto of `srl data split` cuts these elsewhere (mid-sentence or inside a block)
    assert split_solution(solution) != expected


def test_display_math_blocks_are_never_cut():
    text = ("First \\[ a = 1. B = 2. \\] and then $$ c = 3. D = 4. $$ and \\begin{equation} e = 5. F = 6. \\end{equation} "
            "so it ends.")
    assert split_sentences(text) == [text]
    nested = "Look:\n\\begin{cases}\n\\begin{cases} x. Y \\end{cases}. Z\n\\end{cases}\nDone. Next."
    assert split_sentences(nested) == ["Look:\n\\begin{cases}\n\\begin{cases} x. Y \\end{cases}. Z\n\\end{cases}\nDone.",
                                       "Next."]
    # a block whose content ends its sentence ends the step
    assert split_sentences("We get \\[ x = 5. \\] Then y = 2.") == ["We get \\[ x = 5. \\]", "Then y = 2."]
    assert split_sentences("We get \\[ x = 5 \\] Then y = 2.") == ["We get \\[ x = 5 \\] Then y = 2."]


def test_escaped_dollars_and_currency_are_not_math():
    assert split_sentences("It costs \\$5. She pays \\$3.50. Then $x$ is 2.") == [
        "It costs \\$5.", "She pays \\$3.50.", "Then $x$ is 2."]
    assert not has_math("He paid $5 for a pen. Then $3 for a cap.")
    assert split_sentences("He paid $5 for a pen. Then $3 for a cap.") == ["He paid $5 for a pen.", "Then $3 for a cap."]
    assert [(s.start, s.end) for s in math_spans("a $x$ b \\$ c $$y$$")] == [(2, 5), (13, 18)]


def test_abbreviations_decimals_and_labels_do_not_end_sentences():
    assert split_sentences("Use a tool, e.g. A ruler. Then measure 3.25 cm, i.e. About 3 cm. Done.") == [
        "Use a tool, e.g. A ruler.", "Then measure 3.25 cm, i.e. About 3 cm.", "Done."]
    assert split_sentences("The value is 3.14159 here. Next 0.5 is half.") == ["The value is 3.14159 here.", "Next 0.5 is half."]
    assert split_sentences("Step 1. Add them. Step 2. Check it.") == ["Step 1. Add them.", "Step 2. Check it."]
    assert split_sentences("It is 5. so we stop.") == ["It is 5. so we stop."]  # lowercase: not a new sentence
    assert split_sentences("Wow! Really? Yes.") == ["Wow!", "Really?", "Yes."]
    assert split_sentences('He said "stop." Then he left.') == ['He said "stop."', "Then he left."]


def test_blank_lines_end_sentences_and_blank_text_gives_none():
    assert split_sentences("first part\n\nsecond part") == ["first part", "second part"]
    assert split_sentences("   \n ") == []
    assert split_solution("A. Then B.\n#### 5", "sentences") == ["A. Then B."]  # "A." is a list label
    assert split_solution("One step. Two step.\n#### 5", "sentences") == ["One step.", "Two step."]


def test_detect_style_keeps_gsm8k_and_numbered_layouts(gsm8k_rows):
    for row in gsm8k_rows:  # GSM8K's bare currency ("=$<<15+23=38>>38", "$5 ... $3") is no math
        assert detect_style(row["answer"]) == "lines"
        assert not math_spans(row["answer"])
    assert detect_style("Step 1: a.\nStep 2: b.\n#### 3") == "numbered"
    assert detect_style("Just one line. With two sentences.") == "sentences"


# -- converting files ----------------------------------------------------------------------------


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_convert_file_rows_report_and_training_reader(tmp_path, gsm8k_rows):
    rows = [{"problem": p, "solution": s} for p, s, _ in MATH_SOLUTIONS]
    rows += [{"question": r["question"], "answer": r["answer"]} for r in gsm8k_rows[:3]]
    rows += [{"problem": "No answer here", "solution": "We think. We stop."},
             {"problem": "Too short", "solution": "It is $\\boxed{4}$."},
             {"problem": "Separate answer", "solution": "Add them. Then halve it.", "answer": "7"}]
    path = write_rows(tmp_path / "human.jsonl", rows)
    out, report = convert_file(path)
    assert report.read == 10 and report.kept == 8
    assert report.dropped == {"no_answer": 1, "too_few_steps": 1}
    assert report.styles == {"sentences": 5, "lines": 3}
    assert [r["answer"] for r in out[:4]] == ["\\frac{5}{6}", "10", "3", "7"]
    assert out[0]["steps"] == MATH_SOLUTIONS[0][2]
    assert out[4]["steps"] == split_solution(gsm8k_rows[0]["answer"]) and out[4]["answer"] == "72"
    assert out[7]["answer"] == "7" and out[7]["steps"] == ["Add them.", "Then halve it."]
    assert out[0]["metadata"] == {"source": "human", "generator": "from-text-1", "split_style": "sentences",
                                  "style_requested": "auto", "file": "human.jsonl", "line": 1}
    target = tmp_path / "trajectories.jsonl"
    write_rows(target, out)
    items, drops = load_trajectories(DataConfig(source="jsonl", path=target))
    assert drops.dropped == 0 and len(items) == 8


def test_explicit_styles_and_errors(tmp_path):
    path = write_rows(tmp_path / "h.jsonl", [{"problem": "p", "solution": "a; b; c\n#### 3"}])
    (row,), _ = convert_file(path, FromTextConfig(style="regex", pattern=r";\s*"))
    assert row["steps"] == ["a", "b", "c"] and row["metadata"]["split_style"] == "regex"
    (row,), _ = convert_file(path, FromTextConfig(style="lines", min_steps=1))
    assert row["steps"] == ["a; b; c"]
    with pytest.raises(InputError, match="needs a pattern"):
        convert_file(path, FromTextConfig(style="regex"))
    text = tmp_path / "one.md"
    text.write_text("Double it: 2 * 4 = 8. Add one: 8 + 1 = 9.\n#### 9")
    with pytest.raises(InputError, match="--problem"):
        convert_file(text)
    (row,), _ = convert_file(text, FromTextConfig(problem="What is 2 * 4 + 1?"))
    assert row["steps"] == ["Double it: 2 * 4 = 8.", "Add one: 8 + 1 = 9."] and row["answer"] == "9"


def test_cli_preview_out_and_trl_export(tmp_path):
    path = write_rows(tmp_path / "human.jsonl", [{"problem": p, "solution": s} for p, s, _ in MATH_SOLUTIONS])
    runner = CliRunner()
    preview = runner.invoke(app, ["data", "from-text", str(path), "--preview", "1"])
    assert preview.exit_code == 0, preview.output
    text = " ".join(preview.output.split())
    assert "(3 steps, sentences, answer \\frac{5}{6})" in text and "1. We put both fractions" in text
    assert "kept 4" in text and "preview only" in text and not (tmp_path / "out.jsonl").exists()
    result = runner.invoke(app, ["data", "from-text", str(path), "--style", "sentences", "--out", str(tmp_path / "out.jsonl"),
                                 "--trl-out", str(tmp_path / "prm.jsonl"), "--preview", "0"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["steps"] for r in rows] == [expected for _, _, expected in MATH_SOLUTIONS]
    prm = [json.loads(line) for line in (tmp_path / "prm.jsonl").read_text().splitlines()]
    assert prm[2] == {"prompt": MATH_SOLUTIONS[2][0], "completions": MATH_SOLUTIONS[2][2], "labels": [True, True, True]}


@pytest.mark.parametrize("args, message", [
    (["--style", "words"], "unknown --style 'words'"),
    (["--style", "regex"], "needs a pattern"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    path = write_rows(tmp_path / "human.jsonl", [{"problem": "p", "solution": "a. B.\n#### 1"}])
    result = CliRunner().invoke(app, ["data", "from-text", str(path), *args])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "error:" in text and message in text and "Traceback" not in result.output
    missing = CliRunner().invoke(app, ["data", "from-text", str(tmp_path / "none.jsonl")])
    assert missing.exit_code == 1 and "no such file" in " ".join(missing.output.split())
