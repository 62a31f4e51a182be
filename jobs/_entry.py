"""Shared by the `jobs/*.py` entry points: run one command of the `latentstore` CLI app in this process.

A job is the CLI command of the same name (same options, same exit codes), so the two cannot drift apart;
under `ray job submit` the driver finds the cluster through the `RAY_ADDRESS` the job runner sets.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python jobs/X.py` from a checkout without `pip install`: make the package importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(command: str, argv: list[str] | None = None) -> int:
    import typer

    from latentstore.cli import app

    group = typer.main.get_command(app)
    try:
        # without standalone mode click *returns* the status of a typer.Exit (the CLI's error path)
        status = group.main([command, *(sys.argv[1:] if argv is None else argv)], prog_name=f"jobs/{command}.py",
                            standalone_mode=False)
    except SystemExit as e:  # click's --help / usage errors
        return int(e.code or 0)
    except Exception as e:  # click.exceptions.Exit carries the command's status
        code = getattr(e, "exit_code", None)
        if code is None:
            raise
        if hasattr(e, "show"):
            e.show()
        return int(code)
    return status if isinstance(status, int) else 0
