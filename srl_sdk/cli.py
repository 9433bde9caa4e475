"""`srl`: the command line. Each job's commands live beside the job; this file wires them up.

Every command turns an SRLError into one readable red line and exit code 1, never a traceback
(srl_sdk/cli_common.py). Nothing imports this module but the `srl` entry point.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from srl_sdk.cli_common import console, err_console, friendly_errors
from srl_sdk.core.generate import GenerateConfig as _GenerateConfig  # pydantic only: light
from srl_sdk.core.jsonl import read_jsonl
from srl_sdk.core.steps import Step, Trace
from srl_sdk.data import commands as data_commands
from srl_sdk.edge import commands as edge_commands
from srl_sdk.engines.models import DEFAULT_MODEL
from srl_sdk.errors import InputError
from srl_sdk.serving import commands as serving_commands
from srl_sdk.training import commands as training_commands

app = typer.Typer(help="srl-sdk: step-by-step reasoning you can train, serve, ship and audit.", no_args_is_help=True)
traces_app = typer.Typer(help="Inspect stored traces.", no_args_is_help=True)
data_app = typer.Typer(help="Expert data: solutions -> steps -> SRL instances.", no_args_is_help=True)
app.add_typer(traces_app, name="traces")
app.add_typer(data_app, name="data")

def print_step(step: Step) -> None:
    tag = "given" if step.source == "given" else f"{step.tokens} tok"
    conf = ""
    if step.confidence is not None:
        conf = f" · conf mean {step.confidence.mean_logprob:.2f} min {step.confidence.min_logprob:.2f}"
    latency = f" · {step.latency_s:.2f}s" if step.latency_s is not None else ""
    fmt = "" if step.format_ok else " · [yellow]format![/]"
    console.print(f"[bold cyan]Step {step.index}[/] [dim]({tag}{conf}{latency})[/]{fmt}")
    if step.thought:
        console.print(f"  [dim italic]{escape(step.thought)}[/]")
    console.print(f"  [bold]{escape(step.action)}[/]")
    for check in step.checks:
        mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[yellow]?[/]"}[check.passed]
        console.print(f"  {mark} {escape(check.detail or check.claim)}")


def print_trace_footer(trace: Trace) -> None:
    answer = trace.answer if trace.answer is not None else "(no final answer)"
    console.print(
        f"[bold green]Answer:[/] {escape(answer)}  [dim]({trace.finish_reason}, {len(trace.steps)} steps, "
        f"{(trace.duration_s or 0):.1f}s, trace {trace.id})[/]"
    )


def read_problem_from(path: Path, index: int) -> str:
    """The problem on line `index` (0-based) of a JSONL file with `question` or `problem`."""
    for line in read_jsonl(path, hint="pass a JSONL file with --from"):
        if line.lineno > index + 1:
            break
        if line.lineno == index + 1:
            row = line.object()
            text = row.get("question") or row.get("problem")
            if not isinstance(text, str):
                raise InputError(f"{path}:{index + 1} has no 'question' or 'problem' text field")
            return text
    raise InputError(f"{path} has no problem on line {index + 1}")


@app.command()
@friendly_errors
def reason(
    problem: Optional[str] = typer.Argument(None, help="The problem to solve (or use --from)."),
    from_file: Optional[Path] = typer.Option(None, "--from", help="JSONL file with question/problem fields."),
    index: int = typer.Option(0, "--index", min=0, help="Line of --from to take (0-based)."),
    model: str = typer.Option(DEFAULT_MODEL, help="GGUF path, model folder, 'smollm2' (base), 'smollm2-srl' "
                              "(trained), or http(s):// server URL."),
    engine: Optional[str] = typer.Option(None, help="llama.cpp | transformers | onnx | vllm (default: from the model)."),
    mode: str = typer.Option("stepwise", help="stepwise (one call per step) or free (one call)."),
    max_steps: int = typer.Option(8, min=1, max=64),
    temperature: float = typer.Option(0.0, min=0.0),
    seed: Optional[int] = typer.Option(None),
    step: list[str] = typer.Option([], "--step", help="A given step to continue from (repeatable)."),
    store: Optional[str] = typer.Option(None, help="Trace store: a file (default $SRL_HOME/traces.db) or postgresql:// URL."),
    no_save: bool = typer.Option(False, "--no-save", help="Do not store the trace."),
    api_key: Optional[str] = typer.Option(None, envvar="SRL_API_KEY", help="API key for a remote server."),
    as_json: bool = typer.Option(False, "--json", help="Print the trace as JSON at the end."),
) -> None:
    """Solve a problem step by step, printing each step as it is made."""
    from srl_sdk.client import Reasoner

    if from_file is not None:
        problem = read_problem_from(from_file, index)
    if problem is None:
        raise InputError("give a problem, e.g. srl reason \"What is 2+3?\", or --from FILE.jsonl")
    console.print(f"[bold]Problem:[/] {escape(problem.strip())}")
    store_arg = False if no_save else store
    with Reasoner(model, engine=engine, store=store_arg, api_key=api_key) as reasoner:
        stream = reasoner.stream(problem, steps=step, mode=mode, max_steps=max_steps, temperature=temperature, seed=seed)
        for item in stream:
            print_step(item)
        trace = stream.trace
    assert trace is not None
    print_trace_footer(trace)
    if as_json:
        console.print_json(trace.model_dump_json())


@traces_app.command("list")
@friendly_errors
def traces_list(
    limit: int = typer.Option(20, min=1),
    store: Optional[str] = typer.Option(None, help="Trace store: a file or a postgresql:// URL."),
) -> None:
    """The newest stored traces."""
    from srl_sdk.store import open_store

    rows = open_store(store).list(limit=limit)
    if not rows:
        console.print("[dim]no traces stored yet[/]")
    for row in rows:
        problem = " ".join(row.problem.split())
        problem = problem[:60] + ("…" if len(problem) > 60 else "")
        console.print(
            f"{row.id}  {row.created_at:%Y-%m-%d %H:%M:%S}  {row.n_steps:>2} steps  "
            f"answer={escape(str(row.answer))}  [dim]{escape(problem)}[/]"
        )


@traces_app.command("show")
@friendly_errors
def traces_show(
    trace_id: str,
    store: Optional[str] = typer.Option(None, help="Trace store: a file or a postgresql:// URL."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Print one stored trace."""
    from srl_sdk.store import open_store

    trace = open_store(store).get(trace_id)
    if as_json:
        sys.stdout.write(trace.model_dump_json(indent=2) + "\n")
        return
    console.print(f"[bold]Problem:[/] {escape(trace.problem)}")
    console.print(f"[dim]model {trace.model} · engine {trace.engine} · mode {trace.mode} · {trace.created_at:%Y-%m-%d %H:%M:%S}[/]")
    for item in trace.steps:
        print_step(item)
    print_trace_footer(trace)


@traces_app.command("compare")
@friendly_errors
def traces_compare(
    trace_id: str,
    expert: Path = typer.Option(..., "--expert", help="Expert steps: a text solution (one step per line, "
                                "'#### answer') or JSON (a list of steps, or {\"steps\": [...], \"answer\": ...})."),
    store: Optional[str] = typer.Option(None, help="Trace store: a file or a postgresql:// URL."),
    server: Optional[str] = typer.Option(None, help="Read the trace from this srl serve URL instead of a store."),
    api_key: Optional[str] = typer.Option(None, envvar="SRL_API_KEY", help="API key for --server."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A trace beside the expert's steps: per step the SRL reward's similarity, and whether the answer is right."""
    from srl_sdk.core.compare import compare_trace, read_expert_file

    steps, answer = read_expert_file(expert)
    if server is not None:
        from srl_sdk.client import Reasoner

        with Reasoner.remote(server, api_key=api_key) as reasoner:
            trace = reasoner.get_trace(trace_id)
    else:
        from srl_sdk.store import open_store

        trace = open_store(store).get(trace_id)
    result = compare_trace(trace, steps, expert_answer=answer)
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        return
    for row in result.rows:
        sim = "   —  " if row.similarity is None else f"{row.similarity:.4f}"
        console.print(f"[bold cyan]{row.index:>2}[/] {sim}  model: {escape(row.model_step or '—')}")
        console.print(f"           expert: [dim]{escape(row.expert_step or '—')}[/]")
    mean = "—" if result.mean_similarity is None else f"{result.mean_similarity:.4f}"
    verdict = {True: "[green]right[/]", False: "[red]wrong[/]", None: "[yellow]cannot tell[/]"}[result.answer_correct]
    console.print(f"mean similarity {mean} ({result.step_lines} line) · answer {verdict}: model "
                  f"{escape(str(result.answer))}, expert {escape(str(result.expert_answer))}")


@data_app.command("split")
@friendly_errors
def data_split(
    file: Path,
    output: str = typer.Option("steps", help="steps (one row per solution) or instances (SRL instances)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write JSONL here (default stdout)."),
    style: str = typer.Option("auto", help="auto | lines | numbered | paragraphs | regex | sentences"),
    pattern: Optional[str] = typer.Option(None, help="Separator regex for --style regex."),
    limit: Optional[int] = typer.Option(None, min=1),
    min_step: Optional[int] = typer.Option(
        None, "--min-step", min=1, help="Instances: first target step k (default 2, the paper's N-1 per solution; "
        "the same StepRange as training's data.step_range)."),
    max_step: Optional[int] = typer.Option(None, "--max-step", min=1, help="Instances: last target step k (default: the last)."),
) -> None:
    """Expert solutions (JSONL) -> steps or SRL instances (JSONL); a report goes to stderr."""
    from srl_sdk.core.instances import StepRange, split_file

    if output not in ("steps", "instances"):
        raise InputError("--output must be 'steps' or 'instances'")
    first = StepRange().min_step if min_step is None else min_step  # the shared default, defined once
    rows, report = split_file(file, output=output, style=style, pattern=pattern, limit=limit,  # type: ignore[arg-type]
                              min_step=first, max_step=max_step)
    sink = out.open("w", encoding="utf-8") if out else sys.stdout
    try:
        for row in rows:
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        if out:
            sink.close()
    err_console.print(report.summary())


_GEN = _GenerateConfig()  # the generator's defaults, shown by --help
_TEACHER = "Teacher mode (--teacher URL): verified samples from a model behind an OpenAI-compatible endpoint"


@data_app.command("generate")
@friendly_errors
def data_generate(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for train/validation/test/test_hard.jsonl and report.json "
                             "(teacher: trajectories.jsonl, attempts.jsonl, report.json)."),
    source: str = typer.Option("rules", "--source", help="rules: procedural word problems with exact solutions."),
    train: int = typer.Option(_GEN.train, help="Training problems."),
    validation: int = typer.Option(_GEN.validation, help="Validation problems."),
    test: int = typer.Option(_GEN.test, help="Test problems (same lengths as train)."),
    hard: int = typer.Option(_GEN.test_hard, help="Hard test problems (longer than any training problem)."),
    min_steps: int = typer.Option(_GEN.min_steps, help="Fewest steps (train/validation/test)."),
    max_steps: int = typer.Option(_GEN.max_steps, help="Most steps (train/validation/test)."),
    hard_min_steps: int = typer.Option(_GEN.hard_min_steps, help="Fewest steps of a hard problem (> --max-steps)."),
    hard_max_steps: int = typer.Option(_GEN.hard_max_steps, help="Most steps of a hard problem."),
    ops: str = typer.Option(",".join(_GEN.ops), help="Operations, a comma list of + - * /."),
    max_operand: int = typer.Option(_GEN.max_operand, help="Largest start value and added/subtracted amount."),
    max_factor: int = typer.Option(_GEN.max_factor, help="Largest multiplier or divisor."),
    max_result: int = typer.Option(_GEN.max_result, help="Largest intermediate result."),
    distractors: int = typer.Option(_GEN.distractors, help="Most irrelevant sentences per problem."),
    distractor_prob: float = typer.Option(_GEN.distractor_probability, help="Chance of each distractor sentence."),
    total_prob: float = typer.Option(_GEN.total_probability, help="Chance the last step adds two quantities."),
    seed: int = typer.Option(_GEN.seed, help="Same seed and settings give byte-identical files (teacher: sample k sends seed+k-1)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", rich_help_panel=_TEACHER, help="An OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 "
                                          "(selects teacher mode: the options below; the rule options above are not used)."),
    model: Optional[str] = typer.Option(None, "--model", rich_help_panel=_TEACHER, help="The model name on that endpoint."),
    input_file: Optional[Path] = typer.Option(None, "--input", rich_help_panel=_TEACHER, help="JSONL problems with gold answers (problem/question + answer/solution)."),
    samples: int = typer.Option(4, "--samples", min=1, max=64, rich_help_panel=_TEACHER, help="Samples per problem at most (the first verified one is kept)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", rich_help_panel=_TEACHER, help="The user message, with {problem} (default: step per line, #### answer)."),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", rich_help_panel=_TEACHER, help="Read --prompt from this file."),
    system: Optional[str] = typer.Option(None, "--system", rich_help_panel=_TEACHER, help="A system message."),
    temperature: float = typer.Option(0.7, "--temperature", min=0.0, max=2.0, rich_help_panel=_TEACHER, help="Sampling temperature."),
    top_p: Optional[float] = typer.Option(None, "--top-p", rich_help_panel=_TEACHER, help="Nucleus sampling."),
    max_tokens: int = typer.Option(2048, "--max-tokens", min=1, rich_help_panel=_TEACHER, help="Tokens per reply at most."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, max=256, rich_help_panel=_TEACHER, help="Requests in flight at most."),
    max_retries: int = typer.Option(3, "--max-retries", min=0, max=20, rich_help_panel=_TEACHER, help="Retries with backoff per request (the openai client's)."),
    request_timeout: float = typer.Option(600.0, "--request-timeout", rich_help_panel=_TEACHER, help="Seconds per request."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", rich_help_panel=_TEACHER, help="Environment variable holding the API key."),
    extra_body: Optional[str] = typer.Option(None, "--extra-body", rich_help_panel=_TEACHER, help="Extra request fields as JSON, e.g. '{\"top_k\": 20}'."),
    split_style: str = typer.Option("auto", "--split-style", rich_help_panel=_TEACHER, help="How replies are cut (auto | sentences | lines | numbered | paragraphs | regex)."),
    split_pattern: Optional[str] = typer.Option(None, "--split-pattern", rich_help_panel=_TEACHER, help="Separator regex for --split-style regex."),
    verifier: str = typer.Option("auto", "--verifier", rich_help_panel=_TEACHER, help="Answer check, exact | math (math-verify) | auto."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, rich_help_panel=_TEACHER, help="Use the first N usable problems."),
    problem_field: Optional[str] = typer.Option(None, "--problem-field", rich_help_panel=_TEACHER, help="The problem's field in --input."),
    answer_field: Optional[str] = typer.Option(None, "--answer-field", rich_help_panel=_TEACHER, help="The gold answer's field in --input."),
    weak_model: Optional[str] = typer.Option(None, "--weak-model", rich_help_panel=_TEACHER, help="Difficulty filter, drop problems this weaker model solves."),
    weak_teacher: Optional[str] = typer.Option(None, "--weak-teacher", rich_help_panel=_TEACHER, help="The weak model's base URL (default --teacher)."),
    weak_samples: int = typer.Option(1, "--weak-samples", min=1, max=16, rich_help_panel=_TEACHER, help="Tries the weak model gets."),
    retry_rejected: bool = typer.Option(False, "--retry-rejected", rich_help_panel=_TEACHER, help="On resume, sample the rejected problems again."),
    trl_out: Optional[Path] = typer.Option(None, "--trl-out", rich_help_panel=_TEACHER, help="Also write TRL's stepwise-supervision JSONL here."),
    progress: bool = typer.Option(True, "--progress/--no-progress", rich_help_panel=_TEACHER, help="Show a progress bar."),
) -> None:
    """Generate expert trajectories for srl train / srl eval: rule-based splits, or a verified teacher model (--teacher)."""
    import time

    from srl_sdk.core.generate import format_summary, make_config, parse_ops, write_dataset
    from srl_sdk.errors import ConfigError

    if teacher is not None:
        options = dict(
            url=teacher, model=model, input=input_file, out=out, samples=samples, prompt=prompt, system=system,
            temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, concurrency=concurrency,
            max_retries=max_retries, timeout_s=request_timeout, api_key_env=api_key_env,
            extra_body=data_commands.parse_extra_body(extra_body), split_style=split_style, split_pattern=split_pattern,
            verifier=verifier, limit=limit, problem_field=problem_field, answer_field=answer_field,
            weak_model=weak_model, weak_url=weak_teacher, weak_samples=weak_samples, retry_rejected=retry_rejected,
            trl_out=trl_out, progress=progress,
        )
        data_commands.run_teacher(options, prompt_file)
        return
    if source != "rules":
        raise ConfigError(f"unknown --source {source!r}; the available source is 'rules' "
                          "(a teacher model: --teacher URL --model NAME --input FILE)")
    config = make_config(
        train=train, validation=validation, test=test, test_hard=hard, min_steps=min_steps, max_steps=max_steps,
        hard_min_steps=hard_min_steps, hard_max_steps=hard_max_steps, ops=parse_ops(ops), max_operand=max_operand,
        max_factor=max_factor, max_result=max_result, distractors=distractors,
        distractor_probability=distractor_prob, total_probability=total_prob, seed=seed,
    )
    started = time.perf_counter()
    report = write_dataset(config, out)
    elapsed = time.perf_counter() - started
    console.print(escape(format_summary(report)), soft_wrap=True)
    console.print(f"[green]wrote[/] {escape(str(out))} ({report['generator']}, seed {seed}) in {elapsed:.2f}s")


# Each job's commands live beside the job and register themselves, after this file's own (the
# order of `srl --help`); TRL's CLI loops over `command.register(subparsers)` the same way.
data_commands.register(data_app)
for _commands in (serving_commands, edge_commands, training_commands):
    _commands.register(app)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
