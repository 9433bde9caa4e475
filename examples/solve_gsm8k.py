"""Solve a few GSM8K problems with the embedded default and compare with the expert answers.

    python examples/solve_gsm8k.py --n 3

Shows the whole audit loop: typed steps, checks that flag wrong arithmetic, answers compared with
the expert's, and traces saved to the store for later inspection (`srl traces list`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from srl_sdk import Reasoner
from srl_sdk.core.answers import answers_equal
from srl_sdk.core.splitting import load_gsm8k

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--max-steps", type=int, default=6)
    args = parser.parse_args()

    correct = 0
    with Reasoner(args.model) as reasoner:
        for solution in load_gsm8k(args.data, limit=args.n):
            trace = reasoner.solve(solution.problem, max_steps=args.max_steps)
            failed_checks = sum(1 for s in trace.steps for c in s.checks if c.passed is False)
            ok = answers_equal(trace.answer, solution.answer)
            correct += ok
            print(f"{trace.id}  steps={len(trace.steps)}  answer={trace.answer!r}  expert={solution.answer!r}  "
                  f"{'correct' if ok else 'wrong'}  failed_checks={failed_checks}")
    print(f"accuracy {correct}/{args.n}")


if __name__ == "__main__":
    main()
