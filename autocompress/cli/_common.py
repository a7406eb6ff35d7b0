"""What every ``autocompress`` command shares: the console, the one-line user errors, common options.

The command modules import this module and library code only, never each other or the package
``__init__`` that assembles them, so the CLI has no import circle.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from autocompress.errors import AutocompressError

__all__ = ["Db", "Rows", "Scale", "console", "user_errors"]

console = Console()
F = TypeVar("F", bound=Callable[..., Any])

Db = Annotated[
    str | None,
    typer.Option("--db", help="database URL (default: AUTOCOMPRESS_DB_URL or ./autocompress.db)"),
]
Scale = Annotated[str, typer.Option(help="synthetic data size: default (200k items, 100k users) | tiny")]
Rows = Annotated[int | None, typer.Option("--rows", help="synthetic rows (overrides the scale's)")]


def user_errors(fn: F) -> F:
    """Print user errors as one clear line naming the field (exit 2) instead of a traceback.

    Wraps every command: an :class:`AutocompressError` prints its message, a pydantic
    ``ValidationError`` one line per invalid field.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AutocompressError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "input"
                console.print(f"[bold red]error:[/] {where}: {err['msg']}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]
