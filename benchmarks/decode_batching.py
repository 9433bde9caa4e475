"""What batching can give on this machine: llama.cpp's own cost of one `llama_decode` carrying the
next token of 1, 2, 3 or 4 sequences, and of reading a prompt in chunks of different sizes.

Why: issue 15 asks for 4 streams to reach 2x the one-stream aggregate, on the reasoning that one
pass over the weights can serve several tokens. That holds where decoding is limited by memory
bandwidth. Where one token's matrix-vector products already keep the cores busy, a batch of B
tokens costs about B times one, and no scheduler can gain. This measures which case this machine is
in, with nothing of the SDK's per-token work in the loop: the llama.cpp engine's context (one KV
stream per sequence, flash attention off, as served) driven by bare `llama_decode` calls.

It also gives the ceiling of the 4-stream gain for a step loop that reads `p` prompt tokens per
generated token (`--prompt-per-token`, `serving_overhead.py` measures it): one generated token
costs p / prompt_rate + 1 / decode_rate, and batching can only raise decode_rate.

    .venv/bin/python benchmarks/decode_batching.py --repeats 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Session, table, write_section  # noqa: E402

CHUNKS = (16, 64, 128, 360)
PROMPT = 360  # tokens per prompt read
POSITION = 300  # where each sequence decodes (a step loop's prompts are a few hundred tokens)


def measure(model: str, threads: int, repeats: int) -> dict:
    import llama_cpp

    from srl_sdk.engines.llama_cpp import LlamaCppEngine

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
    engine.close()
    return {"prompt": prompt, "decode": decode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2"], help="model names or GGUF paths")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=40, help="decode calls per batch size (median)")
    parser.add_argument("--prompt-per-token", type=float, default=2.0,
                        help="prompt tokens read per generated token by the step loop (serving_overhead.py)")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    session = Session()
    rows, ceilings = [], []
    for model in args.models:
        result = measure(model, args.threads, args.repeats)
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
    print(decode_table)
    print(prompt_table)
    body = (session.machine_block() + "\n\n"
            + f"{args.threads} threads; the llama.cpp engine's context (4 sequences, a KV stream each, flash attention "
            f"off); each sequence decodes at position {POSITION}; median of {args.repeats} calls per row. Prompts: "
            f"{PROMPT} tokens read in chunks of the given size, best of 3.\n\n" + decode_table + "\n\n" + prompt_table
            + "\n\n" + EXPLAIN)
    if not args.no_docs:
        write_section("Decode batching", body)


EXPLAIN = """\
Reading: "aggregate x one sequence" is what one `llama_decode` over B sequences delivers against one
sequence alone, before any scheduler, driver or server. Near 1, the cores are the limit, not the
weights' trip from memory: B tokens cost B times one token's arithmetic, and batching streams
cannot raise the aggregate. The ceiling column applies that to a step loop reading the given
number of prompt tokens per generated token (prompt tokens cost the same batched or not): it is
the most that any scheduling of several streams could gain over one stream on this machine."""


if __name__ == "__main__":
    main()
