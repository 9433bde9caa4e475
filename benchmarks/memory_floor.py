"""The physical floor: how many tokens/s memory bandwidth allows at most, and how close decoding gets.

Why: decoding one token reads every weight once (a dense model, batch 1), so tokens/s can never
exceed memory bandwidth / bytes of weights. The GGUF file is (almost) all weights, and SmolLM2's
embedding matrix is tied to the output layer, so it is read in full per token too: bytes per
token ≈ file size. Bandwidth is measured here with numpy copies of arrays far larger than any
cache (`dst[:] = src`, bytes read + written), on 1 and 2 threads, median of several runs.

Then it decodes with llama.cpp in-process (1 and 2 threads) and shows each figure as a fraction
of that floor. A fraction far below 100 % on this tiny model means decoding is compute/latency
bound on 2 cores, not memory bound (the model's 98 MB barely exceeds the caches).

    .venv/bin/python benchmarks/memory_floor.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Session, median, table, write_section  # noqa: E402

ARRAY_BYTES = 512 * 1024 * 1024  # far above any CPU cache here


def bandwidth(runs: int = 5, threads: int = 2) -> dict[str, float]:
    """Median GB/s of a copy (`dst[:] = src`, read + write bytes), 1 thread and `threads` in parallel.

    A copy, not a sum: numpy's float sum is compute bound on one core and understates bandwidth.
    numpy releases the GIL while copying, so threads over disjoint slices run in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    src = np.ones(ARRAY_BYTES // 8, dtype=np.float64)
    dst = np.empty_like(src)
    dst[:] = src  # touch every page before timing
    n = len(src)
    out: dict[str, float] = {}
    for k in sorted({1, threads}):
        bounds = [(i * n // k, (i + 1) * n // k) for i in range(k)]

        def copy(b: tuple[int, int]) -> None:
            dst[b[0]:b[1]] = src[b[0]:b[1]]

        rates = []
        with ThreadPoolExecutor(max_workers=k) as pool:
            for _ in range(runs):
                t0 = time.perf_counter()
                list(pool.map(copy, bounds))
                rates.append(2 * ARRAY_BYTES / (time.perf_counter() - t0) / 1e9)
        out[f"copy_gb_s_{k}"] = median(rates)
    out["best_gb_s"] = max(out.values())
    return out


def model_bytes(path: Path | None = None) -> int:
    """Bytes of the GGUF file (the shipped one unless `path` says which build)."""
    from srl_sdk.engines.models import smollm2_gguf_path

    return (path or smollm2_gguf_path()).stat().st_size


def decode_floor(runs: int = 5, path: Path | None = None) -> dict[str, float]:
    """The tokens/s limit: read bandwidth / bytes read per token (of `path`, default the shipped file)."""
    bw = bandwidth(runs)
    size = model_bytes(path)
    return {"bandwidth_gb_s": bw["best_gb_s"], "copy_gb_s_1": bw["copy_gb_s_1"], "copy_gb_s_2": bw.get("copy_gb_s_2", 0.0),
            "model_mb": size / 1e6, "tokens_per_s": bw["best_gb_s"] * 1e9 / size}


def llama_decode_rate(threads: int, tokens: int = 48, runs: int = 3) -> float:
    """Pure decode tokens/s from llama.cpp's own counters (prompt processing excluded)."""
    import llama_cpp

    from srl_sdk.engines.models import smollm2_gguf_path

    llm = llama_cpp.Llama(model_path=str(smollm2_gguf_path()), n_ctx=512, n_threads=threads,
                          n_threads_batch=threads, logits_all=False, verbose=False)
    rates = []
    for i in range(runs):
        llm.reset()
        llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
        llm.create_completion(f"Count from {i} to one hundred:", max_tokens=tokens, temperature=0.0, top_k=1)
        perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
        if perf.n_eval:
            rates.append(perf.n_eval / (perf.t_eval_ms / 1000))
    llm.close()
    return median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    session = Session()
    floor = decode_floor(args.runs)
    rows = [["memory bandwidth, numpy copy of 512 MiB (read + write), 1 thread", f"{floor['copy_gb_s_1']:.2f} GB/s", ""],
            ["memory bandwidth, same, 2 threads", f"{floor['copy_gb_s_2']:.2f} GB/s", ""],
            ["bytes per token (GGUF Q4_1 file)", f"{floor['model_mb']:.1f} MB", ""],
            ["floor: best bandwidth / bytes per token", f"{floor['tokens_per_s']:.0f} tokens/s", "100 %"]]
    for threads in args.threads:
        rate = llama_decode_rate(threads)
        rows.append([f"llama.cpp decode, {threads} thread(s)", f"{rate:.0f} tokens/s",
                     f"{100 * rate / floor['tokens_per_s']:.0f} %"])
    out = table(["quantity", "value", "of floor"], rows)
    print(out)
    if not args.no_docs:
        write_section("Physical floor", session.machine_block() + "\n\n" + out + "\n\n" + EXPLAIN)


EXPLAIN = """\
The floor is an upper bound for batch-1 decoding of a dense model: every weight is read once per
token. Decode figures elsewhere in this file (serving overhead) carry the same fraction in their
last column. Batched decoding (vLLM, several sequences per forward pass) can exceed the batch-1 floor
in aggregate because one read of the weights serves several tokens. The bandwidth is measured
under the same load as the decode figures; other jobs' memory traffic lowers it too, so on a quiet
machine both rise (STACK.md's quiet 135 tokens/s at 2 threads would be 13 GB/s of weights, above
the bandwidth measured here under load). A numpy copy is one simple way to measure bandwidth, and
tuned kernels may read faster: treat the floor as approximate."""


if __name__ == "__main__":
    main()
