"""Several sequences decoded in one llama.cpp batch: the llama.cpp engine's scheduler.

Why: one llama.cpp context used to serve one sequence at a time, so concurrent streams took turns
and evicted each other's KV cache (issue 15: 4 streams gave less aggregate throughput than 1).
Here one context holds `n_parallel` sequences, each in its own KV stream (`kv_unified=False`), and
one `llama_decode` carries the next token of every stream that is decoding, so one pass over the
weights serves several streams; prompts are read between those passes, a bounded amount at a
time. There is no scheduler thread: a stream that wants its next token runs the next batch (for
every stream) itself unless another stream's thread is running one (`BatchScheduler._next`). Alone,
a stream therefore decodes in its own thread with nothing in between, like a hand-written loop (a
scheduler thread in between was slower at one stream on 2 cores in this project's prototype runs:
its Python work competed with llama.cpp's threads for them; no committed benchmark measures it).

Every `llama_decode` of the process still runs on one thread (`decode_thread()`: `_decode` hands
the call over and waits), shared by all llama.cpp engines the process holds: llama.cpp's OpenMP
build makes each thread that calls it the master of a team of worker threads,
and once libgomp manages more threads than there are cores it cuts the time its threads spin at a
barrier to almost nothing (`gomp_throttled_spin_count_var`), so every one of the hundreds of
barriers in a token's graph goes through a futex sleep. With streams taking turns to run the batch
from their own threads, a second caller made every later decode ~20 % slower on 2 cores; handed to
one thread, the calls cost what they cost from the main thread (docs/benchmarks.md, "Decode
batching": a second calling thread alive, 0.79x). Code that calls llama-cpp-python itself in the
same process can run those calls on `decode_thread()` too.

What keeps the text of a stream the same as when it runs alone:
- every sequence has its own KV stream, so attention over one stream never sees another's cells
  (with one unified cache the same prompt came out different depending on where its cells lay);
- flash attention is off by default: on 2 threads its one-query path (a stream decoding alone)
  rounds differently from its several-query path once a stream passes 256 tokens, by up to 0.75
  in a logit, so a stream's text changed with its neighbours; without it, alone and batched gave
  the same logits bit for bit (docs/benchmarks.md, "Batch invariance": 1 and 2 threads, streams
  of 100-800 tokens);
- a prompt is always read in chunks of its own, one `llama_decode` per chunk with nothing else in
  it, never a lone token where a fresh read would read it with others (`within_batch`): with
  separate KV streams llama.cpp cuts a mixed batch into equal-length pieces per sequence
  (`split_equal`), which would cut a chunk differently depending on what ran beside it;
- each stream samples with its own llama.cpp sampler chain (its own seed).
Whether a matrix kernel rounds a row differently when other rows share its batch is the
processor's business; the tests and `benchmarks/serving_overhead.py` count how often a stream's
greedy text differed from its text alone (0 on this project's machines).

Slots and reuse. A slot is a sequence id with the tokens its KV stream holds (`history`). A
session (one request: the driver's steps and phases of one problem) keeps its slot, so each
phase evaluates only the tokens its prompt adds to what the slot already holds. A new session
takes the free slot whose cache serves its first prompt best (the shared system prompt), under the
rule of reuse the loaded model allows (`srl_sdk.engines.prefix`: any prefix where a token's
logits do not depend on its chunk, checked at load by `chunking_is_invariant`; else only whole
aligned blocks), so a request's text never depends on what an earlier request left in the cache.
When every slot is busy, a new session waits for one, first come first served.
"""

from __future__ import annotations

import codecs
import ctypes
import math
import os
import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from srl_sdk.engines.base import SamplingParams, StopMatcher, TokenEvent
from srl_sdk.engines.prefix import AlignedPrefix, AnyPrefix
from srl_sdk.errors import EngineError

__all__ = ["BatchScheduler", "Slot", "decode_thread", "within_batch", "token_logprob"]

CANCEL_CHECK_S = 0.1  # how often a session waiting for a slot looks at its cancel event

PREFILL_PER_STEP = 128
"""Prompt tokens read between two tokens of the streams that are decoding (`n_batch` when none
is): a long prompt then delays the others' next token by one 128-token pass, not a whole read."""


_decode_thread: ThreadPoolExecutor | None = None
_decode_thread_lock = threading.Lock()


def _forget_decode_thread() -> None:
    global _decode_thread
    _decode_thread = None  # a forked child has no such thread


os.register_at_fork(after_in_child=_forget_decode_thread)


def decode_thread() -> ThreadPoolExecutor:
    """The process's one caller of llama.cpp's compute (see the module's docstring: a second OpenMP
    master thread makes libgomp throttle every thread's barrier spin)."""
    global _decode_thread
    with _decode_thread_lock:
        if _decode_thread is None:
            _decode_thread = ThreadPoolExecutor(1, thread_name_prefix="llama-decode")
        return _decode_thread


def token_logprob(logits: Any, token: int, scratch: Any) -> float:
    """log p(token) = logit - logsumexp(logits), in float32, using `scratch` (a float32 array of the
    vocabulary's size) so that no array is allocated per token."""
    import numpy as np

    peak = logits.max()
    np.subtract(logits, peak, out=scratch)
    np.exp(scratch, out=scratch)
    return float(logits[token] - peak) - math.log(float(scratch.sum()))


def within_batch(chunks: Sequence[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """The same ranges, each longer than `limit` (the context's n_batch) cut into `limit`-token
    pieces: one `llama_decode` takes at most n_batch tokens (prefix_block 0 and `AnyPrefix` read a
    whole prompt as one range). A range is never cut so that its last piece holds one token: a
    one-token batch takes llama.cpp's matrix-vector path, which rounds differently."""
    out = []
    for start, end in chunks:
        pieces = [(a, min(a + limit, end)) for a in range(start, end, limit)]
        if len(pieces) > 1 and pieces[-1][1] - pieces[-1][0] == 1:
            (a, b), (_, c) = pieces[-2], pieces[-1]
            pieces[-2:] = [(a, b - 1), (b - 1, c)]
        out.extend(pieces)
    return out


@dataclass
class Slot:
    """One sequence of the context: what its KV stream holds and who uses it."""

    seq: int
    prefix: AlignedPrefix | AnyPrefix
    history: list[int] = field(default_factory=list)  # tokens at positions 0..len-1 of this stream
    owner: object | None = None
    used: int = 0  # when it was last taken (least recently used among equals is reused first)


@dataclass
class _Job:
    """One engine call in progress on a slot: read `tokens[start:]`, then sample up to `budget`."""

    slot: Slot
    tokens: list[int]
    chunks: deque[tuple[int, int]]
    params: SamplingParams
    budget: int
    cancel: threading.Event | None
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    sampler: Any = None
    matcher: StopMatcher | None = None
    decoder: Any = None
    produced: int = 0
    next_token: int | None = None  # sampled, to be evaluated in the next batch
    aligned_end: int = 0  # the first prompt's canonical reading: record it when the last chunk is read
    trimmed: bool = False  # the slot's cache was cut back to what this job reuses
    closed: bool = False  # the reader went away
    finished: bool = False


class BatchScheduler:
    """Owns a llama.cpp context with `n_parallel` sequences and decodes them together."""

    def __init__(self, llm: Any, llama_cpp: Any, *, n_ctx: int, n_parallel: int, n_threads: int, n_batch: int,
                 flash_attn: bool, block: int, eog: set[int], reuse: str = "auto") -> None:
        """`llm`: the loaded `llama_cpp.Llama` (its model, vocabulary and LoRA adapter are used; its
        own small context is not). `n_ctx`: tokens per sequence. `reuse`: "any" (`AnyPrefix`),
        "aligned" (`AlignedPrefix(block)`) or "auto" (any where `chunking_is_invariant`);
        `block` 0 turns reuse across requests off whatever `reuse` says."""
        self._l = llama_cpp
        self._llm = llm
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * n_parallel
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_parallel
        params.kv_unified = False
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        if not ctx:
            raise EngineError(f"llama.cpp could not create a context of {n_parallel} x {n_ctx} tokens; "
                              "lower n_ctx or n_parallel")
        self._ctx = ctx
        adapter = getattr(llm, "_lora_adapter", None)
        if adapter is not None:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
            scales = (ctypes.c_float * 1)(getattr(llm, "lora_scale", 1.0))
            if llama_cpp.llama_set_adapters_lora(ctx, adapters, 1, scales):
                llama_cpp.llama_free(ctx)
                raise EngineError("llama.cpp could not apply the LoRA adapter to the batch context")
        self._memory = llama_cpp.llama_get_memory(ctx)
        self.n_ctx = llama_cpp.llama_n_ctx_seq(ctx) if hasattr(llama_cpp, "llama_n_ctx_seq") else n_ctx
        self.n_batch = n_batch
        self.n_vocab = llm.n_vocab()
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._decoder = decode_thread()
        import numpy as np

        self._scratch = np.empty(self.n_vocab, dtype=np.float32)
        self._eog = eog
        self._clock = 0
        self._waiting: deque[object] = deque()  # sessions waiting for a slot, in arrival order
        self._jobs: list[_Job] = []
        self._rotation = 0  # rotates which prompt is read first (no stream starves)
        self._cond = threading.Condition()  # slots, the waiting line and the job list
        self._turns = threading.Condition()  # who runs the next batch
        self._stepping = False
        self._closing = False
        # prompt tokens read, sampled tokens fed back, llama_decode calls, and sampled tokens that
        # shared their call with another stream's (the batching at work)
        self.counts = {"prompt_tokens": 0, "sampled_tokens": 0, "batches": 0, "shared_tokens": 0}
        self.block = block
        if block == 0 or reuse == "aligned" or (reuse == "auto" and not self.chunking_is_invariant()):
            self.reuse = "aligned" if block else "off"
            self.slots = [Slot(seq, AlignedPrefix(block)) for seq in range(n_parallel)]
        else:
            self.reuse = "any"
            self.slots = [Slot(seq, AnyPrefix()) for seq in range(n_parallel)]
        self.counts["batches"] = 0  # the probe's calls are not the engine's work

    def chunking_is_invariant(self) -> bool:
        """Whether this model, build and processor give a token the same logits bit for bit whatever
        chunk of two or more tokens it is read in: a 48-token probe read whole, and in chunks of
        2 to 27 tokens (sizes that fall on and off the 4- and 8-token groups of repacked kernels)."""
        import numpy as np

        lib = self._l
        vocab = lib.llama_model_get_vocab(self._llm._model.model)
        probe = [t for t in range(1000, 1000 + 48) if not lib.llama_vocab_is_control(vocab, t)][:48]
        whole = self.last_logits(probe, [0, len(probe)])
        return all(np.array_equal(whole, self.last_logits(probe, cuts))
                   for cuts in ([0, 3, 10, 21, len(probe)], [0, 2, 7, 15, 21, len(probe)]))

    def last_logits(self, tokens: Sequence[int], cuts: Sequence[int]) -> Any:
        """The logits after `tokens`, read from an empty sequence 0 in the chunks between `cuts`
        (0, ..., len(tokens)); a copy, and the sequence is emptied again. Only before any session
        runs (the load-time probe) or in benchmarks and tests that hold the engine alone."""
        import numpy as np

        lib = self._l
        lib.llama_memory_seq_rm(self._memory, 0, -1, -1)
        try:
            for a, b in zip(cuts, cuts[1:]):
                self._decode([(tokens[p], p, 0, p == len(tokens) - 1) for p in range(a, b)])
            pointer = lib.llama_get_logits_ith(self._ctx, -1)
            return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()
        finally:
            lib.llama_memory_seq_rm(self._memory, 0, -1, -1)

    # -- slots ---------------------------------------------------------------------------------
    def acquire(self, owner: object, tokens: Sequence[int], cancel: threading.Event | None = None) -> Slot | None:
        """A free slot for `owner` (a session), the one whose cache serves `tokens` best; waits,
        in arrival order, while every slot is taken. None if `cancel` is set while it waits."""
        with self._cond:
            self._waiting.append(owner)
            try:
                while True:
                    if self._closing:
                        raise EngineError("this engine was closed; create a new one")
                    free = [s for s in self.slots if s.owner is None]
                    if free and self._waiting[0] is owner:
                        break
                    if cancel is not None and cancel.is_set():
                        return None
                    self._cond.wait(CANCEL_CHECK_S if cancel is not None else None)
            finally:
                self._waiting.remove(owner)
                self._cond.notify_all()
            slot = max(free, key=lambda s: (s.prefix.reusable_length(tokens), -s.used))
            slot.owner = owner
            self._clock += 1
            slot.used = self._clock
            return slot

    def busy(self) -> int:
        return sum(1 for slot in self.slots if slot.owner is not None)

    def waiting(self) -> int:
        return len(self._waiting)

    def release(self, slot: Slot) -> None:
        """The session is over; its cache stays for the next one to reuse."""
        with self._cond:
            slot.owner = None
            self._cond.notify_all()

    # -- streaming -----------------------------------------------------------------------------
    def stream(self, slot: Slot, tokens: list[int], params: SamplingParams, budget: int, *, first: bool,
               cancel: threading.Event | None) -> Iterator[TokenEvent]:
        """Read `tokens` into `slot` (only what it does not hold yet) and stream up to `budget`
        sampled tokens. `first`: the session's first prompt (later sessions may reuse it, under the
        rule of reuse this model allows)."""
        job = self._job(slot, tokens, params, budget, first, cancel)
        with self._cond:
            if self._closing:
                raise EngineError("this engine was closed; create a new one")
            self._jobs.append(job)
            self._cond.notify_all()
        return self._events(job)

    def _job(self, slot: Slot, tokens: list[int], params: SamplingParams, budget: int, first: bool,
             cancel: threading.Event | None) -> _Job:
        if first:
            keep = slot.prefix.reusable_length(tokens)
            chunks = within_batch(slot.prefix.chunks(keep, len(tokens)), self.n_batch)
        else:
            keep = _common_prefix(slot.history, tokens)
            keep = min(keep, len(tokens) - 1)  # the last prompt token is read again: its logits are needed
            # nothing here is reused by another request: as few calls as the batch size allows
            chunks = within_batch([(keep, len(tokens))], self.n_batch)
        job = _Job(slot, tokens, deque(chunks), params, budget, cancel)
        job.aligned_end = len(tokens) if first else 0
        job.sampler = self._sampler(params)
        job.matcher = StopMatcher(params.stop)
        job.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return job

    def _events(self, job: _Job) -> Iterator[TokenEvent]:
        """The job's events as they come; closing it ends the job (the slot is still before the
        session's next call reads its cache)."""
        try:
            while True:
                item = self._next(job)
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if not job.finished:
                with self._turn():
                    if not job.finished:
                        self._end(job, "cancelled")

    def _next(self, job: _Job) -> TokenEvent | BaseException:
        """The job's next event. While none is there, the caller runs the next batch itself for
        every stream, unless another caller is running one: then it waits for that one to end.
        Alone, a stream's own thread decodes, samples and hands its token to the driver with no
        thread in between (as a hand-written loop would); several streams share each batch."""
        while True:
            try:
                return job.out.get_nowait()
            except queue.Empty:
                pass
            with self._turns:
                while self._stepping and job.out.empty():
                    self._turns.wait()
                if not job.out.empty():
                    continue
                self._stepping = True
            try:
                self._run_step()
            finally:
                with self._turns:
                    self._stepping = False
                    self._turns.notify_all()

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """Hold the context alone (no batch runs meanwhile)."""
        with self._turns:
            while self._stepping:
                self._turns.wait()
            self._stepping = True
        try:
            yield
        finally:
            with self._turns:
                self._stepping = False
                self._turns.notify_all()

    def _sampler(self, params: SamplingParams) -> Any:
        """llama.cpp's sampler chain for a sampled stream (its own seed); None for greedy (argmax)."""
        if params.temperature <= 0:
            return None
        lib = self._l
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if params.top_k > 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(params.top_p, 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed is not None else lib.LLAMA_DEFAULT_SEED
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
        return chain

    # -- one batch -----------------------------------------------------------------------------
    def _run_step(self) -> None:
        with self._cond:
            jobs = list(self._jobs)
        if not jobs:
            return
        try:
            self._step(jobs)
        except Exception as exc:  # noqa: BLE001 (every failure reaches the streams it hit)
            error = exc if isinstance(exc, EngineError) else EngineError(f"llama.cpp failed: {exc}")
            for job in jobs:
                self._forget(job.slot)
                if not job.finished:
                    self._finish(job, error)

    def _step(self, jobs: list[_Job]) -> None:
        for job in jobs:
            if job.closed or (job.cancel is not None and job.cancel.is_set()):
                self._end(job, "cancelled")
        jobs = [j for j in jobs if not j.finished]
        for job in jobs:
            if not job.trimmed:
                self._trim(job)
        decoding = [j for j in jobs if j.next_token is not None]
        reading = [j for j in jobs if j.next_token is None and j.chunks]
        if decoding:  # one call: the next token of every decoding stream
            rows = []
            for job in decoding:
                token = job.next_token
                assert token is not None
                rows.append((token, len(job.slot.history), job.slot.seq, True))
                job.slot.history.append(token)
                job.next_token = None
            self.counts["sampled_tokens"] += len(rows)
            if len(rows) > 1:
                self.counts["shared_tokens"] += len(rows)
            self._decode(rows)
            for row, job in enumerate(decoding):
                self._sample(job, row)
        budget = PREFILL_PER_STEP if decoding else self.n_batch
        if reading:
            self._rotation = (self._rotation + 1) % len(reading)
            reading = reading[self._rotation:] + reading[: self._rotation]
        for job in reading:  # a call per prompt chunk: a chunk is read alike whatever else runs
            while job.chunks and budget > 0 and not job.closed:
                a, b = job.chunks.popleft()
                budget -= b - a
                last = not job.chunks
                self._decode([(job.tokens[p], p, job.slot.seq, last and p == b - 1) for p in range(a, b)])
                job.slot.history.extend(job.tokens[a:b])
                self.counts["prompt_tokens"] += b - a
                if last:
                    self._sample(job, b - a - 1)

    def _trim(self, job: _Job) -> None:
        """Before a job's first chunk: drop what the slot holds beyond the reused prefix."""
        job.trimmed = True
        keep = job.chunks[0][0] if job.chunks else len(job.tokens)
        slot = job.slot
        if len(slot.history) > keep:
            if not self._l.llama_memory_seq_rm(self._memory, slot.seq, keep, -1):
                self._l.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
                slot.history = []
                slot.prefix.forget()
                job.chunks = deque(within_batch(slot.prefix.chunks(0, len(job.tokens)), self.n_batch))
                return
            del slot.history[keep:]
        slot.prefix.keep(min(keep, len(slot.history)))

    def _decode(self, rows: list[tuple[int, int, int, bool]]) -> None:
        batch = self._batch
        batch.n_tokens = len(rows)
        for i, (token, position, seq, logits) in enumerate(rows):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        status = self._decoder.submit(self._l.llama_decode, self._ctx, batch).result()
        if status != 0:
            raise EngineError(f"llama_decode returned {status} for a batch of {len(rows)} tokens "
                              "(1: no room left in the KV cache)")
        self.counts["batches"] += 1

    def _sample(self, job: _Job, row: int) -> None:
        import numpy as np

        if job.aligned_end:  # the first prompt was read in aligned blocks: later sessions may reuse them
            job.slot.prefix.evaluated(job.tokens[: job.aligned_end])
            job.aligned_end = 0
        pointer = self._l.llama_get_logits_ith(self._ctx, row)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
        if job.sampler is None:  # greedy: the first largest logit, as llama.cpp's greedy sampler picks
            token = int(logits.argmax())
        else:
            token = int(self._l.llama_sampler_sample(job.sampler, self._ctx, row))
        if job.closed or (job.cancel is not None and job.cancel.is_set()):
            self._end(job, "cancelled")
            return
        if token in self._eog:
            self._end(job, "stop")
            return
        logprob = token_logprob(logits, token, self._scratch)
        job.produced += 1
        piece = job.decoder.decode(self._llm.detokenize([token], special=False))
        assert job.matcher is not None
        text, hit = job.matcher.feed(piece)
        job.out.put(TokenEvent(text=text, token_id=token, logprob=logprob))  # counted even when it ends a stop
        if hit:
            self._end(job, "stop")
        elif job.produced >= job.budget or len(job.slot.history) + 1 >= self.n_ctx:
            self._end(job, "length")
        else:
            job.next_token = token

    def _end(self, job: _Job, finish: str) -> None:
        assert job.matcher is not None
        tail = job.matcher.flush() + job.decoder.decode(b"", final=True)
        self._finish(job, TokenEvent(text=tail, finish_reason=finish, matched_stop=job.matcher.matched))  # type: ignore[arg-type]

    def _finish(self, job: _Job, last: TokenEvent | BaseException) -> None:
        with self._cond:
            if job in self._jobs:
                self._jobs.remove(job)
        if job.sampler is not None:
            self._l.llama_sampler_free(job.sampler)
            job.sampler = None
        job.finished = True
        job.out.put(last)

    def _forget(self, slot: Slot) -> None:
        """After a failed batch the slot's cache is unknown: empty it."""
        self._l.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
        slot.history = []
        slot.prefix.forget()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        with self._turn():
            with self._cond:
                jobs, self._jobs = self._jobs, []
            for job in jobs:
                self._finish(job, EngineError("this engine was closed while a stream was running"))
        self._l.llama_batch_free(self._batch)
        self._l.llama_free(self._ctx)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
