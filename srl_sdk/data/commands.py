"""`srl data generate --teacher ...` (its run, called from cli.py's generate) and `srl data from-text`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

STYLES_HELP = "auto | sentences | lines | numbered | paragraphs | regex"


def parse_extra_body(text: Optional[str]) -> dict[str, Any]:
    from srl_sdk.errors import ConfigError

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--extra-body is not JSON ({exc.msg}); e.g. --extra-body '{{\"top_k\": 20}}'") from exc
    if not isinstance(value, dict):
        raise ConfigError("--extra-body must be a JSON object, e.g. '{\"top_k\": 20}'")
    return value


def run_teacher(options: dict[str, Any], prompt_file: Optional[Path]) -> None:
    """Build the TeacherConfig from the CLI options, run it, print the report."""
    from pydantic import ValidationError
    from rich.markup import escape

    from srl_sdk.cli_common import console
    from srl_sdk.data.teacher import TRAJECTORIES, TeacherConfig, format_report, generate_from_teacher
    from srl_sdk.errors import ConfigError, InputError

    if options.get("input") is None:
        raise ConfigError("--teacher needs --input FILE.jsonl: problems with gold answers (problem/question + answer)")
    if not options.get("model"):
        raise ConfigError("--teacher needs --model NAME: the teacher's model name on that endpoint (GET /v1/models)")
    if prompt_file is not None:
        try:
            options["prompt"] = prompt_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read --prompt-file {prompt_file}: {exc}") from exc
    values = {k: v for k, v in options.items() if v is not None}
    try:
        config = TeacherConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"bad teacher settings: {problems}") from None
    report = generate_from_teacher(config)
    console.print(escape(format_report(report)), soft_wrap=True)
    console.print(f"[green]wrote[/] {escape(str(config.out / TRAJECTORIES))} and report.json "
                  f"({report['problems']['kept']} trajectories)")
    if config.trl_out is not None:
        console.print(f"[green]wrote[/] {escape(str(config.trl_out))} (TRL stepwise supervision, {report['trl_rows']} rows)")


def register(data_app: typer.Typer) -> None:
    from srl_sdk.cli_common import console, err_console, friendly_errors

    @data_app.command("from-text")
    @friendly_errors
    def from_text(
        file: Path = typer.Argument(..., help="JSONL of problem/solution rows, or a text file with one solution."),
        style: str = typer.Option("auto", help=STYLES_HELP + " (auto: numbered, else sentences for math or one line, else lines)"),
        pattern: Optional[str] = typer.Option(None, help="Separator regex for --style regex."),
        problem: Optional[str] = typer.Option(None, help="The problem, when FILE is one plain-text solution."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write trajectory JSONL here (default: preview only)."),
        preview: int = typer.Option(3, "--preview", min=0, help="Solutions to show, cut into steps."),
        limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Convert at most this many solutions."),
        min_steps: int = typer.Option(2, "--min-steps", min=1, help="Drop solutions with fewer steps."),
        problem_field: Optional[str] = typer.Option(None, help="Field of the problem (default problem, else question)."),
        solution_field: Optional[str] = typer.Option(None, help="Field of the solution (default solution, else answer)."),
        answer_field: Optional[str] = typer.Option(None, help="Field of the answer (default: \\boxed{} or #### in the solution)."),
        trl_out: Optional[Path] = typer.Option(None, "--trl-out", help="Also write TRL's stepwise-supervision JSONL here."),
    ) -> None:
        """Human-written solutions -> steps (a preview of the cut) -> trajectory JSONL for srl train."""
        from pydantic import ValidationError
        from rich.markup import escape

        from srl_sdk.core.instances import write_jsonl
        from srl_sdk.data.from_text import FromTextConfig, convert_file
        from srl_sdk.data.rows import stepwise_row
        from srl_sdk.errors import ConfigError, InputError

        try:
            config = FromTextConfig(style=style, pattern=pattern, problem=problem, problem_field=problem_field,  # type: ignore[arg-type]
                                    solution_field=solution_field, answer_field=answer_field, min_steps=min_steps,
                                    limit=limit)
        except ValidationError:
            raise ConfigError(f"unknown --style {style!r}; use one of {STYLES_HELP}") from None
        if not file.is_file():
            raise InputError(f"cannot read {file}: no such file")
        rows, report = convert_file(file, config)
        for row in rows[:preview]:
            meta = row["metadata"]
            console.print(f"[bold cyan]{escape(row['id'])}[/] [dim]({len(row['steps'])} steps, {meta['split_style']}, "
                          f"answer {escape(row['answer'])})[/]")
            console.print(f"  [dim]{escape(' '.join(row['problem'].split())[:160])}[/]")
            for number, step in enumerate(row["steps"], start=1):
                console.print(f"  [bold]{number}.[/] {escape(' '.join(step.split()))}", soft_wrap=True)
        err_console.print(report.summary())
        if out is not None:
            count = write_jsonl(out, rows)
            console.print(f"[green]wrote[/] {escape(str(out))} ({count} trajectories)")
        elif rows:
            err_console.print("[dim]preview only: add --out FILE.jsonl to write the trajectories[/]")
        if trl_out is not None:
            count = write_jsonl(trl_out, [stepwise_row(row) for row in rows])
            console.print(f"[green]wrote[/] {escape(str(trl_out))} (TRL stepwise supervision, {count} rows)")
