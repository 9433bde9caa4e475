"""Cheap verification of the claims inside a step, starting with arithmetic.

Small models slip most often on arithmetic they state outright (`12 + 30 = 32`). Checking every
`expression = value` claim with an exact evaluator flags those steps for the user and for
training diagnostics at no model cost. The evaluator walks a whitelisted `ast` (never eval/exec)
and bounds exponents and length, because the text comes from models and users.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from fractions import Fraction

from .steps import CheckResult

__all__ = ["safe_eval", "check_arithmetic", "run_checks", "MAX_EXPR_CHARS", "MAX_EXPONENT"]

MAX_EXPR_CHARS = 200
MAX_EXPONENT = 100
MAX_BASE_BITS = 128  # numerator / denominator size of a power's base

Number = Fraction | float

_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)


def _literal(value: object) -> Fraction:
    if type(value) is int:
        return Fraction(value)
    if type(value) is float:
        # repr gives the shortest literal that round-trips, so '0.1' becomes exactly 1/10
        return Fraction(repr(value))
    raise ValueError(f"only numbers are allowed, not {type(value).__name__}")


def _power(base: Number, exp: Number) -> Number:
    if isinstance(exp, Fraction) and exp.denominator == 1:
        if abs(exp) > MAX_EXPONENT:
            raise ValueError(f"exponent {exp} is larger than {MAX_EXPONENT}")
        if isinstance(base, Fraction):
            if max(base.numerator.bit_length(), base.denominator.bit_length()) > MAX_BASE_BITS:
                raise ValueError("the base of a power is too large")
            if base == 0 and exp < 0:
                raise ValueError("zero cannot be raised to a negative power")
            return base ** int(exp)
    if abs(float(exp)) > MAX_EXPONENT:
        raise ValueError(f"exponent {exp} is larger than {MAX_EXPONENT}")
    if abs(float(base)) > 2.0**MAX_BASE_BITS:
        raise ValueError("the base of a power is too large")
    result = float(base) ** float(exp)
    if isinstance(result, complex):
        raise ValueError("the result is not a real number")
    return result


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        return _literal(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        operand = _eval(node.operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and isinstance(node.op, _BINOPS):
        left, right = _eval(node.left), _eval(node.right)
        op = node.op
        if isinstance(op, ast.Pow):
            return _power(left, right)
        if isinstance(op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ValueError("division by zero")
        if isinstance(op, ast.Add):
            return left + right
        if isinstance(op, ast.Sub):
            return left - right
        if isinstance(op, ast.Mult):
            return left * right
        if isinstance(op, ast.Div):
            return left / right
        if isinstance(op, ast.FloorDiv):
            quotient = left // right
            return Fraction(quotient) if isinstance(quotient, int) else quotient
        return left % right
    raise ValueError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def safe_eval(expr: str) -> Number:
    """Evaluate Python-syntax arithmetic exactly: numbers, + - * / // % **, unary +/-, ( ).

    Returns a Fraction (a float only after a non-integer power). Raises ValueError for anything
    else: names, calls, an expression over MAX_EXPR_CHARS, |exponent| > MAX_EXPONENT, a power
    base over MAX_BASE_BITS, division by zero, non-real results.
    """
    if not isinstance(expr, str):
        raise ValueError("the expression must be a string")
    expr = expr.strip()
    if not expr:
        raise ValueError("the expression is empty")
    if len(expr) > MAX_EXPR_CHARS:
        raise ValueError(f"the expression is longer than {MAX_EXPR_CHARS} characters")
    try:
        tree = ast.parse(expr, mode="eval")
        value = _eval(tree)
    except ValueError:
        raise
    except (SyntaxError, ZeroDivisionError, OverflowError, TypeError, RecursionError, MemoryError) as exc:
        raise ValueError(f"cannot evaluate {expr!r}: {exc}") from exc
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raise ValueError(f"{expr!r} has no finite value")
    return value


# ---- finding claims in text ------------------------------------------------------------------
#
# A line is tokenized into numbers, operators, parentheses, '=' and words. A maximal run of
# arithmetic tokens containing '=' is a claim chain; its segments are evaluated exactly. Anything
# doubtful (a number glued to letters, a run that starts mid-expression after a word, a result
# followed by 'cents' or 'thousand') is skipped: a false alarm on a correct step costs more trust
# than a missed slip.

_NOTE = re.compile(r"<<([^<>\n]*)>>")
_TOKEN = re.compile(
    r"""
    (?P<num>(?:\\?[$€£][ ]?)?(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:[ ]?%)?)
  | (?P<opx>(?<=[\d)%])[ \t]*[xX×][ \t]*(?=[\d(.$€£]))
  | (?P<op>\*\*|\^|[-+*/×÷·−–])
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<eq>=)
  | (?P<word>[^\W\d_]\w*)
  | (?P<ws>[ \t]+)
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_OP_MAP = {"×": "*", "·": "*", "÷": "/", "^": "**", "−": "-", "–": "-"}
_SIGNS = ("+", "-", "−", "–")
_EXPR_KINDS = ("num", "op", "lp", "rp", "eq")
# A run right after one of these words is the tail of a longer expression ('15 questions x 1/3 =
# 5', '12 x 1 and 1/4 = 15'); a result followed by a scale word is not the number it looks like
# ('$1 / 2 = 50 cents').
_OPERATOR_WORDS = frozenset("x times plus minus of by over divided multiplied per".split())
_SCALE_WORDS = frozenset(
    "cent cents percent thousand thousands million millions billion billions hundred hundreds "
    "dozen dozens k".split()
)


@dataclass
class _Tok:
    kind: str  # num, op, lp, rp, eq, word, other
    text: str
    start: int
    end: int
    raw: Fraction = Fraction(0)  # a number as written, before a % divides it by 100
    decimals: int = 0
    percent: bool = False


def _glued(text: str, start: int, end: int, after_op: bool) -> bool:
    """Whether the number at text[start:end] is part of a term ('8x', 'F2', '3rd', '6:48')."""
    before = text[start - 1] if start else " "
    after = text[end] if end < len(text) else " "
    if (before.isalnum() or before == "_") and not after_op:
        return True
    if after == "_":
        return True
    # '6:48', '16,0000', '1.2.3': digits joined by punctuation are a time, a typo or a version
    if before in ",:." and start >= 2 and text[start - 2].isdigit():
        return True
    if after in ",:." and text[end + 1 : end + 2].isdigit():
        return True
    if after.isalnum():
        m = _TOKEN.match(text, end)
        return not (m is not None and m.lastgroup == "opx")  # '5x3' is a product
    return False


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    for m in _TOKEN.finditer(text):
        kind, s = m.lastgroup or "other", m.group()
        if kind == "ws":
            continue
        if kind == "opx":
            toks.append(_Tok("op", "*", m.start(), m.end()))
        elif kind == "num":
            after_op = bool(toks) and toks[-1].kind == "op" and toks[-1].end == m.start()
            if _glued(text, m.start(), m.end(), after_op):
                toks.append(_Tok("word", s, m.start(), m.end()))
                continue
            digits = re.sub(r"[^\d.]", "", s)
            decimals = len(digits.partition(".")[2])
            toks.append(_Tok("num", digits, m.start(), m.end(), Fraction(digits), decimals, s.endswith("%")))
        else:
            toks.append(_Tok(kind, s, m.start(), m.end()))
    for i, t in enumerate(toks):  # "20% of 50": 'of' after a percentage multiplies
        if (
            t.kind == "word" and t.text.lower() == "of" and 0 < i < len(toks) - 1
            and toks[i - 1].kind == "num" and toks[i - 1].percent
            and toks[i + 1].kind in ("num", "lp")
        ):
            toks[i] = _Tok("op", "*", t.start, t.end)
    return toks


def _canon(toks: list[_Tok], *, percent: bool, group_tight: bool) -> str | None:
    """Python arithmetic for the tokens, or None when they are not one expression.

    percent: '%' divides by 100 (else it is only a label, as in '(80/400)*100 = 20%').
    group_tight: a fraction written without spaces after an operator is one number, as in
    '25 / 1/3 = 75' (the writer means 25 / (1/3)).
    """
    parts: list[str] = []
    prev: _Tok | None = None
    i = 0
    while i < len(toks):
        t = toks[i]
        if prev is not None and (
            (prev.kind in ("num", "rp") and t.kind == "lp") or (prev.kind == "rp" and t.kind == "num")
        ):
            parts.append("*")  # 325(.10) and (2)(3): implied product
        if t.kind == "num":
            if prev is not None and prev.kind == "num":
                return None  # two numbers side by side are not one expression
            if (
                group_tight and prev is not None and prev.kind == "op" and i + 2 < len(toks) + 0
                and toks[i + 1].text == "/" and toks[i + 2].kind == "num"
                and t.end == toks[i + 1].start and toks[i + 1].end == toks[i + 2].start
            ):
                parts.append(f"({t.text}/{toks[i + 2].text})")
                prev, i = toks[i + 2], i + 3
                continue
            parts.append(f"({t.text}/100)" if (percent and t.percent) else t.text)
        elif t.kind == "op":
            parts.append(_OP_MAP.get(t.text, t.text))
        elif t.kind in ("lp", "rp"):
            parts.append(t.text)
        else:
            return None
        prev, i = t, i + 1
    return "".join(parts)


@dataclass
class _Seg:
    toks: list[_Tok]
    values: list[Number]  # values[0] is the plain reading; the rest are lenient readings
    has_op: bool

    @property
    def value(self) -> Number:
        return self.values[0]

    @property
    def start(self) -> int:
        return self.toks[0].start

    @property
    def end(self) -> int:
        return self.toks[-1].end

    @property
    def literal(self) -> _Tok | None:
        """The number token when the segment is one number (with an optional sign)."""
        nums = [t for t in self.toks if t.kind == "num"]
        if len(nums) == 1 and all(t.kind == "num" or t.text in _SIGNS for t in self.toks):
            return nums[0]
        return None

    @property
    def operands(self) -> tuple[Fraction, ...]:
        return tuple(sorted(t.raw for t in self.toks if t.kind == "num"))


def _depth(toks: list[_Tok]) -> int:
    return sum(1 for t in toks if t.kind == "lp") - sum(1 for t in toks if t.kind == "rp")


def _trim_left(toks: list[_Tok]) -> list[_Tok]:
    """Left of '=': drop text up to an unmatched ')' (a '1)' label) and leading unmatched '('."""
    depth, cut = 0, 0
    for i, t in enumerate(toks):
        if t.kind == "lp":
            depth += 1
        elif t.kind == "rp":
            depth -= 1
            if depth < 0:
                depth, cut = 0, i + 1
    toks = toks[cut:]
    while toks and toks[0].kind == "lp" and _depth(toks) > 0:
        toks = toks[1:]
    return toks


def _trim_right(toks: list[_Tok]) -> list[_Tok]:
    """Right of '=': stop at an unmatched ')' or at an unclosed '(' ('12 (dollars')."""
    opens: list[int] = []
    for i, t in enumerate(toks):
        if t.kind == "lp":
            opens.append(i)
        elif t.kind == "rp":
            if not opens:
                return _trim_right(toks[:i])
            opens.pop()
    return toks[: opens[0]] if opens else toks


def _segment(toks: list[_Tok]) -> _Seg | None:
    if not toks or _depth(toks) != 0 or toks[-1].kind == "op":
        return None
    if toks[0].kind == "op" and toks[0].text not in _SIGNS:
        return None
    values: list[Number] = []
    seen: set[str] = set()
    for percent, group_tight in ((True, False), (False, False), (True, True), (False, True)):
        canon = _canon(toks, percent=percent, group_tight=group_tight)
        if canon is None:
            return None
        if canon in seen:
            continue
        seen.add(canon)
        try:
            value = safe_eval(canon)
        except ValueError:
            if not values:
                return None
            continue
        if value not in values:
            values.append(value)
    # a binary operator (or an implied product) makes a computation; a sign does not
    has_op = any(
        (t.kind == "op" and p.kind in ("num", "rp"))
        or (p.kind in ("num", "rp") and t.kind == "lp")
        or (p.kind == "rp" and t.kind == "num")
        for p, t in zip(toks, toks[1:])
    )
    return _Seg(toks, values, has_op)


def _fmt(v: Number) -> str:
    if isinstance(v, float):
        return f"{v:.10g}"
    if v.denominator == 1:
        return str(v.numerator)
    for places in range(1, 11):
        if (v * 10**places).denominator == 1:
            return f"{float(v):.{places}f}" if abs(v) < 10**15 else f"{float(v):.10g}"
    return f"{float(v):.10g}"


def _close(true: Number, claimed: Number, decimals: int | None) -> bool:
    """Equal within a relative 1e-6, or `claimed` is `true` rounded or truncated to `decimals`.

    Truncation counts because worked solutions floor counts ('17/3 = 5 loads', '100/6 = 16').
    """
    if isinstance(true, float) or isinstance(claimed, float):
        t, c = float(true), float(claimed)
        if abs(t - c) <= 1e-6 * max(abs(t), abs(c)):
            return True
        if decimals is None or decimals < 0:
            return False
        scale = 10.0**decimals
        return abs(t - c) <= 0.5 / scale * (1 + 1e-9) or abs(int(t * scale) / scale - c) < 1e-9
    if true == claimed or abs(true - claimed) <= Fraction(1, 10**6) * max(abs(true), abs(claimed)):
        return True
    if decimals is None or decimals < 0:
        return False
    scale = 10**decimals
    return abs(true - claimed) <= Fraction(1, 2 * scale) or Fraction(int(true * scale), scale) == claimed


def _claimed_readings(seg: _Seg) -> list[tuple[Number, int | None]]:
    lit = seg.literal
    if lit is None:
        return [(v, None) for v in seg.values]
    sign = -1 if any(t.kind == "op" and t.text != "+" for t in seg.toks) else 1
    readings: list[tuple[Number, int | None]] = [(sign * lit.raw, lit.decimals)]
    if lit.percent:  # '= 20%' may mean 0.2 or label the number 20
        readings.insert(0, (sign * lit.raw / 100, lit.decimals + 2))
    return readings


@dataclass
class _Claim:
    result: CheckResult
    operands: tuple[Fraction, ...]
    values: list[Number]
    claimed_raw: Fraction | None

    def same_as(self, other: "_Claim") -> bool:
        """The same arithmetic, e.g. a calculator note and the sentence around it."""
        return (
            self.operands == other.operands
            and self.claimed_raw == other.claimed_raw
            and any(v in other.values for v in self.values)
        )


def _claim(text: str, expr: _Seg, claimed: _Seg, claim_text: str) -> _Claim:
    readings = _claimed_readings(claimed)
    passed = any(_close(v, c, d) for v in expr.values for c, d in readings)
    expr_text = " ".join(text[expr.start : expr.end].split())
    claimed_text = " ".join(text[claimed.start : claimed.end].split())
    if passed:
        detail = f"{expr_text} = {claimed_text}"
    elif claimed.literal is None:
        detail = f"{expr_text} = {_fmt(expr.value)}, but {claimed_text} = {_fmt(claimed.value)}"
    else:
        detail = f"{expr_text} = {_fmt(expr.value)}, not {claimed_text}"
    lit = claimed.literal
    return _Claim(
        CheckResult(name="arithmetic", claim=claim_text, passed=passed, detail=detail),
        expr.operands,
        expr.values,
        lit.raw if lit is not None else None,
    )


def _visible_claims(text: str) -> list[_Claim]:
    out: list[_Claim] = []
    toks = _tokenize(text)
    i = 0
    while i < len(toks):
        if toks[i].kind not in _EXPR_KINDS:
            i += 1
            continue
        j = i
        while j < len(toks) and toks[j].kind in _EXPR_KINDS:
            j += 1
        run = toks[i:j]
        prev = toks[i - 1] if i else None
        before_prev = toks[i - 2] if i >= 2 else None
        nxt = toks[j] if j < len(toks) else None
        i = j
        if not any(t.kind == "eq" for t in run):
            continue
        raw: list[list[_Tok]] = [[]]
        for t in run:
            if t.kind == "eq":
                raw.append([])
            else:
                raw[-1].append(t)
        first = _trim_left(raw[0])
        after_word = prev is not None and prev.kind == "word"
        trimmed = len(first) != len(raw[0])
        if first and first[0].kind == "op" and (after_word or trimmed):
            first = []  # 'total - 5 = ...', '(7 * V) + (4 * 5) = ...': the expression began earlier
        elif first and prev is not None and after_word and not trimmed and (
            prev.end == first[0].start
            or prev.text.lower() in _OPERATOR_WORDS
            or (prev.text.lower() == "and" and before_prev is not None and before_prev.kind == "num")
        ):
            first = []  # 'x(3+4)' is a term; '15 questions x 1/3 = 5', '1 and 1/4 = ' began earlier
        segs = [_segment(first)] + [_segment(s) for s in raw[1:-1]] + [_segment(_trim_right(raw[-1]))]
        head, tail = segs[0], segs[-1]
        if head is not None and after_word and not trimmed and not head.has_op:
            segs[0] = None  # 'Week 2 = 35 + 35': the number belongs to the words before it
        if tail is not None and (
            text[tail.end : tail.end + 1].isalpha()
            or (nxt is not None and nxt.kind == "word" and nxt.text.lower() in _SCALE_WORDS)
        ):
            segs[-1] = None  # '(5/4)x', '= 50 cents'
        ref: _Seg | None = None
        for k in range(1, len(segs)):
            left, right = segs[k - 1], segs[k]
            if left is not None and left.has_op:
                ref = left
            if right is None:
                ref = None  # the chain is broken here
                continue
            if left is not None and (left.has_op or right.has_op):
                expr, claimed = (right, left) if (right.has_op and not left.has_op) else (left, right)
                out.append(_claim(text, expr, claimed, text[left.start : right.end]))
            elif ref is not None and left is not None and right.value != left.value:
                # '2*3 = 6 = 7': a later plain number restates the computed value
                out.append(_claim(text, ref, right, text[ref.start : right.end]))
    return out


def _note_claims(line: str) -> list[_Claim]:
    out: list[_Claim] = []
    for m in _NOTE.finditer(line):
        parts = m.group(1).split("=")
        if len(parts) < 2:
            continue
        # evaluate the note on its own text so positions in the detail line up
        body = f"{parts[0]}={parts[-1]}"
        toks = _tokenize(body)
        eq = next((k for k, t in enumerate(toks) if t.kind == "eq"), None)
        if eq is None:
            continue
        expr, claimed = _segment(toks[:eq]), _segment(toks[eq + 1 :])
        if expr is None or claimed is None or claimed.literal is None:
            continue
        out.append(_claim(body, expr, claimed, m.group()))
    return out


def check_arithmetic(text: str) -> list[CheckResult]:
    """One CheckResult per arithmetic claim in `text`; never raises.

    Finds `expr = value` claims (`48/2 = 24`, `5 x 3 = 15`, `$4 * 3 = $12`, `2,000 + 500 = 2,500`,
    chains `2*3 = 6 = 7`, `20% of 50 = 10`) and GSM8K calculator notes `<<48/2=24>>`; a visible
    claim that repeats a note on the same line is reported once. A claim passes when it is within
    a relative 1e-6 of the true value, or is the true value rounded or truncated to the claimed
    number of decimals. Claims that cannot be read as plain arithmetic (`2x = 10`,
    `20 gallons = 160 pints`) are skipped.
    """
    if not isinstance(text, str) or not text:
        return []
    results: list[CheckResult] = []
    try:
        for line in text.splitlines():
            if "=" not in line:
                continue  # no claim without '='
            notes = _note_claims(line) if "<<" in line else []
            results.extend(n.result for n in notes)
            unmatched = list(notes)
            for claim in _visible_claims(_NOTE.sub("", line) if "<<" in line else line):
                twin = next((n for n in unmatched if n.same_as(claim)), None)
                if twin is not None:
                    unmatched.remove(twin)  # the note already reported this claim
                    continue
                results.append(claim.result)
    except Exception:  # a checker must never break a step
        return results
    return results


def run_checks(action: str) -> list[CheckResult]:
    """Every check that applies to a step's action (arithmetic today; more plug in here)."""
    return check_arithmetic(action)
