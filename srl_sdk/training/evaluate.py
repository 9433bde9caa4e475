"""Held-out evaluation of one or more models, as a before/after table (markdown + JSON).

Everything is measured with the serving driver itself (`srl_sdk.reasoning.Driver`, stepwise
mode), so the numbers describe what a user of the model would get, not a training-time proxy:

- accuracy (greedy): the driver's final answer equals the reference (`answers_equal`);
- avg@k: mean accuracy over k sampled solutions per problem (temperature `sample_temperature`);
- step similarity: for held-out SRL instances (problem + expert steps 1..k-1), the model writes
  step k with the driver's protocol and the action is scored against expert step k with the
  SRL similarity (`step_similarity`, 0..1; `srl_reward` is the same with -1 for a malformed step);
- format rate: share of generated steps that followed `<think>…</think> step`;
- mean steps and completion tokens per greedy solution.

Engines: a GGUF runs in llama.cpp, an HF folder (e.g. a training run's `final/`) in the
transformers engine; `load_engine` picks from the files.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

from srl_sdk.core.answers import answers_equal
from srl_sdk.core.similarity import step_similarity
from srl_sdk.core.splitting import ExpertSolution
from srl_sdk.core.steps import Trace
from srl_sdk.errors import InputError
from srl_sdk.training.data import DataConfig, load_trajectories, split_by_trajectory

__all__ = ["EvalConfig", "ModelReport", "EvalReport", "evaluate_model", "evaluate", "held_out_problems", "markdown_table"]


class EvalConfig(BaseModel):
    """What to measure and how hard to try (each number costs real decoding time on CPU)."""

    model_config = ConfigDict(extra="forbid")

    max_problems: int = Field(default=20, ge=1)
    max_step_instances: int = Field(default=40, ge=0, description="held-out SRL instances for step similarity")
    k: int = Field(default=0, ge=0, le=64, description="avg@k samples per problem (0: skip)")
    sample_temperature: float = Field(default=0.7, gt=0)
    max_steps: int = Field(default=8, ge=1, le=64)
    max_thought_tokens: int = Field(default=64, ge=1)
    max_action_tokens: int = Field(default=64, ge=1)
    seed: int = 0
    n_threads: int | None = Field(default=None, ge=1)


class ModelReport(BaseModel):
    label: str
    model: str
    engine: str
    problems: int
    accuracy: float
    avg_at_k: float | None
    k: int
    step_instances: int
    step_similarity: float | None
    srl_reward: float | None
    format_rate: float | None
    mean_steps: float
    mean_tokens: float
    seconds: float


class EvalReport(BaseModel):
    models: list[ModelReport]
    config: EvalConfig
    problem_ids: list[str]

    def markdown(self) -> str:
        return markdown_table(self.models)


def held_out_problems(run_dir: str | os.PathLike[str] | None, data: DataConfig | None) -> list[ExpertSolution]:
    """The validation trajectories of a training run (from its data.json), or of a data config."""
    if run_dir is not None:
        run = Path(run_dir).expanduser()
        try:
            meta = json.loads((run / "data.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{run} has no readable data.json ({exc}); point --run at a folder made by `srl train`") from exc
        from srl_sdk.training.recipe import load_recipe

        recipe = load_recipe(run / "recipe.yaml")
        wanted = set(meta.get("validation_ids") or [])
        items, _ = load_trajectories(recipe.data.model_copy(update={"limit": recipe.data.limit}))
        held = [item for item in items if item.id in wanted]
        if not held:
            raise InputError(f"the run in {run} held out no problems; set data.validation_size in its recipe")
        return held
    config = data or DataConfig()
    items, _ = load_trajectories(config)
    split = split_by_trajectory(items, config)
    return split.validation or split.train


def _engine(model: str, engine: str | None, n_threads: int | None):
    from srl_sdk.engines import guess_engine, load_engine

    name = engine or guess_engine(model)
    kwargs = {"n_threads": n_threads} if n_threads else {}
    return load_engine(model, name, **kwargs)


def evaluate_model(
    model: str,
    problems: Sequence[ExpertSolution],
    config: EvalConfig,
    *,
    label: str | None = None,
    engine: str | None = None,
) -> ModelReport:
    from srl_sdk.reasoning.driver import Driver, ReasonConfig

    started = time.perf_counter()
    problems = list(problems)[: config.max_problems]
    if not problems:
        raise InputError("no problems to evaluate on; check the data or the run's held-out set")
    with _engine(model, engine, config.n_threads) as eng:
        base = dict(
            mode="stepwise", max_steps=config.max_steps, max_thought_tokens=config.max_thought_tokens,
            max_action_tokens=config.max_action_tokens, checks=False,
        )
        greedy = Driver(eng, ReasonConfig(**base, temperature=0.0))
        correct = 0
        n_steps: list[int] = []
        n_tokens: list[int] = []
        format_flags: list[bool] = []
        for item in problems:
            trace: Trace = greedy.solve(item.problem)
            model_steps = [s for s in trace.steps if s.source == "model"]
            correct += int(trace.answer is not None and answers_equal(trace.answer, item.answer or ""))
            n_steps.append(len(model_steps))
            n_tokens.append(sum(s.tokens for s in model_steps))
            format_flags.extend(s.format_ok for s in model_steps)
        avg_at_k = None
        if config.k:
            hits = 0
            for i, item in enumerate(problems):
                for j in range(config.k):
                    sampler = Driver(eng, ReasonConfig(**base, temperature=config.sample_temperature, seed=config.seed + 1000 * i + j))
                    trace = sampler.solve(item.problem)
                    hits += int(trace.answer is not None and answers_equal(trace.answer, item.answer or ""))
            avg_at_k = hits / (len(problems) * config.k)
        instances = [(item, k) for item in problems for k in range(len(item.steps))]
        random.Random(config.seed).shuffle(instances)
        instances = instances[: config.max_step_instances]
        one_step = Driver(eng, ReasonConfig(**{**base, "max_steps": 1}, temperature=0.0))
        sims: list[float] = []
        rewards: list[float] = []
        for item, k in instances:
            trace = one_step.solve(item.problem, item.steps[:k])
            made = [s for s in trace.steps if s.source == "model"]
            if not made:
                sims.append(0.0)
                rewards.append(-1.0)
                continue
            sim = step_similarity(made[0].action, item.steps[k])
            sims.append(sim)
            rewards.append(sim if made[0].format_ok else -1.0)
            format_flags.append(made[0].format_ok)
        engine_name = eng.name
    mean = lambda xs: (sum(xs) / len(xs)) if xs else None  # noqa: E731
    return ModelReport(
        label=label or Path(model).name,
        model=str(model),
        engine=engine_name,
        problems=len(problems),
        accuracy=correct / len(problems),
        avg_at_k=avg_at_k,
        k=config.k,
        step_instances=len(instances),
        step_similarity=mean(sims),
        srl_reward=mean(rewards),
        format_rate=mean([float(f) for f in format_flags]),
        mean_steps=mean(n_steps) or 0.0,
        mean_tokens=mean(n_tokens) or 0.0,
        seconds=time.perf_counter() - started,
    )


def evaluate(
    models: Sequence[tuple[str, str]],
    problems: Sequence[ExpertSolution],
    config: EvalConfig | None = None,
    *,
    engine: str | None = None,
    out_dir: str | os.PathLike[str] | None = None,
) -> EvalReport:
    """Evaluate (label, model) pairs on the same problems; write eval.md and eval.json to out_dir."""
    config = config or EvalConfig()
    reports = [evaluate_model(model, problems, config, label=label, engine=engine) for label, model in models]
    report = EvalReport(models=reports, config=config, problem_ids=[p.id or "" for p in list(problems)[: config.max_problems]])
    if out_dir is not None:
        out = Path(out_dir).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (("eval.md", report.markdown() + "\n"), ("eval.json", report.model_dump_json(indent=1))):
            tmp = out / (name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, out / name)
    return report


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.1f} %" if pct else f"{value:.3f}"


def markdown_table(reports: Sequence[ModelReport]) -> str:
    header = "| model | engine | problems | accuracy (greedy) | avg@k | step similarity | SRL reward | format rate | steps / solution | tokens / solution | time |"
    lines = [header, "|" + "---|" * 11]
    for r in reports:
        avg = f"{_fmt(r.avg_at_k, True)} (k={r.k})" if r.k else "—"
        lines.append(
            f"| {r.label} | {r.engine} | {r.problems} | {_fmt(r.accuracy, True)} | {avg} | "
            f"{_fmt(r.step_similarity)} (n={r.step_instances}) | {_fmt(r.srl_reward)} | {_fmt(r.format_rate, True)} | "
            f"{r.mean_steps:.2f} | {r.mean_tokens:.1f} | {r.seconds:.0f} s |"
        )
    return "\n".join(lines)
