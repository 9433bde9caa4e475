import json
from fractions import Fraction
from pathlib import Path

import pytest

from srl_sdk.core.checks import check_arithmetic, run_checks, safe_eval
from srl_sdk.core.steps import CheckResult

GSM8K_TRAIN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k" / "train.jsonl"


# ---- safe_eval -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("48/2", Fraction(24)),
        ("0.1 + 0.2", Fraction(3, 10)),  # exact, not 0.30000000000000004
        ("1/3", Fraction(1, 3)),
        ("7 // 2", Fraction(3)),
        ("7 % 4", Fraction(3)),
        ("-(2 + 3) * +4", Fraction(-20)),
        ("2 ** 10", Fraction(1024)),
        ("2 ** -2", Fraction(1, 4)),
        ("(1/2) ** 3", Fraction(1, 8)),
        ("2 ** 100", Fraction(2**100)),
        ("  3.5*2 ", Fraction(7)),
    ],
)
def test_safe_eval_exact(expr, value):
    result = safe_eval(expr)
    assert isinstance(result, Fraction)
    assert result == value


def test_safe_eval_fractional_power_is_float():
    assert safe_eval("4 ** 0.5") == pytest.approx(2.0)


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('echo hi')",
        "open('x')",
        "a + 1",
        "[1, 2]",
        "1 if 1 else 2",
        "lambda: 1",
        "True + 1",
        "'a' * 3",
        "1j",
        "2 ** 101",  # exponent bound
        "(2 ** 200) ** 2",
        "99999999999999999999999999999999999999999999 ** 50",  # base bound
        "1 / 0",
        "1 // 0",
        "1 % 0",
        "0 ** -1",
        "(-8) ** 0.5",
        "1e999",
        "1" * 201,  # length bound
        "",
        "   ",
        "1 +",
        "2 << 3",
        "2 ^ 3",
        "(" * 150 + "1" + ")" * 150,
    ],
)
def test_safe_eval_rejects(expr):
    with pytest.raises(ValueError):
        safe_eval(expr)


def test_safe_eval_non_string():
    with pytest.raises(ValueError):
        safe_eval(12)  # type: ignore[arg-type]


# ---- check_arithmetic ------------------------------------------------------------------------

def _one(text):
    results = check_arithmetic(text)
    assert len(results) == 1, results
    assert isinstance(results[0], CheckResult) and results[0].name == "arithmetic"
    return results[0]


@pytest.mark.parametrize(
    "text",
    [
        "48/2 = 24",
        "12 + 30 = 42",
        "5 x 3 = 15",
        "5x3=15",
        "5 × 3 = 15",
        "$4 * 3 = $12",
        "2,000 + 500 = 2,500",
        "3.5*2=7",
        "20% of 50 = 10",
        "100%-40%=60%",
        "(80/400)*100 = 20%",  # % labels the result
        "-5 + 3 = -2",
        "(3 + 4) * 2 = 14",
        "325(.10)=32.5",  # implied product
        "10/3 = 3.33",  # rounded to the claimed decimals
        "2/3 = 0.667",
        "17/3 = 5",  # truncated count
        "12 = 3 * 4",  # value on the left
        "25 / 1/3 = 75",  # a tight fraction after an operator is one number
        "4 ÷ 2 = 2",
        "2^3 = 8",
    ],
)
def test_true_claims_pass(text):
    result = _one(text)
    assert result.passed is True, result
    assert result.claim.replace(" ", "") == text.replace(" ", "")


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("12 + 30 = 32", "12 + 30 = 42, not 32"),
        ("14*20=140", "14*20 = 280, not 140"),
        ("10 x 1,248 = 11,480", "10 x 1,248 = 12480, not 11,480"),
        ("3.5 * 2 = 8", "3.5 * 2 = 7, not 8"),
        ("10/3 = 3.5", "10/3 = 3.333333333, not 3.5"),
        ("1/4 = 0.4", "1/4 = 0.25, not 0.4"),
        ("$4 * 3 = $13", "$4 * 3 = 12, not $13"),
    ],
)
def test_false_claims_fail_with_detail(text, detail):
    result = _one(text)
    assert result.passed is False
    assert result.detail == detail


def test_calculator_note_and_visible_claim_counted_once():
    result = _one("Natalia sold 48/2 = <<48/2=24>>24 clips in May.")
    assert result.claim == "<<48/2=24>>"
    assert result.passed is True
    assert result.detail == "48/2 = 24"
    # visible 'x' and '$' differ from the note's spelling but it is the same claim
    assert len(check_arithmetic("she earned 0.2 x 50 = $<<0.2*50=10>>10.")) == 1


def test_wrong_calculator_note():
    result = _one("<<48/2=25>>")
    assert result.passed is False
    assert result.detail == "48/2 = 24, not 25"


def test_note_that_disagrees_with_visible_text_reports_both():
    results = check_arithmetic("she had 50-8 = <<52-8=44>>44 left")
    assert [(r.claim, r.passed) for r in results] == [("<<52-8=44>>", True), ("50-8 = 44", False)]


def test_chains():
    assert [(r.claim, r.passed) for r in check_arithmetic("2*3 = 6 = 6")] == [("2*3 = 6", True)]
    results = check_arithmetic("2*3 = 6 = 7")
    assert [(r.claim, r.passed) for r in results] == [("2*3 = 6", True), ("2*3 = 6 = 7", False)]
    results = check_arithmetic("48/2 = 24 = 12*2")
    assert [r.passed for r in results] == [True, True]
    results = check_arithmetic("Two days = 2 * 86 = 172 minutes")
    assert [(r.claim, r.passed) for r in results] == [("2 * 86 = 172", True)]


def test_several_claims_on_several_lines():
    results = check_arithmetic("First 2 + 2 = 4.\nThen 4 * 3 = 12, and 12 - 5 = 8.")
    assert [r.passed for r in results] == [True, True, False]


@pytest.mark.parametrize(
    "text",
    [
        "2x = 10",  # algebra
        "5x+3x=8x",
        "20 gallons = 160 pints",  # unit conversion, no computation
        "It costs $5 = a lot",
        "x = 5",
        "Week 1 + Week 2 = 35",
        "the sun sets at 6:00+48=6:48 PM",
        "$1 / 2 = 50 cents",  # scale word after the result
        "15 questions x 1/3 = 5 questions",  # expression began before the words
        "12 x 1 and 1/4 = 15",  # mixed number
        "200=(5/4)x",
        "the total - 5 = 8",
        "1/0 = 5",
        "2**1000 = 5",
        "a = b = c",
        "no claims here at all",
        "= = =",
        "",
    ],
)
def test_unreadable_or_non_arithmetic_claims_are_skipped(text):
    assert check_arithmetic(text) == []


@pytest.mark.parametrize(
    "junk",
    [None, 12, b"1+1=2", "=" * 5000, "1" * 5000 + "=1", "(" * 500 + "1=1", "<<" * 200 + "1=1" + ">>" * 200,
     "<<1+1=>>", "<<=2>>", "<<a=b>>", "9" * 300 + "*" + "9" * 300 + "=1", "\x00=\x00", "1e5 = 100000"],
)
def test_never_raises(junk):
    results = check_arithmetic(junk)
    assert isinstance(results, list)
    assert all(isinstance(r, CheckResult) for r in results)


def test_run_checks_is_arithmetic_for_now():
    assert run_checks("12 + 30 = 32") == check_arithmetic("12 + 30 = 32")


def test_gsm8k_calculator_notes_all_pass():
    """The calculator notes in GSM8K are machine-checked, so every one must pass here."""
    assert GSM8K_TRAIN.is_file(), f"GSM8K train file missing at {GSM8K_TRAIN}"
    rows = [json.loads(line) for line in GSM8K_TRAIN.read_text(encoding="utf-8").splitlines()[:1000]]
    notes = [r for row in rows for r in check_arithmetic(row["answer"]) if r.claim.startswith("<<")]
    assert len(notes) > 3000
    failed = [r for r in notes if not r.passed]
    assert failed == []
