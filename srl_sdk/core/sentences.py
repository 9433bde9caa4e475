"""Sentence splitting for math prose: human-written solutions cut into one step per sentence.

MATH-style solutions are paragraphs, not one step per line: `split_solution`'s line-based styles
give them 1 step (three of four measured solutions) or cut inside an `align*` block. A generic
sentence splitter (pysbd was tried) cuts at the period in `\\[ x = 5. \\]` and inside
`\\begin{align*}`, so the math has to be protected before any sentence rule runs, and with that
done the sentence rules left are a few lines. They are written out here so every cut is
explainable:

- never inside math: `$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]`, `\\begin{env}...\\end{env}`
  (nested, matched by name). `\\$` is an escaped dollar sign, never a delimiter. A single `$`
  follows pandoc's rule, made strict: the opening `$` has a non-space character on its right,
  and the next unescaped `$` on the same line closes it only if it has a non-space character
  on its left and no digit after it (else the opening `$` was currency: in LaTeX the next `$`
  always closes). So GSM8K's "$5 for a pen and $3 for a cap" and "15+23=$38" hold no math span;
  a GSM8K calculator note (`<<15+23=38>>`) is read as the number it computes;
- a sentence ends at `.`, `!` or `?` (plus closing quotes or brackets) followed by whitespace and
  a character that is not a lowercase letter; not after an abbreviation ("e.g.", "i.e.", "etc.",
  "Fig."), not after a list number at a line start ("1.") or "Step 2.", and never inside a
  decimal (`3.5` has no space after its period);
- a math block whose content ends with `.`, `!` or `?` (`\\[ x = 5. \\]`) ends its sentence too;
- a blank line always ends one (outside math).

Pure standard library: the core must stay importable everywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MathSpan", "math_spans", "has_math", "split_sentences", "ABBREVIATIONS"]

# Lowercased, without their final period. Conservative: a missed cut merges two sentences into one
# step; a wrong cut breaks a sentence in two.
ABBREVIATIONS = frozenset({
    "e.g", "i.e", "etc", "vs", "cf", "viz", "approx", "resp", "incl", "al", "ca", "mr", "mrs", "ms",
    "dr", "prof", "st", "jr", "sr", "fig", "figs", "eq", "eqs", "thm", "lem", "def", "prop", "cor",
    "sec", "ch", "ex", "vol", "no", "nos", "pp",
})

_CALCULATOR_NOTE = re.compile(r"<<[^<>\n]*>>")  # GSM8K's, as in core.splitting
_MASK = "\ue000"  # stands for a math character: not a space, not lowercase, not punctuation
_BEGIN = re.compile(r"\\begin\s*\{([^{}\n]+)\}")
_SENTENCE_END = re.compile(r"[.!?]+[\"'’”)\]]*(?=\s)")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_CLOSING = re.compile(r"[.!?][\"'’”)\]]*\s*(?:\\\\)?\s*$")  # how a math block's content may end a sentence
_LIST_NUMBER = re.compile(r"^[ \t]*[(\[]?(?:\d{1,3}|[A-Za-z])$")  # "1." / "(a." at a line start
_STEP_NUMBER = re.compile(r"\b(?:step|case|part|stage|method|example|problem)\s+(?:\d{1,3}|[ivx]{1,4}|[a-z])$", re.I)


@dataclass(frozen=True)
class MathSpan:
    """text[start:end] is math; `inner` is its content without delimiters."""

    start: int
    end: int
    inner_start: int
    inner_end: int


def _find_close(text: str, token: str, start: int, *, paragraph: bool = False) -> int | None:
    """Index of the first unescaped `token` at or after `start` (None: not closed).

    A backslash escapes the next character (`\\$`, `\\\\`), except that `token` itself may start
    with a backslash (`\\]`). paragraph=True stops at a blank line.
    """
    i, n = start, len(text)
    while i < n:
        if text.startswith(token, i):
            return i
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if paragraph and ch == "\n" and _BLANK_LINE.match(text, i):
            return None
        i += 1
    return None


def _inline_dollar_close(text: str, open_at: int) -> int | None:
    """The closing `$` of a `$...$` span opened at open_at (the strict pandoc rule), or None."""
    n = len(text)
    if open_at + 1 >= n or text[open_at + 1].isspace():
        return None
    i = open_at + 1
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "\n":  # inline math stays on its line: a `$` still open at the line end was currency
            return None
        if ch == "$":
            valid = not text[i - 1].isspace() and not (i + 1 < n and text[i + 1].isdigit())
            return i if valid else None
        i += 1
    return None


def _environment_end(text: str, begin: re.Match[str]) -> tuple[int, int] | None:
    """(start of the matching `\\end{name}`, index after it), nested same-name blocks counted."""
    name = re.escape(begin.group(1).strip())
    tokens = re.compile(r"\\(begin|end)\s*\{" + name + r"\}")
    depth = 1
    for m in tokens.finditer(text, begin.end()):
        depth += 1 if m.group(1) == "begin" else -1
        if depth == 0:
            return m.start(), m.end()
    return None


def math_spans(text: str) -> list[MathSpan]:
    """The math spans of `text`, left to right, not overlapping. Unclosed delimiters are text."""
    # a calculator note stands for the number it computes: "=$<<5*7=35>>35" is "=$35", currency
    text = _CALCULATOR_NOTE.sub(lambda m: "0" * len(m.group(0)), text)  # same length: offsets hold
    spans: list[MathSpan] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            nxt = text[i + 1 : i + 2]
            if nxt in ("[", "("):
                close = "\\]" if nxt == "[" else "\\)"
                at = _find_close(text, close, i + 2)
                if at is not None:
                    spans.append(MathSpan(i, at + 2, i + 2, at))
                    i = at + 2
                    continue
            begin = _BEGIN.match(text, i)
            if begin is not None:
                end = _environment_end(text, begin)
                if end is not None:
                    spans.append(MathSpan(i, end[1], begin.end(), end[0]))
                    i = end[1]
                    continue
            i += 2  # an escaped character (`\$`, `\\`, `\{`) or a command: never a delimiter
            continue
        if ch == "$":
            if text.startswith("$$", i):
                at = _find_close(text, "$$", i + 2)
                if at is not None:
                    spans.append(MathSpan(i, at + 2, i + 2, at))
                    i = at + 2
                    continue
                i += 2
                continue
            at = _inline_dollar_close(text, i)
            if at is not None:
                spans.append(MathSpan(i, at + 1, i + 1, at))
                i = at + 1
                continue
        i += 1
    return spans


def has_math(text: str) -> bool:
    """True when `text` holds at least one LaTeX math span (currency like "$5" does not count)."""
    return bool(math_spans(text))


def _masked(text: str, spans: list[MathSpan]) -> str:
    """`text` with every math span's characters replaced by _MASK (same length, no newlines)."""
    parts: list[str] = []
    pos = 0
    for span in spans:
        parts.append(text[pos : span.start])
        parts.append(_MASK * (span.end - span.start))
        pos = span.end
    parts.append(text[pos:])
    return "".join(parts)


def _next_visible(text: str, pos: int) -> str:
    """The first non-space character at or after pos ("" at the end)."""
    m = re.compile(r"\S").search(text, pos)
    return m.group(0) if m else ""


def _is_abbreviation_or_label(masked: str, punct_at: int) -> bool:
    """Does the period at punct_at close "e.g", a list number at a line start, or "Step 2"?"""
    if masked[punct_at] != ".":
        return False
    line_start = masked.rfind("\n", 0, punct_at) + 1
    before = masked[line_start:punct_at]
    token = before.split()[-1] if before.split() else ""
    if token.lstrip("([{\"'").lower() in ABBREVIATIONS:
        return True
    return bool(_LIST_NUMBER.match(before) or _STEP_NUMBER.search(before))


def split_sentences(text: str) -> list[str]:
    """Cut math prose into sentences (the rules are in the module docstring); [] for blank text."""
    if not text or not text.strip():
        return []
    spans = math_spans(text)
    masked = _masked(text, spans)
    cuts: set[int] = set()
    for m in _BLANK_LINE.finditer(masked):
        cuts.add(m.start())
    for m in _SENTENCE_END.finditer(masked):
        nxt = _next_visible(masked, m.end())
        if not nxt or nxt.islower() or _is_abbreviation_or_label(masked, m.start()):
            continue
        cuts.add(m.end())
    for span in spans:
        nxt = _next_visible(masked, span.end)
        if nxt and not nxt.islower() and _CLOSING.search(text, span.inner_start, span.inner_end):
            cuts.add(span.end)
    pieces: list[str] = []
    pos = 0
    for cut in sorted(cuts) + [len(text)]:
        piece = text[pos:cut].strip()
        if piece:
            pieces.append(piece)
        pos = cut
    return pieces
