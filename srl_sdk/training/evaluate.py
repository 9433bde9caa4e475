"""Held-out evaluation of one or more models: per-instance records, intervals, paired comparisons.

What a reviewer needs from an evaluation is (1) every figure recomputable from kept records,
(2) an interval on every mean, and (3) for "B beats A" claims, a paired test on the same
instances that respects that several step instances come from one problem. So:

- Every greedy solution is kept as a `ProblemRecord` and every step instance as a `StepRecord`
  (in eval.json and, one per line, in instances.jsonl); `summarise` rebuilds a model's figures
  from its records alone.
- Intervals and paired tests come from `srl_sdk.training.stats`, resampled by problem (cluster
  bootstrap; sign-flip permutation test over problems).

The figures, all from the serving step protocol (`srl_sdk.core.format`):

- accuracy (greedy): the driver's (`srl_sdk.reasoning.Driver`, stepwise mode) final answer equals
  the reference (`answers_equal`); avg@k: mean accuracy over k sampled solutions per problem;
- step similarity: for held-out SRL instances (problem + expert steps 1..k), the model writes step
  k+1 and its action is scored against the expert's step (`step_similarity`, label stripped); a
  missing or malformed step scores 0. `well_formed_similarity` averages well-formed steps only;
  `srl_reward` is the training reward (similarity, -1 for a malformed step);
- step format rate: share of step instances answered `<think>…</think> step`; format rate: the
  same over every step the model wrote (greedy solutions and step instances);
- exact-step rate: a well-formed action equals the expert step up to whitespace;
- arithmetic pass rate: `check_arithmetic` claims that held / claims with a verdict, over every
  action the model wrote;
- mean steps and completion tokens per greedy solution.

Step instances are generated in one of two ways (`EvalConfig.step_mode`):
- "driver": `Driver.solve(problem, expert steps, max_steps=1)`, the serving path (two engine calls:
  the thought, then the action after a forced "</think>\\n");
- "fast" (default): one engine call per instance over the same prompt (`step_messages` + the
  `<think>` prefill), cut where the driver cuts (thought stops, first line of the action) and read
  with `parse_step_response`. For a model that closes its thought with "</think>\\n" this is the
  same text as the driver's; a step whose thought never closes is malformed in both and scores
  the same, but the fast mode writes no action for it (the driver forces one).

Engines: a GGUF runs in llama.cpp, an HF folder (e.g. a training run's `final/`) in the
transformers engine; `load_engine` picks from the files. An already loaded `Engine` can be passed
instead of a path (tests, benchmarks).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from srl_sdk.core.answers import answers_equal
from srl_sdk.core.atomic import write_atomic
from srl_sdk.core.checks import check_arithmetic
from srl_sdk.core.format import (
    THINK_CLOSE, THINK_OPEN, THOUGHT_STOPS, PromptStyle, parse_step_response, step_messages, strip_step_label,
)
from srl_sdk.core.similarity import step_similarity
from srl_sdk.core.splitting import ExpertSolution
from srl_sdk.core.steps import CheckResult
from srl_sdk.errors import ContextOverflowError, InputError
from srl_sdk.training.data import DataConfig, load_trajectories, split_by_trajectory
from srl_sdk.training.stats import DEFAULT_RESAMPLES, Interval, PairedDifference, cluster_mean_interval, paired_difference

if TYPE_CHECKING:
    from srl_sdk.engines.base import Engine

__all__ = [
    "EvalConfig",
    "ProblemRecord",
    "StepRecord",
    "ModelReport",
    "Comparison",
    "EvalReport",
    "GeneratedStep",
    "fast_step",
    "driver_step",
    "step_instances",
    "evaluate_model",
    "summarise",
    "compare_models",
    "evaluate",
    "write_report",
    "instance_lines",
    "held_out_problems",
    "markdown_table",
    "comparison_table",
    "PAIRED_METRICS",
]

StepMode = Literal["fast", "driver"]


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
    step_mode: StepMode = Field(default="fast", description="fast: one engine call per step instance; driver: Driver.solve")
    greedy: bool = Field(default=True, description="solve every problem greedily (accuracy); off: step instances only")
    resamples: int = Field(default=DEFAULT_RESAMPLES, ge=1, description="bootstrap resamples and permutation draws")
    level: float = Field(default=0.95, gt=0, lt=1)
    seed: int = 0
    n_threads: int | None = Field(default=None, ge=1)
    prompt: PromptStyle | None = Field(
        default=None, description="the step protocol's system prompt (core.format); None: the model's own "
        "(few_shot unless a named model says otherwise); a model trained with `data.prompt: compact` needs compact")


class ProblemRecord(BaseModel):
    """One problem solved greedily by one model (plus its avg@k samples)."""

    problem_id: str
    reference: str | None
    answer: str | None = Field(description="the model's final answer, None when it gave none")
    correct: bool
    finish_reason: str | None
    steps: int
    tokens: int
    format_ok: list[bool] = Field(description="per model-written step")
    actions: list[str]
    checks: list[CheckResult] = Field(default_factory=list, description="arithmetic claims in the actions")
    samples: int = 0
    samples_correct: int = 0


class StepRecord(BaseModel):
    """One held-out step instance: the model writes step k+1 after expert steps 1..k."""

    problem_id: str
    k: int = Field(description="expert steps given; the model writes step k+1")
    expert_step: str
    thought: str
    action: str
    format_ok: bool
    similarity: float = Field(description="step_similarity(action, expert step); 0 when malformed")
    srl_reward: float = Field(description="similarity, or -1 for a malformed step")
    exact: bool = Field(description="well formed and equal to the expert step up to whitespace")
    tokens: int
    checks: list[CheckResult] = Field(default_factory=list)
    error: str | None = None


class ModelReport(BaseModel):
    label: str
    model: str
    engine: str
    step_mode: StepMode = "driver"
    problems: int
    accuracy: float | None
    avg_at_k: float | None
    k: int
    step_instances: int
    step_similarity: float | None
    well_formed_similarity: float | None = None
    well_formed_steps: int = 0
    srl_reward: float | None
    step_format_rate: float | None = None
    exact_step_rate: float | None = None
    format_rate: float | None
    arithmetic_checks: int = 0
    arithmetic_pass_rate: float | None = None
    mean_steps: float
    mean_tokens: float
    seconds: float
    step_seconds: float = 0.0
    intervals: dict[str, Interval] = Field(default_factory=dict, description="metric -> mean [low, high], by problem")
    problem_records: list[ProblemRecord] = Field(default_factory=list)
    step_records: list[StepRecord] = Field(default_factory=list)


class Comparison(BaseModel):
    """b minus a on one metric, paired on the same problems / step instances."""

    a: str
    b: str
    metric: str
    unit: Literal["problem", "step"]
    result: PairedDifference


class EvalReport(BaseModel):
    models: list[ModelReport]
    config: EvalConfig
    problem_ids: list[str]
    comparisons: list[Comparison] = Field(default_factory=list)

    def markdown(self) -> str:
        text = markdown_table(self.models)
        if self.comparisons:
            text += "\n\n" + comparison_table(self.comparisons)
        return text


# -- data -----------------------------------------------------------------------------------------


def held_out_problems(
    run_dir: str | os.PathLike[str] | None,
    data: DataConfig | None,
    split: Literal["validation", "all"] = "validation",
) -> list[ExpertSolution]:
    """The validation trajectories of a training run (from its data.json), or of a data config.

    split="all" takes every usable trajectory of the data config (a file that is itself a test
    split), in file order.
    """
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
    if split == "all":
        return items
    split_items = split_by_trajectory(items, config)
    return split_items.validation or split_items.train


def _problem_ids(problems: Sequence[ExpertSolution]) -> list[str]:
    """Stable unique ids (the trajectory id, else its position): records and pairing use them."""
    ids: list[str] = []
    seen: set[str] = set()
    for i, item in enumerate(problems):
        pid = item.id or f"problem-{i}"
        while pid in seen:
            pid = f"{pid}+"
        seen.add(pid)
        ids.append(pid)
    return ids


def step_instances(problems: Sequence[ExpertSolution], config: EvalConfig) -> list[tuple[int, int]]:
    """(problem index, k) pairs: every expert step of every problem, seeded shuffle, truncated.

    Depends only on the problems and the seed, so every model gets the same instances.
    """
    instances = [(i, k) for i, item in enumerate(problems) for k in range(len(item.steps))]
    random.Random(config.seed).shuffle(instances)
    return instances[: config.max_step_instances]


# -- one step -------------------------------------------------------------------------------------


class GeneratedStep(BaseModel):
    thought: str
    action: str
    format_ok: bool
    tokens: int


def _earliest_stop(text: str) -> tuple[int, str] | None:
    hits = [(text.find(stop), stop) for stop in THOUGHT_STOPS if stop in text]
    return min(hits) if hits else None


def _action_end(text: str) -> int | None:
    """Index of the newline that ends a one-line action (the first one after some text)."""
    start = 0
    while True:
        at = text.find("\n", start)
        if at < 0:
            return None
        if text[:at].strip():
            return at
        start = at + 1


def fast_step(
    engine: "Engine",
    problem: str,
    given: Sequence[str],
    config: EvalConfig,
    *,
    temperature: float = 0.0,
    seed: int | None = None,
) -> GeneratedStep:
    """The model's next step with ONE engine call (no solve loop), cut where the driver cuts.

    The prompt is the driver's: `step_messages(problem, given)` rendered, then `<think>`. The
    thought ends at the first of THOUGHT_STOPS or after max_thought_tokens; only `</think>` closes
    it properly (else the step is malformed and, unlike the driver, no action is asked for). After
    `</think>` the action runs to its first newline after some text, within max_action_tokens
    (plus the one newline token the driver writes into its prompt instead).
    """
    from srl_sdk.engines.base import SamplingParams

    prompt = engine.render(step_messages(problem.strip(), [strip_step_label(s) for s in given], engine.prompt_style)) + THINK_OPEN
    params = SamplingParams(
        max_tokens=config.max_thought_tokens + config.max_action_tokens + 1, temperature=temperature, seed=seed, stop=[]
    )
    text = ""
    tokens = 0
    action_start: int | None = None  # where the action begins in `text` (just after </think>)
    tokens_at_close = 0
    action_budget = config.max_action_tokens
    closed = False
    stream = engine.stream(prompt, params)
    try:
        for event in stream:
            text += event.text
            if event.finish_reason is None:
                tokens += 1
            if action_start is None:
                stop = _earliest_stop(text)
                if stop is not None and stop[1] == THINK_CLOSE:
                    closed = True
                    action_start = stop[0] + len(THINK_CLOSE)
                    tokens_at_close = tokens
                elif stop is not None:
                    text = text[: stop[0]]  # the driver's thought ends here, unclosed
                    break
                elif tokens >= config.max_thought_tokens or event.finish_reason is not None:
                    break
            if action_start is not None:
                after = text[action_start:]
                if tokens == tokens_at_close + 1 and after == "\n":
                    action_budget += 1  # the newline the driver puts in its prompt
                end = _action_end(after)
                if end is not None:
                    text = text[: action_start + end]
                    break
                if tokens - tokens_at_close >= action_budget or event.finish_reason is not None:
                    break
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    parsed = parse_step_response(text, thought_prefilled=True)
    action = parsed.action if closed else ""
    return GeneratedStep(thought=parsed.thought, action=action, format_ok=closed and parsed.format_ok and bool(action), tokens=tokens)


def driver_step(engine: "Engine", problem: str, given: Sequence[str], config: EvalConfig) -> GeneratedStep:
    """The model's next step through the serving driver (the reference path), greedy."""
    from srl_sdk.reasoning.driver import Driver, ReasonConfig

    driver = Driver(engine, ReasonConfig(**_reason_base(config, max_steps=1), temperature=0.0))
    trace = driver.solve(problem, list(given))
    made = [s for s in trace.steps if s.source == "model"]
    if not made:
        return GeneratedStep(thought="", action="", format_ok=False, tokens=0)
    step = made[0]
    return GeneratedStep(thought=step.thought, action=step.action, format_ok=step.format_ok, tokens=step.tokens)


def _reason_base(config: EvalConfig, max_steps: int | None = None) -> dict[str, Any]:
    return dict(
        mode="stepwise", max_steps=max_steps or config.max_steps, max_thought_tokens=config.max_thought_tokens,
        max_action_tokens=config.max_action_tokens, checks=False,
    )


def _same_step(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def _step_record(problem_id: str, k: int, expert: str, made: GeneratedStep, error: str | None = None) -> StepRecord:
    expert_step = strip_step_label(expert)
    similarity = step_similarity(made.action, expert_step) if made.format_ok else 0.0
    return StepRecord(
        problem_id=problem_id,
        k=k,
        expert_step=expert_step,
        thought=made.thought,
        action=made.action,
        format_ok=made.format_ok,
        similarity=similarity,
        srl_reward=similarity if made.format_ok else -1.0,
        exact=made.format_ok and _same_step(made.action, expert_step),
        tokens=made.tokens,
        checks=check_arithmetic(made.action) if made.action else [],
        error=error,
    )


# -- one model ------------------------------------------------------------------------------------


def _engine(model: str, engine: str | None, n_threads: int | None) -> "Engine":
    from srl_sdk.engines import guess_engine, load_engine

    name = engine or guess_engine(model)
    kwargs = {"n_threads": n_threads} if n_threads else {}
    return load_engine(model, name, **kwargs)


def _solve_problems(eng: "Engine", problems: Sequence[ExpertSolution], ids: Sequence[str], config: EvalConfig) -> list[ProblemRecord]:
    from srl_sdk.reasoning.driver import Driver, ReasonConfig

    greedy = Driver(eng, ReasonConfig(**_reason_base(config), temperature=0.0))
    records: list[ProblemRecord] = []
    for i, (pid, item) in enumerate(zip(ids, problems)):
        trace = greedy.solve(item.problem)
        made = [s for s in trace.steps if s.source == "model"]
        actions = [s.action for s in made]
        hits = 0
        for j in range(config.k):
            sampler = Driver(eng, ReasonConfig(**_reason_base(config), temperature=config.sample_temperature,
                                               seed=config.seed + 1000 * i + j))
            sample = sampler.solve(item.problem)
            hits += int(answers_equal(sample.answer, item.answer))
        records.append(
            ProblemRecord(
                problem_id=pid,
                reference=item.answer,
                answer=trace.answer,
                correct=answers_equal(trace.answer, item.answer),
                finish_reason=trace.finish_reason,
                steps=len(made),
                tokens=sum(s.tokens for s in made),
                format_ok=[s.format_ok for s in made],
                actions=actions,
                checks=[c for a in actions for c in check_arithmetic(a)],
                samples=config.k,
                samples_correct=hits,
            )
        )
    return records


def _step_records(eng: "Engine", problems: Sequence[ExpertSolution], ids: Sequence[str], config: EvalConfig) -> list[StepRecord]:
    make: Callable[["Engine", str, Sequence[str], EvalConfig], GeneratedStep] = fast_step if config.step_mode == "fast" else driver_step
    records: list[StepRecord] = []
    for i, k in step_instances(problems, config):
        item = problems[i]
        try:
            made = make(eng, item.problem, item.steps[:k], config)
            error = None
        except ContextOverflowError as exc:  # one over-long problem should cost its instance, not the run
            made, error = GeneratedStep(thought="", action="", format_ok=False, tokens=0), str(exc)
        records.append(_step_record(ids[i], k, item.steps[k], made, error))
    return records


def evaluate_model(
    model: Union[str, "Engine"],
    problems: Sequence[ExpertSolution],
    config: EvalConfig,
    *,
    label: str | None = None,
    engine: str | None = None,
) -> ModelReport:
    """Solve and score `problems` with one model; `model` is a path/alias or a loaded Engine (not closed here)."""
    started = time.perf_counter()
    problems = list(problems)[: config.max_problems]
    if not problems:
        raise InputError("no problems to evaluate on; check the data or the run's held-out set")
    ids = _problem_ids(problems)
    owned = isinstance(model, (str, os.PathLike))
    eng = _engine(str(model), engine, config.n_threads) if isinstance(model, (str, os.PathLike)) else model
    own_style = eng.prompt_style
    if config.prompt is not None:
        eng.prompt_style = config.prompt
    try:
        problem_records = _solve_problems(eng, problems, ids, config) if config.greedy else []
        step_started = time.perf_counter()
        step_records = _step_records(eng, problems, ids, config)
        step_seconds = time.perf_counter() - step_started
        engine_name = eng.name
        model_name = str(model) if owned else eng.model_id
    finally:
        eng.prompt_style = own_style
        if owned:
            eng.close()
    return summarise(
        label or Path(model_name).name, model_name, engine_name, problem_records, step_records, config,
        seconds=time.perf_counter() - started, step_seconds=step_seconds, problems=len(problems),
    )


# -- figures from records -------------------------------------------------------------------------

# metric -> (unit, values keyed for pairing). Only these can be paired across models: their
# observations exist for every model on the same problem / instance.
PAIRED_METRICS: dict[str, Literal["problem", "step"]] = {
    "accuracy": "problem",
    "avg_at_k": "problem",
    "step_similarity": "step",
    "srl_reward": "step",
    "step_format_rate": "step",
    "exact_step_rate": "step",
}


def _observations(report: ModelReport, metric: str) -> list[tuple[str, str, float]]:
    """(pairing key, cluster = problem id, value) of one metric, rebuilt from the records."""
    problems, steps = report.problem_records, report.step_records
    step_key = lambda r: f"{r.problem_id}#{r.k}"  # noqa: E731
    if metric == "accuracy":
        return [(r.problem_id, r.problem_id, float(r.correct)) for r in problems]
    if metric == "avg_at_k":
        return [(r.problem_id, r.problem_id, r.samples_correct / r.samples) for r in problems if r.samples]
    if metric == "step_similarity":
        return [(step_key(r), r.problem_id, r.similarity) for r in steps]
    if metric == "well_formed_similarity":
        return [(step_key(r), r.problem_id, r.similarity) for r in steps if r.format_ok]
    if metric == "srl_reward":
        return [(step_key(r), r.problem_id, r.srl_reward) for r in steps]
    if metric == "step_format_rate":
        return [(step_key(r), r.problem_id, float(r.format_ok)) for r in steps]
    if metric == "exact_step_rate":
        return [(step_key(r), r.problem_id, float(r.exact)) for r in steps]
    if metric == "format_rate":
        return [(f"{r.problem_id}/{j}", r.problem_id, float(ok)) for r in problems for j, ok in enumerate(r.format_ok)] + [
            (step_key(r), r.problem_id, float(r.format_ok)) for r in steps if r.error is None
        ]
    if metric == "arithmetic_pass_rate":
        checks = [(r.problem_id, c) for r in problems for c in r.checks] + [(r.problem_id, c) for r in steps for c in r.checks]
        return [(f"{pid}/{j}", pid, float(bool(c.passed))) for j, (pid, c) in enumerate(checks) if c.passed is not None]
    raise ValueError(f"unknown metric {metric!r}")


INTERVAL_METRICS = (
    "accuracy", "avg_at_k", "step_similarity", "well_formed_similarity", "srl_reward",
    "step_format_rate", "exact_step_rate", "format_rate", "arithmetic_pass_rate",
)


def summarise(
    label: str,
    model: str,
    engine: str,
    problem_records: Sequence[ProblemRecord],
    step_records: Sequence[StepRecord],
    config: EvalConfig,
    *,
    seconds: float = 0.0,
    step_seconds: float = 0.0,
    problems: int | None = None,
) -> ModelReport:
    """A model's figures and intervals from its records alone (so anyone can recompute them)."""
    report = ModelReport(
        label=label, model=model, engine=engine, step_mode=config.step_mode,
        problems=problems if problems is not None else len(problem_records),
        accuracy=None, avg_at_k=None, k=config.k, step_instances=len(step_records), step_similarity=None,
        srl_reward=None, format_rate=None, mean_steps=0.0, mean_tokens=0.0, seconds=seconds, step_seconds=step_seconds,
        problem_records=list(problem_records), step_records=list(step_records),
    )
    figures: dict[str, float | None] = {}
    for metric in INTERVAL_METRICS:
        obs = _observations(report, metric)
        if not obs:
            figures[metric] = None
            continue
        interval = cluster_mean_interval(
            [v for _, _, v in obs], [c for _, c, _ in obs], resamples=config.resamples, seed=config.seed, level=config.level
        )
        figures[metric] = interval.mean
        report.intervals[metric] = interval
    solved = list(problem_records)
    return report.model_copy(
        update={
            **figures,
            "well_formed_steps": sum(r.format_ok for r in step_records),
            "arithmetic_checks": len(_observations(report, "arithmetic_pass_rate")),
            "mean_steps": sum(r.steps for r in solved) / len(solved) if solved else 0.0,
            "mean_tokens": sum(r.tokens for r in solved) / len(solved) if solved else 0.0,
        }
    )


def compare_models(
    reports: Sequence[ModelReport],
    config: EvalConfig,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> list[Comparison]:
    """Paired differences (b - a) on every PAIRED_METRIC, for each model vs the first and `pairs`.

    Observations are matched by problem id (accuracy, avg@k) or by (problem id, k) (step
    metrics); only those present for both models are used.
    """
    by_label = {r.label: r for r in reports}
    wanted: list[tuple[str, str]] = [(reports[0].label, r.label) for r in reports[1:]]
    for a, b in pairs or []:
        for name in (a, b):
            if name not in by_label:
                raise InputError(f"--pair names {name!r}, which is not a model label ({', '.join(by_label)})")
        if (a, b) not in wanted:
            wanted.append((a, b))
    out: list[Comparison] = []
    for a, b in wanted:
        for metric, unit in PAIRED_METRICS.items():
            obs_a = {key: (cluster, v) for key, cluster, v in _observations(by_label[a], metric)}
            obs_b = {key: v for key, _, v in _observations(by_label[b], metric)}
            keys = [key for key in obs_a if key in obs_b]
            if not keys:
                continue
            result = paired_difference(
                [obs_a[key][1] for key in keys], [obs_b[key] for key in keys], [obs_a[key][0] for key in keys],
                resamples=config.resamples, seed=config.seed, level=config.level,
            )
            out.append(Comparison(a=a, b=b, metric=metric, unit=unit, result=result))
    return out


# -- all models -----------------------------------------------------------------------------------


def evaluate(
    models: Sequence[tuple[str, Union[str, "Engine"]]],
    problems: Sequence[ExpertSolution],
    config: EvalConfig | None = None,
    *,
    engine: str | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    compare: bool = True,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> EvalReport:
    """Evaluate (label, model) pairs on the same problems; with 2+ models compare them pairwise.

    Writes eval.md, eval.json (the whole report, records included) and instances.jsonl (one
    record per line: kind "problem" or "step", with its model label) to out_dir.
    """
    config = config or EvalConfig()
    labels = [label for label, _ in models]
    if len(set(labels)) != len(labels):
        raise InputError(f"model labels must differ ({', '.join(labels)}); name them with --model LABEL=PATH")
    reports = [evaluate_model(model, problems, config, label=label, engine=engine) for label, model in models]
    comparisons = compare_models(reports, config, pairs) if compare and len(reports) > 1 else []
    report = EvalReport(
        models=reports, config=config, problem_ids=_problem_ids(list(problems)[: config.max_problems]), comparisons=comparisons
    )
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def instance_lines(report: EvalReport) -> list[str]:
    """instances.jsonl: every record of every model, one JSON object per line."""
    lines: list[str] = []
    for model in report.models:
        for record in model.problem_records:
            lines.append(json.dumps({"kind": "problem", "model": model.label, **record.model_dump(mode="json")}, ensure_ascii=False))
        for step in model.step_records:
            lines.append(json.dumps({"kind": "step", "model": model.label, **step.model_dump(mode="json")}, ensure_ascii=False))
    return lines


def write_report(report: EvalReport, out_dir: str | os.PathLike[str]) -> Path:
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    files = (
        ("eval.md", report.markdown() + "\n"),
        ("eval.json", report.model_dump_json(indent=1)),
        ("instances.jsonl", "".join(line + "\n" for line in instance_lines(report))),
    )
    for name, text in files:
        write_atomic(out / name, text)  # fsynced, renamed, folder fsynced: whole or absent after a crash
    return out


# -- markdown -------------------------------------------------------------------------------------


def _with_interval(report: ModelReport, metric: str, pct: bool = False) -> str:
    interval = report.intervals.get(metric)
    return interval.text(pct) if interval is not None else "—"


def markdown_table(reports: Sequence[ModelReport]) -> str:
    """Two tables (greedy solutions; step instances), every mean with its interval by problem."""
    level = next((i.level for r in reports for i in r.intervals.values()), 0.95)
    lines = [
        "| model | engine | problems | accuracy (greedy) | avg@k | format rate (all steps) | arithmetic pass | steps / solution | tokens / solution | time (all) |",
        "|" + "---|" * 10,
    ]
    for r in reports:
        avg = f"{_with_interval(r, 'avg_at_k', True)} (k={r.k})" if r.k and r.avg_at_k is not None else "—"
        lines.append(
            f"| {r.label} | {r.engine} | {r.problems} | {_with_interval(r, 'accuracy', True)} | {avg} | "
            f"{_with_interval(r, 'format_rate', True)} | {_with_interval(r, 'arithmetic_pass_rate', True)} (n={r.arithmetic_checks}) | "
            f"{r.mean_steps:.2f} | {r.mean_tokens:.1f} | {r.seconds:.0f} s |"
        )
    lines += [
        "",
        "| model | step instances | step similarity | well-formed similarity | SRL reward | step format rate | exact step | time (steps) |",
        "|" + "---|" * 8,
    ]
    for r in reports:
        lines.append(
            f"| {r.label} | {r.step_instances} ({r.step_mode}) | {_with_interval(r, 'step_similarity')} | "
            f"{_with_interval(r, 'well_formed_similarity')} (n={r.well_formed_steps}) | {_with_interval(r, 'srl_reward')} | "
            f"{_with_interval(r, 'step_format_rate', True)} | {_with_interval(r, 'exact_step_rate', True)} | {r.step_seconds:.0f} s |"
        )
    lines += [
        "",
        f"Means with {100 * level:.0f} % percentile bootstrap intervals, resampled by problem. Step similarity counts a "
        "missing or malformed step as 0; well-formed similarity averages well-formed steps only; arithmetic pass: "
        "claims that hold / claims checked, over every step the model wrote.",
    ]
    return "\n".join(lines)


def comparison_table(comparisons: Sequence[Comparison]) -> str:
    """b - a per metric: mean difference, its cluster-bootstrap interval, permutation p-value."""
    if not comparisons:
        return ""
    first = comparisons[0].result
    lines = [
        "| comparison | metric | n (problems) | a | b | b − a | 95 % CI | p | wins / losses / ties |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        r = c.result
        p = f"{r.p_value:.3g}" + ("" if r.exact else "*")
        lines.append(
            f"| {c.b} vs {c.a} | {c.metric} | {r.n} ({r.clusters}) | {r.mean_a:.3f} | {r.mean_b:.3f} | {r.diff:+.3f} | "
            f"[{r.low:+.3f}, {r.high:+.3f}] | {p} | {r.wins} / {r.losses} / {r.ties} |"
        )
    lines.append("")
    lines.append(
        f"Paired on the same problems / step instances. CI: {100 * first.level:.0f} % cluster bootstrap of the mean "
        f"difference ({first.resamples} resamples of problems). p: two-sided sign-flip permutation test over problems "
        "(exact enumeration; * = Monte Carlo with the same number of draws)."
    )
    return "\n".join(lines)
