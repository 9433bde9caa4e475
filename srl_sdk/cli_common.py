"""What every `srl` command module shares: the two consoles and the SRLError -> one red line rule.

It lives apart from cli.py so that the command modules (data/, edge/, serving/, training/
commands.py) import it and cli.py imports them, one way: no module imports cli.py.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from srl_sdk.errors import SRLError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., object])


def friendly_errors(func: F) -> F:
    """SRLError -> one line on stderr and exit 1, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except SRLError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
