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
            raise typer.Exit(e.exit_code) from None  # typer vendors click: its own Exit sets the status


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


# -- ingest and slices (issue 4) ------------------------------------------------------------------------


@app.command()
def ingest(
    archive: Annotated[Path, typer.Argument(help="Archive folder: NIfTI (VerSe layout) and/or DICOM scans with centroids.")],
    store: StoreOpt = DEFAULT_STORE,
    address: Annotated[
        Optional[str], typer.Option("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
    ] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Scans processed at once (default: all CPUs).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Cut one 96x96 sagittal slice per vertebra of every new scan in ARCHIVE into the store (Ray tasks).

    Reruns add only new scans. Rejected inputs go to the catalog's errors table (exit status 4); the rest is stored.
    """
    import json

    from .errors import PartialFailure
    from .ingest.run import ingest as run_ingest
    from .ingest.run import summary_table

    summary = run_ingest(archive, store, address=address, workers=workers, progress=not json_out)
    if json_out:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        out.print(summary_table(summary))
    if not summary.clean:
        raise PartialFailure(
            f"{summary.errors} input(s) rejected, the rest stored; see "
            f"latentstore sql \"SELECT source, stage, reason FROM errors WHERE run_id = '{summary.run_id}'\""
        )


slices_app = typer.Typer(cls=_Group, help="Stored slices.", no_args_is_help=True)
app.add_typer(slices_app, name="slices")


@slices_app.command("show")
def slices_show(
    slice_id: Annotated[Optional[int], typer.Argument(help="A slice id.")] = None,
    scan: Annotated[Optional[str], typer.Option("--scan", help="Show every slice of this scan id.")] = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="PNG path (default slice-<id>.png / scan-<scan>.png).")] = None,
    store: StoreOpt = DEFAULT_STORE,
    json_out: JsonOpt = False,
) -> None:
    """Write a PNG grid of stored slices (bone window, level names) to check the cuts."""
    import json

    from .slices import show

    shown = show(store, slice_id=slice_id, scan=scan, out=out_file)
    if json_out:
        print(json.dumps({"path": str(shown.path), "levels": shown.levels, "slice_ids": shown.slice_ids}))
    else:
        out.print(f"{shown.path}: {len(shown.levels)} slice(s) ({', '.join(shown.levels)})", highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
