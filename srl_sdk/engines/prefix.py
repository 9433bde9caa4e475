"""Prompt prefix reuse that never changes what a model writes.

Why this exists: llama.cpp (and onnxruntime-genai) may compute a token's keys, values and logits
with kernels whose rounding depends on how many tokens are evaluated together. llama-cpp-python's
own prefix cache keeps whatever prefix matched and evaluates the rest, and when the whole prompt
matched it evaluates the last token again alone; the logits of the same prompt then came out
different in the last bits depending on what the previous request was, and at temperature 1.0 (or
at a greedy near-tie) that changes the text. A seeded request was not reproducible, and on some
processors the test suite failed on its second identical call.

What depends on the chunking is the model file, the build and the processor. On this project's
machine with the shipped Q4_1 file, a token read in any chunk of two or more tokens gets the same
logits bit for bit, and only a one-token batch (llama.cpp's matrix-vector path) rounds otherwise;
quantization types that llama.cpp repacks for matrix-matrix kernels (Q4_0, IQ4_NL, Q4_K on x86)
process tokens in groups and need not behave so. The llama.cpp engine therefore checks the model it
loaded (`BatchScheduler.chunking_is_invariant`) and picks one of two rules:

- `AnyPrefix` where chunking does not matter: reuse whatever prefix an earlier prompt read, as
  llama-cpp-python does, and read the rest in as few calls as possible, never leaving a token to be
  read alone that a fresh evaluation would read with others.
- `AlignedPrefix` everywhere else, the rule below.

The aligned rule: a prompt is always evaluated in blocks aligned to fixed positions
(`[0, B)`, `[B, 2B)`, ... and a last partial block), so every token is computed in the same batch,
after the same earlier tokens, whatever the cache held before. Only *whole aligned blocks of an
earlier prompt* are reused: they were computed exactly as a fresh evaluation would compute them.
Tokens the model generated one at a time, and the partial last block of a prompt, are evaluated
again. What that costs against unrestricted reuse is measured in `benchmarks/prefix_reuse.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DEFAULT_BLOCK", "AlignedPrefix", "AnyPrefix"]

DEFAULT_BLOCK = 16
"""Tokens per aligned block: the cheapest of 16/32/64 in the driver's loop (docs/benchmarks.md,
"Prefix reuse"); smaller blocks lose less reuse at about the same speed per token."""


class AlignedPrefix:
    """Book-keeping of which cached tokens may be reused, and how to evaluate the rest.

    `block=0` turns reuse off: every prompt is evaluated from an empty cache (in one batch).
    A prompt's last chunk never holds a lone token when the prompt is longer than one block: a
    one-token batch takes another kernel path in llama.cpp (other logits), so
    such a remainder is evaluated together with the block before it. Every evaluation of a prompt
    then matches llama.cpp's own from-scratch evaluation wherever batch size does not matter.
    """

    def __init__(self, block: int = DEFAULT_BLOCK) -> None:
        if block < 0:
            raise ValueError("block must be >= 0 (0 turns prefix reuse off)")
        self.block = block
        self._reusable: list[int] = []  # leading tokens computed in whole aligned blocks

    def _last_chunk_start(self, length: int) -> int:
        """Where the prompt's last chunk starts: a function of its length only."""
        if self.block == 0 or length <= 1:
            return 0
        start = (length - 1) // self.block * self.block
        if length - start == 1 and start >= self.block:
            start -= self.block  # no lone last token: it joins the block before it
        return start

    def reusable_length(self, tokens: Sequence[int]) -> int:
        """How many leading tokens of `tokens` can be kept in the cache (a multiple of the block).

        Never beyond the start of the prompt's last chunk, so the last chunk (and with it the
        logits the first token is drawn from) is always evaluated the same way.
        """
        limit = min(len(self._reusable), self._last_chunk_start(len(tokens)))
        shared = 0
        while shared < limit and self._reusable[shared] == tokens[shared]:
            shared += 1
        return shared - shared % self.block if self.block else 0

    def chunks(self, start: int, end: int) -> list[tuple[int, int]]:
        """The `[a, b)` ranges that evaluate positions start..end-1 of a prompt of `end` tokens.

        `start` must come from `reusable_length` (0 or a block boundary before the last chunk).
        """
        last = max(start, self._last_chunk_start(end))
        out = []
        position = start
        while position < last:
            out.append((position, position + self.block))
            position += self.block
        if end > last:
            out.append((last, end))
        return out

    def evaluated(self, tokens: Sequence[int]) -> None:
        """Record that `tokens` (a whole prompt) was just evaluated with `chunks`."""
        length = len(tokens)
        whole = self._last_chunk_start(length)
        if self.block and length - whole == self.block:
            whole = length  # the last chunk was an ordinary full block
        self._reusable = list(tokens[:whole])

    def forget(self) -> None:
        """The cache no longer holds what was recorded (an error, a reset, another sequence)."""
        self._reusable = []

    def keep(self, length: int) -> None:
        """The cache was cut back to its first `length` tokens: whole blocks below that stay reusable."""
        if self.block:
            length -= length % self.block
        del self._reusable[length:]


class AnyPrefix:
    """Reuse of any prefix an earlier first prompt read in chunks, for a model whose kernels give a
    token the same result in any chunk of two or more tokens (the engine checks this at load).

    A whole prompt is read from where the reuse ends, in one range (the engine cuts it to its
    batch size); at least its last two tokens are always read, so no prompt token is ever read
    alone where a fresh evaluation would read it with others. Tokens the model generated (read
    one at a time) are never reused across requests."""

    def __init__(self) -> None:
        self._reusable: list[int] = []  # the last first prompt read in this sequence

    def reusable_length(self, tokens: Sequence[int]) -> int:
        limit = min(len(self._reusable), len(tokens) - 2)
        shared = 0
        while shared < limit and self._reusable[shared] == tokens[shared]:
            shared += 1
        return shared

    def chunks(self, start: int, end: int) -> list[tuple[int, int]]:
        return [(start, end)] if end > start else []

    def evaluated(self, tokens: Sequence[int]) -> None:
        self._reusable = list(tokens)

    def forget(self) -> None:
        self._reusable = []

    def keep(self, length: int) -> None:
        del self._reusable[length:]
