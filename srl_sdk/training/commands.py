"""`srl train` and `srl eval`. Heavy libraries are imported inside the commands only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    from srl_sdk.cli_common import console, err_console, friendly_errors

    @app.command("train")
    @friendly_errors
    def train_command(
        recipe: Path = typer.Option(..., "--recipe", "-r", help="YAML recipe, e.g. training/cpu-smollm2-gsm8k.yaml"),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder (default runs/<recipe name>)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from its last checkpoint."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run in --output."),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Override every stage's max_steps."),
    ) -> None:
        """Train with a recipe: SFT, SRL, RLVR or SRL then RLVR (TRL + PEFT)."""
        from srl_sdk.training.recipe import load_recipe
        from srl_sdk.training.trainers import train

        parsed = load_recipe(recipe)
        if max_steps is not None:
            for name in parsed.stages():
                parsed.stage(name).max_steps = max_steps
        out = output or Path("runs") / parsed.name
        console.print(f"[bold]Training[/] {parsed.name} ({parsed.method}, model {parsed.model}) → {out}")
        result = train(parsed, out, resume=resume, overwrite=overwrite)
        err_console.print(f"data: {result.data_report.summary()}")
        for stage in result.stages:
            note = " (already finished)" if stage.skipped else (f" (resumed from {stage.resumed_from.name})" if stage.resumed_from else "")
            console.print(f"  {stage.stage}: {stage.global_step} steps{note} → {stage.final_model}")
        if result.plot:
            console.print(f"  curves: {result.plot}")
        console.print(f"[green]done[/]: evaluate with  srl eval --run {out}")

    @app.command("eval")
    @friendly_errors
    def eval_command(
        run: Optional[Path] = typer.Option(None, "--run", help="A training run: its held-out problems; base vs trained model."),
        model: list[str] = typer.Option([], "--model", "-m", help="A model to evaluate, as LABEL=PATH or PATH (repeatable)."),
        engine: Optional[str] = typer.Option(None, help="llama.cpp | transformers (default: from the model files)."),
        data: str = typer.Option("gsm8k", help="Without --run: gsm8k or a JSONL file of expert trajectories."),
        limit: int = typer.Option(20, "--limit", min=1, help="Held-out problems to solve."),
        step_instances: int = typer.Option(40, "--step-instances", min=0, help="Held-out SRL instances for step similarity."),
        k: int = typer.Option(0, "--k", min=0, help="avg@k samples per problem (0: greedy only)."),
        validation_size: int = typer.Option(50, help="Without --run: problems held out of the data."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write eval.md, eval.json and instances.jsonl here."),
        threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for the engine."),
        max_steps: int = typer.Option(8, "--max-steps", min=1, max=64, help="Steps per greedy solution."),
        thought_tokens: int = typer.Option(64, "--thought-tokens", min=1, help="Token limit of each thought."),
        action_tokens: int = typer.Option(64, "--action-tokens", min=1, help="Token limit of each step's action."),
        split: str = typer.Option("validation", "--split", help="Without --run: validation (held out of --data) or all (--data is itself a test split)."),
        step_mode: str = typer.Option("fast", "--step-mode", help="Step instances: fast (one engine call each) or driver (the serving driver)."),
        greedy: bool = typer.Option(True, "--greedy/--no-greedy", help="Solve every problem greedily (accuracy); --no-greedy: step instances only."),
        compare: bool = typer.Option(True, "--compare/--no-compare", help="With 2+ models: paired differences vs the first model."),
        pair: list[str] = typer.Option([], "--pair", help="Also compare LABEL_A:LABEL_B (B - A; repeatable)."),
        resamples: int = typer.Option(10_000, "--resamples", min=1, help="Bootstrap resamples / permutation draws."),
        seed: int = typer.Option(0, "--seed", help="Seed of the step-instance sample, the sampled solutions and the statistics."),
    ) -> None:
        """Held-out accuracy, step similarity, format, exact steps, arithmetic: intervals and paired comparisons.

        Writes eval.md, eval.json and instances.jsonl (every solved problem and step instance) to --out.
        """
        from srl_sdk.errors import InputError
        from srl_sdk.training.data import DataConfig
        from srl_sdk.training.evaluate import EvalConfig, evaluate, held_out_problems

        pairs: list[tuple[str, str]] = []
        for item in model:
            label, sep, path = item.partition("=")
            pairs.append((label, path) if sep else (Path(item).name, item))
        if run is not None and not pairs:
            from srl_sdk.training.recipe import load_recipe

            recipe = load_recipe(run / "recipe.yaml")
            last = run / recipe.stages()[-1] / "final"
            if not last.is_dir():
                raise InputError(f"{last} does not exist: the run is unfinished; finish it with srl train --resume")
            from srl_sdk.engines.hf_folder import resolve_hf_model

            # the base model in the same engine and precision as the trained one (a fair before/after)
            pairs = [("base", resolve_hf_model(recipe.model)), ("trained", str(last))]
        if not pairs:
            raise InputError("name models with --model LABEL=PATH (repeatable) or pass --run RUN_DIR")
        if split not in ("validation", "all"):
            raise InputError(f"--split is validation or all, not {split!r}")
        if step_mode not in ("fast", "driver"):
            raise InputError(f"--step-mode is fast or driver, not {step_mode!r}")
        compared: list[tuple[str, str]] = []
        for item in pair:
            a, sep, b = item.partition(":")
            if not sep or not a or not b:
                raise InputError(f"--pair takes LABEL_A:LABEL_B, not {item!r}")
            compared.append((a, b))
        config = None
        if run is None:
            config = DataConfig(source="gsm8k") if data == "gsm8k" else DataConfig(source="jsonl", path=Path(data))
            config.validation_size = validation_size
        problems = held_out_problems(run, config, split="all" if split == "all" and run is None else "validation")
        eval_config = EvalConfig(
            max_problems=limit, max_step_instances=step_instances, k=k, n_threads=threads, max_steps=max_steps,
            max_thought_tokens=thought_tokens, max_action_tokens=action_tokens, step_mode=step_mode, greedy=greedy,  # type: ignore[arg-type]
            resamples=resamples, seed=seed,
        )
        report = evaluate(
            pairs, problems, eval_config, engine=engine, out_dir=out or (run / "eval" if run else None),
            compare=compare, pairs=compared,
        )
        console.print(report.markdown())
