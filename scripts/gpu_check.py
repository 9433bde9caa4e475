"""The GPU check: the CUDA paths of srl-sdk, run once, one line per check with what it measured.

Run it through scripts/gpu-check.sh (which installs the carried wheels first). Checks, in order:

1. train        `srl train`'s code (`srl_sdk.training.trainers.train`): a per-step SFT stage, then
                an SRL stage with LoRA and dynamic sampling; bf16 + gradient checkpointing on CUDA
                (the recipe's "auto"), fp32 on CPU. Figures: mean step time per stage, kept ratio,
                dynamic-sampling rounds, peak memory.
2. engine       the transformers engine on the device, loading the trained `final/`: greedy tokens/s
                of one stream (time to first token apart).
3. reasoner     `Reasoner` with that engine (the stepwise driver): one problem, steps, tokens/s.
4. fsdp         CUDA only: `accelerate launch` with training/accelerate/fsdp.yaml on one process,
                its state dict type forced to SHARDED_STATE_DICT: the final save must still write
                the adapter the merge loads (srl_sdk/training/trainers.py `_full_state_dict_for_fsdp`).
5. onnx-cuda    onnxruntime-genai's CUDA provider, only if `onnxruntime_genai` is importable.

`--device cpu` runs the same code with the smallest sizes (CI: tests/test_gpu_check.py).
The JSON report goes to --json, else $OUT/gpu-check.json when $OUT is set, else runs/gpu-check.json.
A check that fails is reported as such and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]

SIZES: dict[str, dict[str, int]] = {
    # cpu: the CI dry run (one step of each stage, a handful of tokens)
    "cpu": {"problems": 8, "sft_steps": 1, "srl_steps": 1, "batch": 2, "generations": 2, "completion": 8,
            "engine_tokens": 16, "thought_tokens": 8, "action_tokens": 8, "reason_steps": 1},
    # cuda: ~2-3 minutes of an H100 for everything
    "cuda": {"problems": 64, "sft_steps": 8, "srl_steps": 8, "batch": 8, "generations": 4, "completion": 64,
             "engine_tokens": 256, "thought_tokens": 64, "action_tokens": 64, "reason_steps": 4},
}


def rss_gib() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cuda_peak_gib(torch: Any, device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def environment(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "device": device}
    for name in ("transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            info[name] = __import__(name).__version__
        except Exception as exc:  # a missing package is itself a finding
            info[name] = f"missing ({type(exc).__name__})"
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["bf16"] = torch.cuda.is_bf16_supported()
    return info


def check_train(device: str, size: dict[str, int], model: str, work: Path) -> dict[str, Any]:
    import torch

    from srl_sdk.core.generate import GenerateConfig, write_dataset
    from srl_sdk.training.recipe import TrainRecipe
    from srl_sdk.training.reports import METRICS_FILE, read_metrics
    from srl_sdk.training.trainers import train

    data_dir = work / "data"
    write_dataset(GenerateConfig(train=size["problems"], validation=2, test=0, test_hard=0, seed=0), data_dir)
    grpo = {"max_steps": size["srl_steps"], "per_device_train_batch_size": size["batch"],
            "num_generations": size["generations"], "max_completion_length": size["completion"],
            "learning_rate": 2e-4, "save_steps": size["srl_steps"], "logging_steps": 1,
            "dynamic_sampling": {"enabled": True, "max_rounds": 1}}
    recipe = TrainRecipe.model_validate({
        "name": f"gpu-check-{device}", "method": "sft_srl", "model": model, "device": device,
        "torch_threads": 1 if device == "cpu" else None, "report_to": [],
        "data": {"source": "jsonl", "path": str(data_dir / "train.jsonl"), "validation_size": 0,
                 "step_range": {"min_step": 1}},
        "sft": {"sft_mode": "step", "sft_thought": "draft", "max_steps": size["sft_steps"], "learning_rate": 3e-4,
                "per_device_train_batch_size": size["batch"], "save_steps": size["sft_steps"], "max_length": 768},
        "srl": grpo,
    })
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = train(recipe, work / "run", overwrite=True)
    wall = time.perf_counter() - start
    figures: dict[str, Any] = {"wall_s": round(wall, 1), "final": str(result.final_model),
                               "bf16": device == "cuda" and recipe.precision != "fp32"}
    for stage in result.stages:
        rows = read_metrics(stage.directory / METRICS_FILE)
        times = [r["step_time"] for r in rows if "step_time" in r]
        figures[f"{stage.stage}_steps"] = stage.global_step
        if times:
            figures[f"{stage.stage}_step_s"] = round(sum(times) / len(times), 3)
        kept = [r["dynamic_sampling/kept_ratio"] for r in rows if "dynamic_sampling/kept_ratio" in r]
        if kept:
            figures["srl_kept_ratio"] = round(sum(kept) / len(kept), 3)
            figures["srl_rounds"] = [r["dynamic_sampling/rounds"] for r in rows if "dynamic_sampling/rounds" in r]
    if "sft_step_s" not in figures:  # SFT logs no step_time: its wall time over its steps
        sft_rows = [r for r in read_metrics(result.stages[0].directory / METRICS_FILE) if "train_runtime" in r]
        if sft_rows:
            figures["sft_step_s"] = round(sft_rows[-1]["train_runtime"] / max(1, result.stages[0].global_step), 3)
    figures["peak_gpu_gib"] = cuda_peak_gib(torch, device)
    figures["peak_rss_gib"] = round(rss_gib(), 2)
    assert (result.final_model / "model.safetensors").is_file(), "no merged final/model.safetensors"
    line = (f"sft {figures.get('sft_step_s')} s/step, srl {figures.get('srl_step_s')} s/step "
            f"(kept ratio {figures.get('srl_kept_ratio')}, rounds {figures.get('srl_rounds')})")
    return {"line": line, **figures}


def check_engine(device: str, size: dict[str, int], model: str) -> dict[str, Any]:
    import torch

    from srl_sdk.engines.base import SamplingParams
    from srl_sdk.engines.transformers import TransformersEngine

    dtype = "bfloat16" if device == "cuda" else "float32"
    start = time.perf_counter()
    engine = TransformersEngine(model, device=device, dtype=dtype, n_threads=1 if device == "cpu" else None)
    load_s = time.perf_counter() - start
    prompt = engine.render([{"role": "user", "content": "Count from 1 to 100, one number per line."}])
    params = SamplingParams(max_tokens=size["engine_tokens"], temperature=0.0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    first = None
    tokens = 0
    for event in engine.stream(prompt, params):
        if event.token_id is not None:
            tokens += 1
            if first is None:
                first = time.perf_counter() - start
    total = time.perf_counter() - start
    assert tokens > 0, "the engine produced no token"
    rate = (tokens - 1) / (total - first) if first is not None and tokens > 1 and total > first else None
    figures = {"load_s": round(load_s, 2), "tokens": tokens, "first_token_s": round(first or 0.0, 3),
               "tokens_per_s": round(rate, 1) if rate else None, "dtype": dtype, "peak_gpu_gib": cuda_peak_gib(torch, device)}
    return {"line": f"{figures['tokens_per_s']} tokens/s greedy ({tokens} tokens, first after {figures['first_token_s']} s, {dtype})",
            "engine": engine, **figures}


def check_reasoner(engine: Any, size: dict[str, int]) -> dict[str, Any]:
    from srl_sdk import Reasoner

    reasoner = Reasoner(engine=engine, store=False)
    start = time.perf_counter()
    trace = reasoner.solve(
        "Tom has 12 apples. He buys 5 more and gives 3 to Ann. How many apples does he have?",
        max_steps=size["reason_steps"], max_thought_tokens=size["thought_tokens"],
        max_action_tokens=size["action_tokens"], temperature=0.0,
    )
    wall = time.perf_counter() - start
    completion = int(trace.usage.get("completion_tokens", 0))
    figures = {"steps": len(trace.steps), "finish_reason": str(trace.finish_reason), "wall_s": round(wall, 2),
               "completion_tokens": completion, "tokens_per_s": round(completion / wall, 1) if completion else None}
    assert trace.steps, f"the driver produced no step (finish_reason {trace.finish_reason})"
    return {"line": f"{figures['steps']} steps in {figures['wall_s']} s ({figures['tokens_per_s']} tokens/s, "
                    f"finish {figures['finish_reason']})", **figures}


def check_fsdp(model: str, work: Path, timeout_s: int) -> dict[str, Any]:
    """One-process FSDP2 run from training/accelerate/fsdp.yaml, state dict forced to SHARDED."""
    import yaml

    recipe = {
        "name": "gpu-check-fsdp", "method": "srl", "model": model, "device": "cuda", "report_to": [],
        "data": {"source": "jsonl", "path": str(work / "data" / "train.jsonl"), "validation_size": 0,
                 "step_range": {"min_step": 1}},
        "srl": {"max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 4, "max_completion_length": 32,
                "save_steps": 1, "dynamic_sampling": {"max_rounds": 1}},
    }
    recipe_file = work / "fsdp.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    out = work / "fsdp-run"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "training" / "accelerate" / "fsdp.yaml"), "--num_processes", "1",
               "--fsdp_state_dict_type", "SHARDED_STATE_DICT",
               "-m", "srl_sdk.cli", "train", "--recipe", str(recipe_file), "--output", str(out), "--overwrite"]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=REPO, env=dict(os.environ))
    wall = time.perf_counter() - start
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    state = json.loads((out / "srl" / "state.json").read_text())
    assert state.get("distributed_type") == "FSDP", f"accelerate did not run FSDP: {state.get('distributed_type')}"
    assert (out / "srl" / "adapter" / "adapter_model.safetensors").is_file(), "FSDP wrote no adapter_model.safetensors"
    assert (out / "srl" / "final" / "model.safetensors").is_file(), "no merged final/ after FSDP"
    return {"line": f"FSDP2 (sharded checkpoints) wrote the adapter and merged final/ in {wall:.0f} s",
            "wall_s": round(wall, 1), "distributed_type": state["distributed_type"],
            "checkpoint": sorted(p.name for p in (out / "srl").glob("checkpoint-*"))}


def check_onnx_cuda() -> dict[str, Any]:
    try:
        import onnxruntime_genai as og  # noqa: F401
    except ImportError:
        return {"status": "skipped", "line": "onnxruntime-genai-cuda is not installed (its wheel does not travel: docs/gpu.md)"}
    providers: list[str] = list(getattr(og, "get_available_providers", lambda: [])())
    return {"line": f"onnxruntime-genai {og.__version__} providers {providers}", "providers": list(providers)}


def run_check(report: dict[str, Any], name: str, action: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    start = time.perf_counter()
    try:
        result = action()
    except Exception as exc:  # one failed check must not hide the others' figures
        report["checks"][name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                  "traceback": traceback.format_exc()[-4000:]}
        print(f"[FAIL] {name:9s} {type(exc).__name__}: {str(exc)[:400]}", flush=True)
        return None
    result.setdefault("status", "ok")
    result["check_s"] = round(time.perf_counter() - start, 1)
    printable = {k: v for k, v in result.items() if k != "engine"}
    report["checks"][name] = printable
    tag = "ok" if result["status"] == "ok" else result["status"]
    print(f"[{tag}] {name:9s} {result['line']}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--model", default=os.environ.get("SRL_GPU_CHECK_MODEL", "smollm2"),
                        help="alias, .gguf or HF folder (default smollm2; gpu-check.sh finds the carried one)")
    parser.add_argument("--json", type=Path, default=None, help="report file (default $OUT/gpu-check.json)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--skip", action="append", default=[], help="a check to skip (repeatable)")
    parser.add_argument("--fsdp-timeout", type=int, default=240)
    args = parser.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("[FAIL] no CUDA device is visible; use --device cpu for the dry run", flush=True)
        return 2
    out_dir = os.environ.get("OUT")
    json_path = args.json or (Path(out_dir) / "gpu-check.json" if out_dir else REPO / "runs" / "gpu-check.json")
    size = SIZES[args.device]
    work = args.work or Path(tempfile.mkdtemp(prefix="srl-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    from srl_sdk.engines.hf_folder import resolve_hf_model

    model = resolve_hf_model(args.model)
    report: dict[str, Any] = {"environment": environment(args.device), "model": str(model), "sizes": size,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "checks": {}}
    print(f"[info] {json.dumps(report['environment'])}", flush=True)
    trained = run_check(report, "train", lambda: check_train(args.device, size, model, work)) if "train" not in args.skip else None
    served_model = trained["final"] if trained else model
    engine_result = run_check(report, "engine", lambda: check_engine(args.device, size, served_model)) if "engine" not in args.skip else None
    if engine_result and "reasoner" not in args.skip:
        run_check(report, "reasoner", lambda: check_reasoner(engine_result["engine"], size))
    if args.device == "cuda" and "fsdp" not in args.skip:
        run_check(report, "fsdp", lambda: check_fsdp(model, work, args.fsdp_timeout))
    if "onnx-cuda" not in args.skip and args.device == "cuda":
        run_check(report, "onnx-cuda", check_onnx_cuda)
    failed = [name for name, item in report["checks"].items() if item["status"] == "failed"]
    report["failed"] = failed
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"[info] report: {json_path}; {len(report['checks']) - len(failed)} ok, {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
