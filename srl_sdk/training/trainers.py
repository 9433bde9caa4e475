"""SFT, SRL, RLVR and SRL→RLVR runs on TRL + PEFT, driven by a `TrainRecipe`.

One run folder holds everything:

    <output>/srl-run.json        marks the folder as a run (name, method, start time)
    <output>/recipe.yaml         the recipe as validated
    <output>/data.json           the drop report and the held-out problem ids (for `srl eval`)
    <output>/<stage>/            one per stage (sft | srl | rlvr), each with
        checkpoint-N/            HF Trainer checkpoints (resume points)
        metrics.jsonl            every log line
        adapter/                 the LoRA adapter (when LoRA is on)
        final/                   the merged full model: the next stage's start, `srl eval`'s input
    <output>/training_curves.png reward, kept ratio and validation curves

Stages are SRL, then RLVR from the SRL model (the paper's best recipe), or either alone, or SFT,
or a short per-step SFT then SRL (`sft_srl`: small models that never close `<think>` by
themselves get an all -1 SRL reward, hence no signal, until they have seen the format). Each
stage starts from the previous stage's merged model.
A stage is finished when its `final/` exists (it appears by an atomic rename, fsynced, and replaces
an earlier one by an atomic exchange: srl_sdk/core/atomic.py). `resume=True`
skips finished stages and continues the unfinished one from its newest complete checkpoint (one
whose trainer_state.json, written last, exists; a checkpoint cut short by a kill is set aside).

CPU: TRL configs default to bf16 and raise on CPU, so precision is fp32 there and gradient
checkpointing is off (it only trades compute for memory a 135M model does not need). GPU: bf16,
gradient checkpointing, and vLLM rollouts when `use_vllm` (written against TRL 1.16's API).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from srl_sdk.core.answers import check_verifier
from srl_sdk.core.atomic import replace_dir, restore_aside, write_atomic
from srl_sdk.errors import ConfigError, TrainingError, require
from srl_sdk.training.data import (
    DropReport,
    TrainValSplit,
    chat_prompt_renderer,
    load_trajectories,
    resolve_step_lines,
    rlvr_examples,
    sft_examples,
    split_by_trajectory,
    srl_examples,
)
from srl_sdk.training.distributed import barrier, ensure_process_group, is_main_process, on_main_first, rank_report
from srl_sdk.engines.hf_folder import cap_torch_threads, load_causal_lm, load_tokenizer, resolve_hf_model
from srl_sdk.engines.models import PROMPT_STYLE_FILE
from srl_sdk.training.recipe import StageSettings, TrainRecipe
from srl_sdk.training.reports import METRICS_FILE, PLOT_FILE, MetricsJsonlCallback, plot_metrics

__all__ = ["StageResult", "TrainResult", "train", "prepare_output_dir", "latest_checkpoint", "RUN_MARKER"]

RUN_MARKER = "srl-run.json"
DONE_MARKER = ".srl-done"


class StageResult(BaseModel):
    stage: str
    directory: Path
    final_model: Path
    adapter: Path | None
    global_step: int
    resumed_from: Path | None = None
    skipped: bool = False


class TrainResult(BaseModel):
    output_dir: Path
    stages: list[StageResult]
    data_report: DropReport
    plot: Path | None

    @property
    def final_model(self) -> Path:
        return self.stages[-1].final_model


# -- run folder ---------------------------------------------------------------------------------


def prepare_output_dir(output: Path, recipe: TrainRecipe, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder unless told to resume or overwrite."""
    if resume and overwrite:
        raise TrainingError("--resume and --overwrite contradict each other; pass one of them")
    marker = output / RUN_MARKER
    occupied = output.exists() and any(output.iterdir())
    if occupied and not marker.is_file():
        raise TrainingError(
            f"{output} is not empty and holds no srl training run; choose a new or empty --output folder"
        )
    if resume:
        if not marker.is_file():
            raise TrainingError(f"nothing to resume in {output}; drop --resume to start a new run there")
    elif occupied:
        if not overwrite:
            raise TrainingError(
                f"{output} already holds a training run; pass --resume to continue it or --overwrite to replace it"
            )
        for child in output.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    output.mkdir(parents=True, exist_ok=True)
    import yaml

    _atomic_write(output / "recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    if not marker.is_file():
        _atomic_write(marker, json.dumps({"name": recipe.name, "method": recipe.method, "created": _dt.datetime.now(_dt.timezone.utc).isoformat()}))


def _atomic_write(path: Path, text: str) -> None:
    write_atomic(path, text)  # fsynced file and folder: whole or absent after a crash


def latest_checkpoint(stage_dir: Path) -> Path | None:
    """Newest checkpoint whose trainer_state.json exists; incomplete ones are renamed aside.

    Renames: call it on one rank only (`run_stage` calls it on rank 0 and shares the answer).
    """
    candidates = []
    for path in stage_dir.glob("checkpoint-*"):
        suffix = path.name.rpartition("-")[2]
        if path.is_dir() and suffix.isdigit():
            candidates.append((int(suffix), path))
    for _, path in sorted(candidates, reverse=True):
        if (path / "trainer_state.json").is_file():
            return path
        path.rename(path.with_name(f"incomplete-{path.name}"))
    return None


# -- configs ------------------------------------------------------------------------------------


def _device(recipe: TrainRecipe) -> str:
    torch = require("torch", "train")
    has_cuda = torch.cuda.is_available()
    if recipe.device == "cuda" and not has_cuda:
        raise ConfigError("the recipe asks for device: cuda but no CUDA GPU is visible; use device: cpu or auto")
    return "cuda" if (recipe.device == "cuda" or (recipe.device == "auto" and has_cuda)) else "cpu"


def _report_to(recipe: TrainRecipe) -> list[str]:
    if recipe.report_to is not None:
        return recipe.report_to
    import importlib.util

    return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []


def _common_args(recipe: TrainRecipe, stage: StageSettings, stage_dir: Path, device: str, has_eval: bool) -> dict[str, Any]:
    bf16 = device == "cuda" and recipe.precision != "fp32"
    checkpointing = recipe.gradient_checkpointing if recipe.gradient_checkpointing is not None else device == "cuda"
    evaluating = has_eval and stage.eval_steps is not None
    args: dict[str, Any] = dict(
        output_dir=str(stage_dir),
        learning_rate=stage.learning_rate,
        max_steps=stage.max_steps,
        num_train_epochs=stage.num_train_epochs,
        per_device_train_batch_size=stage.per_device_train_batch_size,
        gradient_accumulation_steps=stage.gradient_accumulation_steps,
        lr_scheduler_type=stage.lr_scheduler_type,
        warmup_steps=stage.warmup_steps,
        logging_steps=stage.logging_steps,
        save_strategy="steps",
        save_steps=stage.save_steps,
        save_total_limit=stage.save_total_limit,
        eval_strategy="steps" if evaluating else "no",
        bf16=bf16,
        fp16=False,
        use_cpu=device == "cpu",
        gradient_checkpointing=checkpointing,
        seed=recipe.seed,
        report_to=_report_to(recipe),
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    if evaluating:
        args["eval_steps"] = stage.eval_steps
        if stage.select_best:
            if stage.eval_steps is None or stage.save_steps % stage.eval_steps:
                raise ConfigError("select_best needs save_steps to be a multiple of eval_steps")
            args["load_best_model_at_end"] = True
    if device == "cpu" and recipe.precision == "bf16":
        raise ConfigError("precision bf16 is not supported on CPU here; use precision: fp32 or auto")
    return args


def _lora_config(recipe: TrainRecipe):
    if not recipe.lora.enabled:
        return None
    peft = require("peft", "train")
    return peft.LoraConfig(
        r=recipe.lora.r,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=list(recipe.lora.target_modules),
        task_type="CAUSAL_LM",
    )


def _grpo_config(recipe: TrainRecipe, name: str, stage: StageSettings, stage_dir: Path, device: str, has_eval: bool):
    from srl_sdk.training.dynamic_sampling import SRLConfig

    args = _common_args(recipe, stage, stage_dir, device, has_eval)
    if has_eval and stage.eval_steps is not None:
        args["per_device_eval_batch_size"] = stage.per_device_eval_batch_size or stage.num_generations
        if stage.select_best:
            args.update(metric_for_best_model="reward", greater_is_better=True)
    args.update(
        num_generations=stage.num_generations,
        max_completion_length=stage.max_completion_length,
        temperature=stage.temperature,
        beta=stage.beta,
        use_vllm=recipe.use_vllm,
        dynamic_sampling=stage.dynamic_sampling.enabled,
        dynamic_sampling_epsilon=stage.dynamic_sampling.epsilon,
        dynamic_sampling_max_rounds=stage.dynamic_sampling.max_rounds,
    )
    if recipe.use_vllm:
        args["vllm_mode"] = recipe.vllm_mode
    args.update(stage.trl_args)
    try:
        return SRLConfig(**args)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the {name} stage settings do not make a valid GRPO config: {exc}") from exc


def _sft_config(recipe: TrainRecipe, stage: StageSettings, stage_dir: Path, device: str, has_eval: bool):
    trl = require("trl", "train")
    args = _common_args(recipe, stage, stage_dir, device, has_eval)
    if has_eval and stage.eval_steps is not None:
        args["per_device_eval_batch_size"] = stage.per_device_eval_batch_size or stage.per_device_train_batch_size
        if stage.select_best:
            args.update(metric_for_best_model="loss", greater_is_better=False)
    args.update(max_length=stage.max_length)
    args.update(stage.trl_args)
    try:
        return trl.SFTConfig(**args)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the sft stage settings do not make a valid SFT config: {exc}") from exc


def _datasets(name: str, recipe: TrainRecipe, split: TrainValSplit, tokenizer, report: DropReport):
    datasets = require("datasets", "train")
    render = chat_prompt_renderer(tokenizer)
    stage = recipe.stage(name)
    prompt = recipe.data.prompt
    if name == "srl":
        step_range = recipe.data.step_range
        train_rows = srl_examples(split.train, render, step_range, prompt)
        val_rows = srl_examples(split.validation, render, step_range, prompt)
    elif name == "rlvr":
        train_rows = rlvr_examples(split.train, render, report, stage.verifier, prompt)
        val_rows = rlvr_examples(split.validation, render, verifier=stage.verifier, prompt=prompt)
    else:
        train_rows = sft_examples(split.train, render, stage.sft_mode, stage.sft_thought, prompt)
        val_rows = sft_examples(split.validation, render, stage.sft_mode, stage.sft_thought, prompt)
    if not train_rows:
        raise TrainingError(f"the {name} stage has no training examples ({report.summary()}); use more or other data")
    train_ds = datasets.Dataset.from_list(train_rows)
    val_ds = datasets.Dataset.from_list(val_rows) if val_rows else None
    return train_ds, val_ds


# -- one stage ----------------------------------------------------------------------------------


def _reward(name: str, recipe: TrainRecipe, split: TrainValSplit):
    """The reward of a GRPO stage, built before any model loads so a bad setting fails fast.

    SRL compares the first line or all of the model's action (`data.step_lines`, "auto" decided
    from every expert step of the run); RLVR checks answers with the stage's `verifier`.
    """
    from srl_sdk.training.rewards import make_rlvr_outcome_reward, make_srl_step_reward

    if name == "srl":
        return make_srl_step_reward(resolve_step_lines(recipe.data, [*split.train, *split.validation]))
    stage = recipe.stage(name)
    return make_rlvr_outcome_reward(stage.malformed_outcome_reward, stage.verifier)


def build_trainer(name: str, recipe: TrainRecipe, base_model: str, split: TrainValSplit, stage_dir: Path, report: DropReport):
    """The TRL trainer of one stage, ready to `.train()` (exposed for tests and notebooks)."""
    reward = _reward(name, recipe, split) if name in ("srl", "rlvr") else None
    device = _device(recipe)
    if device == "cpu":
        cap_torch_threads(recipe.torch_threads)
    tokenizer = load_tokenizer(base_model)
    train_ds, val_ds = _datasets(name, recipe, split, tokenizer, report)
    stage = recipe.stage(name)
    has_eval = val_ds is not None
    dtype = "bfloat16" if device == "cuda" and recipe.precision != "fp32" else "float32"
    model = load_causal_lm(base_model, dtype=dtype)
    callbacks = [MetricsJsonlCallback(stage_dir, name)]
    eval_ds = val_ds if (has_eval and stage.eval_steps is not None) else None
    if name in ("srl", "rlvr"):
        from srl_sdk.training.dynamic_sampling import SRLTrainer

        config = _grpo_config(recipe, name, stage, stage_dir, device, has_eval)
        return SRLTrainer(
            model=model,
            reward_funcs=[reward],
            args=config,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
            peft_config=_lora_config(recipe),
            callbacks=callbacks,
        )
    trl = require("trl", "train")
    config = _sft_config(recipe, stage, stage_dir, device, has_eval)
    return trl.SFTTrainer(
        model=model,
        args=config,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=_lora_config(recipe),
        callbacks=callbacks,
    )


def _save_final(trainer, recipe: TrainRecipe, base_model: str, stage_dir: Path) -> tuple[Path, Path | None]:
    """adapter/ (LoRA) and final/ (merged full model), each appearing by an atomic rename."""
    final = stage_dir / "final"
    adapter = stage_dir / "adapter" if recipe.lora.enabled else None
    saved = stage_dir / ("adapter.tmp" if adapter else "final.tmp")
    if trainer.accelerator.is_main_process:
        shutil.rmtree(saved, ignore_errors=True)
    _full_state_dict_for_fsdp(trainer)
    trainer.save_model(str(saved))  # handles DDP / FSDP / DeepSpeed gathering (every rank joins)
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        _merge_into_final(trainer.processing_class, recipe, base_model, stage_dir, saved, adapter, final)
    trainer.accelerator.wait_for_everyone()  # the next stage loads final/ on every rank
    return final, adapter


def _full_state_dict_for_fsdp(trainer) -> None:
    """Under FSDP, gather a full state dict for the final save whatever the config says.

    With `fsdp_state_dict_type: SHARDED_STATE_DICT`, `Trainer.save_model` writes nothing at all
    (transformers 5.x saves only when the type is FULL_STATE_DICT), so there would be no
    `adapter_model.safetensors` for the merge. Checkpoints keep the configured type (sharded
    checkpoints are fine for resume); only the final save switches.
    """
    if not getattr(trainer, "is_fsdp_enabled", False):
        return
    plugin = trainer.accelerator.state.fsdp_plugin
    if "FULL_STATE_DICT" not in str(plugin.state_dict_type):
        plugin.set_state_dict_type("FULL_STATE_DICT")


def _merge_into_final(tokenizer, recipe: TrainRecipe, base_model: str, stage_dir: Path, saved: Path, adapter: Path | None, final: Path) -> None:
    if adapter is not None:
        peft = require("peft", "train")
        replace_dir(saved, adapter)  # an earlier adapter/ stays until this one is whole
        base = load_causal_lm(base_model, dtype="auto")  # the checkpoint's own dtype (bf16 for Qwen, fp32 here)
        merged = peft.PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
        staging = stage_dir / "final.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        merged.save_pretrained(str(staging), safe_serialization=True)
    else:
        staging = saved
    tokenizer.save_pretrained(str(staging))
    # the prompt style it learned: engines loading this folder send it (engines.models.prompt_style_of)
    (staging / PROMPT_STYLE_FILE).write_text(f"{recipe.data.prompt}\n", encoding="utf-8")
    (staging / DONE_MARKER).write_text("complete\n", encoding="utf-8")
    replace_dir(staging, final)  # fsynced, swapped in atomically: final/ is always a complete model


def run_stage(name: str, recipe: TrainRecipe, base_model: str, split: TrainValSplit, output: Path, report: DropReport, *, resume: bool) -> StageResult:
    stage_dir = output / name
    final = stage_dir / "final"

    def inspect_stage() -> Path | None:
        restore_aside(final)  # a swap cut short (file systems without an atomic exchange) left it aside
        if (final / DONE_MARKER).is_file() and resume:
            return None
        stage_dir.mkdir(parents=True, exist_ok=True)
        return latest_checkpoint(stage_dir) if resume else None

    # rank 0 alone renames and creates; the others wait and get its answer (training/distributed.py)
    checkpoint = on_main_first(inspect_stage, f"preparing stage {name} in {stage_dir}")
    if (final / DONE_MARKER).is_file():
        if resume:
            state = json.loads((stage_dir / "state.json").read_text()) if (stage_dir / "state.json").is_file() else {}
            return StageResult(stage=name, directory=stage_dir, final_model=final, adapter=(stage_dir / "adapter") if recipe.lora.enabled else None,
                               global_step=int(state.get("global_step", 0)), skipped=True)
    trainer = build_trainer(name, recipe, base_model, split, stage_dir, report)
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except KeyboardInterrupt:
        raise TrainingError(
            f"training of stage {name} was interrupted; continue it with --resume (checkpoints in {stage_dir})"
        ) from None
    ranks = rank_report(trainer)  # every rank joins; raises if the replicas drifted apart
    final, adapter = _save_final(trainer, recipe, base_model, stage_dir)
    if trainer.accelerator.is_main_process:
        _atomic_write(stage_dir / "state.json", json.dumps(
            {"global_step": trainer.state.global_step, "resumed_from": str(checkpoint) if checkpoint else None, **ranks}))
    return StageResult(stage=name, directory=stage_dir, final_model=final, adapter=adapter,
                       global_step=trainer.state.global_step, resumed_from=checkpoint)


# -- a whole run --------------------------------------------------------------------------------


def train(recipe: TrainRecipe, output_dir: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Run every stage of the recipe into `output_dir` (see the module docstring for the layout).

    Under a multi-process launch every rank runs this; only rank 0 prepares the folder, converts
    the model and writes the run files while the others wait for it (training/distributed.py);
    the trainers synchronise the rest.
    """
    output = Path(output_dir).expanduser()
    if "rlvr" in recipe.stages():
        check_verifier(recipe.rlvr.verifier)  # math-verify missing must not surface after a whole SRL stage
    ensure_process_group()
    main = is_main_process()
    on_main_first(lambda: prepare_output_dir(output, recipe, resume=resume, overwrite=overwrite), f"preparing {output}")
    items, report = load_trajectories(recipe.data)
    split = split_by_trajectory(items, recipe.data)
    if main:
        _atomic_write(
            output / "data.json",
            json.dumps(
                {
                    "report": report.model_dump(),
                    "train_ids": [t.id for t in split.train],
                    "validation_ids": [t.id for t in split.validation],
                },
                indent=1,
            ),
        )
    base_model = on_main_first(lambda: resolve_hf_model(recipe.model), f"converting {recipe.model}")  # one conversion, not one per rank
    barrier()  # data.json is written before any rank goes on
    results: list[StageResult] = []
    for name in recipe.stages():
        result = run_stage(name, recipe, base_model, split, output, report, resume=resume)
        results.append(result)
        base_model = str(result.final_model)  # e.g. RLVR starts from the SRL model
    plot = plot_metrics([output / name / METRICS_FILE for name in recipe.stages()], output / PLOT_FILE) if main else None
    return TrainResult(output_dir=output, stages=results, data_report=report, plot=plot)
