"""What the server alone costs: `srl serve` against the same driver and engine in-process.

Why: `serving_overhead.py` compares `srl serve` with llama-cpp-python, but the two write different
text (prompt reuse rounds differently), so they do different work. Here both sides are this SDK's
driver on the llama.cpp engine with the same settings, so they write the same text (checked per
problem) and the difference in tokens/s is the server's: HTTP, SSE, the worker process, the
trace store. One stream, problems in sequence, the two sides alternating.

    .venv/bin/python benchmarks/serve_vs_driver.py --rounds 2 --problems 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving_overhead import Settings, SrlServe, problems  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--problems", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from srl_sdk.engines.llama_cpp import LlamaCppEngine
    from srl_sdk.reasoning.driver import Driver, ReasonConfig

    s = Settings(threads=args.threads, n_ctx=1024, steps=2, thought_tokens=32, action_tokens=32)
    server = SrlServe(s, Path(tempfile.mkdtemp(prefix="srl-bench-")))
    texts = problems(args.problems + 1)
    driver = Driver(LlamaCppEngine("smollm2", n_ctx=s.n_ctx, n_threads=s.threads),
                    ReasonConfig(max_steps=s.steps, max_thought_tokens=s.thought_tokens,
                                 max_action_tokens=s.action_tokens))
    try:
        server.run(texts[0])  # warm both
        driver.solve(texts[0])
        for _ in range(args.rounds):
            started = time.perf_counter()
            served = [server.run(p) for p in texts[1:]]
            served_s = time.perf_counter() - started
            started = time.perf_counter()
            solved = [driver.solve(p) for p in texts[1:]]
            solved_s = time.perf_counter() - started
            served_tokens = sum(r.tokens for r in served)
            solved_tokens = sum(t.usage["completion_tokens"] for t in solved)
            same = sum(r.actions == [step.action for step in t.steps] for r, t in zip(served, solved))
            print(f"srl serve {served_tokens / served_s:.1f} tok/s, driver in-process {solved_tokens / solved_s:.1f} "
                  f"tok/s: {(served_tokens / served_s) / (solved_tokens / solved_s):.3f}x; same steps on {same} of "
                  f"{len(solved)} problems", flush=True)
    finally:
        server.close()
        driver.engine.close()


if __name__ == "__main__":
    main()
