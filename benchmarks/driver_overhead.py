"""Where the one-stream overhead of issue 15 goes: the driver in-process against the hand loop.

Why: `srl serve` delivered ~0.73x raw llama-cpp-python at one stream. This takes HTTP, SSE, the
worker process and the store out of the picture: the driver (`Driver.solve`) on the llama.cpp
engine in this process, against `serving_overhead.py`'s hand-written loop on llama-cpp-python,
same model, threads, caps and prompts, greedy, alternating A/B. It also counts the tokens each
one hands to `llama_cpp.Llama.eval` (prompt tokens are evaluated in batches of more than one,
sampled tokens one at a time), which is where the time goes when Python is not the cost.

    .venv/bin/python benchmarks/driver_overhead.py --rounds 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving_overhead import RawLlama, Settings, problems  # noqa: E402


def count_eval_tokens() -> dict[str, int]:
    """Count what every Llama.eval call evaluates (patched once for the whole process)."""
    import llama_cpp

    counts = {"prompt_tokens": 0, "sampled_tokens": 0}
    original = llama_cpp.Llama.eval

    def counting(self, tokens):
        counts["prompt_tokens" if len(tokens) > 1 else "sampled_tokens"] += len(tokens)
        return original(self, tokens)

    llama_cpp.Llama.eval = counting
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="A/B alternations")
    parser.add_argument("--problems", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from srl_sdk.engines.llama_cpp import LlamaCppEngine
    from srl_sdk.reasoning.driver import Driver, ReasonConfig

    counts = count_eval_tokens()
    s = Settings(threads=args.threads, n_ctx=1024, steps=2, thought_tokens=32, action_tokens=32)
    texts = problems(args.problems + 1)
    raw = RawLlama(s)
    driver = Driver(LlamaCppEngine("smollm2", n_ctx=1024, n_threads=args.threads),
                    ReasonConfig(max_steps=2, max_thought_tokens=32, max_action_tokens=32))
    raw.run(texts[0])  # warm both: the first prompt of a fresh context is not what is measured
    driver.solve(texts[0])

    def measure(name: str, run) -> None:
        before = dict(counts)
        started = time.perf_counter()
        generated = sum(run(p) for p in texts[1:])
        wall = time.perf_counter() - started
        prompt = counts["prompt_tokens"] - before["prompt_tokens"]
        print(f"{name:7s} {generated:4d} tokens {wall:6.2f} s {generated / wall:6.1f} tok/s  "
              f"prompt tokens evaluated {prompt:5d} ({prompt / generated:.2f} per generated token)")

    for _ in range(args.rounds):
        measure("raw", lambda p: raw.run(p).tokens)
        measure("driver", lambda p: driver.solve(p).usage["completion_tokens"])


if __name__ == "__main__":
    main()
