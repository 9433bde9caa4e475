"""Parity: what a build lost against the model it was made from, measured the same way.

The build and the reference solve the same held-out GSM8K problems through the same
`Driver` with the same `ReasonConfig` (greedy), so any difference is the build's. Each side runs
in its own child process: load time, speed and *peak RSS* (`resource.getrusage` of that
process, which only ever held that one model) are then honest, and a crash in one runtime cannot
take the report down with it.

Held-out problems: the LAST `problems` rows of the GSM8K file (training reads from the top).
Step similarity between the two sides: position by position over the longer trace, with
`core.similarity.step_similarity`; a step one side did not make counts 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from srl_sdk.core.answers import answers_equal, extract_answer
from srl_sdk.core.jsonl import read_jsonl
from srl_sdk.core.similarity import step_similarity
from srl_sdk.core.steps import Trace
from srl_sdk.edge.files import size_of, staged_file
from srl_sdk.errors import ConfigError, ExportError, InputError

SIDE_TIMEOUT_S = 1800


def default_gsm8k_path() -> Path:
    """../shared/data/gsm8k/train.jsonl beside the repository (where CI and this team keep it)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "gsm8k" / "train.jsonl"


class ParityConfig(BaseModel):
    """How `check_parity` compares a build with its reference. Paired with `check_parity`."""

    model_config = ConfigDict(extra="forbid")

    problems: int = Field(default=5, ge=1, le=500)
    data: Path | None = Field(default=None, description="GSM8K-style JSONL (default ../shared/data/gsm8k/train.jsonl)")
    max_steps: int = Field(default=4, ge=1, le=64)
    max_thought_tokens: int = Field(default=64, ge=1, le=4096)
    max_action_tokens: int = Field(default=64, ge=1, le=4096)
    n_threads: int = Field(default=2, ge=1, le=256)
    n_ctx: int = Field(default=2048, ge=256, le=131072)
    out: Path | None = Field(default=None, description="report path without suffix (default: beside the build)")


class SideResult(BaseModel):
    """One model's run over the problems."""

    model: str
    engine: str
    size_bytes: int
    load_s: float
    tokens: int
    generate_s: float
    tokens_per_s: float
    peak_rss_mb: float
    traces: list[Trace]


class ProblemParity(BaseModel):
    problem: str
    expert_answer: str | None
    build_answer: str | None
    reference_answer: str | None
    build_correct: bool
    reference_correct: bool
    answers_agree: bool
    step_similarity: float
    build_steps: list[str]
    reference_steps: list[str]


class ParityReport(BaseModel):
    build: SideResult
    reference: SideResult
    config: ParityConfig
    problems: list[ProblemParity]
    build_accuracy: float
    reference_accuracy: float
    answer_agreement: float
    mean_step_similarity: float
    json_path: Path | None = None
    markdown_path: Path | None = None

    def markdown(self) -> str:
        b, r = self.build, self.reference
        mb = 1024 * 1024
        lines = [
            f"# Parity: `{b.model}` vs `{r.model}`",
            "",
            f"{len(self.problems)} held-out GSM8K problems, greedy, max_steps {self.config.max_steps}, "
            f"{self.config.n_threads} threads, same driver for both.",
            "",
            "| | build | reference |",
            "|---|---|---|",
            f"| engine | {b.engine} | {r.engine} |",
            f"| accuracy | {self.build_accuracy:.2f} | {self.reference_accuracy:.2f} |",
            f"| file size | {b.size_bytes / mb:.1f} MiB | {r.size_bytes / mb:.1f} MiB |",
            f"| load time | {b.load_s:.2f} s | {r.load_s:.2f} s |",
            f"| tokens/s (whole step loop) | {b.tokens_per_s:.1f} | {r.tokens_per_s:.1f} |",
            f"| peak RSS | {b.peak_rss_mb:.0f} MiB | {r.peak_rss_mb:.0f} MiB |",
            "",
            f"Answer agreement: **{self.answer_agreement:.2f}** · mean step similarity: **{self.mean_step_similarity:.3f}**",
            "",
            "| # | expert | build | reference | agree | step sim |",
            "|---|---|---|---|---|---|",
        ]
        for i, p in enumerate(self.problems, start=1):
            lines.append(f"| {i} | {p.expert_answer} | {p.build_answer} | {p.reference_answer} | "
                         f"{'yes' if p.answers_agree else 'no'} | {p.step_similarity:.3f} |")
        return "\n".join(lines) + "\n"


def held_out_problems(path: Path, n: int) -> list[dict[str, Any]]:
    """The last `n` rows of a GSM8K JSONL file: problems training (which reads from the top) did not see."""
    if not path.is_file():
        raise InputError(f"problem file {path} does not exist; pass a GSM8K-style JSONL with --data")
    rows: deque[dict[str, Any]] = deque(maxlen=n)
    expected = "an object with a 'question' field"
    for line in read_jsonl(path, hint="pass a GSM8K-style JSONL with --data"):
        row = line.object(expected)
        if not isinstance(row.get("question"), str):
            raise InputError(f"{path}:{line.lineno}: expected {expected}")
        rows.append(row)
    if not rows:
        raise InputError(f"{path} holds no problems")
    return list(rows)


def model_size(model: str) -> int:
    from srl_sdk.engines.models import is_alias, resolve_gguf

    if is_alias(model) or model.endswith(".gguf"):
        return size_of(resolve_gguf(model))
    return size_of(Path(model).expanduser())


# -- the child process --------------------------------------------------------------------------
def run_side(model: str, problems: list[str], config: ParityConfig) -> SideResult:
    """Load `model`, solve every problem, measure. Runs inside the child process."""
    import resource

    from srl_sdk.engines import load_engine
    from srl_sdk.reasoning.driver import Driver, ReasonConfig

    from srl_sdk.engines import guess_engine

    started = time.perf_counter()
    context: dict[str, Any] = (
        {"context_length": config.n_ctx} if guess_engine(model) == "transformers" else {"n_ctx": config.n_ctx})
    engine = load_engine(model, n_threads=config.n_threads, **context)
    load_s = time.perf_counter() - started
    driver = Driver(engine, ReasonConfig(
        max_steps=config.max_steps, max_thought_tokens=config.max_thought_tokens,
        max_action_tokens=config.max_action_tokens, temperature=0.0, checks=False,
    ))
    traces = []
    generate_started = time.perf_counter()
    for problem in problems:
        traces.append(driver.solve(problem))
    generate_s = time.perf_counter() - generate_started
    tokens = sum(s.tokens for t in traces for s in t.steps)
    engine.close()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return SideResult(
        model=model, engine=engine.name, size_bytes=model_size(model), load_s=load_s, tokens=tokens,
        generate_s=generate_s, tokens_per_s=tokens / generate_s if generate_s > 0 else 0.0,
        peak_rss_mb=peak_kib / 1024, traces=traces,
    )


def _run_side_in_child(model: str, problems: list[str], config: ParityConfig) -> SideResult:
    request = json.dumps({"model": model, "problems": problems, "config": config.model_dump(mode="json")})
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(config.n_threads)}
    try:
        done = subprocess.run([sys.executable, "-m", "srl_sdk.edge.parity"], input=request, capture_output=True,
                              text=True, timeout=SIDE_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as exc:
        raise ExportError(f"the parity run of {model} did not finish in {SIDE_TIMEOUT_S} s; use fewer --problems") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-4:])
        raise ExportError(f"the parity run of {model} failed: {tail}")
    return SideResult.model_validate_json(lines[-1])


def compare(build: SideResult, reference: SideResult, rows: list[dict[str, Any]], config: ParityConfig) -> ParityReport:
    problems = []
    for row, b, r in zip(rows, build.traces, reference.traces):
        expert = extract_answer(str(row.get("answer", "")))
        b_steps, r_steps = [s.action for s in b.steps], [s.action for s in r.steps]
        longest = max(len(b_steps), len(r_steps))
        sims = [step_similarity(b_steps[i], r_steps[i]) if i < min(len(b_steps), len(r_steps)) else 0.0
                for i in range(longest)]
        problems.append(ProblemParity(
            problem=row["question"], expert_answer=expert, build_answer=b.answer, reference_answer=r.answer,
            build_correct=answers_equal(b.answer, expert), reference_correct=answers_equal(r.answer, expert),
            answers_agree=(b.answer is None and r.answer is None) or answers_equal(b.answer, r.answer),
            step_similarity=sum(sims) / longest if longest else 1.0,
            build_steps=b_steps, reference_steps=r_steps,
        ))
    n = len(problems)
    return ParityReport(
        build=build, reference=reference, config=config, problems=problems,
        build_accuracy=sum(p.build_correct for p in problems) / n,
        reference_accuracy=sum(p.reference_correct for p in problems) / n,
        answer_agreement=sum(p.answers_agree for p in problems) / n,
        mean_step_similarity=sum(p.step_similarity for p in problems) / n,
    )


def report_base(build: Path, config: ParityConfig) -> Path:
    if config.out is not None:
        return Path(config.out).expanduser()
    build = Path(build)
    return build.with_name(build.name.removesuffix(".gguf") + ".parity")


def reference_for(model: str | os.PathLike[str]) -> str:
    """What the build is compared with: a GGUF as is and the alias as the shipped file (llama.cpp), anything else as the
    HF folder it was exported from (an adapter is compared as base + adapter, merged)."""
    from srl_sdk.engines.models import is_alias, resolve_gguf

    text = str(model)
    if is_alias(text):
        # the shipped file: loaded by its alias, llama.cpp would run the Q4_0 default build instead
        # (srl_sdk/engines/builds.py), and a build is compared with what it was exported from
        return str(resolve_gguf(text))
    if text.endswith(".gguf"):
        return text
    from srl_sdk.edge.merge import resolve_export_source

    return str(resolve_export_source(text))


def check_parity(build: str | os.PathLike[str], against: str | os.PathLike[str],
                 config: ParityConfig | None = None) -> ParityReport:
    """Run `build` and `against` on the same problems; write <build>.parity.json and .md beside it."""
    config = config or ParityConfig()
    build_path = Path(build).expanduser()
    if not build_path.exists():
        raise ConfigError(f"build {build_path} does not exist; export one with `srl export gguf|onnx`")
    rows = held_out_problems(Path(config.data).expanduser() if config.data else default_gsm8k_path(), config.problems)
    questions = [row["question"] for row in rows]
    build_side = _run_side_in_child(str(build_path), questions, config)
    reference_side = _run_side_in_child(reference_for(against), questions, config)
    report = compare(build_side, reference_side, rows, config)
    base = report_base(build_path, config)
    report.json_path, report.markdown_path = base.with_name(base.name + ".json"), base.with_name(base.name + ".md")
    with staged_file(report.json_path) as partial:
        partial.write_text(report.model_dump_json(indent=2), encoding="utf-8")
    with staged_file(report.markdown_path) as partial:
        partial.write_text(report.markdown(), encoding="utf-8")
    return report


def _child_main() -> None:
    request = json.loads(sys.stdin.read())
    config = ParityConfig.model_validate(request["config"])
    result = run_side(request["model"], request["problems"], config)
    sys.stdout.write("\n" + result.model_dump_json() + "\n")


if __name__ == "__main__":
    _child_main()
