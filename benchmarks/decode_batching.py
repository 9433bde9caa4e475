"""What batching can give on this machine: llama.cpp's own cost of one `llama_decode` carrying the
next token of 1, 2, 3 or 4 sequences, and of reading a prompt in chunks of different sizes; whether
the chunking changes a token's logits, and what a second thread calling llama.cpp costs.

Why: issue 15 asks for 4 streams to reach 2x the one-stream aggregate, on the reasoning that one
pass over the weights can serve several tokens. That holds where decoding is limited by memory
bandwidth. Where one token's matrix-vector products already keep the cores busy, a batch of B
tokens costs about B times one, and no scheduler can gain. This measures which case this machine is
in, with nothing of the SDK's per-token work in the loop: the llama.cpp engine's context (one KV
stream per sequence, flash attention off, as served) driven by bare `llama_decode` calls.

It also gives the ceiling of the 4-stream gain for a step loop that reads `p` prompt tokens per
generated token (`--prompt-per-token`, `serving_overhead.py` measures it): one generated token
costs p / prompt_rate + 1 / decode_rate, and batching can only raise decode_rate.

    .venv/bin/python benchmarks/decode_batching.py --models smollm2 q8_0 q4_0 --prompt-per-token 3.07
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Session, table, write_section  # noqa: E402

CHUNKS = (16, 64, 128, 360)
REQUANTIZED = ("q4_0", "q8_0", "iq4_nl")  # --models names made from the shipped Q4_1 file
PROMPT = 360  # tokens per prompt read
POSITION = 300  # where each sequence decodes (a step loop's prompts are a few hundred tokens)


def measure(model: str, threads: int, repeats: int) -> dict:
    import llama_cpp

    from srl_sdk.engines.llama_cpp import LlamaCppEngine

    if model in REQUANTIZED:  # made from the shipped file, as builds.py makes a default build
        from srl_sdk.engines.builds import requantize
        from srl_sdk.engines.models import smollm2_gguf_path

        path = Path(tempfile.mkdtemp(prefix="srl-batching-")) / f"{model}.gguf"
        requantize(smollm2_gguf_path(), path, quant=model)
        model = str(path)
    engine = LlamaCppEngine(model, n_ctx=1024, n_threads=threads, n_parallel=4)
    scheduler = engine._scheduler  # the served context; its _decode is one bare llama_decode
    tokens = engine._tokenize("The farmer sold 48 clips in April and half as many in May. " * 40, True, False)
    memory = scheduler._memory

    def clear() -> None:
        for seq in range(4):
            llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)

    def read(seq: int, end: int, chunk: int) -> None:
        for a in range(0, end, chunk):
            b = min(a + chunk, end)
            scheduler._decode([(tokens[p], p, seq, p == b - 1) for p in range(a, b)])

    prompt = {}
    for chunk in CHUNKS:
        times = []
        for _ in range(3):
            clear()
            started = time.perf_counter()
            read(0, PROMPT, chunk)
            times.append(time.perf_counter() - started)
        prompt[chunk] = PROMPT / min(times)
    decode = {}
    for batch in (1, 2, 3, 4):
        clear()
        for seq in range(batch):
            read(seq, POSITION, 128)
        times = []
        for i in range(repeats):
            rows = [(tokens[POSITION + i], POSITION + i, seq, True) for seq in range(batch)]
            started = time.perf_counter()
            scheduler._decode(rows)
            times.append(time.perf_counter() - started)
        decode[batch] = statistics.median(times)
    chunking = chunk_invariance(scheduler, tokens)
    callers = second_caller(scheduler, tokens, clear, repeats, llama_cpp)
    engine.close()
    return {"prompt": prompt, "decode": decode, "chunking": chunking, "callers": callers}


def chunk_invariance(scheduler, tokens: list[int]) -> tuple[int, int]:
    """(chunkings whose last logits differ from one whole read, chunkings tried): 12 random cuts of
    a 300-token prompt into chunks of 2 to 40 tokens, compared bit for bit (what
    `BatchScheduler.chunking_is_invariant` checks at load, on a longer prompt)."""
    import numpy as np

    n = 300
    prompt = tokens[:n]
    whole = scheduler.last_logits(prompt, [0, n])
    draw = random.Random(0)
    differing = 0
    for _ in range(12):
        cuts = [0]
        while cuts[-1] < n - 2:
            cuts.append(min(n - 2, cuts[-1] + draw.randint(2, 40)))
        differing += not np.array_equal(whole, scheduler.last_logits(prompt, cuts + [n]))
    return differing, 12


def second_caller(scheduler, tokens: list[int], clear, repeats: int, llama_cpp) -> tuple[float, float]:
    """Decode tokens/s of one sequence with llama.cpp called from one thread (the engine's decode
    thread), then with a second thread that has called llama_decode once and stays alive: libgomp
    then manages more threads than cores and throttles its barrier spin for every caller."""
    def rate() -> float:
        clear()
        scheduler._decode([(tokens[p], p, 0, False) for p in range(POSITION)])
        started = time.perf_counter()
        for i in range(repeats):
            scheduler._decode([(tokens[POSITION + i], POSITION + i, 0, True)])
        return repeats / (time.perf_counter() - started)

    alone = max(rate() for _ in range(3))
    called, finish = threading.Event(), threading.Event()

    def other() -> None:  # a second OpenMP master: one llama_decode from its own thread, then idle
        batch = scheduler._batch
        batch.n_tokens = 1
        batch.token[0], batch.pos[0], batch.n_seq_id[0], batch.seq_id[0][0], batch.logits[0] = tokens[0], 0, 1, 1, 1
        llama_cpp.llama_decode(scheduler._ctx, batch)
        called.set()
        finish.wait()

    thread = threading.Thread(target=other)
    thread.start()
    called.wait()
    beside = max(rate() for _ in range(3))
    finish.set()
    thread.join()
    llama_cpp.llama_memory_seq_rm(scheduler._memory, 1, -1, -1)
    return alone, beside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2"],
                        help=f"model names or GGUF paths; {', '.join(REQUANTIZED)}: that requantization of the shipped file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=40, help="decode calls per batch size (median)")
    parser.add_argument("--prompt-per-token", type=float, default=2.0,
                        help="prompt tokens read per generated token by the step loop (serving_overhead.py)")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    session = Session()
    rows, ceilings, others = [], [], []
    for model in args.models:
        result = measure(model, args.threads, args.repeats)
        differing, tried = result["chunking"]
        alone, beside = result["callers"]
        others.append([model, f"{differing} of {tried}", f"{alone:.0f}", f"{beside:.0f}", f"{beside / alone:.2f}"])
        one = result["decode"][1]
        for batch, seconds in result["decode"].items():
            rows.append([model, batch, f"{seconds * 1000:.2f}", f"{seconds / one:.2f}", f"{batch / seconds:.0f}",
                         f"{(batch / seconds) / (1 / one):.2f}"])
        prompt_rate = result["prompt"][128]
        p = args.prompt_per_token
        alone = p / prompt_rate + one
        best = p / prompt_rate + min(s / b for b, s in result["decode"].items())
        ceilings.append([model, *(f"{result['prompt'][c]:.0f}" for c in CHUNKS), f"{alone / best:.2f}x"])
    decode_table = table(["model", "sequences in the call", "ms per llama_decode", "x one sequence",
                          "tokens/s (all sequences)", "aggregate x one sequence"], rows)
    prompt_table = table(["model", *(f"prompt tok/s, chunks of {c}" for c in CHUNKS),
                          f"ceiling of the batched gain at {args.prompt_per_token} prompt tokens per token"], ceilings)
    other_table = table(["model", "chunkings of a 300-token prompt whose logits differ from one read",
                         "decode tok/s, one thread calls llama.cpp", "with a second calling thread alive",
                         "ratio"], others)
    print(decode_table)
    print(prompt_table)
    print(other_table)
    body = (session.machine_block() + "\n\n"
            + f"{args.threads} threads; the llama.cpp engine's context (4 sequences, a KV stream each, flash attention "
            f"off); each sequence decodes at position {POSITION}; median of {args.repeats} calls per row. Prompts: "
            f"{PROMPT} tokens read in chunks of the given size, best of 3.\n\n" + decode_table + "\n\n" + prompt_table
            + "\n\n" + other_table + "\n\n" + EXPLAIN)
    if not args.no_docs:
        write_section("Decode batching", body)


EXPLAIN = """\
Reading: "aggregate x one sequence" is what one `llama_decode` over B sequences delivers against one
sequence alone, before any scheduler, driver or server. Near 1, the cores are the limit, not the
weights' trip from memory: B tokens cost B times one token's arithmetic, and batching streams
cannot raise the aggregate. The ceiling column applies that to a step loop reading the given
number of prompt tokens per generated token (prompt tokens cost the same batched or not): it is
the most that any scheduling of several streams could gain over one stream on this machine.

The last table: whether a token's logits depend on the chunk it is read in (0: the engine may reuse
any prefix, srl_sdk/engines/prefix.py), and what a second thread calling llama.cpp costs every
decode (why the engine calls llama.cpp from one thread per process, srl_sdk/engines/llama_batch.py)."""


if __name__ == "__main__":
    main()
