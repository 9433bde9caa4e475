"""Rule-based expert trajectories: procedural multi-step word problems with exact solutions.

GSM8K's worked solutions are human-written, long and sometimes wrong; a 135M model spends most of
its CPU time reading their prompts. This generator writes short problems whose expert solutions
are exact by construction, in the GSM8K shape (`{"question", "answer": "step\\nstep\\n#### N"}`)
so `srl train`, `srl eval` and `srl data split` read them unchanged:

    Mia has 12 marbles. Leo has 3 times as many marbles as Mia. Ava has 5 fewer marbles than
    Leo. How many marbles does Ava have?
    ->  Leo has 12 * 3 = 36 marbles.
        Ava has 36 - 5 = 31 marbles.
        #### 31

Why it is built this way:
- One operation per step, written `a op b = r` so `core.checks.check_arithmetic` verifies every
  step (the generator checks this itself before writing a row).
- Each new quantity is defined from the previous one (a chain), so the model must carry a result
  across steps; an optional last step adds the last two quantities (two earlier results).
- Small numbers (operands up to `max_operand`, factors up to `max_factor`, every result in
  2..`max_result`) keep the arithmetic within reach of a small model; no negatives, and division
  only where it is exact.
- Splits are disjoint by construction: every split has its own seed stream and a problem is
  rejected when its text or its arithmetic "skeleton" (start value and the list of operations,
  without names, items or distractors) was already used by any split. Evaluation splits are
  drawn first (hard, test, validation, then train), so growing `train` never changes them.
- The hard test split has more steps than any training problem: it measures length
  generalisation.
- Pure standard library + pydantic, and only `random.Random(seed)` (never the global generator):
  the same config gives byte-identical files.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError
from .checks import check_arithmetic
from .format import FINAL_MARKER

__all__ = [
    "GENERATOR_VERSION",
    "SPLITS",
    "Op",
    "GenerateConfig",
    "Problem",
    "make_config",
    "parse_ops",
    "validate_config",
    "generate_problem",
    "generate_splits",
    "problem_row",
    "split_report",
    "write_dataset",
    "format_summary",
]

GENERATOR_VERSION = "rules-1"
SPLITS = ("train", "validation", "test", "test_hard")
# Drawing order: evaluation splits first, so their content does not depend on the train size.
_DRAW_ORDER = ("test_hard", "test", "validation", "train")
_ATTEMPTS_PER_PROBLEM = 500  # rejected draws (infeasible chain or duplicate) before giving up

Op = Literal["+", "-", "*", "/"]
ALL_OPS: tuple[Op, ...] = ("+", "-", "*", "/")
# names per problem: up to 20 steps + the start + 5 distractors (the config's limits) fit in NAMES
_OP_ALIASES = {"+": "+", "-": "-", "*": "*", "x": "*", "×": "*", "/": "/", "÷": "/"}

NAMES = (
    "Mia", "Leo", "Ava", "Sam", "Zoe", "Max", "Lily", "Ben", "Emma", "Noah", "Ella", "Jack", "Ruby",
    "Owen", "Lucy", "Finn", "Nora", "Liam", "Ivy", "Adam", "Rosa", "Omar", "Kate", "Hugo", "Jane",
    "Eli", "Tara", "Dan", "Amy", "Raj",
)
ITEMS = (
    "apples", "marbles", "stickers", "coins", "books", "pencils", "cards", "shells", "stamps",
    "beads", "cookies", "balloons", "crayons", "toys", "eggs", "buttons", "rocks", "candies",
)
_FRACTION_WORDS = {
    2: "half", 3: "a third", 4: "a quarter", 5: "a fifth", 6: "a sixth", 7: "a seventh",
    8: "an eighth", 9: "a ninth", 10: "a tenth", 11: "an eleventh", 12: "a twelfth",
}


class GenerateConfig(BaseModel):
    """What `generate_splits` builds: split sizes, step counts, operations, number ranges."""

    model_config = ConfigDict(extra="forbid")

    train: int = Field(default=400, ge=0, description="problems in train.jsonl")
    validation: int = Field(default=100, ge=0, description="problems in validation.jsonl")
    test: int = Field(default=100, ge=0, description="problems in test.jsonl")
    test_hard: int = Field(default=100, ge=0, description="problems in test_hard.jsonl (more steps)")
    min_steps: int = Field(default=2, ge=2, le=20, description="steps of train/validation/test problems")
    max_steps: int = Field(default=4, ge=2, le=20)
    hard_min_steps: int = Field(default=5, ge=2, le=20, description="must exceed max_steps")
    hard_max_steps: int = Field(default=7, ge=2, le=20)
    ops: list[Op] = Field(default_factory=lambda: list(ALL_OPS), min_length=1)
    max_operand: int = Field(default=20, ge=2, le=1000, description="start values and added/subtracted amounts")
    max_factor: int = Field(default=5, ge=2, le=12, description="largest multiplier or divisor")
    max_result: int = Field(default=200, ge=10, le=100_000, description="every intermediate result is 2..max_result")
    distractors: int = Field(default=1, ge=0, le=5, description="most irrelevant sentences per problem")
    distractor_probability: float = Field(default=0.5, ge=0.0, le=1.0, description="chance of each distractor")
    total_probability: float = Field(default=0.25, ge=0.0, le=1.0, description="chance the last step adds two quantities")
    seed: int = 0


@dataclass
class Problem:
    """One generated problem with its exact solution (steps without the `####` line)."""

    question: str
    steps: list[str]
    answer: int
    ops: list[str]
    skeleton: tuple[Any, ...]
    distractors: int
    results: list[int]  # the start value, then every step's result


def parse_ops(text: str) -> list[Op]:
    """'+,-,*,/' (also 'x', '×', '÷') -> the operation list, in order, without repeats."""
    out: list[Op] = []
    for part in text.replace(" ", ",").split(","):
        if not part:
            continue
        op = _OP_ALIASES.get(part.strip().lower())
        if op is None:
            raise ConfigError(f"unknown operation {part!r} in --ops {text!r}; use a comma list of + - * /")
        if op not in out:
            out.append(op)  # type: ignore[arg-type]
    if not out:
        raise ConfigError(f"--ops {text!r} names no operation; use e.g. '+,-,*,/'")
    return out


def make_config(**values: Any) -> GenerateConfig:
    """A checked GenerateConfig; any problem becomes one readable ConfigError."""
    try:
        config = GenerateConfig(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "config"
        raise ConfigError(f"bad generator setting {where}: {first.get('msg')}") from None
    validate_config(config)
    return config


def validate_config(config: GenerateConfig) -> None:
    """Raise ConfigError for settings that cannot produce the requested data."""
    if config.min_steps > config.max_steps:
        raise ConfigError(f"min_steps ({config.min_steps}) is larger than max_steps ({config.max_steps})")
    if config.hard_min_steps > config.hard_max_steps:
        raise ConfigError(
            f"hard_min_steps ({config.hard_min_steps}) is larger than hard_max_steps ({config.hard_max_steps})"
        )
    if config.test_hard and config.hard_min_steps <= config.max_steps:
        raise ConfigError(
            f"hard_min_steps ({config.hard_min_steps}) must be larger than max_steps ({config.max_steps}): "
            "the hard split tests problems longer than any training problem"
        )
    if config.max_operand > config.max_result:
        raise ConfigError(f"max_operand ({config.max_operand}) is larger than max_result ({config.max_result})")
    if set(config.ops) == {"/"}:
        # halving at least once a step and ending at 2 or more needs a start value of 2**(steps+1)
        for split, (count, lo, _hi) in _split_plan(config).items():
            if count and 2 ** (lo + 1) > config.max_operand:
                raise ConfigError(
                    f"division only cannot make {lo}-step problems ({split} split): the start value must be "
                    f"at least {2 ** (lo + 1)} but max_operand is {config.max_operand}; "
                    "add + or - to --ops or raise --max-operand"
                )


# -- one problem ----------------------------------------------------------------------------------


def _options(value: int, op: str, config: GenerateConfig) -> list[int]:
    """Every operand that keeps `value op operand` an integer in 2..max_result ('1 cards' reads badly)."""
    if op == "+":
        return [k for k in range(1, config.max_operand + 1) if value + k <= config.max_result]
    if op == "-":
        return list(range(1, min(config.max_operand, value - 2) + 1))
    if op == "*":
        return [k for k in range(2, config.max_factor + 1) if value * k <= config.max_result]
    return [k for k in range(2, config.max_factor + 1) if value % k == 0 and value // k >= 2]


def _apply(value: int, op: str, k: int) -> int:
    if op == "+":
        return value + k
    if op == "-":
        return value - k
    if op == "*":
        return value * k
    return value // k


def _relation(name: str, ref: str, op: str, k: int, item: str) -> str:
    """The problem's sentence defining `name`'s amount from `ref`'s."""
    if op == "+":
        return f"{name} has {k} more {item} than {ref}."
    if op == "-":
        return f"{name} has {k} fewer {item} than {ref}."
    if op == "*":
        times = "twice" if k == 2 else f"{k} times"
        return f"{name} has {times} as many {item} as {ref}."
    return f"{name} has {_FRACTION_WORDS[k]} as many {item} as {ref}."


def generate_problem(rng: random.Random, n_steps: int, config: GenerateConfig) -> Problem | None:
    """One problem of exactly `n_steps` operations, or None when this draw hits a dead end."""
    names = rng.sample(NAMES, n_steps + 1 + config.distractors)
    item = rng.choice(ITEMS)
    with_total = n_steps >= 2 and rng.random() < config.total_probability
    n_chain = n_steps - 1 if with_total else n_steps
    value = rng.randint(2, config.max_operand)
    sentences = [f"{names[0]} has {value} {item}."]
    steps: list[str] = []
    ops: list[str] = []
    results: list[int] = [value]
    skeleton: list[Any] = [value]
    for i in range(1, n_chain + 1):
        feasible = [op for op in config.ops if _options(value, op, config)]
        if not feasible:
            return None
        op = rng.choice(feasible)
        k = rng.choice(_options(value, op, config))
        result = _apply(value, op, k)
        sentences.append(_relation(names[i], names[i - 1], op, k, item))
        steps.append(f"{names[i]} has {value} {op} {k} = {result} {item}.")
        ops.append(op)
        skeleton.append((op, k))
        value = result
        results.append(result)
    last = names[n_chain]
    if with_total:
        before = names[n_chain - 1]
        total = results[-2] + results[-1]
        if total > config.max_result:
            return None
        steps.append(f"{before} and {last} have {results[-2]} + {results[-1]} = {total} {item} together.")
        ops.append("+")
        skeleton.append(("total",))
        results.append(total)
        question = f"How many {item} do {before} and {last} have together?"
    else:
        question = f"How many {item} does {last} have?"
    n_distractors = sum(rng.random() < config.distractor_probability for _ in range(config.distractors))
    other_items = [x for x in ITEMS if x != item]
    for j in range(n_distractors):
        who = names[n_steps + 1 + j]
        sentence = f"{who} has {rng.randint(2, config.max_operand)} {rng.choice(other_items)}."
        sentences.insert(rng.randint(1, len(sentences)), sentence)  # never before the first fact
    return Problem(
        question=" ".join(sentences + [question]),
        steps=steps,
        answer=results[-1],
        ops=ops,
        skeleton=tuple(skeleton),
        distractors=n_distractors,
        results=results,
    )


def _self_check(problem: Problem) -> None:
    """Every step holds exactly one passing arithmetic claim; a failure is a generator bug."""
    for step in problem.steps:
        claims = check_arithmetic(step)
        if len(claims) != 1 or not claims[0].passed:
            raise AssertionError(f"generator bug: step {step!r} does not verify: {claims}")


# -- splits -----------------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _split_plan(config: GenerateConfig) -> dict[str, tuple[int, int, int]]:
    """split -> (count, min steps, max steps)."""
    return {
        "train": (config.train, config.min_steps, config.max_steps),
        "validation": (config.validation, config.min_steps, config.max_steps),
        "test": (config.test, config.min_steps, config.max_steps),
        "test_hard": (config.test_hard, config.hard_min_steps, config.hard_max_steps),
    }


def generate_splits(config: GenerateConfig) -> dict[str, list[Problem]]:
    """All splits (keys in SPLITS order), disjoint by problem text and by arithmetic skeleton.

    Each split draws from its own stream, `random.Random(f"{seed}:{split}")`. Step counts are
    spread evenly (cycling min..max) so every length is equally represented.
    """
    validate_config(config)
    seen_text: set[str] = set()
    seen_skeleton: set[tuple[Any, ...]] = set()
    out: dict[str, list[Problem]] = {}
    for split in _DRAW_ORDER:
        count, lo, hi = _split_plan(config)[split]
        rng = random.Random(f"{config.seed}:{split}")
        problems: list[Problem] = []
        for index in range(count):
            n_steps = lo + index % (hi - lo + 1)
            for _ in range(_ATTEMPTS_PER_PROBLEM):
                problem = generate_problem(rng, n_steps, config)
                if problem is None:
                    continue
                text = _normalise(problem.question)
                if text in seen_text or problem.skeleton in seen_skeleton:
                    continue
                break
            else:
                raise ConfigError(
                    f"cannot make {count} different {n_steps}-step problems for the {split} split with "
                    f"ops {''.join(config.ops)}, max_operand {config.max_operand}, max_factor {config.max_factor}, "
                    f"max_result {config.max_result} (made {len(problems)}); allow more operations or "
                    "larger numbers, or ask for fewer problems"
                )
            _self_check(problem)
            seen_text.add(text)
            seen_skeleton.add(problem.skeleton)
            problems.append(problem)
        out[split] = problems
    return {split: out[split] for split in SPLITS}


# -- rows, report, files ----------------------------------------------------------------------------


def problem_row(problem: Problem, split: str, index: int, config: GenerateConfig) -> dict[str, Any]:
    """A GSM8K-shaped row plus `steps` (read by `source: jsonl`) and `metadata`."""
    return {
        "id": f"{split}-{index:05d}",
        "question": problem.question,
        "answer": "\n".join(problem.steps + [f"{FINAL_MARKER} {problem.answer}"]),
        "steps": problem.steps,
        "metadata": {
            "n_steps": len(problem.steps),
            "ops": problem.ops,
            "distractors": problem.distractors,
            "split": split,
            "seed": config.seed,
            "generator": GENERATOR_VERSION,
        },
    }


def split_report(problems: list[Problem]) -> dict[str, Any]:
    """Counts, step and operation histograms, answer range, distractors and text sizes."""
    answers = [p.answer for p in problems]
    steps = Counter(len(p.steps) for p in problems)
    ops = Counter(op for p in problems for op in p.ops)
    return {
        "count": len(problems),
        "steps": {str(k): steps[k] for k in sorted(steps)},
        "ops": {op: ops[op] for op in ("+", "-", "*", "/") if ops[op]},
        "answer_min": min(answers) if answers else None,
        "answer_max": max(answers) if answers else None,
        "largest_result": max((r for p in problems for r in p.results), default=None),
        "distractor_sentences": sum(p.distractors for p in problems),
        "problems_with_distractors": sum(1 for p in problems if p.distractors),
        "mean_question_chars": round(sum(len(p.question) for p in problems) / len(problems), 1) if problems else None,
        "mean_solution_chars": round(sum(len("\n".join(p.steps)) for p in problems) / len(problems), 1) if problems else None,
    }


def write_dataset(config: GenerateConfig, out_dir: str | Path) -> dict[str, Any]:
    """Generate every split into `out_dir` (<split>.jsonl + report.json); return the report."""
    splits = generate_splits(config)
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {
            "generator": GENERATOR_VERSION,
            "config": config.model_dump(mode="json"),
            "splits": {},
        }
        for split, problems in splits.items():
            path = out / f"{split}.jsonl"
            with path.open("w", encoding="utf-8", newline="\n") as handle:
                for index, problem in enumerate(problems):
                    row = problem_row(problem, split, index, config)
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            report["splits"][split] = {"file": path.name, **split_report(problems)}
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the dataset to {out}: {exc.strerror or exc}; check --out") from exc
    return report



def format_summary(report: dict[str, Any]) -> str:
    """The report as a short table, one line per split (the CLI prints it)."""
    lines = [f"{'split':<10} {'n':>5}  {'steps':<17} {'ops':<20} {'answers':<8} {'distr':>5} {'chars q/sol':>11}"]
    for split, info in report["splits"].items():
        steps = " ".join(f"{k}:{v}" for k, v in info["steps"].items())
        ops = " ".join(f"{k}{v}" for k, v in info["ops"].items())
        answers = f"{info['answer_min']}..{info['answer_max']}" if info["count"] else "-"
        chars = f"{info['mean_question_chars']:.0f}/{info['mean_solution_chars']:.0f}" if info["count"] else "-"
        lines.append(
            f"{split:<10} {info['count']:>5}  {steps:<17} {ops:<20} {answers:<8} {info['distractor_sentences']:>5} {chars:>11}"
        )
    return "\n".join(lines)
