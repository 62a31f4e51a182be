"""The `latentstore` command line: one thin command per stage over a library function.

Every user-facing failure is a `LatentstoreError`, shown once as a single line with its exit code;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from . import __version__
from .errors import LatentstoreError
from .store import DEFAULT_STORE, ENV_VAR

err = Console(stderr=True)
out = Console()


class _Group(TyperGroup):
    """Catches the user-facing error family once for every command."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LatentstoreError as e:
            if (ctx.obj or {}).get("debug"):
                raise
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise click.exceptions.Exit(e.exit_code) from None


app = typer.Typer(
    cls=_Group,
    name="latentstore",
    help="Grade vertebral fractures on CT through a diffusion autoencoder's semantic latents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Shared options: the same name on every command that uses them.
StoreOpt = Annotated[
    str,
    typer.Option("--store", envvar=ENV_VAR, help=f"Store folder or URI (env {ENV_VAR}).", show_default=True),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _version(value: bool) -> None:
    if value:
        out.print(f"latentstore {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    ctx.obj = {"debug": debug}


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
