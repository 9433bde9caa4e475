"""Training data: expert trajectories -> SRL instances, SFT examples and RLVR examples.

Sources: a JSONL file of expert trajectories, GSM8K (`{"question","answer"}` lines, the shared
copy lives in ../shared/data/gsm8k), or a Hugging Face dataset by name. Every row that cannot be
used is counted in a `DropReport` with its reason instead of crashing the run: a bad line in a
7,000-line file should cost that line, not the afternoon.

Three example kinds come out, all speaking the one step protocol of `srl_sdk.core.format`:
- SRL (one per target step k of `DataConfig.step_range`, the `StepRange` that `srl data split
  --output instances` uses too; by default k = 2..N as in the paper): prompt = the step prompt
  for (problem, expert steps 1..k-1) ending with the `<think>` prefill, `expert_step` = step k
  (the reward compares against it; `DataConfig.step_lines` says whether its first line or all of
  the model's action is compared).
- SFT: the paper's SFT baseline fine-tunes on WHOLE expert solutions (`sft_mode="solution"`:
  prompt = the free-mode prompt, completion = the solution one step per line + `#### answer`).
  `sft_mode="both"` writes both kinds of rows. `sft_mode="step"` teaches the stepwise protocol
  directly: completion = thought +
  `\n</think>\n` + the expert step. Experts wrote no monologue, so the thought is empty
  (`sft_thought="none"`, the default), the step's own arithmetic (`"arithmetic"`: "48/2 = 24",
  the claims `core.checks` finds, one per line) or a draft of the step (`"draft"`: the step
  itself, which the model then commits). None is a real monologue; SRL is what rewards the step.
  On SmolLM2 (docs/results.md): the empty thought barely learned to close (`<think>\n` is
  followed by `<` or a blank line in its prior) and at a high learning rate repeated `</think>`;
  the arithmetic one taught copying a bare equation as the step; the draft closed its thought on
  79 % of held-out steps and wrote a step on all of them. The leading newline keeps `<think>`
  and `</think>` from merging into one `></` token, which inference would never produce.
- RLVR: the free-mode prompt and the reference answer (outcome reward); numeric answers only
  with the "exact" verifier, any answer with the "math" one (math-verify).

The train/validation split is by trajectory (problem), never by step: steps of one solution in
both sets would leak the answer into validation.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from srl_sdk.core.answers import Verifier, check_verifier, extract_answer, parse_number
from srl_sdk.core.checks import check_arithmetic
from srl_sdk.core.format import FINAL_MARKER, THINK_CLOSE, THINK_OPEN, PromptStyle, free_messages, step_messages
from srl_sdk.core.instances import StepRange
from srl_sdk.core.jsonl import read_jsonl, row_field
from srl_sdk.core.similarity import StepLines, step_lines_for
from srl_sdk.core.splitting import ExpertSolution, SplitStyle, split_solution
from srl_sdk.errors import ConfigError, InputError, require

__all__ = [
    "DataConfig",
    "DropReport",
    "TrainValSplit",
    "default_gsm8k_path",
    "load_trajectories",
    "split_by_trajectory",
    "srl_examples",
    "sft_examples",
    "rlvr_examples",
    "resolve_step_lines",
    "chat_prompt_renderer",
]

# Reasons a row is dropped (the keys of DropReport.counts).
NOT_JSON = "not_json"
NOT_AN_OBJECT = "not_an_object"
NO_PROBLEM = "no_problem"
NO_SOLUTION = "no_solution"
EMPTY_STEPS = "empty_steps"
ONE_STEP = "one_step"
NO_ANSWER = "no_answer"
DUPLICATE_PROBLEM = "duplicate_problem"
NON_NUMERIC_ANSWER = "non_numeric_answer_for_rlvr"
NOT_UTF8 = "not_utf8"


def default_gsm8k_path() -> Path:
    """<repo root>/../shared/data/gsm8k/train.jsonl (CI clones the repo with ../shared beside it)."""
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


class DataConfig(BaseModel):
    """Where expert trajectories come from and how they are cut and split."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["gsm8k", "jsonl", "hf"] = "gsm8k"
    path: Path | None = Field(default=None, description="JSONL file (gsm8k: default ../shared copy)")
    hf_name: str | None = Field(default=None, description="Hugging Face dataset id, e.g. simplescaling/s1K-1.1")
    hf_config: str | None = None
    hf_split: str = "train"
    problem_field: str | None = Field(default=None, description="default: problem, else question")
    solution_field: str | None = Field(default=None, description="default: solution (gsm8k: answer)")
    steps_field: str | None = Field(default=None, description="default: steps (a list of strings)")
    answer_field: str | None = Field(default=None, description="default: answer (when not a solution)")
    split_style: SplitStyle = "auto"
    split_pattern: str | None = None
    keep_calculator_notes: bool = Field(default=False, description="GSM8K <<48/2=24>> notes")
    limit: int | None = Field(default=None, ge=1, description="read at most this many usable trajectories")
    validation_size: int | None = Field(default=None, ge=0, description="held-out trajectories (wins over fraction)")
    validation_fraction: float = Field(default=0.05, ge=0.0, lt=1.0)
    seed: int = 0
    min_steps: int = Field(default=2, ge=1, description="shorter solutions are dropped (one_step)")
    step_range: StepRange = Field(
        default_factory=StepRange,
        description="target steps k that become SRL instances (the same range as `srl data split --min-step/--max-step`)")
    step_lines: Literal["auto", "first", "all"] = Field(
        default="auto",
        description="how much of the model's action the SRL reward compares: first line (one-line steps, GSM8K) or all "
        "(multi-line steps, s1K paragraphs); auto: all when any expert step has several lines")
    prompt: PromptStyle = Field(
        default="few_shot",
        description="the system prompt of every training row: few_shot (the protocol with two worked examples, what "
        "the untrained base needs and what serving sends by default) or compact (the protocol alone, ~50 tokens "
        "instead of ~330: serve and evaluate the trained model with the same style)")


class DropReport(BaseModel):
    """What was read, what was kept, and every dropped row counted by reason."""

    read: int = 0
    kept: int = 0
    counts: dict[str, int] = Field(default_factory=dict)
    examples: dict[str, list[str]] = Field(default_factory=dict, description="first few locations per reason")

    def drop(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        seen = self.examples.setdefault(reason, [])
        if len(seen) < 5:
            seen.append(where)

    @property
    def dropped(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "none"
        return f"read {self.read} rows, kept {self.kept}, dropped {self.dropped} ({parts})"


class TrainValSplit(BaseModel):
    train: list[ExpertSolution]
    validation: list[ExpertSolution]


# -- reading ------------------------------------------------------------------------------------


def _with_final_marker(steps: list[str], answer: str) -> list[str]:
    """The last step carries `#### answer`, as the step protocol asks of a final step."""
    if extract_answer(steps[-1]) is None:
        steps = steps[:-1] + [f"{steps[-1].rstrip()} {FINAL_MARKER} {answer}"]
    return steps


def _normalise_problem(text: str) -> str:
    return " ".join(text.lower().split())


def parse_row(row: Any, where: str, config: DataConfig, report: DropReport) -> ExpertSolution | None:
    """One raw record -> an ExpertSolution, or None with the reason counted."""
    if not isinstance(row, dict):
        report.drop(NOT_AN_OBJECT, where)
        return None
    gsm8k = config.source == "gsm8k"
    problem = row_field(row, config.problem_field, ("problem", "question"))
    if not isinstance(problem, str) or not problem.strip():
        report.drop(NO_PROBLEM, where)
        return None
    solution = row_field(row, config.solution_field, ("answer",) if gsm8k else ("solution",))
    steps_value = None if gsm8k else row_field(row, config.steps_field, ("steps",))
    if isinstance(steps_value, list):
        steps = [s.strip() for s in steps_value if isinstance(s, str) and s.strip()]
        solution_text = "\n".join(steps)
    elif isinstance(solution, str):
        solution_text = solution
        try:
            steps = split_solution(
                solution, config.split_style, config.split_pattern,
                keep_calculator_notes=config.keep_calculator_notes,
            )
        except InputError:
            raise  # a bad split pattern is a config error for every row, not a bad row
    else:
        report.drop(NO_SOLUTION, where)
        return None
    if not steps:
        report.drop(EMPTY_STEPS, where)
        return None
    if len(steps) < config.min_steps:
        report.drop(ONE_STEP, where)
        return None
    answer = None if gsm8k else row_field(row, config.answer_field, ("answer",))
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if isinstance(answer, str) and answer.strip():
        # an answer field may hold a whole reference solution (s1K's `solution`): take its marked
        # answer; a short one-line value is the answer itself
        text = answer.strip()
        answer = extract_answer(text) or (text if "\n" not in text and len(text) <= 100 else None)
    if not isinstance(answer, str) or not answer.strip():
        answer = extract_answer(solution_text if not isinstance(solution, str) else solution)
    if answer is None:
        answer = extract_answer(steps[-1])
    if answer is None or not str(answer).strip():
        report.drop(NO_ANSWER, where)
        return None
    answer = str(answer).strip()
    return ExpertSolution(problem=problem.strip(), steps=_with_final_marker(steps, answer), answer=answer, id=where)


def _jsonl_rows(path: Path, report: DropReport) -> Iterator[tuple[str, Any]]:
    for line in read_jsonl(path, hint="check the path in the recipe's data.path"):
        report.read += 1
        if line.error is not None:
            report.drop(line.error, line.where)  # NOT_UTF8 or NOT_JSON
        else:
            yield line.where, line.value


def _hf_rows(config: DataConfig, report: DropReport) -> Iterator[tuple[str, Any]]:
    datasets = require("datasets", "train")
    if not config.hf_name:
        raise ConfigError("data.source 'hf' needs data.hf_name, e.g. simplescaling/s1K-1.1")
    try:
        dataset = datasets.load_dataset(config.hf_name, config.hf_config, split=config.hf_split)
    except Exception as exc:  # hub errors come in many types
        raise InputError(
            f"cannot load the Hugging Face dataset {config.hf_name!r} ({type(exc).__name__}: {exc}); "
            "check the name and that this machine can reach the hub, or export it to JSONL and use source: jsonl"
        ) from exc
    for index, row in enumerate(dataset):
        report.read += 1
        yield f"{config.hf_name}[{index}]", dict(row)


def load_trajectories(config: DataConfig) -> tuple[list[ExpertSolution], DropReport]:
    """All usable expert trajectories of the configured source, and the report of dropped rows."""
    report = DropReport()
    if config.source == "hf":
        rows: Iterable[tuple[str, Any]] = _hf_rows(config, report)
    else:
        path = config.path or (default_gsm8k_path() if config.source == "gsm8k" else None)
        if path is None:
            raise ConfigError("data.source 'jsonl' needs data.path (a JSONL file of expert trajectories)")
        rows = _jsonl_rows(Path(path).expanduser(), report)
    seen: set[str] = set()
    out: list[ExpertSolution] = []
    for where, row in rows:
        item = parse_row(row, where, config, report)
        if item is None:
            continue
        key = _normalise_problem(item.problem)
        if key in seen:
            report.drop(DUPLICATE_PROBLEM, where)
            continue
        seen.add(key)
        out.append(item)
        if config.limit is not None and len(out) >= config.limit:
            break
    report.kept = len(out)
    if not out:
        raise InputError(f"no usable expert trajectories: {report.summary()}; check data.source and the field names")
    return out, report


def split_by_trajectory(items: Sequence[ExpertSolution], config: DataConfig) -> TrainValSplit:
    """Shuffle whole trajectories (seeded) and hold some out; steps never cross the split."""
    order = list(items)
    random.Random(config.seed).shuffle(order)
    n_val = config.validation_size if config.validation_size is not None else round(len(order) * config.validation_fraction)
    n_val = min(n_val, max(0, len(order) - 1))  # always leave something to train on
    return TrainValSplit(train=order[n_val:], validation=order[:n_val])


# -- examples -----------------------------------------------------------------------------------

PromptRenderer = Callable[[list[dict[str, str]]], str]


def chat_prompt_renderer(tokenizer) -> PromptRenderer:
    """Messages -> the exact prompt text the model sees (its chat template + generation prompt).

    The same text the inference engines render (`Engine.render`), so training matches serving.
    """

    def render(messages: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    return render


def resolve_step_lines(config: DataConfig, items: Iterable[ExpertSolution]) -> StepLines:
    """The `step_lines` setting, with "auto" decided from the expert steps of `items`.

    Pass every trajectory of the run (train and validation), so both sets score the same way.
    """
    if config.step_lines != "auto":
        return config.step_lines
    return step_lines_for(step for item in items for step in item.steps)


def srl_examples(
    items: Sequence[ExpertSolution],
    render: PromptRenderer,
    step_range: StepRange | None = None,
    prompt: PromptStyle = "few_shot",
) -> list[dict[str, Any]]:
    """One example per target step k in `step_range` (default k = 2..N): prompt ends with `<think>`.

    The driver prefills `<think>` at inference, so the completion the policy is trained to write
    is `monologue</think>\\nstep` — exactly what it will write when served. The range is the one
    `core.instances.make_srl_instances` uses (min_step=1 adds step 1, predicted from no steps).
    """
    step_range = step_range or StepRange()
    rows: list[dict[str, Any]] = []
    for item in items:
        for k in step_range.targets(len(item.steps)):
            step = item.steps[k - 1]
            rows.append(
                {
                    "prompt": render(step_messages(item.problem, item.steps[: k - 1], prompt)) + THINK_OPEN,
                    "expert_step": step,
                    "problem": item.problem,
                    "problem_id": item.id or "",
                    "step_index": k,
                    "answer": item.answer or "",
                }
            )
    return rows


def solution_text(item: ExpertSolution) -> str:
    """A whole expert solution as free mode writes it: one step per line, the last with ####."""
    return "\n".join(item.steps)


SftMode = Literal["solution", "step", "both"]  # whole solutions, per-step rows, or both (see sft_examples)
SftThought = Literal["none", "arithmetic", "draft"]  # what a per-step SFT target thinks before </think>


def sft_examples(
    items: Sequence[ExpertSolution],
    render: PromptRenderer,
    mode: SftMode = "solution",
    thought: SftThought = "none",
    prompt: PromptStyle = "few_shot",
) -> list[dict[str, Any]]:
    """prompt/completion pairs (TRL's SFTTrainer trains on the completion only).

    "both": each problem's per-step rows, then its whole-solution row, so one model learns both
    protocols: the step protocol the driver serves, and free mode, which RLVR's rollouts use (a
    per-step model asked for a whole solution stops after one step, so RLVR from it sees no
    right answer and gets no signal).
    """
    rows: list[dict[str, Any]] = []
    for item in items:
        if mode in ("step", "both"):
            for k, step in enumerate(item.steps, start=1):
                rows.append(
                    {
                        "prompt": render(step_messages(item.problem, item.steps[: k - 1], prompt)) + THINK_OPEN,
                        # "\n" before </think>: glued to the prefilled "<think>", "></" is ONE token, so
                        # an empty thought would train a token sequence inference never shows
                        "completion": f"\n{sft_thought_text(step, thought)}{THINK_CLOSE}\n{step}",
                    }
                )
        if mode in ("solution", "both"):
            rows.append({"prompt": render(free_messages(item.problem, prompt)), "completion": solution_text(item)})
    return rows


def sft_thought_text(step: str, thought: SftThought) -> str:
    """The thought an SFT target carries before `</think>`, newline-ended when not empty."""
    if thought == "draft":
        return f"{step}\n"
    if thought == "arithmetic":
        return worked_thought(step)
    return ""


def worked_thought(step: str) -> str:
    """The arithmetic a step states ("48/2 = 24"), one claim per line and newline-ended; "" if none."""
    claims = [result.detail for result in check_arithmetic(step.partition(FINAL_MARKER)[0])]
    return "".join(f"{claim}\n" for claim in claims)


def rlvr_examples(
    items: Sequence[ExpertSolution],
    render: PromptRenderer,
    report: DropReport | None = None,
    verifier: Verifier = "exact",
    prompt: PromptStyle = "few_shot",
) -> list[dict[str, Any]]:
    """Problem + reference answer for the outcome reward (free-mode prompt: the whole solution).

    With the "exact" verifier non-numeric answers are dropped (counted in `report`): it compares
    numbers exactly, and a symbolic answer it cannot judge would teach noise. The "math" verifier
    (math-verify) judges symbolic answers too, so every answer is kept.
    """
    check_verifier(verifier)
    rows: list[dict[str, Any]] = []
    for item in items:
        if item.answer is None or (verifier == "exact" and parse_number(item.answer) is None):
            if report is not None:
                report.drop(NON_NUMERIC_ANSWER, item.id or item.problem[:40])
            continue
        rows.append({"prompt": render(free_messages(item.problem, prompt)), "answer": item.answer, "problem": item.problem})
    return rows


def reason_counts(report: DropReport) -> Counter[str]:
    return Counter(report.counts)
