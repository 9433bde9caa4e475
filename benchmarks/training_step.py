"""One SRL GRPO step against one plain TRL GRPO step on the same config, and what dynamic sampling saves.

Three trainers, side by side in one run, on the same model (SmolLM2-135M as an HF folder, LoRA r16),
the same GSM8K SRL instances, the same seed, reward (SRL step similarity) and GRPO settings:

1. TRL `GRPOTrainer` + `GRPOConfig`, built by hand: the peer a user would otherwise stitch up;
2. our `SRLTrainer` with dynamic sampling off: the cost of our trainer itself (should be ~1x);
3. our `SRLTrainer` with dynamic sampling on (the SRL paper's filter, extra rounds to refill).

Plain GRPO back-propagates groups whose rewards all agree; their advantage is zero, so they cost a
full generation and backward pass and teach nothing. The fair unit is therefore "seconds per
informative group" (a group whose reward std > epsilon, i.e. one that carries a gradient): plain
TRL pays step time / informative groups in the step; dynamic sampling pays more per step (extra
rounds) but fills the step with informative groups. The first step of each trainer is left out.

Use a model that already writes the step format some of the time, i.e. the output of a recipe's
SFT stage: the base SmolLM2 never closes its thought, so every reward is -1, every group has zero
variance and none of the three trainers learns anything (that case is reported too).

    .venv/bin/srl train --recipe training/cpu-smollm2-gsm8k.yaml --output runs/cpu   # or any run's sft/final
    .venv/bin/python benchmarks/training_step.py --model runs/cpu/sft/final --steps 4   # writes "Training step"
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, Session, TrainerClock, median, table, write_section  # noqa: E402

GSM8K = REPO_ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def build(variant: str, opts, hf_dir: str, out: Path):
    from trl import GRPOConfig, GRPOTrainer

    from srl_sdk.training.data import DataConfig, load_trajectories, split_by_trajectory
    from srl_sdk.engines.hf_folder import load_causal_lm
    from srl_sdk.training.recipe import DynamicSamplingSettings, LoraSettings, StageSettings, TrainRecipe
    from srl_sdk.training.rewards import srl_step_reward
    from srl_sdk.training.trainers import _lora_config, build_trainer

    stage = StageSettings(
        learning_rate=2e-4, max_steps=opts.steps, per_device_train_batch_size=opts.batch,
        num_generations=opts.generations, max_completion_length=opts.completion, save_steps=10_000,
        dynamic_sampling=DynamicSamplingSettings(enabled=variant == "srl-ds", epsilon=1e-4, max_rounds=opts.max_rounds),
    )
    recipe = TrainRecipe(
        method="srl", model=hf_dir, device="cpu", precision="fp32", gradient_checkpointing=False,
        torch_threads=opts.threads, report_to=[], seed=0, lora=LoraSettings(enabled=True, r=16, alpha=32, dropout=0.0),
        data=DataConfig(path=GSM8K, limit=opts.trajectories, validation_size=0), srl=stage,
    )
    items, report = load_trajectories(recipe.data)
    split = split_by_trajectory(items, recipe.data)
    ours = build_trainer("srl", recipe, hf_dir, split, out / variant, report)
    if variant != "trl":
        return ours
    # the peer: the same GRPO settings, dataset, reward and LoRA, in TRL's own classes
    plain = {f.name: getattr(ours.args, f.name) for f in fields(GRPOConfig) if f.init}
    plain["output_dir"] = str(out / variant)
    plain.pop("generation_batch_size")  # derived from steps_per_generation in __post_init__; TRL refuses both
    train_dataset, tokenizer = ours.train_dataset, ours.processing_class
    del ours
    gc.collect()
    return GRPOTrainer(
        model=load_causal_lm(hf_dir, dtype="float32"), reward_funcs=[srl_step_reward], args=GRPOConfig(**plain),
        train_dataset=train_dataset, processing_class=tokenizer, peft_config=_lora_config(recipe),
    )


def measure(variant: str, opts, hf_dir: str, out: Path) -> dict:
    import torch

    torch.manual_seed(0)
    trainer = build(variant, opts, hf_dir, out)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    clock = TrainerClock(trainer)
    trainer.train()
    changed = any(not torch.equal(before[n], p.detach()) for n, p in trainer.model.named_parameters() if n in before)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry or "reward" in entry]
    groups = opts.batch // opts.generations
    skip = 1 if len(clock.step_s) > 1 else 0
    rows = []
    for i, step_s in enumerate(clock.step_s):
        log = logs[i] if i < len(logs) else {}
        zero_std = float(log.get("frac_reward_zero_std", float("nan")))
        # rows of the trained batch that carry a gradient: plain GRPO keeps every group it drew
        signal = float(log["dynamic_sampling/signal_fraction"]) if "dynamic_sampling/signal_fraction" in log else 1.0 - zero_std
        rows.append({"step_s": step_s, "generate_s": clock.generation_s(i), "calls": clock.generation_calls(i),
                     "zero_std": zero_std, "signal": signal, "informative": signal * groups})
    measured = rows[skip:]
    informative = sum(r["informative"] for r in measured)
    total_s = sum(r["step_s"] for r in measured)
    result = {
        "variant": variant,
        "step_s": median([r["step_s"] for r in measured]),
        "generate_s": median([r["generate_s"] for r in measured]),
        "generations_per_step": statistics.mean(r["calls"] for r in measured),
        "zero_std_first_round": statistics.mean(r["zero_std"] for r in measured),
        "signal": statistics.mean(r["signal"] for r in measured),
        "informative_groups": informative,
        "s_per_informative_group": total_s / informative if informative else float("inf"),
        "params_changed": changed,
        "steps": len(measured),
        "per_step": rows,
    }
    print({k: v for k, v in result.items() if k != "per_step"}, flush=True)
    del trainer
    gc.collect()
    return result


LABELS = {
    "trl": "TRL GRPOTrainer (plain)",
    "srl": "SRLTrainer, dynamic sampling off",
    "srl-ds": "SRLTrainer, dynamic sampling on",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2",
                        help="HF folder (a run's sft/final) or 'smollm2' for the base model")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per trainer (the first is left out)")
    parser.add_argument("--batch", type=int, default=8, help="completions per step (prompts x generations)")
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--completion", type=int, default=48, help="max completion tokens")
    parser.add_argument("--max-rounds", type=int, default=2, help="dynamic sampling: extra rounds per step")
    parser.add_argument("--trajectories", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    opts = parser.parse_args()
    if opts.batch % opts.generations:
        parser.error("--batch must be a multiple of --generations")

    from srl_sdk.engines.hf_folder import gguf_to_hf_dir

    session = Session()
    hf_dir = str(gguf_to_hf_dir("smollm2")) if opts.model == "smollm2" else str(Path(opts.model).resolve())
    with tempfile.TemporaryDirectory(prefix="srl-bench-train-") as tmp:
        results = {v: measure(v, opts, hf_dir, Path(tmp)) for v in ("trl", "srl", "srl-ds")}
    base = results["trl"]
    rows = []
    for variant, r in results.items():
        rows.append([
            LABELS[variant], r["step_s"], r["step_s"] / base["step_s"], r["generate_s"],
            r["generations_per_step"], f"{r['zero_std_first_round']:.0%}", f"{r['signal']:.0%}",
            r["s_per_informative_group"], base["s_per_informative_group"] / r["s_per_informative_group"]
            if r["s_per_informative_group"] not in (0, float("inf")) else "n/a",
            "yes" if r["params_changed"] else "no",
        ])
    out = table(["trainer", "step (s, median)", "x TRL", "generation (s)", "generation calls / step",
                 "zero-std groups (first round)", "rows with signal", "s per informative group",
                 "x TRL (higher: cheaper signal)", "LoRA changed"], rows)
    settings = (
        f"Settings: model `{opts.model}` (SmolLM2-135M-Instruct; 'smollm2' = the base model converted from the "
        f"embedded GGUF, a path = a recipe's SFT output), fp32, LoRA r16 on all 7 "
        f"projections, SRL step-similarity reward, {opts.batch} completions per step ({opts.batch // opts.generations} "
        f"prompts x G={opts.generations}), at most {opts.completion} completion tokens, temperature 1.0, beta 0, "
        f"lr 2e-4, {opts.threads} torch threads, seed 0, the first {opts.trajectories} GSM8K trajectories; "
        f"{opts.steps} steps per trainer, the first left out; dynamic sampling epsilon 1e-4, at most "
        f"{opts.max_rounds} extra rounds."
    )
    print("\n" + settings + "\n\n" + out)
    if not opts.no_write:
        write_section("Training step", session.machine_block() + "\n\n" + settings + "\n\n" + out + "\n")


if __name__ == "__main__":
    main()
