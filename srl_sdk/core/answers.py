"""Final answers: find them in model or expert text, and decide whether two of them agree.

Accuracy, the outcome reward and the data pipeline all compare answers, and the same number is
written many ways (`72`, `72.00`, `$72`, `\\boxed{72}`, `#### 72`, `1,000` vs `1000`, `0.5` vs
`1/2`). Comparing exact Fractions rather than floats or strings makes every one of those agree
without accepting near misses. All functions here are total: they return None/False on junk
instead of raising, because they run on arbitrary model output.

Symbolic answers (`\\frac{\\sqrt{2}}{2}`, `(x+1)^2`, intervals) need a computer-algebra check:
`answers_match(..., verifier="math")` adds math-verify (the optional `srl-sdk[math]` extra,
imported only when used) on top of `answers_equal`.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction
from typing import Literal

from ..errors import ConfigError, require
from .format import FINAL_MARKER

__all__ = [
    "extract_answer",
    "normalize_answer",
    "parse_number",
    "answers_equal",
    "Verifier",
    "VERIFIERS",
    "answers_match",
    "check_verifier",
    "math_verify_available",
]

Verifier = Literal["exact", "math"]
"""How two final answers are compared: "exact" = `answers_equal`; "math" = `answers_equal`, else
math-verify's symbolic equivalence (needs `pip install 'srl-sdk[math]'`)."""
VERIFIERS: tuple[str, ...] = ("exact", "math")
MATH_TIMEOUT_S = 5  # math-verify's own default per parse / comparison

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(
    r"(?:\bthe\s+(?:final\s+)?answer\s+is\b\s*:?|\b(?:final\s+)?answer\s*:)\**[ \t]*",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"\.(?=\s|$)")
_MAX_EXPONENT = 1000  # '1e999999999' would otherwise build a gigantic Fraction


def _balanced_group(text: str, open_idx: int) -> tuple[str, int] | None:
    """Contents of the `{...}` whose `{` is at open_idx, and the index after its `}`."""
    depth = 0
    for i in range(open_idx, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_idx + 1 : i], i + 1
    return None


def _last_boxed(text: str) -> str | None:
    # one pass over the braces (a per-match scan is quadratic on text full of unclosed '\boxed{')
    closes: dict[int, int] = {}
    stack: list[int] = []
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            closes[stack.pop()] = i
    found: str | None = None
    for m in _BOXED.finditer(text):
        close = closes.get(m.end() - 1)
        if close is not None and text[m.end() : close].strip():
            found = text[m.end() : close]
    return found


def _clean_raw(ans: str) -> str | None:
    ans = ans.strip().strip("*").strip()
    if ans.endswith(".") and not ans.endswith(".."):
        ans = ans[:-1].rstrip()
    return ans or None


def extract_answer(text: str) -> str | None:
    """The final answer in `text`, as written (stripped, trailing period removed), or None.

    Priority: the last `\\boxed{...}` (nested braces handled), then the text after the last
    `####` (up to the end of its line), then the last "The answer is X" / "Answer: X".
    """
    if not isinstance(text, str) or not text:
        return None
    try:
        boxed = _last_boxed(text)
        if boxed is not None:
            return _clean_raw(boxed)
        if FINAL_MARKER in text:
            tail = text.rpartition(FINAL_MARKER)[2]
            for line in tail.splitlines():
                if line.strip():
                    return _clean_raw(line)
            return None
        matches = list(_ANSWER_IS.finditer(text))
        last = matches[-1] if matches else None
        if last is not None:
            rest = text[last.end() :].split("\n", 1)[0]
            return _clean_raw(_SENTENCE_END.split(rest, 1)[0])
    except Exception:  # pragma: no cover - defensive: never raise on model output
        return None
    return None


_TEXT_CMD = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_CURRENCY = re.compile(r"\\?[$€£]")


def _unwrap_boxed(s: str) -> str:
    while True:
        m = _BOXED.search(s)
        if not m:
            return s
        group = _balanced_group(s, m.end() - 1)
        if group is None:
            return s
        s = s[: m.start()] + group[0] + s[group[1] :]


def normalize_answer(ans: str) -> str:
    """A canonical spelling for comparison; conservative (units and words are kept).

    Unwraps `\\boxed{}` and `\\text{}`, turns `\\frac{a}{b}` into `a/b`, drops a leading `####`,
    currency signs, `%`, thousands separators (`1,000` -> `1000`, while `1,2` stays), LaTeX thin
    spaces and a trailing period, and collapses whitespace.
    """
    if not isinstance(ans, str):
        return ""
    s = ans.strip()
    if s.startswith(FINAL_MARKER):
        s = s[len(FINAL_MARKER) :]
    s = _unwrap_boxed(s)
    for _ in range(5):  # nested \text{\frac{..}{..}} and the like
        new = _FRAC.sub(r"\1/\2", _TEXT_CMD.sub(r"\1", s))
        if new == s:
            break
        s = new
    s = s.replace("\\,", "").replace("\\!", "").replace("\\ ", " ").replace("\\%", "%")
    s = s.replace("−", "-")  # unicode minus
    s = _CURRENCY.sub("", s)
    s = s.replace("%", "")
    s = _THOUSANDS.sub("", s)
    s = " ".join(s.split())  # also removes what `$...$` math delimiters left around the value
    while s.endswith(".") and not s.endswith(".."):
        s = s[:-1].rstrip()
    return s


_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_FRACTION = re.compile(r"([+-]?)\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)")
_MIXED = re.compile(r"([+-]?)(\d+)\s+(\d+)\s*/\s*(\d+)")


def _decimal(s: str) -> Fraction | None:
    if not _DECIMAL.fullmatch(s):
        return None
    mantissa, _, exp = s.lower().partition("e")
    if exp and abs(int(exp)) > _MAX_EXPONENT:
        return None
    return Fraction(s)


def parse_number(ans: str) -> Fraction | None:
    """The exact value of a numeric answer, or None when it is not a plain number.

    Accepts integers, decimals (`3.50`), scientific notation (`1e3`), fractions (`3/4`,
    `\\frac{3}{4}`), mixed numbers (`-1 1/2`), a leading sign, currency, `%` (the number itself,
    not divided by 100), thousands separators and the markers `normalize_answer` removes.
    """
    try:
        s = normalize_answer(ans)
        if not s:
            return None
        if s[0] in "+-" and len(s) > 1:
            s = s[0] + s[1:].lstrip()
        value = _decimal(s)
        if value is not None:
            return value
        m = _MIXED.fullmatch(s)
        if m:
            sign, whole, num, den = m.groups()
            if int(den) == 0:
                return None
            value = int(whole) + Fraction(int(num), int(den))
            return -value if sign == "-" else value
        m = _FRACTION.fullmatch(s)
        if m:
            sign, num, den = m.groups()
            d = Fraction(den)
            if d == 0:
                return None
            value = Fraction(num) / d
            return -value if sign == "-" else value
    except Exception:
        return None
    return None


def _as_answer(s: str) -> str:
    if FINAL_MARKER in s or "\\boxed" in s or "\\fbox" in s:
        extracted = extract_answer(s)
        if extracted is not None:
            return extracted
    return s


def answers_equal(a: str | None, b: str | None) -> bool:
    """True when two answers agree: exactly as numbers when both parse, else as normalized text.

    `72`, `72.0`, `$72`, `72.00`, `\\boxed{72}` and `#### 72` are all equal; so are `1,000` and
    `1000`, and `0.5` and `1/2`. Text comparison is case-insensitive. None never equals anything.
    """
    if a is None or b is None or not isinstance(a, str) or not isinstance(b, str):
        return False
    try:
        a, b = _as_answer(a), _as_answer(b)
        na, nb = parse_number(a), parse_number(b)
        if na is not None and nb is not None:
            return na == nb
        sa, sb = normalize_answer(a).casefold(), normalize_answer(b).casefold()
        return bool(sa) and sa == sb
    except Exception:  # pragma: no cover - defensive
        return False


# -- verifiers ----------------------------------------------------------------------------------


def math_verify_available() -> bool:
    """True when the optional math-verify package can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("math_verify") is not None


def check_verifier(verifier: str) -> None:
    """Refuse a verifier that cannot run here, before it is needed (e.g. before a training run).

    An unknown name is a ConfigError; "math" without math-verify is a MissingDependencyError whose
    message is the exact command to run: pip install 'srl-sdk[math]'.
    """
    if verifier not in VERIFIERS:
        raise ConfigError(f"unknown answer verifier {verifier!r}; use one of {', '.join(VERIFIERS)}")
    if verifier == "math":
        require("math_verify", "math", package="math-verify")


# A number or expression followed by words: "18 dollars", "\\frac{1}{2} inches" (3+ letters, so
# "2 ab" stays a product of variables).
_WORD_TAIL = re.compile(r"^(?P<head>.*?[^\s\\])\s+(?P<words>[A-Za-z]{3,}(?:\s+[A-Za-z]{2,})*)$")


def _as_latex(answer: str) -> str:
    """An extracted answer as math-verify reads it: one `$...$` LaTeX expression.

    math-verify reads LaTeX only between delimiters (outside them "2x" is read as 2), so the answer
    is wrapped; currency signs and `$` delimiters go first, and trailing words become `\\text{}`,
    which math-verify drops as a unit ("$18 dollars$" would be the product 18·d·o·l·l·a·r·s).
    """
    text = _CURRENCY.sub("", _as_answer(answer)).replace("−", "-").strip()
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1].rstrip()
    tail = _WORD_TAIL.match(text)
    if tail:
        text = f"{tail['head']}\\text{{ {tail['words']}}}"
    return f"${text}$"


def _math_verify_equal(predicted: str, reference: str) -> bool:
    """math-verify's verdict: the reference is its `gold`, the prediction its `target` (not symmetric).

    math-verify times out with SIGALRM, which only works on the main thread; elsewhere (a threaded
    server, a data-loader thread) it runs without a timeout rather than raising.
    """
    math_verify = require("math_verify", "math", package="math-verify")
    limit = MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold = math_verify.parse(_as_latex(reference), parsing_timeout=limit)
    target = math_verify.parse(_as_latex(predicted), parsing_timeout=limit)
    if not gold or not target:
        return False
    return bool(math_verify.verify(gold, target, timeout_seconds=limit))


def answers_match(
    predicted: str | None,
    reference: str | None,
    verifier: Verifier | Literal["auto"] = "auto",
) -> bool:
    """True when `predicted` agrees with `reference` under `verifier`.

    - "exact": `answers_equal` (numbers exactly, else normalised text).
    - "math": `answers_equal`, else math-verify's symbolic check (`\\sqrt2/2` = `\\frac{\\sqrt{2}}{2}`,
      `(x+1)^2` = `x^2+2x+1`); raises MissingDependencyError when math-verify is not installed,
      because silently grading symbolic answers as text would train on wrong rewards.
    - "auto": "math" when math-verify is installed, else "exact".

    Like `answers_equal` it never raises on junk answers: a parse failure is a mismatch.
    """
    if verifier == "auto":
        verifier = "math" if math_verify_available() else "exact"
    check_verifier(verifier)
    if answers_equal(predicted, reference):
        return True
    if verifier == "exact" or not isinstance(predicted, str) or not isinstance(reference, str):
        return False
    if not predicted.strip() or not reference.strip():
        return False
    try:
        return _math_verify_equal(predicted, reference)
    except Exception:  # math-verify on arbitrary model output: any failure is "no match"
        return False
