"""Step accounting cost: parsing and checking steps, as a share of generation time.

Why: every step the driver emits is parsed (`parse_step_response`, `strip_step_label`), checked
(`run_checks`: arithmetic claims evaluated safely), scanned for a final answer (`extract_answer`)
and built into a validated pydantic `Step`. This measures what that costs against the time the
model took to write the same steps, on real traces: SmolLM2 on llama.cpp, GSM8K train problems.

Method: generate the traces once with the real driver; then, for every generated step, time the
accounting work again on its real text (many repetitions, median per step), and divide the sum
per trace by the trace's generation time. The per-token log-probability the llama.cpp engine
computes for step confidence (a log-softmax over 49,152 logits) is shown on its own row: it is
engine work per token, not step accounting, but it is the SDK's largest addition per token.

    .venv/bin/python benchmarks/step_accounting.py --problems 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO_ROOT, Session, median, table, write_section  # noqa: E402

GSM8K = REPO_ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def per_call_s(func, repeats: int) -> float:
    """Median seconds per call over `repeats` calls (timed in batches of 10 for resolution)."""
    samples = []
    for _ in range(max(1, repeats // 10)):
        t0 = time.perf_counter()
        for _ in range(10):
            func()
        samples.append((time.perf_counter() - t0) / 10)
    return median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=48, help="max thought and max action tokens per step")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    session = Session()

    import numpy as np

    from srl_sdk.core.answers import extract_answer
    from srl_sdk.core.checks import run_checks
    from srl_sdk.core.format import THINK_CLOSE, parse_step_response, strip_step_label
    from srl_sdk.core.steps import Step
    from srl_sdk.engines.llama_batch import token_logprob
    from srl_sdk.engines.llama_cpp import LlamaCppEngine
    from srl_sdk.reasoning.driver import Driver, ReasonConfig

    if not GSM8K.is_file():
        raise SystemExit(f"GSM8K data missing at {GSM8K}: ../shared must sit beside the repository")
    with GSM8K.open(encoding="utf-8") as handle:
        problems = [json.loads(next(handle))["question"] for _ in range(args.problems)]
    engine = LlamaCppEngine("smollm2", n_ctx=2048, n_threads=args.threads)
    driver = Driver(engine, ReasonConfig(max_steps=args.max_steps, max_thought_tokens=args.tokens,
                                         max_action_tokens=args.tokens, temperature=0.0))
    traces = [driver.solve(p) for p in problems]

    def account(step: Step) -> Step:
        """What the driver does per step once the tokens are in (see Driver._stepwise/_make_step)."""
        reply = step.thought + THINK_CLOSE + "\n" + step.action
        parsed = parse_step_response(reply, thought_prefilled=True)
        action = strip_step_label(step.action)
        answer = extract_answer(action)
        return Step(index=step.index, thought=step.thought, action=action, format_ok=parsed.format_ok,
                    is_final=answer is not None, answer=answer, tokens=step.tokens, confidence=step.confidence,
                    latency_s=step.latency_s, checks=run_checks(action))

    parts = {
        "parse_step_response + strip_step_label": lambda s: (parse_step_response(
            s.thought + THINK_CLOSE + "\n" + s.action, thought_prefilled=True), strip_step_label(s.action)),
        "run_checks (arithmetic)": lambda s: run_checks(s.action),
        "extract_answer": lambda s: extract_answer(s.action),
        "Step construction (pydantic)": lambda s: Step.model_validate(s.model_dump()),
        "all of it (as the driver does it)": account,
    }
    generation_s = sum(t.duration_s or 0.0 for t in traces)
    steps = [s for t in traces for s in t.steps if s.source == "model"]
    tokens = sum(s.tokens for s in steps)
    rows = []
    for name, work in parts.items():
        total = sum(per_call_s(lambda s=s, work=work: work(s), args.repeats) for s in steps)
        rows.append([name, f"{1e6 * total / max(1, len(steps)):.0f}", f"{1e3 * total:.2f}",
                     f"{100 * total / generation_s:.3f} %"])
    logits = np.random.default_rng(0).standard_normal(engine._scheduler.n_vocab).astype(np.float32)
    scratch = np.empty_like(logits)
    per_token = per_call_s(lambda: token_logprob(logits, 42, scratch), args.repeats)
    rows.append(["(engine) per-token logprob, log-softmax over the vocabulary",
                 f"{1e6 * per_token * tokens / max(1, len(steps)):.0f}", f"{1e3 * per_token * tokens:.2f}",
                 f"{100 * per_token * tokens / generation_s:.2f} %"])
    del np
    engine.close()
    out = table(["work", "µs per step", "ms in all traces", "share of generation time"], rows)
    note = (f"{len(traces)} traces, {len(steps)} generated steps, {tokens} generated tokens, generation "
            f"{generation_s:.1f} s in all (SmolLM2 Q4_1, llama.cpp, n_threads={args.threads}, greedy, up to "
            f"{args.max_steps} steps of {args.tokens} + {args.tokens} tokens).")
    print(note)
    print(out)
    if not args.no_docs:
        write_section("Step accounting", session.machine_block() + "\n\n" + note + "\n\n" + out + "\n\n"
                      + "Shares are of the time the model took to write the same steps, so under load (slower "
                        "generation) they shrink; on a quiet machine generation is 2-5x faster and the shares "
                        "2-5x larger, still far below 1 % for the step accounting itself.")


if __name__ == "__main__":
    main()
