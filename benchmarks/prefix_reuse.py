"""Prefix reuse: what reproducible prompt evaluation costs against llama-cpp-python's own reuse.

Why: the llama.cpp engine evaluates prompts in aligned blocks and keeps only whole blocks of an
earlier prompt (`srl_sdk.engines.prefix`), so the same prompt gives the same logits whatever the
cache held. llama-cpp-python's own reuse keeps every matching token, including the tokens the
model just generated, and is faster, but the same prompt then gives different text depending on
the previous request. This script runs the driver's stepwise loop (the serving path: a thought
phase and an action phase per step, greedy) on GSM8K problems with each variant side by side:

- `native`: llama-cpp-python's reuse of whatever matched (the engine before this change);
- `block B`: the aligned rule with B tokens per block (the engine's `prefix_block`);
- `block 0`: no reuse, every prompt evaluated from an empty cache.

Each variant solves the problems twice, the second time in reverse order (other cache contents
before each problem). Reported: prompt tokens llama.cpp evaluated, their time (llama.cpp's own
counters), wall time, and whether both passes wrote identical traces (text and log-probabilities).
Variants run round-robin in each repetition; medians over repetitions.

    .venv/bin/python benchmarks/prefix_reuse.py --problems 4 --runs 3 --threads 2

It measures the engine as it was up to commit f595381 (one sequence, one engine call per phase);
since issue 15 the engine keeps a request's cache in a session and has no `_evaluate_prompt` to
override, so the `native` variant cannot be built on it. Reproduce the "Prefix reuse" figures at
that commit (`git worktree add ../prefix-bench f595381`); "Prompt work per step"
(benchmarks/driver_overhead.py) measures the engine of today.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO_ROOT, Session, median, table, write_section  # noqa: E402

from srl_sdk.engines.llama_cpp import LlamaCppEngine  # noqa: E402
from srl_sdk.reasoning.driver import Driver, ReasonConfig  # noqa: E402

GSM8K = REPO_ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


class NativeReuseEngine(LlamaCppEngine):
    """The engine as it was: the prompt goes straight to llama-cpp-python's `generate`, which keeps
    whatever prefix matched the cache and evaluates the rest in one batch."""

    def _evaluate_prompt(self, tokens: list[int]) -> None:
        pass


def problems(n: int) -> list[str]:
    if not GSM8K.is_file():
        raise SystemExit(f"GSM8K data missing at {GSM8K}: ../shared must sit beside the repository")
    with GSM8K.open(encoding="utf-8") as handle:
        return [json.loads(next(handle))["question"] for _ in range(n)]


def fingerprint(trace) -> list[tuple[str, str, float | None]]:
    return [(s.thought or "", s.action, s.confidence.mean_logprob if s.confidence else None) for s in trace.steps]


def solve_all(engine, config: ReasonConfig, items: list[str]) -> tuple[dict[str, list], dict[str, float]]:
    driver = Driver(engine, config)
    before = engine.perf()
    started = time.perf_counter()
    traces = {problem: fingerprint(driver.solve(problem)) for problem in items}
    wall = time.perf_counter() - started
    after = engine.perf()
    return traces, {
        "wall_s": wall,
        "prompt_tokens": after["prompt_tokens"] - before["prompt_tokens"],
        "prompt_s": (after["prompt_ms"] - before["prompt_ms"]) / 1000,
        "decode_tokens": after["decode_tokens"] - before["decode_tokens"],
        "decode_s": (after["decode_ms"] - before["decode_ms"]) / 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", type=int, nargs="+", default=[16, 32, 64, 0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--no-docs", action="store_true", help="print only; do not write docs/benchmarks.md")
    args = parser.parse_args()
    if not hasattr(LlamaCppEngine, "_evaluate_prompt"):
        raise SystemExit("this benchmark measures the llama.cpp engine as of commit f595381 (see its docstring); "
                         "run it there: git worktree add ../prefix-bench f595381")
    session = Session()
    items = problems(args.problems)
    config = ReasonConfig(max_steps=args.steps, max_thought_tokens=48, max_action_tokens=48, checks=False)
    variants = {"native (llama-cpp-python)": NativeReuseEngine("smollm2", n_ctx=2048, n_threads=args.threads)}
    for block in args.blocks:
        variants[f"block {block}"] = LlamaCppEngine("smollm2", n_ctx=2048, n_threads=args.threads, prefix_block=block)
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    reproducible: dict[str, bool] = {name: True for name in variants}
    try:
        for rep in range(args.runs):
            for name, engine in variants.items():
                forward, stats = solve_all(engine, config, items)
                backward, stats_back = solve_all(engine, config, list(reversed(items)))
                reproducible[name] &= forward == backward
                merged = {key: stats[key] + stats_back[key] for key in stats}
                figures[name].append(merged)
                print(f"run {rep + 1} {name}: {merged['prompt_tokens']} prompt tokens in {merged['prompt_s']:.2f} s, "
                      f"wall {merged['wall_s']:.2f} s, same traces both passes: {forward == backward}", flush=True)
    finally:
        for engine in variants.values():
            engine.close()
    native = "native (llama-cpp-python)"
    base_wall = median([f["wall_s"] for f in figures[native]])
    rows = []
    for name in variants:
        med = {key: median([f[key] for f in figures[name]]) for key in figures[name][0]}
        rows.append([name, int(med["prompt_tokens"]), med["prompt_s"], int(med["decode_tokens"]), med["decode_s"],
                     med["wall_s"], med["wall_s"] / base_wall, "yes" if reproducible[name] else "NO"])
    headers = ["prompt evaluation", "prompt tokens evaluated", "prompt s", "decode tokens", "decode s",
               "wall s", "x native wall", "same traces in both orders"]
    out = table(headers, rows)
    print(out)
    notes = (
        f"Settings: SmolLM2-135M Q4_1 GGUF, n_threads={args.threads}, greedy driver loop (thought + action phase per "
        f"step, at most {args.steps} steps of 48 + 48 tokens), the first {args.problems} GSM8K train problems solved "
        f"twice per repetition (forward, then reverse order), {args.runs} repetitions, medians. Figures per "
        "repetition are sums over both passes."
    )
    if not args.no_docs:
        write_section("Prefix reuse", session.machine_block() + "\n\n" + notes + "\n\n" + out + "\n\n" + EXPLAIN)


EXPLAIN = """\
How to read it:
- Why the rule exists: llama.cpp's kernels round differently depending on how many tokens are
  evaluated together (a lone token takes another path than a batch). llama-cpp-python's own reuse
  re-evaluates
  just the last token when the whole prompt is cached, which is why the same seeded request wrote
  another text the second time (issue #12). Other builds (AVX-512, AMX, ARM repacking) change
  kernels at other batch sizes, so the engine does not rely on any one threshold: every prompt is
  evaluated in the same aligned chunks, and only whole chunks of an earlier prompt are kept.
- The cost is the extra prompt tokens over `native`: the partial last block of each prompt, and the
  tokens the model generated one at a time (its thought, re-read in the action phase's prompt),
  are evaluated again. `block 0` (no reuse) shows what reuse saves in the first place.
- The engine's default is `prefix_block=16`, the cheapest here (`srl_sdk/engines/prefix.py`); set
  `engine_options: {prefix_block: N}` in a server config to trade reuse for batch size.
- The `same traces in both orders` column is the reproducibility check on the serving loop itself
  (text and log-probabilities of every step); tests/test_engine_reproducibility.py checks the
  same property per engine, for greedy and seeded sampling, after unrelated and related prompts.
- `native` happened to write the same traces in both orders in this run; its text is still not
  the model's from-scratch text (see "Serving overhead": the peers' steps differ from it), and
  a repeated seeded request was the case that failed (tests/test_engine_reproducibility.py fails on
  all four llama.cpp cases with native reuse)."""


if __name__ == "__main__":
    main()
