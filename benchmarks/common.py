"""What every benchmark here shares: machine facts, medians, a markdown table, and docs/benchmarks.md.

Why one module: each figure in docs/benchmarks.md must say on what machine, under what load and
with which versions it was measured, and each script must replace only its own section of the
file (other engineers own other sections, e.g. "vLLM rollouts"), so that logic lives once.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs" / "benchmarks.md"
PACKAGES = ("srl-sdk", "llama_cpp_python", "litserve", "numpy", "torch", "transformers", "trl", "onnxruntime-genai")
DOC_HEADER = (
    "# Benchmarks\n\n"
    "Measured by the scripts in `benchmarks/` (each section names its command). Each section was\n"
    "measured in one session, with the peers run side by side in the same run; figures are medians.\n"
    "The load average is recorded beside the numbers: this is a shared 2-core machine, and figures\n"
    "taken with a load above the core count are lower than on a quiet machine (2-5x, see STACK.md).\n"
)


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"Python {platform.python_version()}; " + ", ".join(found)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def command_line() -> str:
    """The exact command that produced a section, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(REPO_ROOT))
    except ValueError:
        script_text = str(script)
    return " ".join([".venv/bin/python", shlex.quote(script_text), *map(shlex.quote, sys.argv[1:])])


class Session:
    """The context of one benchmark run: started → (measure) → `machine_block()` for the docs."""

    def __init__(self) -> None:
        self.started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        self.load_start = load_average()
        self.t0 = time.monotonic()

    def machine_block(self) -> str:
        load_end = load_average()
        heavy = max(self.load_start[0], load_end[0]) > (os.cpu_count() or 1)
        lines = [
            f"- Run {self.started}, {time.monotonic() - self.t0:.0f} s; command: `{command_line()}`",
            f"- Machine: {os.cpu_count()} cores (`nproc`), {cpu_model()}, {platform.system()} {platform.release()}",
            f"- Load average (1/5/15 min): start {fmt_load(self.load_start)}, end {fmt_load(load_end)}"
            + (" — **measured under load** (other jobs on the cores): absolute figures are low; "
               "ratios between columns measured in the same run are the meaningful part" if heavy else ""),
            f"- Versions: {versions()}",
        ]
        return "\n".join(lines)


def fmt_load(load: Sequence[float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def write_section(title: str, body: str, path: Path = DOCS) -> None:
    """Replace (or append) the `## title` section of docs/benchmarks.md, leaving the others as they are."""
    text = path.read_text(encoding="utf-8") if path.exists() else DOC_HEADER
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    print(f"wrote section '{title}' of {path}")


class TrainerClock:
    """Times a TRL GRPO trainer: each optimizer step, and each generation call inside it.

    Wraps `_generate_single_turn` (the rollout call, including the vLLM weight sync when TRL
    uses vLLM) and adds a step callback. `calls` holds (step number, seconds, generated tokens)
    per generation call; a dynamic-sampling step makes several calls.
    """

    def __init__(self, trainer) -> None:
        from transformers import TrainerCallback

        self.step_s: list[float] = []
        self.calls: list[tuple[int, float, int]] = []
        original = trainer._generate_single_turn

        def timed(*args, **kwargs):
            start = time.perf_counter()
            completion_ids, logprobs = original(*args, **kwargs)
            self.calls.append((len(self.step_s), time.perf_counter() - start, sum(len(c) for c in completion_ids)))
            return completion_ids, logprobs

        trainer._generate_single_turn = timed
        clock = self

        class StepClock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                clock._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                clock.step_s.append(time.perf_counter() - clock._t0)

        trainer.add_callback(StepClock())

    def generation_s(self, step: int) -> float:
        return sum(seconds for index, seconds, _ in self.calls if index == step)

    def generation_calls(self, step: int) -> int:
        return sum(1 for index, _, _ in self.calls if index == step)
