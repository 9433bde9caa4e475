import sys
from fractions import Fraction

import pytest

from srl_sdk.core.answers import (
    answers_equal,
    answers_match,
    check_verifier,
    extract_answer,
    math_verify_available,
    normalize_answer,
    parse_number,
)
from srl_sdk.errors import ConfigError, MissingDependencyError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the total is \\boxed{72}.", "72"),
        ("first \\boxed{1} then \\boxed{2}", "2"),  # last one wins
        ("\\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),  # nested braces
        ("\\boxed{a{b{c}}d}", "a{b{c}}d"),
        ("\\boxed {5}", "5"),
        ("Natalia sold 72 clips.\n#### 72", "72"),
        ("x #### 1 #### 1,000\n", "1,000"),  # after the last marker
        ("steps\n####   \n 42 \n", "42"),
        ("The answer is 18.", "18"),
        ("So the final answer is: 3.5", "3.5"),
        ("Answer: $42", "$42"),
        ("**Answer:** 7", "7"),
        ("the answer is 1 and later the answer is 2.", "2"),
        ("#### 72 and \\boxed{5}", "5"),  # boxed outranks the marker
        ("The answer is 3\n#### 4", "4"),  # marker outranks prose
        ("3.14", None),
        ("", None),
        ("\\boxed{}", None),
        ("\\boxed{unclosed", None),
        ("####", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("junk", [None, 42, b"#### 1", ["#### 1"], "\\boxed{" * 1000, "}" * 50])
def test_extract_answer_never_raises(junk):
    assert extract_answer(junk) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("$1,000.50", "1000.50"),
        ("1,2", "1,2"),  # not a thousands separator
        ("1,234,567", "1234567"),
        ("\\boxed{\\frac{3}{4}}", "3/4"),
        ("\\text{ 5 apples}", "5 apples"),
        ("50%", "50"),
        ("50\\%", "50"),
        ("€ 12", "12"),
        ("£7", "7"),
        ("#### 72", "72"),
        ("  72.  ", "72"),
        ("$\\frac{1}{2}$", "1/2"),
        ("a   b", "a b"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("72", Fraction(72)),
        ("3.50", Fraction(7, 2)),
        (".5", Fraction(1, 2)),
        ("-0.25", Fraction(-1, 4)),
        ("+3", Fraction(3)),
        ("- 5", Fraction(-5)),
        ("−2", Fraction(-2)),  # unicode minus
        ("3/4", Fraction(3, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("\\dfrac{-3}{4}", Fraction(-3, 4)),
        ("-1 1/2", Fraction(-3, 2)),
        ("2 1/4", Fraction(9, 4)),
        ("1,000", Fraction(1000)),
        ("$1,234.5", Fraction(24690, 20)),
        ("-$5", Fraction(-5)),
        ("1e3", Fraction(1000)),
        ("2.5E-1", Fraction(1, 4)),
        ("40%", Fraction(40)),
        ("\\boxed{72}", Fraction(72)),
    ],
)
def test_parse_number(raw, expected):
    assert parse_number(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "abc", "72 apples", "3/0", "1 1/0", "1e99999", "1_000", "1,2", "1..2", "--5", "x=3", None, 7]
)
def test_parse_number_rejects(raw):
    assert parse_number(raw) is None


@pytest.mark.parametrize("variant", ["72", "72.0", "$72", "72.00", "\\boxed{72}", "#### 72", " 72. ", "+72"])
def test_answers_equal_all_spellings_of_72(variant):
    assert answers_equal(variant, "72")
    assert answers_equal("72", variant)


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("1,000", "1000", True),
        ("0.5", "1/2", True),
        ("\\frac{1}{2}", "0.50", True),
        ("-1 1/2", "-1.5", True),
        ("72", "73", False),
        ("0.333", "1/3", False),  # exact, no tolerance
        ("Yes", "yes", True),
        ("\\text{Monday}", "monday", True),
        ("Paris", "London", False),
        ("72", None, False),
        (None, None, False),
        ("", "", False),
        ("72", "72 apples", False),  # conservative: units are not stripped
    ],
)
def test_answers_equal(a, b, equal):
    assert answers_equal(a, b) is equal


# -- verifiers: "exact" (answers_equal) and "math" (math-verify) --------------------------------

# 12 (predicted, reference, same answer?) pairs of the kinds s1K-style references hold: units,
# radicals, polynomials, LaTeX fractions, equations, intervals, and near misses that must fail.
VERIFIER_PAIRS = [
    ("$18", "18 dollars", True),
    (r"\sqrt2/2", r"\frac{\sqrt{2}}{2}", True),
    ("(x+1)^2", "x^2+2x+1", True),
    ("0.5", r"\frac12", True),
    (r"\frac{3}{4}", "0.75", True),
    ("1,000", "1000", True),
    ("x = 5", "5", True),
    ("[1, 3)", "[1,3)", True),
    ("x+1", "x-1", False),
    ("1/3", "0.33", False),  # exact values only, no rounding tolerance
    ("18", "180", False),
    ("(1,2)", "(2,1)", False),
]


def _right(verifier: str) -> int:
    return sum(answers_match(pred, ref, verifier) is want for pred, ref, want in VERIFIER_PAIRS)


def test_exact_verifier_is_answers_equal():
    for pred, ref, _ in VERIFIER_PAIRS:
        assert answers_match(pred, ref, "exact") is answers_equal(pred, ref)
    assert _right("exact") == 6  # both plain numbers, and every near miss


@pytest.mark.parametrize(("pred", "ref", "want"), VERIFIER_PAIRS)
def test_math_verifier_pairs(pred, ref, want):
    pytest.importorskip("math_verify")
    assert answers_match(pred, ref, "math") is want
    assert answers_match(f"so \\boxed{{{pred}}}", f"#### {ref}", "math") is want  # markers are unwrapped first


def test_math_verifier_gets_all_twelve_pairs_right():
    pytest.importorskip("math_verify")
    assert (_right("math"), _right("exact")) == (12, 6)


@pytest.mark.parametrize(
    ("pred", "ref"),
    [("2x", "2"), (r"2\sqrt{3}", "2"), (r"\sqrt{2}", "2"), ("x", "3"), ("72", "73"), ("", ""), ("junk {{", "5")],
)
def test_math_verifier_rejects_partial_reads_and_junk(pred, ref):
    pytest.importorskip("math_verify")
    assert answers_match(pred, ref, "math") is False
    assert answers_match(None, ref, "math") is False


def test_math_verifier_works_off_the_main_thread():
    """math-verify's timeout is SIGALRM, main-thread only; elsewhere it runs without one."""
    pytest.importorskip("math_verify")
    import threading

    results = []
    worker = threading.Thread(target=lambda: results.append(answers_match(r"\sqrt2/2", r"\frac{\sqrt{2}}{2}", "math")))
    worker.start()
    worker.join(timeout=60)
    assert results == [True]


def test_auto_verifier_follows_the_installation(monkeypatch):
    assert answers_match(r"\sqrt2/2", r"\frac{\sqrt{2}}{2}") is math_verify_available()
    monkeypatch.setitem(sys.modules, "math_verify", None)  # as if not installed
    assert math_verify_available() is False
    assert answers_match("0.5", "1/2") is True  # auto falls back to answers_equal
    assert answers_match(r"\sqrt2/2", r"\frac{\sqrt{2}}{2}") is False
    with pytest.raises(MissingDependencyError, match=r"pip install 'srl-sdk\[math\]'"):
        answers_match("1", "1", "math")
    with pytest.raises(MissingDependencyError, match="math-verify is not installed"):
        check_verifier("math")
    with pytest.raises(ConfigError, match="unknown answer verifier"):
        check_verifier("fuzzy")
